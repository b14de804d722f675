// The Modbus driver: polls Modbus TCP devices with libmodbus and publishes one event per
// point and poll on the bus.
//
// Scheduling: every device polls at a fixed rate without drift (next = previous + interval);
// a poll that overruns its slot skips the missed slots and counts them as overruns — missed
// polls are never queued up. A bounded pool of worker threads serves all devices: the thread
// count does not grow with the device count. One device is polled by one worker at a time.
//
// Reads are coalesced: points of one table are read in as few requests as Modbus allows (at
// most 125 registers or 2000 bits per request, bridging gaps of up to `max_gap` registers).
// A failed request turns its points `bad` (value null) and is counted by reason; a device
// that fails is reconnected with exponential backoff.
//
// Backpressure: publishing to the bus may block (a full spool with when_full: block); while
// it does, the worker does not poll, and the missed slots are counted as skipped.
//
// Lifetime: start() spawns the workers; stop() wakes and joins them (a request in flight
// finishes or times out first, at most `timeout`).
#pragma once

#include <memory>
#include <vector>

#include "gateway/bus.hpp"
#include "gateway/config.hpp"
#include "gateway/event.hpp"
#include "gateway/seq.hpp"

namespace prometheus {
class Registry;
}

namespace ferry::drivers::modbus {

struct driver_context {
    ferry::bus& bus;
    seq_source& seq;
    const point_table& points;
    prometheus::Registry& registry;
};

// Device state as seen by operators (and, later, the read API).
struct device_status {
    bool up = false;
    std::uint64_t polls_ok = 0;
    std::uint64_t polls_failed = 0;
    std::uint64_t overruns = 0;
};

class poller {
  public:
    // `devices` are modbus_tcp devices; their points must already be interned in ctx.points.
    poller(std::vector<config::device> devices, driver_context ctx, std::size_t max_workers = 4);
    ~poller();
    poller(const poller&) = delete;
    poller& operator=(const poller&) = delete;

    void start();
    void stop();

    std::vector<device_status> status() const;

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry::drivers::modbus
