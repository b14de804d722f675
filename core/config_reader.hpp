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
#include <memory>
#include <optional>
#include <set>
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
    // A device key that may also be a range ("1-30") or a list ([1, 2, 5]) of integers in
    // lo..hi (Modbus: unit_id). The loader then makes one device per value, each with the key
    // set to that value and `{key}` in its id replaced by it (docs/PROFILES.md); the driver
    // reads the key as a plain integer. Empty `key`: the driver has none.
    struct per_value_key {
        std::string_view key;
        std::int64_t lo;
        std::int64_t hi;
    } each = {};
};

// Everything the loader knows: what the composition root registered.
struct schema {
    std::vector<const driver_schema*> drivers;
    std::vector<const section_schema*> sections;
    // Where `profile: NAME` finds NAME.yaml when `gateway.profiles_dir` is not set: the
    // profiles the package installs (the composition root knows where).
    std::string profiles_dir;
};

struct entry {
    std::string name;
    yaml::node key;
    yaml::node value;
    // The key path of the value when it is not the map's path + name: a device's key taken
    // from a profile keeps the profile's path (profiles[0].points), as its errors do.
    std::string path = {};
};

// One map of the file, read against its declared options.
class map_reader {
  public:
    map_reader(loader& ld, const value_ref& v, std::span<const option> opts);
    // A map put together by the loader (a device merged with its profile): entries with no
    // duplicate names, each from wherever it stood.
    map_reader(loader& ld, std::string path, YAML::Mark where, std::span<const option> opts,
               std::vector<entry> entries)
        : ld_(ld),
          opts_(opts),
          path_(std::move(path)),
          where_(where),
          is_map_(true),
          entries_(std::move(entries)) {}

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
    std::string path_of(const entry& e) const { return e.path.empty() ? sub(e.name) : e.path; }
    value_ref ref(const entry& e) const {
        return {e.value, e.value.IsNull() ? e.key.Mark() : e.value.Mark(), path_of(e)};
    }
    std::optional<value_ref> get(std::string_view name) const {
        if (auto* e = find(name)) return ref(*e);
        return std::nullopt;
    }
    value_ref key_ref(std::string_view name) const {
        const entry* e = find(name);
        return {{}, e->key.Mark(), path_of(*e)};
    }
    const std::vector<entry>& entries() const { return entries_; }

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
    // Loads the text and gives it back resolved, as YAML: every device after profiles and
    // per-value keys, keys as written (`ferry check --expand`; empty when there were errors).
    std::string expand(std::string&& text);

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
    // The document, or nullopt with the syntax error reported. `source` numbers the file
    // (sources_).
    std::optional<yaml::tree> parse(std::string_view text, std::uint32_t source = 0);
    config load(std::optional<yaml::tree> doc);
    bool within_budget(const yaml::node& root);
    void gateway(const value_ref& v, config& c);
    void http(const value_ref& v, config& c);
    void devices(const value_ref& v, config& c);
    // The points a device is built with: its profile's, then its own.
    struct point_list {
        std::vector<value_ref> items;
        std::optional<value_ref> own;      // the device's `points`
        std::optional<value_ref> profile;  // the profile's `points`
    };
    void device_entry(map_reader& m, device& d, const point_list& points);
    // Returns where the point's name stood (duplicates are reported there).
    YAML::Mark point_entry(const value_ref& v, point& p, driver_mask bit, std::string_view driver,
                           const driver_schema* drv);

    // ---- Profiles and per-value keys (core/profiles.cpp) ----
    struct profile {
        bool found = false;       // false: the name was looked up and is nowhere, or broken
        bool broken = false;      // its file is there but not a profile (reported in it)
        bool used = false;        // some device names it
        std::vector<entry> keys;  // its keys but `id` and `points`, each with its path
        std::optional<value_ref> points;
        driver_mask mask = k_all_drivers;  // its driver's, when it names one
        std::string driver;
        std::size_t values = 0;  // values it holds: counted again at each use (budget)
    };
    void profiles(const value_ref& v);
    profile read_profile(const value_ref& v, std::string_view file_name);
    profile* use_profile(const value_ref& name_ref);
    void check_unused_profiles();
    // One `devices[]` item: merged with its profile, then one device per value of a range.
    void device_item(const value_ref& v, std::vector<device>& out,
                     std::map<std::string, mark>& seen);
    // The values of a range or list key, or nullopt when it is neither (a plain value, left to
    // the driver). An empty list after an error (reported).
    std::optional<std::vector<std::int64_t>> per_values(const value_ref& v,
                                                        const driver_schema::per_value_key& k);
    std::string emit_expanded(const yaml::node& root) const;
    struct built_device {
        std::vector<entry> keys;
        std::vector<value_ref> points;
    };

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

    std::string profiles_dir_;
    std::map<std::string, profile> profiles_;  // by name: inline ones, then files as used
    // Trees that hold what the load reads besides the file's own: profile files and the
    // values synthesized for devices of a range. Kept until load() returns.
    std::vector<std::unique_ptr<yaml::tree>> trees_;
    std::vector<std::string> sources_;  // the file of each tree's source number; 0: file_
    std::set<std::string> reported_;    // errors so far: a repeated one is dropped
    std::size_t values_ = 0;            // values read and expanded, against k_max_config_nodes
    bool over_budget_ = false;
    bool expand_ = false;  // record built devices for emit_expanded
    std::vector<built_device> built_;
    std::string expanded_;
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
    {"profiles_dir", "path", "/usr/share/ferry/profiles",
     "Where `profile: NAME` finds NAME.yaml when no `profiles:` entry has that id; relative to "
     "the config file. The default holds the profiles the package installs (config/profiles/)."},
};
inline constexpr option k_http_options[] = {
    {"listen", "host:port", "127.0.0.1:9108",
     "Address the HTTP server binds; IPv6 as `[::1]:9108`. The server runs when `http` is "
     "present."},
};
// "0x10" or "-12": integers as config files write them.
std::optional<std::int64_t> parse_integer(std::string_view s);
// A range of integers "FIRST-LAST", both ends included, blanks around each end allowed: how a
// per-value key (unit_id: "1-30", docs/PROFILES.md) and `ferry probe modbus --scan` write one.
// nullopt unless both ends are decimal integers >= 0.
struct int_range {
    std::int64_t first = 0;
    std::int64_t last = 0;
};
std::optional<int_range> parse_range(std::string_view text);
// Why `r` is no range of values of `what` in lo..hi ("unit_id 250 is out of range (1..247)",
// "the range 30-1 runs backwards (write \"1-30\")"), or "" when it is one.
std::string check_range(const int_range& r, std::int64_t lo, std::int64_t hi,
                        std::string_view what);
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
