// Ferry's configuration: the YAML file of CONTRACT.md, loaded strictly.
//
// `load_config` parses and validates everything and touches no device or file other than
// the config itself (and `*_file` secrets). Every problem found is reported, not just the
// first: unknown keys, wrong types, bad durations/sizes, missing or duplicate ids, bad
// patterns and templates. Positions are 1-based, as compilers print them.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::config {

using duration = std::chrono::milliseconds;

struct error {
    std::string file;
    int line = 0;      // 1-based; 0 when the file could not be read at all
    int column = 0;    // 1-based
    std::string path;  // key path, e.g. "devices[0].points[2].type"
    std::string message;
    // FILE:LINE:COLUMN: key.path: message
    std::string to_string() const;
};

// Thrown by load_config with every error of the file.
class errors : public std::runtime_error {
  public:
    explicit errors(std::vector<error> list);
    const std::vector<error>& list() const { return list_; }

  private:
    std::vector<error> list_;
};

// Where a key stood in the file, for errors found after loading (e.g. by a component).
struct mark {
    int line = 0;
    int column = 0;

    bool operator==(const mark&) const = default;
};

enum class log_level { debug, info, warn, error };
enum class point_type {
    boolean,
    int16,
    uint16,
    int32,
    uint32,
    int64,
    uint64,
    float32,
    float64,
    string
};
enum class when_full { drop_oldest, drop_newest, block };
enum class fsync_mode { always, batch, never };
// What the publisher does with a publish the broker refuses (docs/DELIVERY.md).
enum class refused_policy { block, drop };
enum class parity { none, even, odd };

struct gateway_section {
    std::string id;
    std::string data_dir = "/var/lib/ferry";
    log_level level = log_level::info;

    bool operator==(const gateway_section&) const = default;
};

struct http_section {
    bool enabled = false;  // true when the `http` section is present
    std::string host = "127.0.0.1";
    std::uint16_t port = 9108;

    bool operator==(const http_section&) const = default;
};

// ---- What one driver alone takes ------------------------------------------------------------
// A driver's own keys of a device or a point (Modbus's host and register address, serial_line's
// framing) are a value type of its own, declared in drivers/<name>/config.hpp and read by its
// driver_schema. Devices and points carry it in a `driver_settings` slot the core copies and
// compares but never reads: a new driver adds no field to config::device or config::point.
//
// A slot is immutable once made and copies share it, so a reload copying every device makes no
// deep copy. Memory: 16 bytes in the device or point, and for a non-empty slot one allocation
// of the value plus 24 bytes (std::make_shared's counts and the vtable pointer): a Modbus
// point's 16-byte settings take a 48-byte malloc chunk. An empty slot (a driver with no keys of
// its own: system, serial_line's points) allocates nothing. Not thread-safe to assign while
// another thread reads the same slot; copies may be read from any thread.
class driver_settings {
  public:
    driver_settings() = default;

    // A slot holding `value`. T is a regular value type with an operator== and a
    // `static constexpr std::string_view k_what` naming it, e.g. "modbus point settings".
    template <class T>
    static driver_settings make(T value) {
        driver_settings s;
        s.p_ = std::make_shared<const holder<T>>(std::move(value));
        return s;
    }

    // The value, as T. Throws std::logic_error naming both types when the slot holds another
    // driver's settings or none: a device handed to the wrong driver is a bug, not a config
    // error, and must not be read as something else.
    template <class T>
    const T& as() const {
        if (p_ && p_->tag() == &holder<T>::k_tag) return static_cast<const holder<T>&>(*p_).value;
        throw std::logic_error("config: expected " + std::string(T::k_what) + ", found " +
                               (p_ ? std::string(p_->what()) : std::string("no driver settings")));
    }
    // Replaces the value with a changed copy of it (what tests and benchmarks tune).
    template <class T, class F>
    void change(F&& edit) {
        T v = as<T>();
        std::forward<F>(edit)(v);
        *this = make(std::move(v));
    }

    bool empty() const { return p_ == nullptr; }
    // Equal values, or both empty: what same_settings compares.
    bool operator==(const driver_settings& o) const {
        return p_ == o.p_ || (p_ && o.p_ && p_->equals(*o.p_));
    }
    // How a refused command names a point's kind where that says more than its type (a Modbus
    // coil: "a coil"; T's `kind()`, when it has one); empty otherwise.
    std::string_view kind() const { return p_ ? p_->kind() : std::string_view{}; }

  private:
    struct erased {
        erased() = default;
        erased(const erased&) = delete;
        erased& operator=(const erased&) = delete;
        virtual ~erased() = default;
        // Which holder<T> this is: a pointer compare, not a dynamic_cast. as<T>() runs for
        // every point of every Modbus poll; measured on this (loaded) box, 1,000 points read
        // 20,000 times: about 30 ns a call with dynamic_cast, 5 ns with the tag.
        virtual const void* tag() const = 0;
        virtual bool equals(const erased& o) const = 0;
        virtual std::string_view what() const = 0;
        virtual std::string_view kind() const = 0;
    };
    template <class T>
    struct holder final : erased {
        static constexpr char k_tag = 0;  // one per T in the program (an inline variable)

        explicit holder(T v) : value(std::move(v)) {}
        const void* tag() const override { return &k_tag; }
        bool equals(const erased& o) const override {
            return o.tag() == &k_tag && static_cast<const holder&>(o).value == value;
        }
        std::string_view what() const override { return T::k_what; }
        std::string_view kind() const override {
            if constexpr (requires(const T& t) { t.kind(); })
                return value.kind();
            else
                return {};
        }
        T value;
    };
    std::shared_ptr<const erased> p_;
};

// What every driver's points share; the rest is the driver's (`settings`).
struct point {
    std::string name;
    // The value's type, and scale/offset: what the drivers decode to and commands check a
    // written value against.
    point_type type = point_type::uint16;
    double scale = 1.0;
    double offset = 0.0;
    std::string unit;  // carried by every event (the bus's point table)
    // Downlink writes, for drivers that take them: commands refuse a point not writable; the
    // driver's writer refuses values outside min/max (the Modbus codec today).
    bool writable = false;
    std::optional<double> min;
    std::optional<double> max;
    mark where;
    driver_settings settings;  // the driver's own: Modbus table and address, ...

    bool operator==(const point&) const = default;
};

// A serial port's line settings (devices[].serial): not a device field but a helper type two
// drivers share, modbus_rtu and serial_line, both reading it with read_serial
// (core/config_reader.hpp) into their own settings.
struct serial_settings {
    std::string port;
    std::uint32_t baud = 9600;
    parity par = parity::none;
    int data_bits = 8;
    int stop_bits = 1;

    bool operator==(const serial_settings&) const = default;
};

// What every driver's devices share; the rest is the driver's (`settings`).
struct device {
    std::string id;
    std::string driver;            // the `driver:` value: modbus_tcp, serial_line, ...
    duration poll_interval{1000};  // drivers that poll (modbus_*, system)
    std::vector<point> points;
    mark where;
    // The driver's own: Modbus host and unit id, serial_line framing, ...
    driver_settings settings;

    bool operator==(const device&) const = default;
};

struct batch_settings {
    std::size_t max_events = 500;
    std::size_t max_bytes = 256 * 1024;
    duration max_age{1000};

    bool operator==(const batch_settings&) const = default;
};

// How a rule's batches are encoded: the contract's JSON, or Sparkplug B DDATA (one message per
// device per batch; the topic follows the Sparkplug namespace, docs/SPARKPLUG.md).
enum class payload_format { json, sparkplug_b };

struct publish_settings {
    std::string topic = "ferry/{gateway}/{device}";
    int qos = 1;
    bool retain = false;
    payload_format format = payload_format::json;
    // MQTT 5 (docs/DELIVERY.md, "MQTT 5 properties"): the Message Expiry Interval of each
    // batch, counted from when it was spooled (0: none), and the newest value of each point
    // published retained on retain_topic (a template with {device} and {tag}).
    std::uint32_t message_expiry_s = 0;
    bool retain_last = false;
    std::string retain_topic = "ferry/{gateway}/last/{device}/{tag}";

    bool operator==(const publish_settings&) const = default;
};

struct transform_settings {
    double scale = 1.0;  // value = value * scale + offset
    double offset = 0.0;
    std::string unit;  // replaces the point's unit when not empty

    bool operator==(const transform_settings&) const = default;
};

enum class deadband_kind { absolute, percent };

struct deadband_settings {
    deadband_kind kind = deadband_kind::absolute;
    double amount = 0.0;

    bool operator==(const deadband_settings&) const = default;
};

struct rule {
    std::string name;
    std::vector<std::string> match;  // validated patterns over device/tag
    batch_settings batch;
    publish_settings publish;
    mark where;
    // The rule's stages (rules/README.md); empty or absent when not configured.
    std::string filter;
    std::optional<transform_settings> transform;
    std::optional<deadband_settings> deadband;
    std::optional<duration> heartbeat;

    bool operator==(const rule&) const = default;
};

struct tls_settings {
    std::string ca_file;
    std::string cert_file;
    std::string key_file;
    bool verify_hostname = true;

    bool operator==(const tls_settings&) const = default;
};

struct mqtt_settings {
    std::vector<std::string> uris{"tcp://127.0.0.1:1883"};
    std::string client_id = "{gateway}";  // template expanded by the loader
    // 5, 4 (3.1.1), or 0 (not set): offer 5, fall back to 3.1.1 when a broker refuses it.
    int version = 0;
    duration keepalive{30000};
    std::string username;
    std::string password;  // read from password_file; never logged
    std::optional<tls_settings> tls;
    int inflight = 16;
    duration ack_timeout{30000};  // oldest PUBACK overdue: reconnect and resend
    refused_policy refused = refused_policy::block;
    int refused_attempts = 3;  // refusals of one message before `drop` drops it
    // The broker's largest packet, for brokers that do not announce it (MQTT 3.1.1); 0: none
    // configured. The publisher uses the smaller of this and an MQTT 5 CONNACK's Maximum
    // Packet Size (docs/DELIVERY.md, Dead letters).
    std::uint64_t max_packet_size = 0;

    bool operator==(const mqtt_settings&) const = default;
};

struct spool_settings {
    std::string path = "{data_dir}/spool.db";  // template expanded by the loader
    std::uint64_t max_bytes = 512ull * 1024 * 1024;
    ferry::config::when_full full = when_full::drop_oldest;
    fsync_mode fsync = fsync_mode::always;
    bool compress = true;  // batch bodies stored as zstd frames (docs/SPOOL.md)

    bool operator==(const spool_settings&) const = default;
};

// How the backlog goes out after a reconnect (docs/DELIVERY.md, Live first).
enum class replay_order { live_first, strict };
struct replay_settings {
    replay_order order = replay_order::live_first;
    std::uint32_t rate = 0;              // backlog messages per second; 0: unpaced
    std::uint64_t bytes_per_second = 0;  // backlog payload bytes per second; 0: unpaced

    bool operator==(const replay_settings&) const = default;
};

// Ferry as a Sparkplug B edge node (docs/SPARKPLUG.md); templates expanded by the loader.
struct sparkplug_settings {
    std::string group_id;
    std::string edge_node_id = "{gateway}";
    std::string primary_host_id;  // empty: no primary host (no STATE awareness)

    bool operator==(const sparkplug_settings&) const = default;
};

struct upstream_section {
    mqtt_settings mqtt;
    spool_settings spool;
    replay_settings replay;
    std::optional<sparkplug_settings> sparkplug;

    bool operator==(const upstream_section&) const = default;
};

struct dead_letter_section {
    std::string topic = "ferry/{gateway}/dead-letter";

    bool operator==(const dead_letter_section&) const = default;
};

// Downlink writes (commands/commands.hpp). Off unless enabled.
struct commands_section {
    bool enabled = false;
    duration max_age{30000};
    std::uint32_t rate_limit = 10;  // commands per rate_period, per device
    duration rate_period{1000};
    std::size_t max_payload = 4096;  // bytes; larger payloads are refused unparsed

    bool operator==(const commands_section&) const = default;
};

struct config {
    std::string file;
    gateway_section gateway;
    http_section http;
    std::vector<device> devices;
    std::vector<rule> rules;
    dead_letter_section dead_letter;
    upstream_section upstream;
    commands_section commands;
};

// Equal settings, wherever they stand in the file (marks are not compared): what a reload
// uses to tell a changed device or rule from one that only moved.
bool same_settings(device a, device b);
bool same_settings(rule a, rule b);

// Budgets of operator files (docs/SECURITY.md). Past them loading fails with an error, never
// by running out of memory or time.
constexpr std::size_t k_max_config_file = 4u << 20;   // bytes of the config file
constexpr std::size_t k_max_secret_file = 64u << 10;  // bytes of a `*_file` secret
// Values the file expands to, counting each use of a YAML alias (*name) as a copy of what it
// refers to: a short file cannot make the loader build millions of points.
constexpr std::size_t k_max_config_nodes = 1'000'000;
constexpr std::size_t k_max_config_depth = 64;           // nesting of maps and lists
constexpr duration k_max_duration{720LL * 3600 * 1000};  // 720h (30 days), every duration key
constexpr std::size_t k_max_name = 128;  // bytes of a gateway id, device id, point or rule name
constexpr std::size_t k_max_topic_template = 1024;  // bytes, before expansion

// What the loader reads besides the text: `*_file` secrets and ${NAME} variables. Empty
// functions mean the real file system and environment; fuzzers and tests plug in their own.
struct load_hooks {
    // The file's content, or nullopt with `why` set; more than `max_bytes` is an error.
    std::function<std::optional<std::string>(const std::string& path, std::size_t max_bytes,
                                             std::string& why)>
        read_file;
    std::function<std::optional<std::string>(const std::string& name)> getenv;
};

// What the loader knows beyond the core's own keys: the components' declarations
// (core/config_reader.hpp), put together by the composition root (gateway/components.hpp).
struct schema;

// Loads and validates FILE. Throws `errors` (all of them) if anything is wrong.
config load_config(const std::string& file, const schema& s);
// Same, from text already in memory; `file` names it in errors.
config load_config_text(const std::string& text, const std::string& file, const schema& s,
                        const load_hooks& hooks = {});

// FILE resolved, as YAML: what `ferry check --expand` prints. Every device after profiles and
// unit-id ranges (one device per unit id), each with its points, keys as written (defaults
// are not filled in and ${NAME} is not substituted, so no secret from the environment is
// shown); `profiles:` is left out, every other section is copied. Loads FILE first and throws
// `errors` as load_config does.
std::string expand_config(const std::string& file, const schema& s);

// "250ms" "2s" "5m" "1h"; nullopt if malformed.
std::optional<duration> parse_duration(std::string_view text);
// "512" "64KiB" "512MiB" "1GiB" (also KB/MB/GB as powers of 1000? no: only the IEC forms and bare
// bytes).
std::optional<std::uint64_t> parse_size(std::string_view text);

// The type's name as written in YAML: "bool", "int16", ... "string".
std::string_view type_name(point_type t);

}  // namespace ferry::config
