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
// restart. Disabled, it answers every command `disabled` without looking at a device, and
// keeps no copy of them (at 50,000 points that copy was 7.6 MiB; docs/PERFORMANCE.md).
//
// Threading: on_message() may be called from any thread (Paho's callback thread) and only
// queues; one service thread checks commands and hands writes to the writer, whose `done`
// callback (any thread) stores and publishes the result. stop() joins the thread; commands
// arriving afterwards are dropped (they were never acknowledged to anyone).
//
// The parts: checks.hpp (payload, value, age, rate limit, results), store.hpp (commands.db),
// this header (the writer interface and the service that runs the checks in order).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "commands/checks.hpp"
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
