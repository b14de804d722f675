// The config machinery every component reads its own keys with.
//
// A component declares its keys once, as `option` rows (name, type, default, meaning), beside
// its code, and reads its map with a `map_reader` over those rows. The same rows drive the
// unknown-key check (with a did-you-mean), the per-driver key check and
// config/REFERENCE.md (`reference_markdown`). Values are read through the `loader`, which
// reports each problem as FILE:LINE:COLUMN: key.path: message and goes on: a user fixing a
// config sees every problem of the file in one run.
//
// What a component hands the loader (collected in a `schema` by the composition root,
// gateway/components.hpp):
// - a top-level section (`section_schema`: rules, upstream, commands, ...), or
// - a driver (`driver_schema`): its device keys beside `id`, `driver` and `points`, its point
//   keys beside `name`, and functions that read them into the driver's own settings types,
//   which the device and its points carry in their `settings` slot (core/config.hpp).
#pragma once

#include <yaml-cpp/mark.h>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/config.hpp"
#include "core/yaml_tree.hpp"

namespace ferry::config {

// Which drivers take a device or point key: bit i is the i-th driver of the schema.
using driver_mask = std::uint64_t;
constexpr driver_mask k_all_drivers = ~driver_mask{0};

struct option {
    std::string_view name;
    std::string_view type;
    std::string_view def;  // as documented; "required" for required keys
    std::string_view help;
    driver_mask drivers = k_all_drivers;  // set by the loader when it merges driver tables
    std::span<const std::string_view> choices = {};
};

// A map of the file as REFERENCE.md documents it.
struct section_doc {
    std::string_view path;  // "rules[].batch"
    std::string_view help;
    std::span<const option> options;
};

// A value and where to report problems with it. `node` is a view into the document tree the
// loader holds while it loads (core/yaml_tree.hpp): valid until load() returns.
struct value_ref {
    yaml::node node;
    YAML::Mark where;  // the value's position, or the key's when the value is empty
    std::string path;
};

class loader;
class map_reader;

// A top-level section a component owns (rules, upstream, ...).
struct section_schema {
    option top;                     // its row in the table of top-level keys
    std::vector<section_doc> docs;  // its maps, for the reference
    void (*read)(loader&, const value_ref&, config&) = nullptr;
    // After every section was read (templates that need the gateway id, ...); may be null.
    void (*finish)(loader&, config&) = nullptr;
};

// A driver: the `driver:` value it answers to and the keys it takes.
struct driver_schema {
    std::string_view name;                   // `driver: <name>`
    std::span<const option> device_options;  // beside id, driver and points
    std::span<const option> point_options;   // beside name
    std::vector<section_doc> docs;           // its nested maps (devices[].parse, ...)
    // Reads the driver's device keys (already checked against its table), before the points;
    // what only this driver takes goes into `settings`.
    void (*read_device)(loader&, const map_reader&, device&) = nullptr;
    // Reads the driver's point keys (its own into `settings`). `scale`, `offset` and `unit`,
    // when the driver declares them, are read by the loader (they mean the same for every
    // driver).
    void (*read_point)(loader&, const map_reader&, point&) = nullptr;
    // After the points (checks across them); may be null.
    void (*finish_device)(loader&, const map_reader&, device&) = nullptr;
};

// Everything the loader knows: what the composition root registered.
struct schema {
    std::vector<const driver_schema*> drivers;
    std::vector<const section_schema*> sections;
};

struct entry {
    std::string name;
    yaml::node key;
    yaml::node value;
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
    void check_keys(driver_mask mask = k_all_drivers, std::string_view driver = {});
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
    loader(std::string file, const schema& s, const load_hooks& hooks);

    // Loads a whole file's text. Given the text to own, frees it once the document is parsed.
    config load(const std::string& text);
    config load(std::string&& text);

    void fail(const YAML::Mark& m, std::string path, std::string message);
    void fail(const value_ref& v, std::string message) {
        fail(v.where, v.path, std::move(message));
    }
    // Reports a name seen before, at this occurrence, saying where the first one was.
    void unique(std::map<std::string, mark>& seen, const std::string& name, const mark& here,
                std::string path, std::string_view what);

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
    // A name of [A-Za-z0-9_-] (and '.' with allow_dot), at most k_max_name bytes; `what`
    // names it in the error ("rule name").
    std::optional<std::string> name(const value_ref& v, std::string_view what, bool allow_dot);
    // A topic template (validated; placeholders expanded at run time).
    void topic(const value_ref& v, std::string& out);
    // Expands {name} placeholders from `vars`; unknown ones are errors.
    std::optional<std::string> expand_placeholders(
        const std::string& text, const value_ref& v,
        std::initializer_list<std::pair<std::string_view, std::string_view>> vars);
    // A path relative to the config file's directory made absolute.
    std::string resolve(const std::string& path) const {
        return path.empty() || path[0] == '/' ? path : base_dir_ + path;
    }
    // A secret file's content (trailing newlines stripped), at most k_max_secret_file bytes;
    // errors at `v`.
    std::optional<std::string> secret_file(const value_ref& v, const std::string& path);
    // A value a section keeps for its `finish` (e.g. where a template stood).
    void remember(std::string key, value_ref v) { kept_[std::move(key)] = std::move(v); }
    std::optional<value_ref> recall(const std::string& key) const;
    // Where the document starts: the place of errors about keys that are absent.
    const YAML::Mark& root_mark() const { return root_mark_; }

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

    std::vector<error> take_errors() { return std::move(errors_); }

    // The key tables this loader checks against: top level, devices[] and points[] (the
    // drivers' rows merged).
    struct key_tables {
        std::span<const option> top, device, point;
    };
    key_tables tables() const { return {top_options_, device_options_, point_options_}; }

  private:
    // The document, or nullopt with the syntax error reported.
    std::optional<yaml::tree> parse(std::string_view text);
    config load(std::optional<yaml::tree> doc);
    bool within_budget(const yaml::node& root);
    void gateway(const value_ref& v, config& c);
    void http(const value_ref& v, config& c);
    void devices(const value_ref& v, config& c);
    void device_entry(const value_ref& v, device& d);
    void point_entry(const value_ref& v, point& p, driver_mask bit, std::string_view driver,
                     const driver_schema* drv);

    std::string file_;
    std::string base_dir_;
    const schema& schema_;
    load_hooks hooks_;
    std::vector<error> errors_;
    YAML::Mark root_mark_;
    std::map<std::string, value_ref> kept_;
    // The drivers' tables merged (each row marked with the drivers that take it).
    std::vector<option> device_options_;
    std::vector<option> point_options_;
    std::vector<std::string_view> driver_names_;
    std::vector<option> top_options_;
};

// ---- Shared vocabulary ----------------------------------------------------------------------
// Names of each enum of config.hpp, in the order of the enum's values.
inline constexpr std::string_view k_type_names[] = {"bool",    "int16", "uint16", "int32",
                                                    "uint32",  "int64", "uint64", "float32",
                                                    "float64", "string"};
inline constexpr std::string_view k_parity_names[] = {"N", "E", "O"};

// A serial port (modbus_rtu and serial_line): devices[].serial.
inline constexpr option k_serial_options[] = {
    {"port", "path", "required",
     "Serial device, e.g. /dev/ttyUSB0, or a stable /dev/serial/by-id/... link (reopened by name, "
     "so a replugged adapter is found again)."},
    {"baud", "integer 1..4000000", "9600", "Bits per second."},
    {"parity", "", "N", "None, even or odd.", k_all_drivers, k_parity_names},
    {"data_bits", "7 \\| 8", "8", "Data bits per character."},
    {"stop_bits", "1 \\| 2", "1", "Stop bits per character."},
};
std::optional<serial_settings> read_serial(loader& ld, const value_ref& v);

// The core's own sections: `gateway` and `http`.
inline constexpr std::string_view k_log_level_names[] = {"debug", "info", "warn", "error"};
inline constexpr option k_gateway_options[] = {
    {"id", "string [A-Za-z0-9_-]+", "required",
     "Names this gateway in topics, client id and payloads. `{gateway}` in templates."},
    {"data_dir", "path", "/var/lib/ferry", "Spool and state live here. `{data_dir}` in templates."},
    {"log_level", "", "info", "Least severe log level written.", k_all_drivers, k_log_level_names},
};
inline constexpr option k_http_options[] = {
    {"listen", "host:port", "127.0.0.1:9108",
     "Address the HTTP server binds; IPv6 as `[::1]:9108`. The server runs when `http` is "
     "present."},
};
// "0x10" or "-12": integers as config files write them.
std::optional<std::int64_t> parse_integer(std::string_view s);
// Reads a whole file of at most `max_bytes`; on failure nullopt, with `why` set.
std::optional<std::string> read_file(const std::string& path, std::string& why,
                                     std::size_t max_bytes);
// Position as errors print it (1-based).
mark to_mark(const YAML::Mark& m);

// The tables of every key the schema's components declare, as config/REFERENCE.md embeds them.
std::string reference_markdown(const schema& s);
// The tables of the keys of `drivers` only (a driver's README): devices[], its nested maps,
// devices[].points[].
std::string driver_markdown(const schema& s, std::span<const std::string_view> drivers);
// The tables of one top-level section (its owner's README), e.g. "rules".
std::string section_markdown(const schema& s, std::string_view top_key);

}  // namespace ferry::config
