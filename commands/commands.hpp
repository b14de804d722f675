// Downlink commands: the write side of Ferry, kept apart from telemetry (CONTRACT.md,
// "Downlink").
//
// An operator publishes {"id":"c-17","value":12.5[,"ts":<Unix ms>]} to
// ferry/{gateway}/cmd/{device}/{tag}/set and gets {"id":"c-17","ok":true} or
// {"id":"c-17","ok":false,"error":"..."} on .../result. Before anything touches a device a
// command is checked: payload, device, point, `writable: true`, the value's type, whole
// raw steps after the inverse of scale/offset, min/max and the raw type's range (the
// driver's encoder), age against commands.max_age, and the per-device rate limit
// (commands.rate_limit, a token bucket), and at most 8 unfinished writes per device. Anything
// else is answered ok:false, counted in ferry_commands_total{result} and logged; nothing is
// written. Budgets (ferry_input_rejected_total{input="command",reason}): payloads over
// commands.max_payload are not parsed, nesting stops at 16 levels, 16 repeats of an id in
// flight wait for its result, 1024 messages wait for the service thread.
//
// At most once per id: the id is recorded "in progress" (fsynced) in commands.db beside the
// spool before the write is queued, and its result after. A repeated id is answered with the
// stored result and never written again, also after a restart; an id found "in progress" at
// start (ferry stopped mid-write) is answered "outcome unknown". Ids of commands refused
// before the write are not kept: nothing was written, so the same id may be sent again. The
// store is bounded (max_ids, oldest evicted) and forgets ids after a TTL of Ferry's running
// time (persisted in commands.db), never by the wall clock: a clock step, forward or back,
// cannot make an id write twice.
//
// A retained set message is refused (rejected, nothing written): the broker would replay it
// at every reconnect, and once its id had left the store it would be written again.
//
// Drivers are reached through `writer` (the daemon wires the Modbus poller to it).
//
// Config: the service copies the devices and the commands section when it is built; a live
// reload hands it the new devices (update_devices). The commands section changes only at a
// restart.
//
// Threading: on_message() may be called from any thread (Paho's callback thread) and only
// queues; one service thread checks commands and hands writes to the writer, whose `done`
// callback (any thread) stores and publishes the result. stop() joins the thread; commands
// arriving afterwards are dropped (they were never acknowledged to anyone).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "core/event.hpp"

namespace prometheus {
class Registry;
}

namespace ferry::commands {

// ---- What a driver offers for writes ----

struct write_outcome {
    bool ok = false;
    bool attempted = false;  // false: nothing reached the device (the id is not kept)
    std::string error;
};

class writer {
  public:
    virtual ~writer() = default;
    // Refusal without I/O ("" when the value can be written): encoding, min/max, raw range.
    virtual std::string check(const config::device& d, const config::point& p,
                              const ferry::value& v) const = 0;
    // Writes; calls `done` exactly once, from any thread.
    virtual void write(const config::device& d, const config::point& p, const ferry::value& v,
                       std::function<void(write_outcome)> done) = 0;
};

// ---- Results ----

// The bounded label set of ferry_commands_total{result}.
enum class result : std::uint8_t {
    ok,
    rejected,      // malformed, unknown device/point, not writable, wrong type, out of range
    stale,         // "ts" older than commands.max_age
    rate_limited,  // over the device's commands.rate_limit
    duplicate,     // a repeated id, answered from memory
    device_error,  // the device did not take the write (exception, timeout, ...)
    disabled,      // commands.enabled: false
    count_
};
std::string_view to_string(result r);
constexpr std::size_t k_results = static_cast<std::size_t>(result::count_);

// {"id":"c-17","ok":true} or {"id":"c-17","ok":false,"error":"..."}; id null when absent.
std::string result_json(const std::optional<std::string>& id, bool ok, std::string_view error);

// ---- Checks (pure) ----

// A set payload, parsed strictly: an object with "id" (non-empty string), "value" and
// optionally "ts" (Unix ms, an integer); no other keys, no key twice. `error` is set when
// malformed (`id` is still filled when the payload had a string id, so the answer can name it).
//
// Budget: a payload longer than `max_bytes` is not parsed at all ("payload too large"; `id` is
// looked for with find_id). Parsing streams (no document is built) and stops at the first
// value nested deeper than k_max_depth levels, so its cost is O(size) time and O(1) memory
// beyond the strings it keeps (at most the payload's size).
struct payload {
    std::optional<std::string> id;
    ferry::value value;   // bool, int64/uint64/double or string, as JSON typed it
    std::string decimal;  // a number's text as sent ("3000000000.4"), for exact checks
    std::optional<std::int64_t> ts;
    std::string error;
    bool too_large = false;  // refused unparsed (more than max_bytes)
    bool too_deep = false;   // refused: nested deeper than k_max_depth
};
constexpr std::size_t k_max_depth = 16;
constexpr std::size_t k_id_window = 2048;  // bytes of a payload find_id looks at
payload parse_payload(std::string_view text, std::size_t max_bytes = 4096);

// The payload's "id" when it can be found cheaply: a non-empty string member of the top-level
// object, within the first k_id_window bytes. Looks at nothing else (used to answer a payload
// too large to parse, and commands while they are disabled).
std::optional<std::string> find_id(std::string_view text);

// The value's type against the point's: true/false for coils and bool points, a string for
// string points, a number otherwise; for integer types the number must be a whole number of
// raw steps after the inverse of scale/offset (raw = (value - offset) / scale), computed
// exactly in decimal on the number's text (`decimal`, as sent; from the double when empty) and
// on the shortest decimal form of scale and offset, so that no value between two raw steps is
// taken for either of them. 64-bit integers beyond 2^53 are refused (not exact as a double).
// "" when fine. min/max and the raw type's range are the writer's check.
std::string check_value(const config::point& p, const ferry::value& v,
                        std::string_view decimal = {});

// "" when `ts` is absent or within max_age of now_ms, else why it is refused. A `ts` older
// than max_age is stale (`*future` false); one more than max_age ahead of now_ms cannot be
// trusted either (`*future` true). Computed without overflow for any int64 `ts`.
std::string check_age(std::optional<std::int64_t> ts, std::int64_t now_ms,
                      std::chrono::milliseconds max_age, bool* future = nullptr);

// At most `capacity` commands per `period`, refilled continuously (a token bucket that
// starts full). Not thread-safe.
class token_bucket {
  public:
    token_bucket(std::uint32_t capacity, std::chrono::milliseconds period);
    bool take(std::chrono::steady_clock::time_point now);

  private:
    double capacity_;
    double per_ms_;
    double tokens_;
    std::optional<std::chrono::steady_clock::time_point> last_;
};

// ---- The idempotency store ----

// commands.db (SQLite, WAL, synchronous=FULL): one row per command id that reached the
// write stage. Not thread-safe (the service locks around it). Throws std::runtime_error
// when the file cannot be opened or is not ours.
class store {
  public:
    struct options {
        std::size_t max_ids = 10000;
        std::chrono::milliseconds ttl = std::chrono::hours(24);
    };
    struct entry {
        bool in_progress = false;
        bool ok = false;
        std::string error;
    };
    static constexpr std::string_view k_unknown_outcome =
        "outcome unknown: ferry stopped during the write";

    // Opens (or creates) the file; ids left "in progress" by an earlier run become
    // failed with k_unknown_outcome.
    store(const std::string& path, options opt);
    ~store();
    store(const store&) = delete;
    store& operator=(const store&) = delete;

    // `now_ms` is a reading of the store's clock, now(): Ferry's accumulated running time,
    // which wall-clock steps do not move (tests pass their own readings).
    std::optional<entry> find(const std::string& id, std::int64_t now_ms);
    // Records `id` in progress, durably (fsynced) before returning; evicts by TTL and count,
    // and persists the running time.
    void begin(const std::string& id, const std::string& device, const std::string& point,
               std::int64_t now_ms);
    // Ferry's running time in ms: what earlier runs persisted plus the monotonic time since
    // this store was opened.
    std::int64_t now() const;
    void finish(const std::string& id, bool ok, const std::string& error);
    void forget(const std::string& id);  // nothing was sent: the id may come again
    std::size_t size();

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

// ---- The service ----

// The largest MQTT packet Ferry asks the broker to send it (MQTT 5 Maximum Packet Size):
// commands.max_payload plus 1 MiB, so that a payload somewhat over the budget still arrives
// and is answered "payload too large", while a huge one is dropped by the broker.
inline std::uint32_t max_inbound_packet(const config::commands_section& c) {
    return static_cast<std::uint32_t>(c.max_payload + (1u << 20));
}

class service {
  public:
    using publish_fn = std::function<bool(const std::string& topic, const std::string& payload)>;
    // The writer for a device, or nullptr when its driver takes no writes.
    using writer_for = std::function<writer*(const config::device&)>;

    // Opens the store at `store_path` when commands are enabled. A store that cannot be
    // opened does not stop Ferry: every command is then refused with the reason.
    service(const config::config& cfg, std::string store_path, writer_for writers,
            publish_fn publish, prometheus::Registry& registry);
    ~service();
    service(const service&) = delete;
    service& operator=(const service&) = delete;

    // ferry/{gateway}/cmd/+/+/set
    const std::string& filter() const;
    void start();
    void stop();
    // Queues one message (any thread, never blocks; a full queue drops it, logged).
    // `retained`: delivered from the broker's retained store.
    void on_message(const std::string& topic, const std::string& payload, bool retained = false);
    // Handles one message on the caller's thread (the service thread; tests call it).
    void handle(const std::string& topic, const std::string& payload, bool retained = false);
    // A config reload: commands are checked against these devices from now on (a command
    // being written finishes against the old ones).
    void update_devices(std::vector<config::device> devices);
    // Commands counted per result, in enum order (for tests).
    std::array<std::uint64_t, k_results> counts() const;

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry::commands
