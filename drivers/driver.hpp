// What every driver gets from the daemon, and the per-device metric families every driver
// shares (ferry_device_up and the received/sent/errors trio of CONVENTIONS.md).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <functional>
#include <string>

#include "core/bus.hpp"
#include "core/event.hpp"
#include "core/seq.hpp"

namespace ferry::drivers {

// A device's state as its driver sees it: `up` (it answers) or not, and when not, why (a
// short reason: "timeout", "connect: 127.0.0.1:502", "port lost: ..."). Called on every
// change, and once for the first outcome after the device starts (or restarts after a reload),
// from the driver's thread without its locks held: it must return quickly and must not call
// back into the driver.
using status_hook =
    std::function<void(const std::string& device, bool up, const std::string& reason)>;

struct driver_context {
    ferry::bus& bus;
    seq_source& seq;
    const point_table& points;
    prometheus::Registry& registry;
    // The spool's file (upstream.spool.path), for drivers that report on the box itself.
    std::string spool_path = {};
    // Where device state changes go (the daemon: ferry/{gateway}/device/{device}/status);
    // may be empty.
    status_hook on_status = {};
};

// Registering a family twice returns the same family, so each driver builds its own view.
struct driver_families {
    explicit driver_families(prometheus::Registry& r)
        : up(prometheus::BuildGauge()
                 .Name("ferry_device_up")
                 .Help("1 while the device answers")
                 .Register(r)),
          errors(prometheus::BuildCounter()
                     .Name("ferry_driver_errors_total")
                     .Help("Failed device requests by reason")
                     .Register(r)),
          received(prometheus::BuildCounter()
                       .Name("ferry_driver_received_total")
                       .Help("Point values read from devices")
                       .Register(r)),
          sent(prometheus::BuildCounter()
                   .Name("ferry_driver_sent_total")
                   .Help("Events published on the bus")
                   .Register(r)),
          invalid_utf8(prometheus::BuildCounter()
                           .Name("ferry_invalid_utf8_total")
                           .Help("Device text that was not valid UTF-8 (serial frames, Modbus "
                                 "string values), sent with U+FFFD in place of each bad part")
                           .Register(r)) {}

    prometheus::Family<prometheus::Gauge>& up;              // {device}
    prometheus::Family<prometheus::Counter>& errors;        // {device,reason}
    prometheus::Family<prometheus::Counter>& received;      // {device}: values read
    prometheus::Family<prometheus::Counter>& sent;          // {device}: events on the bus
    prometheus::Family<prometheus::Counter>& invalid_utf8;  // {device}: text repaired
};

}  // namespace ferry::drivers
