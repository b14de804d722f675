// The strict YAML loader of CONTRACT.md's configuration.
//
// Every section declares its keys once (an `option` table: name, type, default, meaning). The
// same tables drive the unknown-key check (with a did-you-mean), the per-driver key check and
// `reference_markdown()`, from which config/REFERENCE.md is made. Errors are collected, never
// thrown one by one: a user fixing a config sees every problem of the file in one run.
//
// Features that are parsed here but not built yet are refused by one table, k_not_built_yet;
// building a feature means deleting its row (the values are already parsed into the structs).
#include "core/config.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <utility>

#include "core/topic.hpp"
#include "drivers/serial/regex.hpp"
#include "rules/filter.hpp"

namespace ferry::config {
namespace {

// ---------------------------------------------------------------------------------------------
// Features the YAML accepts but this version of Ferry cannot do yet. Each present key (and,
// when `value` is set, only with that value) is an error at its position, e.g.
//   {"commands.enabled", "true", "'commands' (downlink writes)"} gives
//   commands.enabled: 'commands' (downlink writes) is not built yet in this version of Ferry
// `key` is a key path with the list indices removed. Empty now: every key is built.
struct not_built_row {
    std::string_view key;
    std::string_view value;  // empty: any value
    std::string_view what;
};

constexpr std::array<not_built_row, 0> k_not_built_yet{};

// ---------------------------------------------------------------------------------------------
// Drivers, as a bit mask so that keys can say which drivers take them.
constexpr unsigned k_tcp = 1;
constexpr unsigned k_rtu = 2;
constexpr unsigned k_line = 4;
constexpr unsigned k_modbus = k_tcp | k_rtu;
constexpr unsigned k_serial = k_rtu | k_line;
constexpr unsigned k_all = k_tcp | k_rtu | k_line;

struct driver_decl {
    std::string_view name;
    unsigned bit;
};
constexpr driver_decl k_drivers[] = {
    {"modbus_tcp", k_tcp}, {"modbus_rtu", k_rtu}, {"serial_line", k_line}};

// Allowed names of each enum, in the order of the enum's values.
constexpr std::string_view k_log_level_names[] = {"debug", "info", "warn", "error"};
constexpr std::string_view k_table_names[] = {"holding", "input", "coil", "discrete"};
constexpr std::string_view k_type_names[] = {"bool",  "int16",  "uint16",  "int32",   "uint32",
                                             "int64", "uint64", "float32", "float64", "string"};
constexpr std::string_view k_byte_order_names[] = {"ABCD", "DCBA", "BADC", "CDAB"};
constexpr std::string_view k_when_full_names[] = {"drop_oldest", "drop_newest", "block"};
constexpr std::string_view k_fsync_names[] = {"always", "batch", "never"};
constexpr std::string_view k_refused_names[] = {"block", "drop"};
constexpr std::string_view k_parity_names[] = {"N", "E", "O"};
constexpr std::string_view k_checksum_names[] = {"nmea"};
constexpr std::string_view k_driver_names[] = {"modbus_tcp", "modbus_rtu", "serial_line"};

// ---------------------------------------------------------------------------------------------
// Declared options.
struct option {
    std::string_view name;
    std::string_view type;
    std::string_view def;  // as documented; "required" for required keys
    std::string_view help;
    unsigned drivers = k_all;  // device and point keys: which drivers take the key
    std::span<const std::string_view> choices = {};
};

constexpr option k_top_options[] = {
    {"gateway", "map", "required", "This gateway: id, data directory, log level."},
    {"http", "map", "absent: no HTTP server",
     "The HTTP server for /metrics, /healthz, /readyz and /api/v1/*."},
    {"devices", "list of maps", "[]", "The devices to poll."},
    {"rules", "list of maps", "[]", "Which events go upstream, how batched, to which topic."},
    {"dead_letter", "map", "", "Where events a rule could not handle go."},
    {"commands", "map", "", "Downlink writes to writable points."},
    {"upstream", "map", "", "The MQTT connection and the on-disk spool in front of it."},
};

constexpr option k_gateway_options[] = {
    {"id", "string [A-Za-z0-9_-]+", "required",
     "Names this gateway in topics, client id and payloads. `{gateway}` in templates."},
    {"data_dir", "path", "/var/lib/ferry", "Spool and state live here. `{data_dir}` in templates."},
    {"log_level", "", "info", "Least severe log level written.", k_all, k_log_level_names},
};

constexpr option k_http_options[] = {
    {"listen", "host:port", "127.0.0.1:9108",
     "Address the HTTP server binds; IPv6 as `[::1]:9108`. The server runs when `http` is "
     "present."},
};

constexpr option k_device_options[] = {
    {"id", "string [A-Za-z0-9_.-]+", "required",
     "Unique device name; the first level of the bus address `device/tag`."},
    {"driver", "", "required", "How the device is read.", k_all, k_driver_names},
    {"host", "string", "required", "Host name or IP address of the Modbus TCP server.", k_tcp},
    {"port", "integer 1..65535", "502", "TCP port.", k_tcp},
    {"unit_id", "integer", "1",
     "Modbus unit (slave) id: 0..255 for modbus_tcp, 1..247 for modbus_rtu.", k_modbus},
    {"poll_interval", "duration 1ms..720h", "1s", "How often all points are read.", k_modbus},
    {"timeout", "duration 1ms..720h", "500ms", "Answer timeout of one request.", k_modbus},
    {"retries", "integer 0..100", "2", "Retries of a failed request within one poll.", k_modbus},
    {"max_gap", "integer 0..124", "16",
     "Unused registers a read may bridge to join two points into one request.", k_modbus},
    {"serial", "map", "required", "The serial line (see `devices[].serial`).", k_serial},
    {"framing", "map", "{ delimiter: \"\\n\" }", "How the byte stream is cut into frames.", k_line},
    {"parse", "map", "required", "How a frame becomes point values.", k_line},
    {"poll", "map", "none: the sensor sends on its own",
     "Write a request at an interval (see `devices[].poll`).", k_line},
    {"points", "list of maps", "required", "The values read from the device; at least one."},
};

constexpr option k_serial_options[] = {
    {"port", "path", "required", "Serial device, e.g. /dev/ttyUSB0."},
    {"baud", "integer 1..4000000", "9600", "Bits per second."},
    {"parity", "", "N", "None, even or odd.", k_all, k_parity_names},
    {"data_bits", "7 \\| 8", "8", "Data bits per character."},
    {"stop_bits", "1 \\| 2", "1", "Stop bits per character."},
};

constexpr option k_framing_options[] = {
    {"delimiter", "string", "\"\\n\"", "Frames end with this string (stripped)."},
    {"length", "integer 1..65535", "", "Fixed-size frames of this many bytes instead."},
    {"max_frame", "size 1..1MiB", "4KiB",
     "With delimiter: a longer frame is counted (reason too_long) and dropped up to the next "
     "delimiter."},
};

constexpr option k_line_poll_options[] = {
    {"request", "string", "required", "Written to the port at every interval, e.g. \"R\\r\\n\"."},
    {"interval", "duration 1ms..720h", "1s", "How often the request is written (fixed rate)."},
};

constexpr option k_parse_options[] = {
    {"regex", "string", "", "Named groups `(?<point>...)` name points."},
    {"csv", "list of strings", "", "Column i goes to the point named by item i (\"\" skips)."},
    {"json", "bool", "false", "A flat JSON object; keys name points."},
    {"kv", "bool", "false", "`a=1 b=2`; keys name points."},
    {"separator", "string", "\",\" for csv, \" \" for kv", "Field separator of csv and kv."},
    {"checksum", "", "none", "Verify and strip a trailing `*hh`.", k_all, k_checksum_names},
};

constexpr option k_point_options[] = {
    {"name", "string [A-Za-z0-9_.-]+", "required",
     "Tag name, unique within the device; the second level of `device/tag`."},
    {"table", "", "holding", "Modbus table.", k_modbus, k_table_names},
    {"address", "integer 0..65535", "required", "0-based protocol address.", k_modbus},
    {"type", "", "uint16 (bool for coil and discrete)",
     "Value type. coil and discrete need bool; bool from a register is `register != 0`.", k_all,
     k_type_names},
    {"byte_order", "", "ABCD",
     "Register and byte order of multi-register types (ABCD = big endian).", k_modbus,
     k_byte_order_names},
    {"length", "integer 1..125", "required for string",
     "Registers of a string (two characters each); only for type string.", k_modbus},
    {"scale", "number != 0", "1", "value = raw * scale + offset."},
    {"offset", "number", "0", "value = raw * scale + offset."},
    {"unit", "string", "\"\"", "Unit sent with each value, e.g. degC."},
    {"writable", "bool", "false",
     "May downlink commands write it? Only holding and coil are writable.", k_modbus},
    {"min", "number", "none", "Lowest value a command may write.", k_modbus},
    {"max", "number", "none", "Highest value a command may write.", k_modbus},
};

constexpr option k_rule_options[] = {
    {"name", "string [A-Za-z0-9_.-]+", "required", "Unique rule name. `{rule}` in templates."},
    {"match", "pattern or list of patterns", "required",
     "Over `device/tag`: MQTT `+` and `#`, and `*` inside a level (`meter*/#`)."},
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
    {"unit", "string", "the point's unit", "Unit of the transformed value."},
};

constexpr option k_deadband_options[] = {
    {"absolute", "number >= 0", "", "Pass a value only if it moved at least this much."},
    {"percent", "number >= 0", "", "Pass a value only if it moved at least this percentage."},
};

constexpr option k_batch_options[] = {
    {"max_events", "integer 1..1000000", "500", "Send when this many events are waiting."},
    {"max_bytes", "size 1KiB..256MiB", "256KiB",
     "Send when the payload reaches this size (or the broker's Maximum Packet Size less the "
     "publish overhead, when known: docs/DELIVERY.md)."},
    {"max_age", "duration 0..720h", "1s", "Send when the oldest waiting event is this old."},
};

constexpr option k_publish_options[] = {
    {"topic", "topic template", "ferry/{gateway}/{device}",
     "MQTT topic; `{gateway}` `{device}` `{tag}` `{rule}`; no wildcards."},
    {"qos", "0 \\| 1 \\| 2", "1", "MQTT QoS of the batch messages."},
    {"retain", "bool", "false", "Publish retained."},
};

constexpr option k_dead_letter_options[] = {
    {"topic", "topic template", "ferry/{gateway}/dead-letter",
     "Events a rule could not handle, with the reason."},
};

constexpr option k_commands_options[] = {
    {"enabled", "bool", "false",
     "Accept downlink writes. When false, every command is still answered: ok false, "
     "\"commands are disabled ...\"."},
    {"max_age", "duration 1ms..720h", "30s", "A command whose `ts` is older is refused as stale."},
    {"rate_limit", "N/s \\| N/m \\| N/h", "10/s",
     "Most commands per device in that time (a token bucket: bursts up to N)."},
    {"max_payload", "size 64..64KiB", "4KiB",
     "Largest command payload parsed. A larger one is refused unparsed: answered `payload too "
     "large` when its `id` stands in its first 2 KiB, else only counted and logged "
     "(`ferry_input_rejected_total{input=\"command\",reason=\"too_large\"}`). MQTT 5: Ferry "
     "asks the broker (Maximum Packet Size) not to send it messages over this + 1 MiB."},
};

constexpr option k_upstream_options[] = {
    {"mqtt", "map", "", "The broker connection (see `upstream.mqtt`)."},
    {"spool", "map", "", "The on-disk queue (see `upstream.spool`)."},
};

constexpr option k_mqtt_options[] = {
    {"uris", "list of strings", "[tcp://127.0.0.1:1883]",
     "Broker URIs (tcp:// mqtt:// ssl:// mqtts:// ws:// wss://); more than one: failover in "
     "order."},
    {"client_id", "template", "{gateway}", "MQTT client id; `{gateway}` is expanded."},
    {"version", "5 \\| 3.1.1", "5", "MQTT protocol version (4 is taken as 3.1.1)."},
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
     k_all, k_refused_names},
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
    {"when_full", "", "drop_oldest", "What a full spool does with a new batch.", k_all,
     k_when_full_names},
    {"fsync", "", "always", "When the spool fsyncs: every batch, grouped, or never.", k_all,
     k_fsync_names},
};

struct section_decl {
    std::string_view path;
    std::string_view help;
    std::span<const option> options;
};

constexpr section_decl k_sections[] = {
    {"(top level)", "The sections of the file.", k_top_options},
    {"gateway", "", k_gateway_options},
    {"http", "Absent: no HTTP server.", k_http_options},
    {"devices[]", "Keys a driver does not take are errors (e.g. `host` on modbus_rtu).",
     k_device_options},
    {"devices[].serial", "modbus_rtu and serial_line.", k_serial_options},
    {"devices[].framing", "serial_line; at most one of delimiter and length.", k_framing_options},
    {"devices[].parse", "serial_line; exactly one of regex, csv, json, kv.", k_parse_options},
    {"devices[].poll", "serial_line, for sensors that answer on demand.", k_line_poll_options},
    {"devices[].points[]", "", k_point_options},
    {"rules[]", "", k_rule_options},
    {"rules[].transform", "", k_transform_options},
    {"rules[].deadband", "Exactly one of the two keys; a change of quality always passes.",
     k_deadband_options},
    {"rules[].batch", "A batch is sent when the first of the limits is reached.", k_batch_options},
    {"rules[].publish", "", k_publish_options},
    {"dead_letter", "", k_dead_letter_options},
    {"commands", "", k_commands_options},
    {"upstream", "", k_upstream_options},
    {"upstream.mqtt", "", k_mqtt_options},
    {"upstream.mqtt.tls", "Present: TLS is used.", k_tls_options},
    {"upstream.spool", "", k_spool_options},
};

// ---------------------------------------------------------------------------------------------
// Small helpers.

std::string join(std::span<const std::string_view> items, std::string_view sep) {
    std::string out;
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (i) out += sep;
        out += items[i];
    }
    return out;
}

// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
    for (std::size_t i = 0; i <= a.size(); ++i)
        d[i][0] = i;
    for (std::size_t j = 0; j <= b.size(); ++j)
        d[0][j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        for (std::size_t j = 1; j <= b.size(); ++j) {
            std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
    }
    return d[a.size()][b.size()];
}

// The closest known key to a misspelt one, if any is close enough to be a likely typo.
std::string_view suggest(std::string_view unknown, std::span<const option> opts, unsigned mask) {
    std::string_view best;
    std::size_t best_d = std::numeric_limits<std::size_t>::max();
    for (const auto& o : opts) {
        if (!(o.drivers & mask)) continue;
        std::size_t d = edit_distance(unknown, o.name);
        // "password" -> "password_file": a known key that only adds a suffix.
        if (o.name.size() > unknown.size() && o.name.substr(0, unknown.size()) == unknown &&
            o.name[unknown.size()] == '_')
            d = std::min<std::size_t>(d, 1);
        if (d < best_d) {
            best_d = d;
            best = o.name;
        }
    }
    std::size_t limit = std::min<std::size_t>(2, std::max<std::size_t>(1, unknown.size() / 3));
    return best_d <= limit ? best : std::string_view{};
}

bool is_name_char(char c, bool allow_dot) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || (allow_dot && c == '.');
}

bool valid_name(std::string_view s, bool allow_dot) {
    if (s.empty() || s.size() > k_max_name) return false;
    return std::all_of(s.begin(), s.end(), [&](char c) { return is_name_char(c, allow_dot); });
}

// Why `s` is not a valid name: too long (names go into MQTT topics, whose limit is 65535 bytes
// in all; k_max_name keeps every topic Ferry builds far below it), or a character not allowed.
std::string bad_name(const std::string& s, std::string_view what, std::string_view chars) {
    if (s.size() > k_max_name) {
        return "'" + s.substr(0, 32) + "...' (" + std::to_string(s.size()) +
               " bytes) is not a valid " + std::string(what) + ": longer than " +
               std::to_string(k_max_name) + " bytes";
    }
    return "'" + s + "' is not a valid " + std::string(what) + " (use " + std::string(chars) + ")";
}

// "rules[3].match[0]" -> "rules[].match[]"
std::string generic_path(std::string_view path) {
    std::string out;
    bool in_index = false;
    for (char c : path) {
        if (c == '[') in_index = true;
        if (c == ']') in_index = false;
        if (!in_index || c == '[') out.push_back(c);
    }
    return out;
}

std::string describe(const YAML::Node& n) {
    switch (n.Type()) {
        case YAML::NodeType::Scalar:
            return "'" + n.Scalar() + "'";
        case YAML::NodeType::Sequence:
            return "a list";
        case YAML::NodeType::Map:
            return "a map";
        default:
            return "nothing";
    }
}

mark to_mark(const YAML::Mark& m) {
    return {m.line < 0 ? 0 : m.line + 1, m.column < 0 ? 0 : m.column + 1};
}

// Integers: decimal with an optional '-', or 0x hexadecimal (Modbus addresses often are).
std::optional<std::int64_t> parse_integer(std::string_view s) {
    std::int64_t v = 0;
    int base = 10;
    bool neg = false;
    if (!s.empty() && s[0] == '-') {
        neg = true;
        s.remove_prefix(1);
    }
    if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s.remove_prefix(2);
    }
    if (s.empty() || s[0] == '-' || s[0] == '+') return std::nullopt;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
    if (ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
    return neg ? -v : v;
}

std::optional<double> parse_number(std::string_view s) {
    if (!s.empty() && s[0] == '+') s.remove_prefix(1);
    double v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc{} || p != s.data() + s.size() || !std::isfinite(v))
        return std::nullopt;
    return v;
}

// Reads a whole file of at most `max_bytes`; on failure returns nullopt and sets `why` to the
// reason. Reads no more than max_bytes + 1 whatever the file is (/dev/zero, a FIFO, a log).
std::optional<std::string> read_file(const std::string& path, std::string& why,
                                     std::size_t max_bytes) {
    errno = 0;
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) {
        why = std::strerror(errno);
        return std::nullopt;
    }
    std::string out;
    char buf[4096];
    for (;;) {
        std::size_t n = std::fread(buf, 1, sizeof buf, f);
        out.append(buf, n);
        if (out.size() > max_bytes) {
            std::fclose(f);
            why = "larger than " + std::to_string(max_bytes) + " bytes (the limit for this file)";
            return std::nullopt;
        }
        if (n < sizeof buf) break;
    }
    bool failed = std::ferror(f) != 0;
    int err = errno;
    std::fclose(f);
    if (failed) {
        why = std::strerror(err ? err : EIO);
        return std::nullopt;
    }
    return out;
}

std::optional<std::string> env_value(const char* v) {
    if (!v) return std::nullopt;
    return std::string(v);
}

std::string dir_of(const std::string& file) {
    auto slash = file.rfind('/');
    if (slash == std::string::npos) return "";
    return file.substr(0, slash + 1);
}

// ---------------------------------------------------------------------------------------------
// The loader.

// A value and where to report problems with it.
struct value_ref {
    YAML::Node node;
    YAML::Mark where;  // the value's position, or the key's when the value is empty
    std::string path;
};

class loader;

struct entry {
    std::string name;
    YAML::Node key;
    YAML::Node value;
};

// One map of the file, read against its declared options.
class map_reader {
  public:
    map_reader(loader& ld, const value_ref& v, std::span<const option> opts);

    bool is_map() const { return is_map_; }
    const YAML::Mark& where() const { return where_; }
    const std::string& path() const { return path_; }
    std::string sub(std::string_view key) const {
        return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
    }
    const entry* find(std::string_view name) const {
        for (const auto& e : entries_)
            if (e.name == name) return &e;
        return nullptr;
    }
    bool has(std::string_view name) const { return find(name) != nullptr; }
    value_ref ref(const entry& e) const {
        return {e.value, e.value.IsNull() ? e.key.Mark() : e.value.Mark(), sub(e.name)};
    }
    std::optional<value_ref> get(std::string_view name) const {
        if (auto* e = find(name)) return ref(*e);
        return std::nullopt;
    }
    value_ref key_ref(std::string_view name) const {
        return {{}, find(name)->key.Mark(), sub(name)};
    }

    // Reports unknown keys, keys the driver does not take, and features not built yet.
    void check_keys(unsigned mask = k_all, std::string_view driver = {});
    // Reports the key missing (at this map's position) and returns false if absent.
    bool require(std::string_view name, std::string_view note = {}) const;

  private:
    loader& ld_;
    std::span<const option> opts_;
    std::string path_;
    YAML::Mark where_;
    bool is_map_ = false;
    std::vector<entry> entries_;
};

class loader {
  public:
    loader(std::string file, const load_hooks& hooks)
        : file_(std::move(file)), base_dir_(dir_of(file_)), hooks_(hooks) {}

    config load(const std::string& text);
    bool within_budget(const YAML::Node& root);

    void fail(const YAML::Mark& m, std::string path, std::string message) {
        auto pos = to_mark(m);
        errors_.push_back({file_, pos.line, pos.column, std::move(path), std::move(message)});
    }
    void fail(const value_ref& v, std::string message) {
        fail(v.where, v.path, std::move(message));
    }
    // Reports a name seen before, at this occurrence, saying where the first one was.
    void unique(std::map<std::string, mark>& seen, const std::string& name, const mark& here,
                std::string path, std::string_view what) {
        auto [it, fresh] = seen.emplace(name, here);
        if (fresh) return;
        errors_.push_back({file_, here.line, here.column, std::move(path),
                           "duplicate " + std::string(what) + " '" + name + "' (first at line " +
                               std::to_string(it->second.line) + ")"});
    }

    // ${NAME} substitution. With `report`, each unset variable is an error at `v`.
    std::optional<std::string> expand_env(const std::string& s, const value_ref* report);

    // Typed values. Each reports its own error and returns nullopt when the value is wrong.
    std::optional<std::string> str(const value_ref& v);
    std::optional<std::string> nonempty_str(const value_ref& v);
    std::optional<bool> boolean(const value_ref& v);
    std::optional<std::int64_t> integer(const value_ref& v, std::int64_t lo, std::int64_t hi);
    std::optional<double> number(const value_ref& v);
    std::optional<duration> dur(const value_ref& v, bool positive);
    std::optional<std::uint64_t> size(const value_ref& v, std::uint64_t lo, std::uint64_t hi);
    std::optional<std::size_t> choice(const value_ref& v, std::span<const std::string_view> names,
                                      std::string_view noun, std::string_view label = "allowed");
    std::vector<value_ref> list(const value_ref& v);
    // A string or a list of strings.
    std::vector<std::pair<std::string, value_ref>> strings(const value_ref& v);

    template <class T>
    void set(const map_reader& m, std::string_view key, T& out, std::int64_t lo, std::int64_t hi) {
        if (auto v = m.get(key))
            if (auto x = integer(*v, lo, hi)) out = static_cast<T>(*x);
    }
    template <class E>
    void set_enum(const map_reader& m, std::string_view key, E& out,
                  std::span<const std::string_view> names) {
        if (auto v = m.get(key))
            if (auto x = choice(*v, names, key)) out = static_cast<E>(*x);
    }
    void set_str(const map_reader& m, std::string_view key, std::string& out) {
        if (auto v = m.get(key))
            if (auto x = str(*v)) out = std::move(*x);
    }
    void set_bool(const map_reader& m, std::string_view key, bool& out) {
        if (auto v = m.get(key))
            if (auto x = boolean(*v)) out = *x;
    }
    void set_number(const map_reader& m, std::string_view key, double& out) {
        if (auto v = m.get(key))
            if (auto x = number(*v)) out = *x;
    }
    void set_dur(const map_reader& m, std::string_view key, duration& out, bool positive) {
        if (auto v = m.get(key))
            if (auto x = dur(*v, positive)) out = *x;
    }

  private:
    void gateway(const value_ref& v, config& c);
    void http(const value_ref& v, config& c);
    void devices(const value_ref& v, config& c);
    void device_entry(const value_ref& v, device& d);
    std::optional<serial_settings> serial(const value_ref& v, unsigned bit);
    struct parse_refs {
        std::optional<value_ref> regex;
        std::vector<value_ref> csv;
    };
    void serial_line(const map_reader& m, device& d, parse_refs& refs);
    void point_entry(const value_ref& v, point& p, unsigned bit, std::string_view driver);
    void rules(const value_ref& v, config& c);
    void rule_entry(const value_ref& v, rule& r);
    void dead_letter(const value_ref& v, config& c);
    void commands(const value_ref& v, config& c);
    void upstream(const value_ref& v, config& c);
    void mqtt(const value_ref& v, config& c);
    void spool(const value_ref& v, config& c);
    void topic(const value_ref& v, std::string& out);
    // Expands {name} placeholders from `vars`; unknown ones are errors.
    std::optional<std::string> expand_placeholders(
        const std::string& text, const value_ref& v,
        std::initializer_list<std::pair<std::string_view, std::string_view>> vars);
    std::string resolve(const std::string& path) const {
        return path.empty() || path[0] == '/' ? path : base_dir_ + path;
    }

  public:
    std::string file_;
    std::string base_dir_;
    load_hooks hooks_;
    std::vector<error> errors_;

  private:
    // Filled while loading, used for expansions and checks at the end.
    std::optional<value_ref> client_id_ref_;
    std::optional<value_ref> spool_path_ref_;
};

map_reader::map_reader(loader& ld, const value_ref& v, std::span<const option> opts)
    : ld_(ld), opts_(opts), path_(v.path), where_(v.where) {
    if (v.node.IsNull() || !v.node.IsDefined()) {
        is_map_ = true;  // `section:` with nothing under it reads as an empty map
        return;
    }
    if (!v.node.IsMap()) {
        ld_.fail(v, "expected a map, got " + describe(v.node));
        return;
    }
    is_map_ = true;
    where_ = v.node.Mark();
    std::map<std::string, YAML::Mark> seen;
    for (auto it = v.node.begin(); it != v.node.end(); ++it) {
        // Copies: `it->` yields a temporary proxy.
        YAML::Node key = it->first;
        YAML::Node value = it->second;
        if (!key.IsScalar()) {
            ld_.fail(key.Mark(), path_, "a key must be a string, got " + describe(key));
            continue;
        }
        auto [pos, fresh] = seen.emplace(key.Scalar(), key.Mark());
        if (!fresh) {
            ld_.fail(
                key.Mark(), sub(key.Scalar()),
                "duplicate key (first at line " + std::to_string(to_mark(pos->second).line) + ")");
            continue;
        }
        entries_.push_back({key.Scalar(), key, value});
    }
}

void map_reader::check_keys(unsigned mask, std::string_view driver) {
    std::vector<entry> kept;
    for (auto& e : entries_) {
        auto it = std::find_if(opts_.begin(), opts_.end(),
                               [&](const option& o) { return o.name == e.name; });
        if (it == opts_.end()) {
            std::string msg = "unknown key";
            if (auto s = suggest(e.name, opts_, mask); !s.empty())
                msg += " (did you mean '" + std::string(s) + "'?)";
            ld_.fail(e.key.Mark(), sub(e.name), msg);
            continue;
        }
        if (!(it->drivers & mask)) {
            ld_.fail(e.key.Mark(), sub(e.name),
                     "'" + e.name + "' does not apply to driver '" + std::string(driver) + "'");
            continue;
        }
        std::string generic = generic_path(sub(e.name));
        for (const auto& row : k_not_built_yet) {
            if (row.key != generic) continue;
            if (row.value.empty()) {
                ld_.fail(e.key.Mark(), sub(e.name),
                         std::string(row.what) + " is not built yet in this version of Ferry");
            } else if (e.value.IsScalar()) {
                auto text = ld_.expand_env(e.value.Scalar(), nullptr);
                if (text && *text == row.value)
                    ld_.fail(e.value.Mark(), sub(e.name),
                             std::string(row.what) + " is not built yet in this version of Ferry");
            }
        }
        kept.push_back(std::move(e));
    }
    // Keys reported above are not read any further: one error per key.
    entries_ = std::move(kept);
}

bool map_reader::require(std::string_view name, std::string_view note) const {
    if (has(name)) return true;
    std::string msg = "missing required key '" + std::string(name) + "'";
    if (!note.empty()) msg += " (" + std::string(note) + ")";
    ld_.fail(where_, path_, msg);
    return false;
}

std::optional<std::string> loader::expand_env(const std::string& s, const value_ref* report) {
    if (s.find("${") == std::string::npos) return s;
    std::string out;
    bool ok = true;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '$' && i + 1 < s.size() && s[i + 1] == '{') {
            auto close = s.find('}', i + 2);
            if (close != std::string::npos) {
                std::string name = s.substr(i + 2, close - i - 2);
                bool valid = !name.empty() && !(name[0] >= '0' && name[0] <= '9') &&
                             std::all_of(name.begin(), name.end(),
                                         [](char c) { return is_name_char(c, false) && c != '-'; });
                if (valid) {
                    if (auto val = hooks_.getenv ? hooks_.getenv(name)
                                                 : env_value(std::getenv(name.c_str()))) {
                        out += *val;
                    } else {
                        ok = false;
                        if (report) fail(*report, "environment variable " + name + " is not set");
                    }
                    i = close;
                    continue;
                }
            }
        }
        out.push_back(s[i]);
    }
    if (!ok) return std::nullopt;
    return out;
}

std::optional<std::string> loader::str(const value_ref& v) {
    if (!v.node.IsScalar()) {
        fail(v, "expected a string, got " + describe(v.node));
        return std::nullopt;
    }
    return expand_env(v.node.Scalar(), &v);
}

std::optional<std::string> loader::nonempty_str(const value_ref& v) {
    auto s = str(v);
    if (s && s->empty()) {
        fail(v, "must not be empty");
        return std::nullopt;
    }
    return s;
}

std::optional<bool> loader::boolean(const value_ref& v) {
    if (!v.node.IsScalar()) {
        fail(v, "expected true or false, got " + describe(v.node));
        return std::nullopt;
    }
    auto s = expand_env(v.node.Scalar(), &v);
    if (!s) return std::nullopt;
    if (*s == "true") return true;
    if (*s == "false") return false;
    fail(v, "expected true or false, got '" + *s + "'");
    return std::nullopt;
}

std::optional<std::int64_t> loader::integer(const value_ref& v, std::int64_t lo, std::int64_t hi) {
    if (!v.node.IsScalar()) {
        fail(v, "expected an integer, got " + describe(v.node));
        return std::nullopt;
    }
    auto s = expand_env(v.node.Scalar(), &v);
    if (!s) return std::nullopt;
    auto x = parse_integer(*s);
    if (!x) {
        fail(v, "expected an integer, got '" + *s + "'");
        return std::nullopt;
    }
    if (*x < lo || *x > hi) {
        fail(v, std::to_string(*x) + " is out of range (" + std::to_string(lo) + ".." +
                    std::to_string(hi) + ")");
        return std::nullopt;
    }
    return x;
}

std::optional<double> loader::number(const value_ref& v) {
    if (!v.node.IsScalar()) {
        fail(v, "expected a number, got " + describe(v.node));
        return std::nullopt;
    }
    auto s = expand_env(v.node.Scalar(), &v);
    if (!s) return std::nullopt;
    auto x = parse_number(*s);
    if (!x) fail(v, "expected a number, got '" + *s + "'");
    return x;
}

std::optional<duration> loader::dur(const value_ref& v, bool positive) {
    if (!v.node.IsScalar()) {
        fail(v, "expected a duration, got " + describe(v.node));
        return std::nullopt;
    }
    auto s = expand_env(v.node.Scalar(), &v);
    if (!s) return std::nullopt;
    auto d = parse_duration(*s);
    if (!d) {
        fail(v, "invalid duration '" + *s + "' (use e.g. 250ms, 2s, 5m, 1h)");
        return std::nullopt;
    }
    if (positive && d->count() == 0) {
        fail(v, "must be greater than 0");
        return std::nullopt;
    }
    // Durations are added to clock readings (steady_clock counts nanoseconds in 64 bits):
    // one bound for every key keeps all of that arithmetic far from overflow.
    if (*d > k_max_duration) {
        fail(v, "duration '" + *s + "' is too long (at most " +
                    std::to_string(k_max_duration.count() / 3600000) + "h)");
        return std::nullopt;
    }
    return d;
}

std::optional<std::uint64_t> loader::size(const value_ref& v, std::uint64_t lo, std::uint64_t hi) {
    if (!v.node.IsScalar()) {
        fail(v, "expected a size, got " + describe(v.node));
        return std::nullopt;
    }
    auto s = expand_env(v.node.Scalar(), &v);
    if (!s) return std::nullopt;
    auto n = parse_size(*s);
    if (!n) {
        fail(v, "invalid size '" + *s + "' (use e.g. 512, 64KiB, 512MiB, 1GiB)");
        return std::nullopt;
    }
    if (*n < lo || *n > hi) {
        fail(v, "size '" + *s + "' is out of range (" + std::to_string(lo) + ".." +
                    std::to_string(hi) + " bytes)");
        return std::nullopt;
    }
    return n;
}

std::optional<std::size_t> loader::choice(const value_ref& v,
                                          std::span<const std::string_view> names,
                                          std::string_view noun, std::string_view label) {
    auto s = str(v);
    if (!s) return std::nullopt;
    for (std::size_t i = 0; i < names.size(); ++i)
        if (names[i] == *s) return i;
    fail(v, "unknown " + std::string(noun) + " '" + *s + "' (" + std::string(label) + ": " +
                join(names, ", ") + ")");
    return std::nullopt;
}

std::vector<value_ref> loader::list(const value_ref& v) {
    std::vector<value_ref> out;
    if (v.node.IsNull()) return out;
    if (!v.node.IsSequence()) {
        fail(v, "expected a list, got " + describe(v.node));
        return out;
    }
    std::size_t i = 0;
    for (const auto& item : v.node) {
        std::string path = v.path + "[" + std::to_string(i++) + "]";
        // yaml-cpp places an empty item at the next token; the list's own position is the
        // better hint then.
        if (item.IsNull()) {
            fail(v.node.Mark(), path, "empty list item");
            continue;
        }
        out.push_back({item, item.Mark(), std::move(path)});
    }
    return out;
}

std::vector<std::pair<std::string, value_ref>> loader::strings(const value_ref& v) {
    std::vector<std::pair<std::string, value_ref>> out;
    if (v.node.IsScalar()) {
        if (auto s = str(v)) out.emplace_back(std::move(*s), v);
        return out;
    }
    if (!v.node.IsSequence()) {
        fail(v, "expected a string or a list of strings, got " + describe(v.node));
        return out;
    }
    for (auto& item : list(v))
        if (auto s = str(item)) out.emplace_back(std::move(*s), item);
    return out;
}

std::optional<std::string> loader::expand_placeholders(
    const std::string& text, const value_ref& v,
    std::initializer_list<std::pair<std::string_view, std::string_view>> vars) {
    std::string out;
    std::string known;
    for (const auto& [name, value] : vars)
        known += (known.empty() ? "{" : " {") + std::string(name) + "}";
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '{') {
            out.push_back(text[i]);
            continue;
        }
        auto close = text.find('}', i);
        if (close == std::string::npos) {
            fail(v, "unclosed '{' at position " + std::to_string(i + 1));
            return std::nullopt;
        }
        std::string_view name(text.data() + i + 1, close - i - 1);
        auto it = std::find_if(vars.begin(), vars.end(), [&](auto& p) { return p.first == name; });
        if (it == vars.end()) {
            fail(v, "unknown placeholder {" + std::string(name) + "} (known: " + known + ")");
            return std::nullopt;
        }
        out += it->second;
        i = close;
    }
    return out;
}

void loader::topic(const value_ref& v, std::string& out) {
    auto s = str(v);
    if (!s) return;
    // With names of at most k_max_name bytes, a topic then stays far below MQTT's 65535.
    if (s->size() > k_max_topic_template) {
        fail(v, "topic template of " + std::to_string(s->size()) + " bytes is longer than " +
                    std::to_string(k_max_topic_template));
        return;
    }
    std::string why;
    if (!topic_template::compile(*s, &why)) {
        fail(v, "invalid topic template '" + *s + "': " + why);
        return;
    }
    out = std::move(*s);
}

// ---------------------------------------------------------------------------------------------
// Sections.

// yaml-cpp shares the node an alias refers to, so the document is small; the loader, though,
// would build every use of it (one device aliased 3,000 times: 3,000 devices). Counting what
// the file expands to first, and stopping at the bound, keeps a short file from costing
// seconds and hundreds of MiB. The error stands at the entry where the bound was passed.
bool loader::within_budget(const YAML::Node& root) {
    struct item {
        YAML::Node node;
        YAML::Mark at;  // where to report: the key of the entry (an alias's value has its
                        // anchor's position, possibly far away)
        std::string path;
        std::size_t depth;
    };
    std::vector<item> stack{{root, root.Mark(), "", 0}};
    std::size_t count = 0;
    while (!stack.empty()) {
        auto [n, at, path, depth] = std::move(stack.back());
        stack.pop_back();
        if (++count > k_max_config_nodes) {
            fail(at, path,
                 "the file expands to more than " + std::to_string(k_max_config_nodes) +
                     " values (each use of a YAML alias counts as a copy of what it refers to)");
            return false;
        }
        if (depth > k_max_config_depth) {
            fail(at, path, "nested deeper than " + std::to_string(k_max_config_depth) + " levels");
            return false;
        }
        if (n.IsMap()) {
            for (auto it = n.begin(); it != n.end(); ++it) {
                ++count;  // the key
                const auto key = it->first.IsScalar() ? it->first.Scalar() : std::string("?");
                stack.push_back({it->second, it->first.Mark(),
                                 path.empty() ? key : path + "." + key, depth + 1});
            }
        } else if (n.IsSequence()) {
            std::size_t i = 0;
            for (auto it = n.begin(); it != n.end(); ++it, ++i)
                stack.push_back({*it, it->Mark().is_null() ? at : it->Mark(),
                                 path + "[" + std::to_string(i) + "]", depth + 1});
        }
    }
    return true;
}

config loader::load(const std::string& text) {
    config c;
    c.file = file_;
    YAML::Node root;
    try {
        root = YAML::Load(text);
    } catch (const YAML::ParserException& e) {
        fail(e.mark, "", "YAML syntax error: " + e.msg);
        return c;
    } catch (const YAML::Exception& e) {
        fail(e.mark, "", "YAML error: " + e.msg);
        return c;
    }
    if (!within_budget(root)) return c;
    // An empty document has no position: report at the start of the file.
    value_ref top{root, root.Mark().is_null() ? YAML::Mark() : root.Mark(), ""};
    if (!root.IsNull() && !root.IsMap()) {
        fail(top, "the file must be a map of sections (gateway, devices, rules, upstream, ...)");
        return c;
    }
    map_reader m(*this, top, k_top_options);
    m.check_keys();
    if (m.require("gateway")) gateway(*m.get("gateway"), c);
    if (auto v = m.get("http")) http(*v, c);
    if (auto v = m.get("devices")) devices(*v, c);
    if (auto v = m.get("rules")) rules(*v, c);
    if (auto v = m.get("dead_letter")) dead_letter(*v, c);
    if (auto v = m.get("commands")) commands(*v, c);
    if (auto v = m.get("upstream")) upstream(*v, c);

    // Templates that need the whole file read first.
    const std::string& gw = c.gateway.id;
    if (client_id_ref_) {
        if (auto s =
                expand_placeholders(c.upstream.mqtt.client_id, *client_id_ref_, {{"gateway", gw}}))
            c.upstream.mqtt.client_id = *s;
    } else {
        c.upstream.mqtt.client_id = gw;
    }
    value_ref spool_ref =
        spool_path_ref_.value_or(value_ref{{}, root.Mark(), "upstream.spool.path"});
    if (auto s = expand_placeholders(c.upstream.spool.path, spool_ref,
                                     {{"data_dir", c.gateway.data_dir}, {"gateway", gw}}))
        c.upstream.spool.path = *s;
    return c;
}

void loader::gateway(const value_ref& v, config& c) {
    map_reader m(*this, v, k_gateway_options);
    if (!m.is_map()) return;
    m.check_keys();
    if (m.require("id")) {
        auto r = *m.get("id");
        if (auto s = str(r)) {
            if (valid_name(*s, false))
                c.gateway.id = *s;
            else
                fail(r, bad_name(*s, "gateway id", "[A-Za-z0-9_-]+"));
        }
    }
    if (auto r = m.get("data_dir"))
        if (auto s = nonempty_str(*r)) c.gateway.data_dir = *s;
    set_enum(m, "log_level", c.gateway.level, k_log_level_names);
}

void loader::http(const value_ref& v, config& c) {
    map_reader m(*this, v, k_http_options);
    if (!m.is_map()) return;
    m.check_keys();
    c.http.enabled = true;
    auto r = m.get("listen");
    if (!r) return;
    auto s = str(*r);
    if (!s) return;
    auto colon = s->rfind(':');
    std::string host = colon == std::string::npos ? "" : s->substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    auto port = colon == std::string::npos ? std::nullopt : parse_integer(s->substr(colon + 1));
    if (host.empty() || !port) {
        fail(*r, "expected host:port (e.g. 127.0.0.1:9108), got '" + *s + "'");
        return;
    }
    if (*port < 1 || *port > 65535) {
        fail(*r, "port " + std::to_string(*port) + " is out of range (1..65535)");
        return;
    }
    c.http.host = host;
    c.http.port = static_cast<std::uint16_t>(*port);
}

void loader::devices(const value_ref& v, config& c) {
    std::map<std::string, mark> seen;
    for (auto& item : list(v)) {
        device d;
        device_entry(item, d);
        if (!d.id.empty()) unique(seen, d.id, d.where, item.path + ".id", "device id");
        c.devices.push_back(std::move(d));
    }
}

void loader::device_entry(const value_ref& v, device& d) {
    map_reader m(*this, v, k_device_options);
    if (!m.is_map()) return;
    d.where = to_mark(m.where());

    if (m.require("id")) {
        auto r = *m.get("id");
        if (auto s = str(r)) {
            if (valid_name(*s, true)) {
                d.id = *s;
                // Duplicates are reported at this id's value.
                d.where = to_mark(r.where);
            } else {
                fail(r, bad_name(*s, "device id", "[A-Za-z0-9_.-]+"));
            }
        }
    }

    unsigned bit = 0;
    std::string_view driver_name;
    if (m.require("driver")) {
        if (auto x = choice(*m.get("driver"), k_driver_names, "driver", "known")) {
            bit = k_drivers[*x].bit;
            driver_name = k_drivers[*x].name;
            d.driver = std::string(driver_name);
        }
    }
    m.check_keys(bit ? bit : k_all, driver_name);

    if (bit == k_tcp && m.require("host")) {
        if (auto s = nonempty_str(*m.get("host"))) d.host = *s;
    }
    set(m, "port", d.port, 1, 65535);
    if (bit == k_rtu)
        set(m, "unit_id", d.unit_id, 1, 247);
    else
        set(m, "unit_id", d.unit_id, 0, 255);
    set_dur(m, "poll_interval", d.poll_interval, true);
    set_dur(m, "timeout", d.timeout, true);
    set(m, "retries", d.retries, 0, 100);
    set(m, "max_gap", d.max_gap, 0, 124);
    if ((bit & k_serial) && m.require("serial")) d.serial = serial(*m.get("serial"), bit);
    parse_refs refs;
    if (bit == k_line) serial_line(m, d, refs);

    if (m.require("points")) {
        auto r = *m.get("points");
        auto items = list(r);
        if (items.empty() && (r.node.IsNull() || r.node.IsSequence()))
            fail(r, "a device needs at least one point");
        std::map<std::string, mark> seen;
        for (auto& item : items) {
            point p;
            point_entry(item, p, bit, driver_name);
            if (!p.name.empty()) unique(seen, p.name, p.where, item.path + ".name", "point name");
            d.points.push_back(std::move(p));
        }
    }

    // serial_line: names in the parse settings must be points of this device.
    if (d.parse) {
        auto known = [&](const std::string& n) {
            return std::any_of(d.points.begin(), d.points.end(),
                               [&](const point& p) { return p.name == n; });
        };
        if (refs.regex) {
            for (const auto& name : drivers::serial::check_regex(d.parse->regex).names) {
                if (!known(name))
                    fail(*refs.regex,
                         "named group '" + name + "' is not a point of device '" + d.id + "'");
            }
        }
        for (std::size_t i = 0; i < d.parse->csv.size() && i < refs.csv.size(); ++i) {
            const auto& n = d.parse->csv[i];
            if (!n.empty() && !known(n))
                fail(refs.csv[i], "'" + n + "' is not a point of device '" + d.id + "'");
        }
    }
}

std::optional<serial_settings> loader::serial(const value_ref& v, unsigned bit) {
    map_reader m(*this, v, k_serial_options);
    if (!m.is_map()) return std::nullopt;
    m.check_keys(bit);
    serial_settings s;
    if (m.require("port"))
        if (auto p = nonempty_str(*m.get("port"))) s.port = *p;
    set(m, "baud", s.baud, 1, 4000000);
    set_enum(m, "parity", s.par, k_parity_names);
    if (auto r = m.get("data_bits"))
        if (auto x = integer(*r, 7, 8)) s.data_bits = static_cast<int>(*x);
    if (auto r = m.get("stop_bits"))
        if (auto x = integer(*r, 1, 2)) s.stop_bits = static_cast<int>(*x);
    return s;
}

void loader::serial_line(const map_reader& m, device& d, parse_refs& refs) {
    framing_settings f;
    if (auto r = m.get("framing")) {
        map_reader fm(*this, *r, k_framing_options);
        if (fm.is_map()) {
            fm.check_keys();
            if (fm.has("delimiter") && fm.has("length"))
                fail(fm.where(), fm.path(), "set either 'delimiter' or 'length', not both");
            if (auto x = fm.get("delimiter"))
                if (auto s = nonempty_str(*x)) f.delimiter = *s;
            set(fm, "length", f.length, 1, 65535);
            if (auto x = fm.get("max_frame")) {
                if (fm.has("length"))
                    fail(fm.key_ref("max_frame"), "'max_frame' applies only to delimiter framing");
                else if (auto n = size(*x, 1, 1024 * 1024))
                    f.max_frame = static_cast<std::uint32_t>(*n);
            }
        }
    }
    d.framing = f;

    if (auto r = m.get("poll")) {
        map_reader qm(*this, *r, k_line_poll_options);
        if (qm.is_map()) {
            qm.check_keys();
            line_poll_settings q;
            if (qm.require("request"))
                if (auto s = nonempty_str(*qm.get("request"))) q.request = *s;
            set_dur(qm, "interval", q.interval, true);
            d.poll = std::move(q);
        }
    }

    if (!m.require("parse")) return;
    map_reader pm(*this, *m.get("parse"), k_parse_options);
    if (!pm.is_map()) return;
    pm.check_keys();
    parse_settings p;
    int formats = 0;
    if (auto r = pm.get("regex")) {
        ++formats;
        p.format = parse_format::regex;
        if (auto s = nonempty_str(*r)) {
            p.regex = *s;
            refs.regex = *r;
            if (auto e = drivers::serial::check_regex(*s).error; !e.empty())
                fail(*r, "invalid regex: " + e);
        }
    }
    if (auto r = pm.get("csv")) {
        ++formats;
        p.format = parse_format::csv;
        for (auto& item : list(*r)) {
            if (auto s = str(item)) {
                p.csv.push_back(*s);
                refs.csv.push_back(item);
            }
        }
        if (p.csv.empty()) fail(*r, "csv needs at least one column");
        p.separator = ",";
    }
    if (auto r = pm.get("json"); r && boolean(*r).value_or(false)) {
        ++formats;
        p.format = parse_format::json;
    }
    if (auto r = pm.get("kv"); r && boolean(*r).value_or(false)) {
        ++formats;
        p.format = parse_format::kv;
        p.separator = " ";
    }
    if (formats != 1)
        fail(pm.where(), pm.path(), "set exactly one of regex, csv, json: true, kv: true");
    if (auto r = pm.get("separator")) {
        if (p.format != parse_format::csv && p.format != parse_format::kv)
            fail(pm.key_ref("separator"), "'separator' applies only to csv and kv");
        else if (auto s = nonempty_str(*r))
            p.separator = *s;
    }
    if (auto r = pm.get("checksum"))
        if (choice(*r, k_checksum_names, "checksum")) p.checksum = "nmea";
    d.parse = std::move(p);
}

void loader::point_entry(const value_ref& v, point& p, unsigned bit, std::string_view driver) {
    map_reader m(*this, v, k_point_options);
    if (!m.is_map()) return;
    p.where = to_mark(m.where());
    m.check_keys(bit ? bit : k_all, driver);
    const bool modbus = (bit & k_modbus) != 0;

    if (m.require("name")) {
        auto r = *m.get("name");
        if (auto s = str(r)) {
            if (valid_name(*s, true)) {
                p.name = *s;
                p.where = to_mark(r.where);
            } else {
                fail(r, bad_name(*s, "point name", "[A-Za-z0-9_.-]+"));
            }
        }
    }
    set_enum(m, "table", p.tbl, k_table_names);
    const bool bits = p.tbl == table::coil || p.tbl == table::discrete;
    if (bits) p.type = point_type::boolean;
    bool type_ok = true;
    if (auto r = m.get("type")) {
        if (auto x = choice(*r, k_type_names, "type")) {
            p.type = static_cast<point_type>(*x);
            if (bits && p.type != point_type::boolean)
                fail(*r, "table '" + std::string(k_table_names[static_cast<int>(p.tbl)]) +
                             "' holds bits: type must be bool");
        } else {
            type_ok = false;
        }
    }
    set_enum(m, "byte_order", p.order, k_byte_order_names);

    if (auto r = m.get("length")) {
        if (p.type != point_type::string) {
            if (type_ok) fail(m.key_ref("length"), "'length' applies only to type string");
        } else {
            set(m, "length", p.length, 1, 125);
        }
    } else if (modbus && p.type == point_type::string) {
        m.require("length", "registers, for type string");
    }

    bool address_ok = false;
    if (modbus && m.require("address")) {
        if (auto x = integer(*m.get("address"), 0, 65535)) {
            p.address = static_cast<std::uint32_t>(*x);
            address_ok = true;
        }
    }
    if (address_ok && type_ok) {
        std::uint32_t n = register_count(p);
        if (n > 0 && p.address + n > 65536)
            fail(*m.get("address"),
                 "a " + std::string(k_type_names[static_cast<int>(p.type)]) + " at " +
                     std::to_string(p.address) + " needs registers " + std::to_string(p.address) +
                     ".." + std::to_string(p.address + n - 1) + ", past the last one (65535)");
    }

    if (auto r = m.get("scale")) {
        if (auto x = number(*r)) {
            if (*x == 0.0)
                fail(*r, "must not be 0");
            else
                p.scale = *x;
        }
    }
    set_number(m, "offset", p.offset);
    set_str(m, "unit", p.unit);
    set_bool(m, "writable", p.writable);
    if (p.writable && (p.tbl == table::input || p.tbl == table::discrete))
        fail(*m.get("writable"), "table '" + std::string(k_table_names[static_cast<int>(p.tbl)]) +
                                     "' is read-only in Modbus");
    if (auto r = m.get("min"))
        if (auto x = number(*r)) p.min = *x;
    if (auto r = m.get("max"))
        if (auto x = number(*r)) p.max = *x;
    if (p.min && p.max && *p.min > *p.max) fail(*m.get("max"), "max is less than min");
}

void loader::rules(const value_ref& v, config& c) {
    std::map<std::string, mark> seen;
    for (auto& item : list(v)) {
        rule r;
        rule_entry(item, r);
        if (!r.name.empty()) unique(seen, r.name, r.where, item.path + ".name", "rule name");
        c.rules.push_back(std::move(r));
    }
}

void loader::rule_entry(const value_ref& v, rule& r) {
    map_reader m(*this, v, k_rule_options);
    if (!m.is_map()) return;
    r.where = to_mark(m.where());
    m.check_keys();
    if (m.require("name")) {
        auto ref = *m.get("name");
        if (auto s = str(ref)) {
            if (valid_name(*s, true)) {
                r.name = *s;
                r.where = to_mark(ref.where);
            } else {
                fail(ref, bad_name(*s, "rule name", "[A-Za-z0-9_.-]+"));
            }
        }
    }
    if (m.require("match")) {
        auto ref = *m.get("match");
        auto patterns = strings(ref);
        if (patterns.empty() && (ref.node.IsSequence() || ref.node.IsNull()))
            fail(ref, "a rule needs at least one pattern");
        for (auto& [text, where] : patterns) {
            std::string why;
            if (topic_pattern::compile(text, &why))
                r.match.push_back(text);
            else
                fail(where, "invalid pattern '" + text + "': " + why);
        }
    }
    if (auto ref = m.get("filter")) {
        if (auto s = nonempty_str(*ref)) {
            // Compiled here once to report errors with their place; the engine compiles again.
            rules::filter_error err;
            if (rules::filter::compile(*s, &err))
                r.filter = *s;
            else
                fail(*ref, "at position " + std::to_string(err.position) +
                               " of the expression: " + err.message);
        }
    }
    if (auto ref = m.get("transform")) {
        map_reader tm(*this, *ref, k_transform_options);
        if (tm.is_map()) {
            tm.check_keys();
            transform_settings t;
            set_number(tm, "scale", t.scale);
            set_number(tm, "offset", t.offset);
            set_str(tm, "unit", t.unit);
            r.transform = t;
        }
    }
    if (auto ref = m.get("deadband")) {
        map_reader dm(*this, *ref, k_deadband_options);
        if (dm.is_map()) {
            dm.check_keys();
            if (dm.has("absolute") == dm.has("percent")) {
                fail(dm.where(), dm.path(), "set exactly one of 'absolute' or 'percent'");
            } else {
                deadband_settings db;
                db.kind = dm.has("absolute") ? deadband_kind::absolute : deadband_kind::percent;
                auto x = *dm.get(dm.has("absolute") ? "absolute" : "percent");
                if (auto n = number(x)) {
                    if (*n < 0)
                        fail(x, "must not be negative");
                    else
                        db.amount = *n;
                }
                r.deadband = db;
            }
        }
    }
    if (auto ref = m.get("heartbeat"))
        if (auto d = dur(*ref, true)) r.heartbeat = *d;
    if (auto ref = m.get("batch")) {
        map_reader bm(*this, *ref, k_batch_options);
        if (bm.is_map()) {
            bm.check_keys();
            set(bm, "max_events", r.batch.max_events, 1, 1000000);
            if (auto x = bm.get("max_bytes"))
                if (auto n = size(*x, 1024, 256ull * 1024 * 1024))
                    r.batch.max_bytes = static_cast<std::size_t>(*n);
            set_dur(bm, "max_age", r.batch.max_age, false);
        }
    }
    if (auto ref = m.get("publish")) {
        map_reader pm(*this, *ref, k_publish_options);
        if (pm.is_map()) {
            pm.check_keys();
            if (auto x = pm.get("topic")) topic(*x, r.publish.topic);
            set(pm, "qos", r.publish.qos, 0, 2);
            set_bool(pm, "retain", r.publish.retain);
        }
    }
}

void loader::dead_letter(const value_ref& v, config& c) {
    map_reader m(*this, v, k_dead_letter_options);
    if (!m.is_map()) return;
    m.check_keys();
    if (auto x = m.get("topic")) topic(*x, c.dead_letter.topic);
}

void loader::commands(const value_ref& v, config& c) {
    map_reader m(*this, v, k_commands_options);
    if (!m.is_map()) return;
    m.check_keys();
    set_bool(m, "enabled", c.commands.enabled);
    set_dur(m, "max_age", c.commands.max_age, true);
    if (auto r = m.get("max_payload"))
        if (auto n = size(*r, 64, 64 * 1024)) c.commands.max_payload = static_cast<std::size_t>(*n);
    if (auto r = m.get("rate_limit")) {
        auto s = str(*r);
        if (!s) return;
        auto slash = s->find('/');
        std::optional<std::int64_t> n;
        if (slash != std::string::npos) n = parse_integer(s->substr(0, slash));
        std::string unit = slash == std::string::npos ? "" : s->substr(slash + 1);
        std::optional<duration> per;
        if (unit == "s") per = duration{1000};
        if (unit == "m") per = duration{60000};
        if (unit == "h") per = duration{3600000};
        if (!n || !per || *n < 1 || *n > 1000000) {
            fail(*r, "invalid rate limit '" + *s + "' (use N/s, N/m or N/h, e.g. 10/s)");
            return;
        }
        c.commands.rate_limit = static_cast<std::uint32_t>(*n);
        c.commands.rate_period = *per;
    }
}

void loader::upstream(const value_ref& v, config& c) {
    map_reader m(*this, v, k_upstream_options);
    if (!m.is_map()) return;
    m.check_keys();
    if (auto r = m.get("mqtt")) mqtt(*r, c);
    if (auto r = m.get("spool")) spool(*r, c);
}

void loader::mqtt(const value_ref& v, config& c) {
    map_reader m(*this, v, k_mqtt_options);
    if (!m.is_map()) return;
    m.check_keys();
    auto& q = c.upstream.mqtt;

    if (auto r = m.get("tls")) {
        map_reader tm(*this, *r, k_tls_options);
        if (tm.is_map()) {
            tm.check_keys();
            tls_settings t;
            for (auto [key, out] :
                 {std::pair{"ca_file", &t.ca_file}, std::pair{"cert_file", &t.cert_file},
                  std::pair{"key_file", &t.key_file}}) {
                if (auto x = tm.get(key))
                    if (auto s = nonempty_str(*x)) *out = resolve(*s);
            }
            if (tm.has("cert_file") != tm.has("key_file"))
                fail(tm.where(), tm.path(), "set both 'cert_file' and 'key_file', or neither");
            set_bool(tm, "verify_hostname", t.verify_hostname);
            q.tls = t;
        }
    }

    if (auto r = m.get("uris")) {
        auto uris = strings(*r);
        if (uris.empty() && (r->node.IsSequence() || r->node.IsNull()))
            fail(*r, "at least one broker URI is needed");
        std::vector<std::string> out;
        for (auto& [uri, where] : uris) {
            auto sep = uri.find("://");
            std::string scheme = sep == std::string::npos ? "" : uri.substr(0, sep);
            bool secure = scheme == "ssl" || scheme == "mqtts" || scheme == "wss";
            bool plain = scheme == "tcp" || scheme == "mqtt" || scheme == "ws";
            if ((!secure && !plain) || uri.size() == sep + 3) {
                fail(where, "invalid broker URI '" + uri +
                                "' (use tcp://, mqtt://, ssl://, mqtts://, ws:// or wss://)");
                continue;
            }
            if (secure && !q.tls)
                fail(where, "'" + scheme + "://' needs an 'upstream.mqtt.tls' section");
            else if (plain && q.tls)
                fail(where, "'" + scheme +
                                "://' is not encrypted although 'tls' is set; use ssl:// or "
                                "mqtts://");
            out.push_back(uri);
        }
        q.uris = std::move(out);
    } else if (q.tls) {
        fail(m.key_ref("tls"),
             "'tls' is set but 'uris' is not (the default tcp:// URI has no "
             "TLS)");
    }

    if (auto r = m.get("client_id")) {
        if (auto s = nonempty_str(*r)) {
            q.client_id = *s;
            client_id_ref_ = *r;
        }
    }
    if (auto r = m.get("version")) {
        if (auto s = str(*r)) {
            if (*s == "5")
                q.version = 5;
            else if (*s == "3.1.1" || *s == "4")
                q.version = 4;
            else
                fail(*r, "unknown MQTT version '" + *s + "' (allowed: 5, 3.1.1)");
        }
    }
    if (auto r = m.get("keepalive")) {
        if (auto d = dur(*r, true)) {
            if (d->count() % 1000 != 0 || d->count() > 65535000)
                fail(*r, "keepalive must be whole seconds, 1s..65535s");
            else
                q.keepalive = *d;
        }
    }
    set_str(m, "username", q.username);
    if (auto r = m.get("password_file")) {
        if (auto s = nonempty_str(*r)) {
            std::string why;
            std::string path = resolve(*s);
            if (auto content = hooks_.read_file ? hooks_.read_file(path, k_max_secret_file, why)
                                                : read_file(path, why, k_max_secret_file)) {
                while (!content->empty() && (content->back() == '\n' || content->back() == '\r'))
                    content->pop_back();
                if (content->empty())
                    fail(*r, "password file '" + path + "' is empty");
                else
                    q.password = std::move(*content);
            } else {
                fail(*r, "cannot read password file '" + path + "': " + why);
            }
        }
    }
    set(m, "inflight", q.inflight, 1, 65535);
    if (auto r = m.get("ack_timeout")) {
        if (auto d = dur(*r, true)) {
            if (d->count() < 1000 || d->count() > 3600000)
                fail(*r, "ack_timeout must be 1s..1h");
            else
                q.ack_timeout = *d;
        }
    }
    set_enum(m, "refused", q.refused, k_refused_names);
    set(m, "refused_attempts", q.refused_attempts, 1, 1000);
    // The protocol's own ceiling: a remaining length of 256 MiB - 1 plus a 5-byte header.
    if (auto r = m.get("max_packet_size"))
        if (auto n = size(*r, 1024, 268435460)) q.max_packet_size = *n;
}

void loader::spool(const value_ref& v, config& c) {
    map_reader m(*this, v, k_spool_options);
    if (!m.is_map()) return;
    m.check_keys();
    auto& s = c.upstream.spool;
    if (auto r = m.get("path")) {
        if (auto p = nonempty_str(*r)) {
            s.path = *p;
            spool_path_ref_ = *r;
        }
    }
    if (auto r = m.get("max_bytes"))
        if (auto n = size(*r, 1024 * 1024, 16ull << 40)) s.max_bytes = *n;
    set_enum(m, "when_full", s.full, k_when_full_names);
    set_enum(m, "fsync", s.fsync, k_fsync_names);
}

std::string cell(std::string_view s) {
    std::string out;
    for (char c : s) {
        if (c == '|' && (out.empty() || out.back() != '\\')) out += '\\';
        out += c;
    }
    return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

std::string error::to_string() const {
    std::string out = file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": ";
    if (!path.empty()) out += path + ": ";
    return out + message;
}

namespace {
std::string join_errors(const std::vector<error>& list) {
    std::string out;
    for (const auto& e : list) {
        if (!out.empty()) out += '\n';
        out += e.to_string();
    }
    return out;
}
}  // namespace

errors::errors(std::vector<error> list)
    : std::runtime_error(join_errors(list)), list_(std::move(list)) {}

config load_config_text(const std::string& text, const std::string& file, const load_hooks& hooks) {
    loader ld(file, hooks);
    config c = ld.load(text);
    if (!ld.errors_.empty()) {
        std::stable_sort(ld.errors_.begin(), ld.errors_.end(), [](const error& a, const error& b) {
            return std::pair(a.line, a.column) < std::pair(b.line, b.column);
        });
        throw errors(std::move(ld.errors_));
    }
    return c;
}

config load_config(const std::string& file) {
    std::string why;
    auto text = read_file(file, why, k_max_config_file);
    if (!text) throw errors({error{file, 0, 0, "", "cannot read file: " + why}});
    return load_config_text(*text, file);
}

std::optional<duration> parse_duration(std::string_view text) {
    std::size_t digits = 0;
    while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9')
        ++digits;
    if (digits == 0) return std::nullopt;
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + digits, n);
    if (ec != std::errc{}) return std::nullopt;
    auto unit = text.substr(digits);
    std::uint64_t ms_per = 0;
    if (unit == "ms")
        ms_per = 1;
    else if (unit == "s")
        ms_per = 1000;
    else if (unit == "m")
        ms_per = 60 * 1000;
    else if (unit == "h")
        ms_per = 60 * 60 * 1000;
    else
        return std::nullopt;
    constexpr auto max_ms = static_cast<std::uint64_t>(std::numeric_limits<duration::rep>::max());
    if (n > max_ms / ms_per) return std::nullopt;
    return duration{static_cast<duration::rep>(n * ms_per)};
}

std::optional<std::uint64_t> parse_size(std::string_view text) {
    std::size_t digits = 0;
    while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9')
        ++digits;
    if (digits == 0) return std::nullopt;
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + digits, n);
    if (ec != std::errc{}) return std::nullopt;
    auto unit = text.substr(digits);
    std::uint64_t mult = 0;
    if (unit.empty())
        mult = 1;
    else if (unit == "KiB")
        mult = 1ull << 10;
    else if (unit == "MiB")
        mult = 1ull << 20;
    else if (unit == "GiB")
        mult = 1ull << 30;
    else if (unit == "TiB")
        mult = 1ull << 40;
    else
        return std::nullopt;
    if (n > std::numeric_limits<std::uint64_t>::max() / mult) return std::nullopt;
    return n * mult;
}

std::string_view type_name(point_type t) {
    return k_type_names[static_cast<int>(t)];
}

std::uint32_t register_count(const point& p) {
    if (p.tbl == table::coil || p.tbl == table::discrete) return 1;
    switch (p.type) {
        case point_type::boolean:
        case point_type::int16:
        case point_type::uint16:
            return 1;
        case point_type::int32:
        case point_type::uint32:
        case point_type::float32:
            return 2;
        case point_type::int64:
        case point_type::uint64:
        case point_type::float64:
            return 4;
        case point_type::string:
            return p.length;
    }
    return 1;
}

std::string reference_markdown() {
    std::string out;
    for (const auto& sec : k_sections) {
        out += "### `" + std::string(sec.path) + "`\n\n";
        if (!sec.help.empty()) out += std::string(sec.help) + "\n\n";
        out += "| key | type | default | meaning |\n| --- | --- | --- | --- |\n";
        for (const auto& o : sec.options) {
            std::string type = o.choices.empty() ? cell(o.type) : join(o.choices, " \\| ");
            std::string help = cell(o.help);
            if (o.drivers != k_all) {
                std::vector<std::string_view> names;
                for (const auto& d : k_drivers)
                    if (o.drivers & d.bit) names.push_back(d.name);
                help += " Drivers: " + join(names, ", ") + ".";
            }
            out += "| `" + std::string(o.name) + "` | " + type + " | " + cell(o.def) + " | " +
                   help + " |\n";
        }
        out += "\n";
    }
    out += "### Not built yet\n\nAccepted by the parser but refused with an error until built:\n\n";
    if (k_not_built_yet.empty()) out += "Nothing: every key above is built.\n";
    for (const auto& row : k_not_built_yet) {
        out += "- `" + std::string(row.key);
        if (!row.value.empty()) out += ": " + std::string(row.value);
        out += "`\n";
    }
    return out;
}

bool same_settings(device a, device b) {
    a.where = b.where = {};
    for (auto* d : {&a, &b}) {
        for (auto& p : d->points)
            p.where = {};
    }
    return a == b;
}

bool same_settings(rule a, rule b) {
    a.where = b.where = {};
    return a == b;
}

}  // namespace ferry::config
