// The serial_line driver: reads lines (frames) of text from serial ports and publishes one
// event per value found, on the bus as `device/point`.
//
// Threads: one thread runs a Boost.Asio io_context for every serial_line device of the
// gateway (reads, poll requests, reopen timers); the thread count does not grow with the
// device count. Publishing to the bus may block under backpressure (a full spool with
// when_full: block); while it does, no port is read and the kernel's tty buffer holds what
// arrives (a real UART drops bytes once that overflows; the framer then resynchronises at
// the next delimiter).
//
// Errors: a frame that does not parse, fails its checksum or is too long is counted in
// ferry_driver_errors_total{device,reason} (parse, checksum, too_long) and gives no value; the
// points it shows it was meant to carry get a `bad` event (parser.hpp: parse_details::named);
// the next frame parses normally. String values are valid UTF-8: ill-formed sequences are
// replaced by U+FFFD and the frame is counted in ferry_invalid_utf8_total{device}. A port that
// cannot be opened or stops working (a USB adapter pulled: EOF or an I/O error) marks the device
// down (ferry_device_up 0, one `bad` event per point) and is reopened with exponential backoff (250
// ms doubling to 10 s, ±20 % jitter), counted as reasons `open` and `io`. Data resumes when the
// port returns. Each open and each loss goes to ctx.on_status ("cannot open port: ...",
// "port lost: ...").
//
// Lifetime: building checks the parse settings and touches no port; start() opens the ports
// and starts the thread (also with no port yet: a reload may add some); update() applies a
// reload; stop() closes them and joins it (at most one publish in flight
// finishes first). Not copyable; start/stop from one thread.
#pragma once

#include <memory>
#include <vector>

#include "core/config.hpp"
#include "drivers/driver.hpp"

namespace ferry::drivers::serial {

using drivers::driver_context;

// Per device, for tests and operators.
struct device_status {
    bool up = false;
    std::uint64_t frames_ok = 0;
    std::uint64_t frames_bad = 0;
    std::uint64_t opens = 0;  // successful opens of the port
};

class reader {
  public:
    // `devices` are serial_line devices whose points are interned in ctx.points. Throws
    // std::invalid_argument (naming the device) for parse settings it cannot use.
    reader(std::vector<config::device> devices, const driver_context& ctx);
    ~reader();
    reader(const reader&) = delete;
    reader& operator=(const reader&) = delete;

    void start();
    void stop();

    // A config reload: `devices` is the new set. Ports of changed devices close and reopen
    // with the new settings, removed ones close and lose their series, new ones open; the
    // others are read on untouched. Throws std::invalid_argument, and changes nothing, for
    // settings it cannot use. Points of new devices must be interned and routed first.
    // Waits at most 2 s for the io thread: while a publish holds it (a full `block` spool),
    // the change applies once that publish returns.
    void update(std::vector<config::device> devices);
    // Throws as the constructor would for these devices; touches nothing.
    static void check(const std::vector<config::device>& devices);

    // In config order.
    std::vector<device_status> status() const;

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry::drivers::serial
