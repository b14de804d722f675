// The Modbus driver: polls modbus_tcp and modbus_rtu devices and publishes one event per
// point and poll on the bus.
//
// Channels: a TCP device is a channel of its own (one connection); all modbus_rtu devices on
// one serial port form one channel (one libmodbus context, every unit id on it). A channel is
// served by one worker at a time, so a serial bus is one scheduler: a silent unit costs the others
// its timeout and nothing more (a device whose last poll went unanswered gets one attempt per
// poll, no retries; once down, one attempt per retry_every).
//
// Scheduling: the points of a device that share a poll interval (their own `poll_interval`,
// or the device's) form a poll group; every group polls at a fixed rate without drift (next =
// previous + interval, on one grid for the whole poller, so that groups and devices of one
// interval, or of multiples, fall due together); a poll reads every group of the device that is
// due, in one turn of the channel and one publish. A poll that overruns a group's slot skips the
// missed slots and counts them as overruns — missed polls are never queued up. A bounded pool of
// worker threads serves all channels: the thread count does not grow with the device count.
//
// Reads are coalesced (plan.hpp). A block answered with an illegal-address exception is
// split at once, down to the offending points, which alone turn `bad`; once all of its pieces
// have been answered for a few polls it is read whole again (the exception may have passed:
// a booting device), with a doubling wait while the device keeps refusing it. A NaN or
// infinite value is published `bad` (reason not_finite), never `good` with null. Every failed
// request is counted by reason (link.hpp); retries apply to devices that answered their last
// poll. A device that answers nothing in `down_after` polls in a row goes down
// (`ferry_device_up` 0) and is tried once per `retry_every` (±20 %), off the poll grid; the
// first answer brings it up and back onto the grid at once. Unanswered points are `bad`.
// Each change of up/down, and a device's first outcome, goes to ctx.on_status (the reason of
// its last failed request when down: "timeout", "connect: HOST:PORT", ...).
//
// Backpressure: publishing to the bus may block (a full spool with when_full: block); while
// it does, the worker does not poll, and the missed slots are counted as overruns.
//
// Reload: update() applies a new device set live (see there).
//
// Writes (downlink commands): write() queues a write on the device's channel; a worker serves
// a channel's queued writes before its next poll, when the channel is free, so a write never runs
// beside a poll (or another write) on the same connection or serial bus. While a poll on the
// channel is due, writes and polls alternate: a burst of writes delays a poll by one write. Writes
// are never retried: a write that timed out may have happened.
//
// Lifetime: start() spawns the workers; stop() wakes and joins them (a request in flight
// finishes or times out first, at most `timeout`; a request still in its `connect_delay` or
// `request_delay` is not sent, nor a write waiting there, which is
// answered as not written; the poll it belongs to skips its retries and remaining blocks and
// publishes what it read, so a slow device with many blocks does not hold up a stop, and does
// not count towards `down_after` unless answered). Building checks the configuration
// (conflicting serial settings, a unit id twice on one port) and touches no device.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "drivers/driver.hpp"
#include "drivers/source.hpp"

namespace ferry::drivers::modbus {

using drivers::driver_context;

// Device state as seen by operators (and, later, the read API).
struct device_status {
    bool up = false;
    std::uint64_t polls_ok = 0;
    std::uint64_t polls_failed = 0;
    std::uint64_t overruns = 0;
    std::uint64_t requests = 0;  // requests sent, retries included
};

// Writes answer with drivers::write_result (drivers/source.hpp).
using drivers::write_done;
using drivers::write_result;

class poller {
  public:
    // `devices` are modbus_tcp and modbus_rtu devices; their points must already be interned
    // in ctx.points. Throws std::invalid_argument for devices that cannot share a serial port.
    poller(std::vector<config::device> devices, const driver_context& ctx,
           std::size_t max_workers = 4);
    ~poller();
    poller(const poller&) = delete;
    poller& operator=(const poller&) = delete;

    void start();
    void stop();

    // A config reload: `devices` is the new set. Devices whose settings changed restart
    // (their requests in flight finish first; a poll whose events wait for room on the bus is
    // not waited for: that device is taken out once the bus took them), removed ones stop and
    // lose their series, new ones start; the others are not touched and poll on. Throws
    // std::invalid_argument, and changes nothing, for a set that cannot run (as the constructor).
    // Points of new devices must be interned and routed on the bus first.
    void update(std::vector<config::device> devices);
    // Throws as the constructor would for these devices; touches nothing.
    static void check(const std::vector<config::device>& devices);

    // In config order.
    std::vector<device_status> status() const;
    // Worker threads the poller runs (at most max_workers, at most one per channel).
    std::size_t workers() const;

    // ---- Writes (downlink commands) ----
    // What write() would refuse without I/O: an unknown device or point, or a value the point
    // cannot take (codec.hpp: encode_registers/encode_string; a coil takes a bool). Empty
    // when the value can be written. Thread-safe.
    std::string check_write(std::string_view device, std::string_view point,
                            const ferry::value& v) const;
    // Queues the write of `v` to device/point. `done` is called exactly once: from a worker
    // thread after the write, or from this call (or from stop()) when nothing is sent.
    // FC 5 for a coil, FC 6 for a one-register point, FC 16 for multi-register types and
    // strings. Thread-safe.
    void write(std::string_view device, std::string_view point, const ferry::value& v,
               write_done done);

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry::drivers::modbus
