#include "rules/config.hpp"

#include <map>
#include <string>

#include "core/topic.hpp"
#include "rules/filter.hpp"

namespace ferry::rules {
namespace {

using config::option;

constexpr std::string_view k_format_names[] = {"json", "sparkplug_b"};

constexpr option k_rule_options[] = {
    {"name", "string [A-Za-z0-9_.-]+", "required",
     "Unique rule name; `{rule}` in topics; the `rule` label of `ferry_rule_events_total`."},
    {"match", "pattern or list of patterns", "required",
     "Over `device/tag`. `+` matches one whole level, `#` (last level only) the rest including "
     "nothing, `*` any run of characters inside a level (`meter*/#`, `+/temp*`)."},
    {"filter", "expression", "none",
     "Events for which it is false are dropped (see rules/README.md for the language)."},
    {"transform", "map", "none", "Rescale values (see `rules[].transform`)."},
    {"deadband", "map", "none", "Drop small changes (see `rules[].deadband`)."},
    {"heartbeat", "duration 1ms..720h", "none",
     "Send an unchanged value at least this often: the next reading passes whatever the "
     "deadband once this long has passed since the rule last sent that device/tag."},
    {"batch", "map", "", "When a batch is sent (see `rules[].batch`)."},
    {"publish", "map", "", "Where a batch is sent (see `rules[].publish`)."},
};

constexpr option k_transform_options[] = {
    {"scale", "number", "1", "value = value * scale + offset."},
    {"offset", "number", "0", "value = value * scale + offset."},
    {"unit", "string", "the point's unit",
     "The unit written in each event of this rule (\"unit\" in the payload)."},
};

constexpr option k_deadband_options[] = {
    {"absolute", "number >= 0", "",
     "A number passes when it moved at least this much since the last value this rule published "
     "for the device/tag."},
    {"percent", "number >= 0", "",
     "A number passes when it moved at least this percentage of the last published value (of its "
     "absolute value)."},
};

constexpr option k_batch_options[] = {
    {"max_events", "integer 1..1000000", "500", "The batch leaves when it holds this many events."},
    {"max_bytes", "size 1KiB..256MiB", "256KiB",
     "The whole message (header with the widest batch number included) never exceeds this: when "
     "the next event would not fit, the batch leaves first; an event larger on its own goes in a "
     "batch of its own. When the broker's Maximum Packet Size is known (MQTT 5 CONNACK, or "
     "`upstream.mqtt.max_packet_size`), the limit is the smaller of this and that size minus the "
     "publish overhead (docs/DELIVERY.md, \"Dead letters\")."},
    {"max_age", "duration 0..720h", "1s",
     "The batch leaves this long after its first event entered it (`0s`: at the next tick)."},
};

constexpr option k_publish_options[] = {
    {"topic", "topic template", "ferry/{gateway}/{device}",
     "MQTT topic; `{gateway}` `{device}` `{tag}` `{rule}`; no wildcards. Events are batched per "
     "resulting topic."},
    {"qos", "0 \\| 1 \\| 2", "1", "MQTT QoS of the batch messages."},
    {"retain", "bool", "false", "Publish retained."},
    {"format", "", "json",
     "`json`: the contract's batch (CONTRACT.md). `sparkplug_b`: Sparkplug B DDATA, one message "
     "per device per batch on spBv1.0/{group}/DDATA/{edge_node}/{device}; needs "
     "`upstream.sparkplug`; no `topic`, `retain` or `transform` (docs/SPARKPLUG.md).",
     config::k_all_drivers, k_format_names},
    {"message_expiry", "duration 1s..4294967295s, whole seconds", "none",
     "MQTT 5 Message Expiry Interval of each batch, counted from when the batch was spooled: a "
     "batch sent late carries what is left; one whose expiry passed in the spool is dropped, "
     "counted in `ferry_events_dropped_total{reason=\"expired\"}`. Left out with MQTT 3.1.1."},
    {"retain_last", "bool", "false",
     "Also publish the newest value of each point the rule passes, retained, on "
     "`retain_topic`: `{\"value\",\"quality\",\"ts\",\"seq\"}`, not spooled, sent again "
     "after every reconnect."},
    {"retain_topic", "topic template with {device} and {tag}",
     "ferry/{gateway}/last/{device}/{tag}", "Where `retain_last` publishes each point's value."},
};

// The MQTT 5 keys of `publish` (issue 18).
void read_mqtt5(config::loader& ld, const config::map_reader& pm, config::publish_settings& p) {
    // Not ld.dur(): its 720h bound keeps clock arithmetic safe, while this is a u32 of seconds
    // the broker counts (to about 136 years) and Ferry only adds to Unix milliseconds.
    if (auto x = pm.get("message_expiry")) {
        if (auto text = ld.str(*x)) {
            constexpr std::int64_t max_s = 4294967295;
            const auto d = config::parse_duration(*text);
            if (!d)
                ld.fail(*x, "invalid duration '" + *text + "' (use e.g. 30s, 5m, 1h)");
            else if (d->count() < 1000 || d->count() % 1000 != 0)
                ld.fail(*x, "must be whole seconds, at least 1s (MQTT 5 counts in seconds)");
            else if (d->count() / 1000 > max_s)
                ld.fail(*x, "must be at most 4294967295s (about 136 years)");
            else
                p.message_expiry_s = static_cast<std::uint32_t>(d->count() / 1000);
        }
    }
    ld.set_bool(pm, "retain_last", p.retain_last);
    if (auto x = pm.get("retain_topic")) {
        ld.topic(*x, p.retain_topic);
        const auto t = topic_template::compile(p.retain_topic);
        if (t && (!t->uses_device() || !t->uses_tag()))
            ld.fail(*x, "must hold {device} and {tag}: one retained value per point");
    }
}

void read_rule(config::loader& ld, const config::value_ref& v, config::rule& r) {
    config::map_reader m(ld, v, k_rule_options);
    if (!m.is_map()) return;
    r.where = config::to_mark(m.where());
    m.check_keys();
    if (m.require("name")) {
        auto ref = *m.get("name");
        if (auto s = ld.name(ref, "rule name", true)) {
            r.name = *s;
            r.where = config::to_mark(ref.where);
        }
    }
    if (m.require("match")) {
        auto ref = *m.get("match");
        auto patterns = ld.strings(ref);
        if (patterns.empty() && (ref.node.IsSequence() || ref.node.IsNull()))
            ld.fail(ref, "a rule needs at least one pattern");
        for (auto& [text, where] : patterns) {
            std::string why;
            if (topic_pattern::compile(text, &why))
                r.match.push_back(text);
            else
                ld.fail(where, "invalid pattern '" + text + "': " + why);
        }
    }
    if (auto ref = m.get("filter")) {
        if (auto s = ld.nonempty_str(*ref)) {
            // Compiled here once to report errors with their place; the engine compiles again.
            filter_error err;
            if (filter::compile(*s, &err))
                r.filter = *s;
            else
                ld.fail(*ref, "at position " + std::to_string(err.position) +
                                  " of the expression: " + err.message);
        }
    }
    if (auto ref = m.get("transform")) {
        config::map_reader tm(ld, *ref, k_transform_options);
        if (tm.is_map()) {
            tm.check_keys();
            config::transform_settings t;
            ld.set_number(tm, "scale", t.scale);
            ld.set_number(tm, "offset", t.offset);
            ld.set_str(tm, "unit", t.unit);
            r.transform = t;
        }
    }
    if (auto ref = m.get("deadband")) {
        config::map_reader dm(ld, *ref, k_deadband_options);
        if (dm.is_map()) {
            dm.check_keys();
            if (dm.has("absolute") == dm.has("percent")) {
                ld.fail(dm.where(), dm.path(), "set exactly one of 'absolute' or 'percent'");
            } else {
                config::deadband_settings db;
                db.kind = dm.has("absolute") ? config::deadband_kind::absolute
                                             : config::deadband_kind::percent;
                auto x = *dm.get(dm.has("absolute") ? "absolute" : "percent");
                if (auto n = ld.number(x)) {
                    if (*n < 0)
                        ld.fail(x, "must not be negative");
                    else
                        db.amount = *n;
                }
                r.deadband = db;
            }
        }
    }
    if (auto ref = m.get("heartbeat"))
        if (auto d = ld.dur(*ref, true)) r.heartbeat = *d;
    if (auto ref = m.get("batch")) {
        config::map_reader bm(ld, *ref, k_batch_options);
        if (bm.is_map()) {
            bm.check_keys();
            ld.set(bm, "max_events", r.batch.max_events, 1, 1000000);
            if (auto x = bm.get("max_bytes"))
                if (auto n = ld.size(*x, 1024, 256ull * 1024 * 1024))
                    r.batch.max_bytes = static_cast<std::size_t>(*n);
            ld.set_dur(bm, "max_age", r.batch.max_age, false);
        }
    }
    if (auto ref = m.get("publish")) {
        config::map_reader pm(ld, *ref, k_publish_options);
        if (pm.is_map()) {
            pm.check_keys();
            if (auto x = pm.get("topic")) ld.topic(*x, r.publish.topic);
            ld.set(pm, "qos", r.publish.qos, 0, 2);
            ld.set_bool(pm, "retain", r.publish.retain);
            ld.set_enum(pm, "format", r.publish.format, k_format_names);
            if (r.publish.format == config::payload_format::sparkplug_b) {
                // The Sparkplug namespace fixes the topic; DDATA is never retained (the
                // specification); a metric's value is the point's, as its DBIRTH declares it.
                for (const char* key : {"topic", "retain", "retain_last", "retain_topic"})
                    if (pm.has(key))
                        ld.fail(pm.key_ref(key), std::string("'") + key +
                                                     "' does not apply to format: sparkplug_b "
                                                     "(docs/SPARKPLUG.md)");
                if (m.has("transform"))
                    ld.fail(m.key_ref("transform"),
                            "'transform' does not apply to format: sparkplug_b: a metric carries "
                            "the point's value as its DBIRTH declares it (use the point's "
                            "scale/offset)");
                // The loader's finish step checks that upstream.sparkplug exists.
                ld.remember("sparkplug_rule:" + r.name, *pm.get("format"));
            }
            read_mqtt5(ld, pm, r.publish);
        }
    }
}

void read_rules(config::loader& ld, const config::value_ref& v, config::config& c) {
    std::map<std::string, config::mark> seen;
    for (auto& item : ld.list(v)) {
        config::rule r;
        read_rule(ld, item, r);
        if (!r.name.empty()) ld.unique(seen, r.name, r.where, item.path + ".name", "rule name");
        c.rules.push_back(std::move(r));
    }
}

}  // namespace

const config::section_schema& config_section() {
    static const config::section_schema s{
        {"rules", "list of maps", "[]", "Which events go upstream, how batched, to which topic."},
        {{"rules[]", "", k_rule_options},
         {"rules[].transform", "", k_transform_options},
         {"rules[].deadband", "Exactly one of the two keys; a change of quality always passes.",
          k_deadband_options},
         {"rules[].batch", "A batch is sent when the first of the limits is reached.",
          k_batch_options},
         {"rules[].publish", "", k_publish_options}},
        read_rules,
        nullptr};
    return s;
}

}  // namespace ferry::rules
