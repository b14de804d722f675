// A source: one driver's devices, as the daemon runs them. The daemon holds one source per
// registered driver (drivers/registry.hpp) and never asks which kind a source is: it hands
// each the devices whose `driver:` names one of its schemas, starts, stops and reloads them
// through this interface, and routes downlink writes to the source that owns the device.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "core/config_reader.hpp"
#include "core/event.hpp"
#include "drivers/driver.hpp"

namespace ferry::drivers {

// One device as operators see it (the read API, logs).
struct source_status {
    std::string device;
    bool up = false;
    std::uint64_t ok = 0;      // polls (or frames) that gave values
    std::uint64_t failed = 0;  // polls (or frames) that did not
};

// The outcome of one write.
struct write_result {
    bool ok = false;
    bool attempted = false;  // false: nothing was sent (unknown point, bad value, stopping)
    std::string error;       // empty when ok: the device's answer (exception name), timeout...
};
using write_done = std::function<void(write_result)>;

class source {
  public:
    virtual ~source() = default;

    virtual void start() = 0;
    // Returns once nothing of the source runs; writes still queued are answered, unsent.
    virtual void stop() = 0;
    // A config reload: `devices` is the new set of this source's devices. Unchanged devices
    // are not touched. Throws std::invalid_argument, and changes nothing, for a set that
    // cannot run. Points of new devices are interned and routed on the bus first.
    virtual void update(std::vector<config::device> devices) = 0;
    // In config order.
    virtual std::vector<source_status> status() const = 0;

    // ---- Writes (downlink commands), for drivers that take them ----
    virtual bool takes_writes() const { return false; }
    // Why write() would refuse `v` without I/O; empty when it can be written. Thread-safe.
    virtual std::string check_write(std::string_view device, std::string_view point,
                                    const ferry::value& v) const;
    // Writes `v`; `done` is called exactly once (from this call when nothing is sent).
    virtual void write(std::string_view device, std::string_view point, const ferry::value& v,
                       write_done done);
};

// The ids of `devices`, in order.
std::vector<std::string> device_ids(const std::vector<config::device>& devices);

// A driver as the registry lists it.
struct driver {
    std::string_view name;  // for logs: "modbus", "serial_line", "system"
    // The `driver:` values it serves, with their keys.
    std::vector<const config::driver_schema*> schemas;
    // Throws std::invalid_argument (naming the device) for devices that cannot run together;
    // touches nothing. What `ferry check` and a reload run before anything starts.
    void (*check)(const std::vector<config::device>& devices) = nullptr;
    // The source for `devices` (all of them served by this driver; possibly none).
    std::unique_ptr<source> (*make)(std::vector<config::device> devices,
                                    const driver_context& ctx) = nullptr;

    bool serves(std::string_view driver_name) const;
};

}  // namespace ferry::drivers
