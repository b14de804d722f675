#include "upstream/config.hpp"

#include <string>
#include <utility>
#include <vector>

namespace ferry::upstream {
namespace {

using config::option;

constexpr std::string_view k_when_full_names[] = {"drop_oldest", "drop_newest", "block"};
constexpr std::string_view k_fsync_names[] = {"always", "batch", "never"};
constexpr std::string_view k_refused_names[] = {"block", "drop"};
constexpr std::string_view k_replay_order_names[] = {"live_first", "strict"};

constexpr option k_dead_letter_options[] = {
    {"topic", "topic template", "ferry/{gateway}/dead-letter",
     "Events a rule could not handle, with the reason."},
};

constexpr option k_upstream_options[] = {
    {"mqtt", "map", "", "The broker connection (see `upstream.mqtt`)."},
    {"spool", "map", "", "The on-disk queue (see `upstream.spool`)."},
    {"replay", "map", "", "How the backlog goes out after a reconnect (see `upstream.replay`)."},
    {"sparkplug", "map", "none: no Sparkplug B",
     "Ferry as a Sparkplug B edge node (see `upstream.sparkplug`, docs/SPARKPLUG.md)."},
};

constexpr option k_replay_options[] = {
    {"order", "", "live_first",
     "live_first: after a reconnect new batches go out at once and the backlog (what the spool "
     "held when the connection came up) is replayed beside them, oldest first, each JSON batch "
     "marked `\"replay\":true`; in order within each stream, `seq` merges them. strict: one "
     "stream, oldest first, live data behind the backlog (docs/DELIVERY.md, Live first).",
     config::k_all_drivers, k_replay_order_names},
    {"rate", "integer 1..1000000", "none: unpaced",
     "Backlog messages per second at most (a token bucket with 100 ms of burst), so that a long "
     "backlog neither crowds out live data nor trips a cloud broker's rate limits."},
    {"bytes_per_second", "size 1KiB..1GiB", "none: unpaced",
     "Backlog payload bytes per second at most; with `rate`, both limits hold."},
};

constexpr option k_sparkplug_options[] = {
    {"group_id", "template", "required",
     "The Sparkplug group; `{gateway}` is expanded. No `/`, `+` or `#`."},
    {"edge_node_id", "template", "{gateway}",
     "The edge node's id in the group; `{gateway}` is expanded. No `/`, `+` or `#`."},
    {"primary_host_id", "string", "none",
     "The primary host application whose STATE decides when data is held and replayed "
     "(store-and-forward, docs/SPARKPLUG.md)."},
};

constexpr option k_mqtt_options[] = {
    {"uris", "list of strings", "[tcp://127.0.0.1:1883]",
     "Broker URIs (tcp:// mqtt:// ssl:// mqtts:// ws:// wss://); more than one: failover in "
     "order."},
    {"client_id", "template", "{gateway}", "MQTT client id; `{gateway}` is expanded."},
    {"version", "5 \\| 3.1.1", "negotiated",
     "MQTT protocol version (4 is taken as 3.1.1). Not set: MQTT 5 is offered, and 3.1.1 "
     "when the broker refuses it; each uri keeps the version it agreed to."},
    {"keepalive", "duration, whole seconds", "30s", "MQTT keepalive, 1s..65535s."},
    {"username", "string", "none", "MQTT user name."},
    {"password_file", "path", "none",
     "File holding the MQTT password (trailing newline stripped). Relative to the config "
     "file's directory."},
    {"tls", "map", "none: no TLS", "TLS settings (see `upstream.mqtt.tls`); needs ssl:// URIs."},
    {"inflight", "integer 1..65535", "16", "Unacknowledged QoS 1/2 messages at a time."},
    {"ack_timeout", "duration 1s..1h", "30s",
     "The oldest publish unacknowledged this long: reconnect and resend from it."},
    {"refused", "", "block",
     "A publish the broker refuses (MQTT 5 reason >= 0x80): retry it alone until accepted, or "
     "drop it after `refused_attempts` (docs/DELIVERY.md).",
     config::k_all_drivers, k_refused_names},
    {"refused_attempts", "integer 1..1000", "3", "Refusals of one message before `drop` drops it."},
    {"max_packet_size", "size 1KiB..256MiB", "none: the broker's MQTT 5 CONNACK, if any",
     "The broker's largest packet (mosquitto `max_packet_size`), for brokers that do not "
     "announce it (3.1.1). Batches are cut below it; a spooled message above it is "
     "dead-lettered (docs/DELIVERY.md)."},
};

constexpr option k_tls_options[] = {
    {"ca_file", "path", "system CAs", "CA certificates to verify the broker with."},
    {"cert_file", "path", "none", "Client certificate (with key_file)."},
    {"key_file", "path", "none", "Client private key (with cert_file)."},
    {"verify_hostname", "bool", "true", "Check the broker's certificate names its host."},
};

constexpr option k_spool_options[] = {
    {"path", "template", "{data_dir}/spool.db",
     "Spool database; `{data_dir}` and `{gateway}` are expanded."},
    {"max_bytes", "size 1MiB..16TiB", "512MiB", "Most bytes the spool holds."},
    {"when_full", "", "drop_oldest", "What a full spool does with a new batch.",
     config::k_all_drivers, k_when_full_names},
    {"fsync", "", "always", "When the spool fsyncs: every batch, grouped, or never.",
     config::k_all_drivers, k_fsync_names},
    {"compress", "bool", "true",
     "Store batch bodies zstd-compressed (the contract's JSON: about 30x fewer bytes); "
     "published as they were encoded (docs/SPOOL.md)."},
};

void read_dead_letter(config::loader& ld, const config::value_ref& v, config::config& c) {
    config::map_reader m(ld, v, k_dead_letter_options);
    if (!m.is_map()) return;
    m.check_keys();
    if (auto x = m.get("topic")) ld.topic(*x, c.dead_letter.topic);
}

void read_mqtt(config::loader& ld, const config::value_ref& v, config::config& c) {
    config::map_reader m(ld, v, k_mqtt_options);
    if (!m.is_map()) return;
    m.check_keys();
    auto& q = c.upstream.mqtt;

    if (auto r = m.get("tls")) {
        config::map_reader tm(ld, *r, k_tls_options);
        if (tm.is_map()) {
            tm.check_keys();
            config::tls_settings t;
            for (auto [key, out] :
                 {std::pair{"ca_file", &t.ca_file}, std::pair{"cert_file", &t.cert_file},
                  std::pair{"key_file", &t.key_file}}) {
                if (auto x = tm.get(key))
                    if (auto s = ld.nonempty_str(*x)) *out = ld.resolve(*s);
            }
            if (tm.has("cert_file") != tm.has("key_file"))
                ld.fail(tm.where(), tm.path(), "set both 'cert_file' and 'key_file', or neither");
            ld.set_bool(tm, "verify_hostname", t.verify_hostname);
            q.tls = t;
        }
    }

    if (auto r = m.get("uris")) {
        auto uris = ld.strings(*r);
        if (uris.empty() && (r->node.IsSequence() || r->node.IsNull()))
            ld.fail(*r, "at least one broker URI is needed");
        std::vector<std::string> out;
        for (auto& [uri, where] : uris) {
            auto sep = uri.find("://");
            std::string scheme = sep == std::string::npos ? "" : uri.substr(0, sep);
            bool secure = scheme == "ssl" || scheme == "mqtts" || scheme == "wss";
            bool plain = scheme == "tcp" || scheme == "mqtt" || scheme == "ws";
            if ((!secure && !plain) || uri.size() == sep + 3) {
                ld.fail(where, "invalid broker URI '" + uri +
                                   "' (use tcp://, mqtt://, ssl://, mqtts://, ws:// or wss://)");
                continue;
            }
            if (secure && !q.tls)
                ld.fail(where, "'" + scheme + "://' needs an 'upstream.mqtt.tls' section");
            else if (plain && q.tls)
                ld.fail(where, "'" + scheme +
                                   "://' is not encrypted although 'tls' is set; use ssl:// or "
                                   "mqtts://");
            out.push_back(uri);
        }
        q.uris = std::move(out);
    } else if (q.tls) {
        ld.fail(m.key_ref("tls"),
                "'tls' is set but 'uris' is not (the default tcp:// URI has no "
                "TLS)");
    }

    if (auto r = m.get("client_id")) {
        if (auto s = ld.nonempty_str(*r)) {
            q.client_id = *s;
            ld.remember("upstream.mqtt.client_id", *r);
        }
    }
    if (auto r = m.get("version")) {
        if (auto s = ld.str(*r)) {
            if (*s == "5")
                q.version = 5;
            else if (*s == "3.1.1" || *s == "4")
                q.version = 4;
            else
                ld.fail(*r, "unknown MQTT version '" + *s + "' (allowed: 5, 3.1.1)");
        }
    }
    if (auto r = m.get("keepalive")) {
        if (auto d = ld.dur(*r, true)) {
            if (d->count() % 1000 != 0 || d->count() > 65535000)
                ld.fail(*r, "keepalive must be whole seconds, 1s..65535s");
            else
                q.keepalive = *d;
        }
    }
    ld.set_str(m, "username", q.username);
    if (auto r = m.get("password_file")) {
        if (auto s = ld.nonempty_str(*r))
            if (auto content = ld.secret_file(*r, ld.resolve(*s))) q.password = std::move(*content);
    }
    ld.set(m, "inflight", q.inflight, 1, 65535);
    if (auto r = m.get("ack_timeout")) {
        if (auto d = ld.dur(*r, true)) {
            if (d->count() < 1000 || d->count() > 3600000)
                ld.fail(*r, "ack_timeout must be 1s..1h");
            else
                q.ack_timeout = *d;
        }
    }
    ld.set_enum(m, "refused", q.refused, k_refused_names);
    ld.set(m, "refused_attempts", q.refused_attempts, 1, 1000);
    // The protocol's own ceiling: a remaining length of 256 MiB - 1 plus a 5-byte header.
    if (auto r = m.get("max_packet_size"))
        if (auto n = ld.size(*r, 1024, 268435460)) q.max_packet_size = *n;
}

void read_spool(config::loader& ld, const config::value_ref& v, config::config& c) {
    config::map_reader m(ld, v, k_spool_options);
    if (!m.is_map()) return;
    m.check_keys();
    auto& s = c.upstream.spool;
    if (auto r = m.get("path")) {
        if (auto p = ld.nonempty_str(*r)) {
            s.path = *p;
            ld.remember("upstream.spool.path", *r);
        }
    }
    if (auto r = m.get("max_bytes"))
        if (auto n = ld.size(*r, 1024 * 1024, 16ull << 40)) s.max_bytes = *n;
    ld.set_enum(m, "when_full", s.full, k_when_full_names);
    ld.set_enum(m, "fsync", s.fsync, k_fsync_names);
    ld.set_bool(m, "compress", s.compress);
}

void read_replay(config::loader& ld, const config::value_ref& v, config::config& c) {
    config::map_reader m(ld, v, k_replay_options);
    if (!m.is_map()) return;
    m.check_keys();
    auto& r = c.upstream.replay;
    ld.set_enum(m, "order", r.order, k_replay_order_names);
    ld.set(m, "rate", r.rate, 1, 1000000);
    if (auto x = m.get("bytes_per_second"))
        if (auto n = ld.size(*x, 1024, 1ull << 30)) r.bytes_per_second = *n;
    if (r.order == config::replay_order::strict && (m.has("rate") || m.has("bytes_per_second")))
        ld.fail(m.key_ref(m.has("rate") ? "rate" : "bytes_per_second"),
                "pacing applies to a replay beside live data: it needs order live_first");
}

void read_sparkplug(config::loader& ld, const config::value_ref& v, config::config& c) {
    config::map_reader m(ld, v, k_sparkplug_options);
    if (!m.is_map()) return;
    m.check_keys();
    config::sparkplug_settings s;
    if (m.require("group_id")) {
        if (auto x = ld.nonempty_str(*m.get("group_id"))) {
            s.group_id = *x;
            ld.remember("upstream.sparkplug.group_id", *m.get("group_id"));
        }
    }
    if (auto r = m.get("edge_node_id")) {
        if (auto x = ld.nonempty_str(*r)) {
            s.edge_node_id = *x;
            ld.remember("upstream.sparkplug.edge_node_id", *r);
        }
    }
    if (auto r = m.get("primary_host_id")) {
        if (auto x = ld.nonempty_str(*r)) {
            s.primary_host_id = *x;
            ld.remember("upstream.sparkplug.primary_host_id", *r);
        }
    }
    c.upstream.sparkplug = std::move(s);
}

void read_upstream(config::loader& ld, const config::value_ref& v, config::config& c) {
    config::map_reader m(ld, v, k_upstream_options);
    if (!m.is_map()) return;
    m.check_keys();
    if (auto r = m.get("mqtt")) read_mqtt(ld, *r, c);
    if (auto r = m.get("spool")) read_spool(ld, *r, c);
    if (auto r = m.get("replay")) read_replay(ld, *r, c);
    if (auto r = m.get("sparkplug")) read_sparkplug(ld, *r, c);
}

// A Sparkplug id is one topic level: no separator, no wildcard (specification 3.0, 4.1.1).
void check_sparkplug_id(config::loader& ld, const config::value_ref& where, const std::string& id) {
    if (id.empty())
        ld.fail(where, "expands to an empty id");
    else if (id.find_first_of("/+#") != std::string::npos)
        ld.fail(where, "'" + id + "' is not a Sparkplug id: no '/', '+' or '#'");
}

void finish_sparkplug(config::loader& ld, config::config& c) {
    const std::string& gw = c.gateway.id;
    if (!c.upstream.sparkplug) {
        for (const auto& r : c.rules)
            if (auto ref = ld.recall("sparkplug_rule:" + r.name))
                ld.fail(*ref,
                        "format: sparkplug_b needs an 'upstream.sparkplug' section "
                        "(group_id, edge_node_id)");
        return;
    }
    auto& s = *c.upstream.sparkplug;
    for (auto [key, out] : {std::pair{"upstream.sparkplug.group_id", &s.group_id},
                            std::pair{"upstream.sparkplug.edge_node_id", &s.edge_node_id}}) {
        if (out->empty()) continue;  // group_id missing: reported where it is read
        auto ref = ld.recall(key).value_or(config::value_ref{{}, ld.root_mark(), key});
        if (auto x = ld.expand_placeholders(*out, ref, {{"gateway", gw}})) {
            *out = *x;
            check_sparkplug_id(ld, ref, *out);
        }
    }
    if (auto ref = ld.recall("upstream.sparkplug.primary_host_id"))
        check_sparkplug_id(ld, *ref, s.primary_host_id);
}

// Templates that need the gateway id (and data_dir) read first.
void finish_upstream(config::loader& ld, config::config& c) {
    const std::string& gw = c.gateway.id;
    if (auto ref = ld.recall("upstream.mqtt.client_id")) {
        if (auto s = ld.expand_placeholders(c.upstream.mqtt.client_id, *ref, {{"gateway", gw}}))
            c.upstream.mqtt.client_id = *s;
    } else {
        c.upstream.mqtt.client_id = gw;
    }
    auto spool_ref = ld.recall("upstream.spool.path")
                         .value_or(config::value_ref{{}, ld.root_mark(), "upstream.spool.path"});
    if (auto s = ld.expand_placeholders(c.upstream.spool.path, spool_ref,
                                        {{"data_dir", c.gateway.data_dir}, {"gateway", gw}}))
        c.upstream.spool.path = *s;
    finish_sparkplug(ld, c);
}

}  // namespace

const config::section_schema& dead_letter_section() {
    static const config::section_schema s{
        {"dead_letter", "map", "", "Where events a rule could not handle go."},
        {{"dead_letter", "", k_dead_letter_options}},
        read_dead_letter,
        nullptr};
    return s;
}

const config::section_schema& config_section() {
    static const config::section_schema s{
        {"upstream", "map", "", "The MQTT connection and the on-disk spool in front of it."},
        {{"upstream", "", k_upstream_options},
         {"upstream.mqtt", "", k_mqtt_options},
         {"upstream.mqtt.tls", "Present: TLS is used.", k_tls_options},
         {"upstream.spool", "", k_spool_options},
         {"upstream.replay", "", k_replay_options},
         {"upstream.sparkplug",
          "Present: Ferry is a Sparkplug B edge node for the rules with `format: sparkplug_b`.",
          k_sparkplug_options}},
        read_upstream,
        finish_upstream};
    return s;
}

}  // namespace ferry::upstream
