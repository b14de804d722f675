#include "drivers/modbus/poller.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <span>
#include <stdexcept>
#include <thread>
#include <utility>

#include "core/log.hpp"
#include "drivers/modbus/codec.hpp"
#include "drivers/modbus/link.hpp"
#include "drivers/modbus/link_metrics.hpp"
#include "drivers/modbus/plan.hpp"
#include "drivers/modbus/write.hpp"

namespace ferry::drivers::modbus {
namespace {

using steady = std::chrono::steady_clock;
// A planned block split on an illegal address is read whole again after this many polls in
// which all of its pieces were answered; the wait doubles each time the device refuses it
// again, up to k_regroup_max polls (an address missing for good inside a bridged gap then
// costs one exception per 1,024 polls), and starts over once the whole block is read.
constexpr std::uint32_t k_regroup_first = 2;
constexpr std::uint32_t k_regroup_max = 1024;

struct channel;

// One block of the plan and what is read for it now: the block itself, or the pieces it was
// split into after an illegal-address answer (a device still booting, a missing register).
struct block_group {
    read_block whole;
    std::vector<read_block> parts;
    std::uint32_t clean_polls = 0;  // polls since the split in which every part was answered
    std::uint32_t regroup_after = k_regroup_first;
    bool split() const { return parts.size() > 1; }
};

// The points of a device that share one poll interval (their own `poll_interval`, or the
// device's), planned together and polled on their own fixed-rate schedule. Every group of a
// device that is due is read in one poll: on the grid, the 10 s points come with every tenth
// poll of the 1 s points, one turn of the channel and one publish.
struct poll_group {
    config::duration interval{1000};
    std::vector<block_group> blocks;
    steady::time_point next_due;
    bool on_grid = false;  // its polls fall on the poller's grid (poller::impl::grid_epoch)
    bool due = false;      // read by the poll under way (set under the poller's lock)
};

struct device_rt {
    config::device cfg;
    channel* chan = nullptr;
    std::vector<point_id> ids;
    std::vector<poll_group> groups;  // by interval, fastest first
    bool up = false;
    // Polls in a row in which the device answered nothing; at `down_after` it is down and
    // tried once per `retry_every`, off the grid, until it answers.
    int silent_polls = 0;
    bool reported = false;        // its first outcome went to ctx.on_status
    std::string last_error;       // the reason of its last failed request, for ctx.on_status
    steady::time_point next_due;  // the earliest of its groups' (kept by set_due)
    device_status status;         // written by the polling worker under the poller's lock
    std::vector<std::uint16_t> regs = std::vector<std::uint16_t>(k_max_bits);
    std::vector<event> out;
    bool polling = false;   // a worker polls it now
    bool retiring = false;  // a reload takes it out: no further polls
    // The poll's requests are done and its events wait for the bus (backpressure, which can
    // last as long as a full `block` spool): a reload does not wait for that.
    bool publishing = false;
    bool remove_after_poll = false;  // taken out by the worker once its publish returns
    bool keep_series_after = false;
    bool down() const { return silent_polls >= of(cfg).down_after; }
    void set_due() {
        next_due = steady::time_point::max();
        for (const auto& g : groups)
            next_due = std::min(next_due, g.next_due);
    }

    prometheus::Counter* polls_ok = nullptr;
    prometheus::Counter* polls_error = nullptr;
    prometheus::Counter* overruns = nullptr;
    prometheus::Counter* values_read = nullptr;
    prometheus::Counter* events_sent = nullptr;
    prometheus::Gauge* up_gauge = nullptr;
    prometheus::Histogram* poll_seconds = nullptr;
    prometheus::Family<prometheus::Counter>* errors_family = nullptr;
    std::map<std::string, prometheus::Counter*> errors;
    bool warned_not_finite = false;  // the first NaN/infinite reading is logged at warn
    bool warned_utf8 = false;        // the first string repaired to valid UTF-8, likewise
    prometheus::Counter* invalid_utf8 = nullptr;  // ferry_invalid_utf8_total{device}
};

// A write queued on a channel (downlink commands), served before the channel's next poll.
struct pending_write {
    device_rt* device = nullptr;
    std::string point;
    std::uint8_t function = 0;  // k_write_coil, k_write_register or k_write_registers
    std::uint16_t address = 0;
    std::vector<std::uint16_t> values;
    write_done done;
};

// One TCP device, or one serial port with every unit on it: served by one worker at a time.
// A "channel": not "line" (the serial_line driver) nor "bus" (the event bus, core/bus.hpp).
struct channel {
    std::unique_ptr<link> lnk;
    std::string port;  // modbus_rtu: the serial port; empty for a TCP device
    std::vector<device_rt*> devices;
    bool busy = false;
    std::deque<pending_write> writes;  // downlink commands waiting for the channel
    bool wrote_last = false;  // a write was the channel's last request: a due poll goes next
};

// What a poll has learnt so far, across its groups and blocks; once it is over, what it
// changes in the device's status (applied under the poller's lock).
struct poll_progress {
    bool all_ok = true;
    bool answered = false;       // some request was answered (an exception counts)
    bool reachable = true;       // no request went unanswered yet
    std::size_t requested = 0;   // blocks (or pieces) read or skipped
    std::uint64_t requests = 0;  // requests sent, retries included
    bool halted = false;         // stopping: the rest of the poll is skipped
};

}  // namespace

struct poller::impl {
    driver_context ctx;
    driver_families shared;  // ferry_device_up and the received/sent/errors trio
    std::size_t max_workers;
    std::vector<std::unique_ptr<device_rt>> devices;  // in config order
    std::vector<std::unique_ptr<channel>> channels;
    mutable std::mutex mu;
    std::condition_variable cv;
    std::condition_variable poll_done;  // a device's poll finished (update() waits for it)
    bool started = false;
    bool stopping = false;
    // Set by stop() before it waits: a poll in flight skips its retries and remaining blocks,
    // so a stop waits for at most one request (≤ timeout) per worker, not a whole slow poll.
    std::atomic<bool> halting{false};
    steady::time_point timer_at = steady::time_point::max();  // a worker sleeps until then
    // Polls fall due at grid_epoch + k × poll_interval: devices of one interval (or of
    // multiples) are due together and the workers poll them back to back. Staggering them
    // (as once, over the first 100 ms) cost each poll a wake-up of an idle worker, which on a
    // VM costs more than the poll: 50 devices x 100 registers every 100 ms took 2.5-3.2 µs
    // of CPU per value staggered, 1.5-1.9 µs aligned (docs/PERFORMANCE.md, End to end).
    steady::time_point grid_epoch{};
    std::vector<std::thread> workers;
    std::mt19937 rng{std::random_device{}()};

    prometheus::Family<prometheus::Counter>* polls = nullptr;
    prometheus::Family<prometheus::Counter>* overrun = nullptr;
    prometheus::Family<prometheus::Histogram>* seconds = nullptr;
    // ferry_input_rejected_total{input="modbus",reason}: answers and values refused by a check,
    // over all devices (per device: ferry_driver_errors_total). Built once, read-only after.
    std::map<std::string, prometheus::Counter*, std::less<>> rejected;

    // Writes (downlink commands); defined after the poller's reads, below.
    device_rt* find_device(std::string_view id) const;
    std::string prepare_write(std::string_view device, std::string_view point,
                              const ferry::value& v, pending_write& w) const;
    bool serve_write(std::unique_lock<std::mutex>& lock);
    void fail_queued_writes();

    impl(std::vector<config::device> devs, driver_context c, std::size_t w)
        : ctx(c), shared(c.registry), max_workers(w) {
        polls = &prometheus::BuildCounter()
                     .Name("ferry_driver_polls_total")
                     .Help("Device polls by result")
                     .Register(ctx.registry);
        overrun = &prometheus::BuildCounter()
                       .Name("ferry_driver_overruns_total")
                       .Help("Poll slots missed because a poll overran or the pipeline pushed back")
                       .Register(ctx.registry);
        seconds = &prometheus::BuildHistogram()
                       .Name("ferry_driver_poll_seconds")
                       .Help("Duration of one poll of one device")
                       .Register(ctx.registry);
        auto& refused = prometheus::BuildCounter()
                            .Name("ferry_input_rejected_total")
                            .Help("Inputs refused by a budget or a check, by input and reason")
                            .Register(ctx.registry);
        for (const char* why :
             {"transaction_id", "short_frame", "bad_crc", "bad_slave", "bad_data", "not_finite"})
            rejected[why] = &refused.Add({{"input", "modbus"}, {"reason", why}});
        check_channels(devs);
        for (auto& d : devs)
            add(std::move(d));
    }

    // Throws std::invalid_argument for a set of devices that cannot run together: a device
    // that is not Modbus, devices sharing a serial port with other settings, a unit id twice
    // on one port. Checked before anything changes.
    static void check_channels(const std::vector<config::device>& devs) {
        std::map<std::string, const config::device*> owner;
        std::map<std::pair<std::string, int>, const config::device*> units;
        for (const auto& d : devs) {
            if (d.driver == "modbus_tcp") continue;
            if (d.driver != "modbus_rtu" || !of(d).serial)
                throw std::invalid_argument("device " + d.id + ": not a Modbus device");
            const auto& s = *of(d).serial;
            auto [it, first_on_port] = owner.try_emplace(s.port, &d);
            const auto& fs = *of(*it->second).serial;
            if (!first_on_port && (fs.baud != s.baud || fs.par != s.par ||
                                   fs.data_bits != s.data_bits || fs.stop_bits != s.stop_bits))
                throw std::invalid_argument("device " + d.id + ": serial port " + s.port +
                                            " is shared with device " + it->second->id +
                                            " but with other settings");
            const int unit = of(d).unit_id;
            auto [u, fresh] = units.try_emplace({s.port, unit}, &d);
            if (!fresh)
                throw std::invalid_argument("device " + d.id + ": unit_id " + std::to_string(unit) +
                                            " on " + s.port + " is already device " +
                                            u->second->id);
        }
    }

    // A device joins its channel (a new TCP connection, or the serial port's channel). With the
    // lock held once workers run.
    device_rt* add(config::device d) {
        prometheus::Histogram::BucketBoundaries bounds{
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
        auto rt = std::make_unique<device_rt>();
        for (const auto& p : d.points) {
            auto id = ctx.points.find(d.id + "/" + p.name);
            if (!id) throw std::logic_error("point not interned: " + d.id + "/" + p.name);
            rt->ids.push_back(*id);
        }
        std::map<config::duration, std::vector<std::size_t>> by_interval;
        for (std::size_t i = 0; i < d.points.size(); ++i)
            by_interval[poll_interval_of(d, d.points[i])].push_back(i);
        for (auto& [interval, which] : by_interval) {
            poll_group pg;
            pg.interval = interval;
            for (auto& b : plan_blocks(d.points, std::move(which), of(d).max_gap,
                                       of(d).max_registers, of(d).max_coils)) {
                block_group g;
                g.parts.push_back(b);
                g.whole = std::move(b);
                pg.blocks.push_back(std::move(g));
            }
            rt->groups.push_back(std::move(pg));
        }
        rt->polls_ok = &polls->Add({{"device", d.id}, {"result", "ok"}});
        rt->polls_error = &polls->Add({{"device", d.id}, {"result", "error"}});
        rt->overruns = &overrun->Add({{"device", d.id}});
        rt->values_read = &shared.received.Add({{"device", d.id}});
        rt->events_sent = &shared.sent.Add({{"device", d.id}});
        rt->invalid_utf8 = &shared.invalid_utf8.Add({{"device", d.id}});
        rt->up_gauge = &shared.up.Add({{"device", d.id}});
        rt->poll_seconds = &seconds->Add({{"device", d.id}}, bounds);
        rt->errors_family = &shared.errors;
        rt->cfg = std::move(d);
        rt->chan = channel_for(rt->cfg);
        rt->chan->devices.push_back(rt.get());
        devices.push_back(std::move(rt));
        return devices.back().get();
    }

    channel* channel_for(const config::device& d) {
        const auto& s = of(d);
        if (d.driver == "modbus_rtu") {
            for (auto& ch : channels) {
                if (ch->port == s.serial->port) return ch.get();
            }
        }
        channels.push_back(std::make_unique<channel>());
        auto& ch = *channels.back();
        if (d.driver == "modbus_tcp") {
            ch.lnk = make_tcp_link(s.host, s.port, s.connect_delay, &halting);
        } else {
            ch.lnk = make_rtu_link(*s.serial);
            ch.port = s.serial->port;
        }
        ch.lnk = with_metrics(std::move(ch.lnk), ctx.registry);  // per-channel requests
        return &ch;
    }

    // Takes a device out, with the lock held: waits for a poll of it in flight (the other
    // devices go on meanwhile), closes its channel if it was the last device on it, and drops
    // its series unless the device stays under another configuration.
    // Writes queued for it are moved to `unsent`, to be answered once the lock is released.
    // A poll whose events wait for room on the bus is not waited for: the worker takes the
    // device out once the bus took them (finish_remove), so a reload in a stalled pipeline
    // still finishes (issue 13).
    void remove(device_rt* d, bool keep_series, std::unique_lock<std::mutex>& lock,
                std::vector<pending_write>& unsent) {
        d->retiring = true;
        poll_done.wait(lock, [&] { return !d->polling || d->publishing; });
        auto& queued = d->chan->writes;
        for (auto it = queued.begin(); it != queued.end();) {
            if (it->device != d) {
                ++it;
                continue;
            }
            unsent.push_back(std::move(*it));
            it = queued.erase(it);
        }
        if (d->polling) {
            d->remove_after_poll = true;
            d->keep_series_after = keep_series;
            log::info("modbus", "device waits for the pipeline; taken out once its poll is in",
                      {{"device", d->cfg.id}});
            return;
        }
        finish_remove(d, keep_series);
    }

    // The rest of remove(), once no poll of `d` is in flight. With the lock held.
    void finish_remove(device_rt* d, bool keep_series) {
        auto& on_channel = d->chan->devices;
        on_channel.erase(std::remove(on_channel.begin(), on_channel.end(), d), on_channel.end());
        if (on_channel.empty()) {
            d->chan->lnk->close();
            std::erase_if(channels, [&](const auto& ch) { return ch.get() == d->chan; });
        }
        if (!keep_series) {
            polls->Remove(d->polls_ok);
            polls->Remove(d->polls_error);
            overrun->Remove(d->overruns);
            shared.received.Remove(d->values_read);
            shared.sent.Remove(d->events_sent);
            shared.invalid_utf8.Remove(d->invalid_utf8);
            shared.up.Remove(d->up_gauge);
            seconds->Remove(d->poll_seconds);
            for (auto& [why, c] : d->errors)
                shared.errors.Remove(c);
        }
        std::erase_if(devices, [&](const auto& p) { return p.get() == d; });
    }

    void spawn_workers() {
        const std::size_t n = std::min(max_workers, channels.size());
        while (workers.size() < n)
            workers.emplace_back([this] { worker(); });
    }

    ~impl() {
        for (auto& ch : channels)
            ch->lnk->close();
    }

    void set_up(device_rt& d, bool is_up) {
        const bool first = !d.reported;
        d.reported = true;
        if (d.up == is_up && !first) return;
        if (d.up != is_up) {
            d.up = is_up;
            d.up_gauge->Set(is_up ? 1 : 0);
            if (is_up) log::info("modbus", "device up", {{"device", d.cfg.id}});
        }
        if (ctx.on_status) ctx.on_status(d.cfg.id, is_up, is_up ? std::string() : d.last_error);
    }

    // `down_after` polls in a row went unanswered: also logged for a device that never
    // answered since the start (it was never up, but from now on it is tried only once per
    // retry_every).
    void set_down(device_rt& d) {
        set_up(d, false);
        const auto& s = of(d.cfg);
        log::warn("modbus", "device down; trying it once per retry_every",
                  {{"device", d.cfg.id},
                   {"silent_polls", std::to_string(s.down_after)},
                   {"retry_every_ms", std::to_string(s.retry_every.count())}});
    }

    // ferry_driver_errors_total{device,reason} (and ferry_input_rejected_total for answers
    // refused by a check), created on first use.
    void count_reason(device_rt& d, const std::string& why) {
        auto it = d.errors.find(why);
        if (it == d.errors.end())
            it = d.errors
                     .emplace(why, &d.errors_family->Add({{"device", d.cfg.id}, {"reason", why}}))
                     .first;
        it->second->Increment();
        if (const auto r = rejected.find(why); r != rejected.end()) r->second->Increment();
    }

    void count_error(device_rt& d, const read_result& r, const read_block& b) {
        auto why = reason(r);
        count_reason(d, why);
        d.last_error = r.err == fault::connect ? why + ": " + d.chan->lnk->name() : why;
        log::debug("modbus", "request failed",
                   {{"device", d.cfg.id},
                    {"reason", why},
                    {"address", std::to_string(b.start)},
                    {"count", std::to_string(b.count)}});
    }

    // One block, with retries for a device that answered its last poll. A protocol exception
    // is the device's definite answer and is not retried. A device that went silent gets one
    // attempt per request: on a serial line each retry would cost the other units a timeout.
    // A stop that cuts the device's request_delay short sets p.halted: the request is not
    // sent (the device asked for that pause), and the block counts as not read.
    read_result read_block_once(device_rt& d, const read_block& b, poll_progress& p) {
        const auto& s = of(d.cfg);
        const int attempts = d.up && d.silent_polls == 0 ? 1 + s.retries : 1;
        read_result r;
        for (int a = 0; a < attempts; ++a) {
            if (a > 0 && halting.load(std::memory_order_relaxed)) break;
            if (!pause_before_request(s)) {
                p.halted = true;
                return r;
            }
            ++p.requests;
            r = d.chan->lnk->read(s.unit_id, b.tbl, static_cast<std::uint16_t>(b.start),
                                  static_cast<std::uint16_t>(b.count), s.timeout, d.regs.data());
            if (r.ok()) return r;
            if (r.unanswered() && halting.load(std::memory_order_relaxed)) {
                p.halted = true;  // perhaps the stop's doing (a connect_delay cut short)
                return r;
            }
            count_error(d, r, b);
            if (r.err == fault::exception) return r;
        }
        return r;
    }

    // request_delay: the device's pause before each request, the channel held (a serial line
    // stays quiet). False when the poller stops meanwhile: the request is then not sent (not
    // without the pause its device needs), and a stop does not wait for the pause.
    bool pause_before_request(const device_settings& s) const {
        auto left = s.request_delay;
        while (left.count() > 0) {
            if (halting.load(std::memory_order_relaxed)) return false;
            const auto step =
                std::min<std::chrono::milliseconds>(left, std::chrono::milliseconds(50));
            std::this_thread::sleep_for(step);
            left -= step;
        }
        return true;
    }

    void emit(device_rt& d, const read_block& b, bool ok, wall_clock::time_point ts) {
        for (auto i : b.points) {
            event e;
            e.point = d.ids[i];
            e.ts = ts;
            const auto& p = d.cfg.points[i];
            const auto& ps = of(p);
            if (!ok) {
                e.quality = quality::bad;
            } else if (is_bit_table(b.tbl)) {
                e.value = decode_bit(p, static_cast<std::uint8_t>(d.regs[ps.address - b.start]));
            } else {
                const auto n = register_count(p.type, ps);
                std::size_t repaired = 0;
                e.value = decode_registers(
                    p, std::span<const std::uint16_t>(d.regs.data() + (ps.address - b.start), n),
                    &repaired);
                if (repaired > 0) invalid_text(d, p);
                if (std::holds_alternative<std::monostate>(e.value))
                    e.quality = quality::bad;
                else if (!is_reading(e.value))
                    not_finite(d, p, std::get<double>(e.value), e);
            }
            d.out.push_back(std::move(e));
        }
    }

    // A string register holding ill-formed UTF-8 (Latin-1 text, garbage) arrives repaired
    // (U+FFFD, codec.hpp); counted per device, the first logged at warn.
    void invalid_text(device_rt& d, const config::point& p) {
        d.invalid_utf8->Increment();
        const bool first = !d.warned_utf8;
        d.warned_utf8 = true;
        log::write(first ? config::log_level::warn : config::log_level::debug, "modbus",
                   "text is not valid UTF-8; sent with U+FFFD in place of the bad bytes",
                   {{"device", d.cfg.id}, {"point", p.name}});
    }

    // A float register holding NaN or an infinity (a sensor's "no reading", a register that
    // is not a float at all), or a value that scale/offset take past the double range: JSON
    // cannot carry it and it is no measurement, so the event is `bad` with no value, never
    // `good` with null. Counted as reason not_finite.
    void not_finite(device_rt& d, const config::point& p, double x, event& e) {
        e.value = std::monostate{};
        e.quality = quality::bad;
        count_reason(d, "not_finite");
        const bool first = !d.warned_not_finite;
        d.warned_not_finite = true;
        log::write(first ? config::log_level::warn : config::log_level::debug, "modbus",
                   first ? "value is not a finite number; sent as bad (further ones are logged "
                           "at debug level)"
                         : "value is not a finite number; sent as bad",
                   {{"device", d.cfg.id},
                    {"point", p.name},
                    {"value", std::isnan(x) ? "nan" : (x > 0 ? "inf" : "-inf")}});
    }

    // Reads one planned block (or the pieces it was split into) and emits its points' events.
    void read_group(device_rt& d, block_group& g, poll_progress& p) {
        // A split block whose pieces were all answered for a while is tried whole again: the
        // exception may have been passing (a device answers "illegal address" while it boots),
        // and one request is cheaper than many.
        const bool regrouping = g.split() && g.clean_polls >= g.regroup_after;
        if (regrouping) g.parts.assign(1, g.whole);
        bool resplit = false;
        bool parts_ok = true;
        // g.parts may grow while we go: a part split on an illegal address is replaced by its
        // two halves, and the first half is read next.
        for (std::size_t k = 0; k < g.parts.size(); ++k) {
            // Stopping: what was read is published, the rest was never sampled (no loss).
            if (p.requested > 0 && halting.load(std::memory_order_relaxed)) {
                p.halted = true;
                return;  // the block was not read through: nothing to learn from it
            }
            read_result r{fault::timeout};
            if (p.reachable) r = read_block_once(d, g.parts[k], p);
            if (p.halted) return;  // a stop cut its request_delay short: not read
            ++p.requested;
            if (!r.unanswered()) p.answered = true;
            if (r.err == fault::exception && r.exception == k_illegal_address &&
                g.parts[k].points.size() > 1) {
                auto halves = split_block(g.parts[k], d.cfg.points);
                log::write(regrouping ? config::log_level::debug : config::log_level::info,
                           "modbus", "illegal address: splitting a block",
                           {{"device", d.cfg.id},
                            {"address", std::to_string(g.parts[k].start)},
                            {"count", std::to_string(g.parts[k].count)}});
                g.parts[k] = std::move(halves.first);
                g.parts.insert(g.parts.begin() + static_cast<std::ptrdiff_t>(k) + 1,
                               std::move(halves.second));
                resplit = true;
                --k;
                continue;
            }
            if (!r.ok()) {
                p.all_ok = false;
                parts_ok = false;
            }
            // No answer at all: the device (or the connection) is gone; the rest would only
            // cost more timeouts, on a shared serial port at the other units' expense.
            if (r.unanswered()) p.reachable = false;
            emit(d, g.parts[k], r.ok(), wall_clock::now());
        }
        if (regrouping && resplit) {
            // Refused again: wait twice as long before the next try.
            g.regroup_after = std::min(g.regroup_after * 2, k_regroup_max);
            g.clean_polls = 0;
        } else if (regrouping) {
            log::info("modbus", "illegal address gone: reading a split block whole again",
                      {{"device", d.cfg.id},
                       {"address", std::to_string(g.whole.start)},
                       {"count", std::to_string(g.whole.count)}});
            g.regroup_after = k_regroup_first;
            g.clean_polls = 0;
        } else if (g.split()) {
            g.clean_polls = parts_ok ? g.clean_polls + 1 : 0;
        }
    }

    // Reads the device's due groups and publishes their events.
    poll_progress poll(device_rt& d) {
        const auto began = steady::now();
        d.out.clear();
        poll_progress p;
        for (auto& pg : d.groups) {
            for (auto it = pg.blocks.begin(); pg.due && !p.halted && it != pg.blocks.end(); ++it)
                read_group(d, *it, p);
        }
        // A device that serves one client at a time: let the others in until the next poll.
        if (of(d.cfg).close_after_poll) d.chan->lnk->close();
        if (!d.out.empty()) {
            const auto first = ctx.seq.next_n(d.out.size());
            for (std::size_t i = 0; i < d.out.size(); ++i)
                d.out[i].seq = first + i;
        }
        d.poll_seconds->Observe(std::chrono::duration<double>(steady::now() - began).count());
        if (p.all_ok)
            d.polls_ok->Increment();
        else
            d.polls_error->Increment();
        if (p.answered) {
            d.silent_polls = 0;
            set_up(d, true);
        } else if (p.halted) {
            // Cut short by a stop: the silence of part of a poll says nothing of the device.
        } else if (++d.silent_polls == of(d.cfg).down_after) {
            set_down(d);
        } else if (d.down()) {
            d.silent_polls = of(d.cfg).down_after;  // no overflow however long it stays down
        }
        std::uint64_t good = 0;
        for (const auto& e : d.out)
            good += e.quality == quality::good ? 1 : 0;
        d.values_read->Increment(static_cast<double>(good));
        // May block when the pipeline applies backpressure (spool full, when_full: block).
        {
            std::lock_guard lock(mu);
            d.publishing = true;
        }
        poll_done.notify_all();  // a reload taking the device out need not wait for this
        ctx.bus.publish(d.out);
        d.events_sent->Increment(static_cast<double>(d.out.size()));
        return p;
    }

    // With the lock held (rng). Moves on the groups the poll just read.
    void reschedule(device_rt& d, steady::time_point now) {
        if (d.down()) {
            // Tried once per retry_every, jittered so that the down units of a line do not
            // all fall on one slot, and off the grid: one timeout, at a random time, every
            // group at once (the first unanswered request ends the poll).
            std::uniform_real_distribution<double> jitter(0.8, 1.2);
            const auto at =
                now + std::chrono::milliseconds(static_cast<std::int64_t>(
                          static_cast<double>(of(d.cfg).retry_every.count()) * jitter(rng)));
            for (auto& g : d.groups) {
                g.due = false;
                g.on_grid = false;
                g.next_due = at;
            }
            d.next_due = at;
            return;
        }
        for (auto& g : d.groups) {
            if (!std::exchange(g.due, false)) continue;
            const auto iv = g.interval;
            if (!g.on_grid) {
                // Added by a reload, or back up after being down: its poll went at once; from
                // now on it keeps the grid.
                g.on_grid = true;
                g.next_due = grid_epoch + ((now - grid_epoch) / iv + 1) * iv;
                continue;
            }
            g.next_due += iv;
            if (g.next_due <= now) {
                const auto missed = (now - g.next_due) / iv + 1;
                g.next_due += iv * missed;
                d.overruns->Increment(static_cast<double>(missed));
                d.status.overruns += static_cast<std::uint64_t>(missed);
            }
        }
        d.set_due();
    }

    void worker() {
        std::unique_lock lock(mu);
        while (!stopping) {
            if (serve_write(lock)) continue;  // writes go first, each when its channel is free
            device_rt* next = nullptr;
            for (auto& d : devices) {
                if (!d->chan->busy && !d->retiring && (!next || d->next_due < next->next_due))
                    next = d.get();
            }
            if (!next) {
                cv.wait(lock);
                continue;
            }
            const auto now = steady::now();
            if (next->next_due > now) {
                // One worker sleeps until the next due time, the others until notified: no
                // herd of workers waking at every due time to find the device taken.
                if (next->next_due < timer_at) {
                    const auto mine = next->next_due;
                    timer_at = mine;
                    cv.wait_until(lock, mine);
                    if (timer_at == mine) timer_at = steady::time_point::max();
                } else {
                    cv.wait(lock);
                }
                continue;  // re-evaluate: another worker may have taken it, or we stop
            }
            next->chan->busy = true;
            next->polling = true;
            for (auto& g : next->groups)
                g.due = g.next_due <= now;
            // Someone else watches the clock while we poll, but only when needed: every
            // wake-up of a worker that finds nothing to do costs a context switch, which on
            // a VM costs more than the poll's own work (docs/PERFORMANCE.md, End to end).
            if (needs_another_worker()) cv.notify_one();
            lock.unlock();
            const auto o = poll(*next);
            lock.lock();
            next->chan->busy = false;
            next->polling = false;
            next->publishing = false;
            poll_done.notify_all();
            next->chan->wrote_last = false;  // a write waiting for this channel may go now
            next->status.up = next->up;
            next->status.requests += o.requests;
            ++(o.all_ok ? next->status.polls_ok : next->status.polls_failed);
            reschedule(*next, steady::now());
            if (next->remove_after_poll) finish_remove(next, next->keep_series_after);
            // No notify: this worker loops and takes whatever the freed channel allows (a
            // queued write, the next due poll) itself, or watches the clock for it.
        }
    }

    // With the lock held, by a worker about to poll: is there work it leaves behind that no
    // one else is on? A free channel with a write queued, a free device due now, or a free
    // device due before the time the clock-watching worker (if any) sleeps until.
    bool needs_another_worker() const {
        const auto now = steady::now();
        for (const auto& d : devices) {
            if (d->chan->busy || d->retiring) continue;
            if (!d->chan->writes.empty() || d->next_due <= now || d->next_due < timer_at)
                return true;
        }
        return false;
    }
};

// ---- Writes (downlink commands): the poller's side ------------------------------------------

device_rt* poller::impl::find_device(std::string_view id) const {
    for (const auto& d : devices) {
        if (d->cfg.id == id && !d->retiring) return d.get();
    }
    return nullptr;
}

// Finds the device and point and encodes the value; fills `w` and returns "" when it can be
// written, else the reason.
std::string poller::impl::prepare_write(std::string_view device, std::string_view point,
                                        const ferry::value& v, pending_write& w) const {
    auto* d = find_device(device);
    if (!d) return "no Modbus device '" + std::string(device) + "'";
    const auto it = std::find_if(d->cfg.points.begin(), d->cfg.points.end(),
                                 [&](const config::point& p) { return p.name == point; });
    if (it == d->cfg.points.end())
        return "device '" + d->cfg.id + "' has no point '" + std::string(point) + "'";
    std::string why;
    w.function = encode_write(*it, v, w.values, why);
    if (w.function == 0) return why;
    w.device = d;
    w.point = it->name;
    w.address = static_cast<std::uint16_t>(of(*it).address);
    return {};
}

// Serves one queued write on a free channel, if there is one. Called by a worker with the lock
// held; returns with it held.
bool poller::impl::serve_write(std::unique_lock<std::mutex>& lock) {
    // Writes and polls alternate on a channel while polls are due, so a burst of writes delays
    // a poll by at most one write and is never starved by polls either.
    const auto now = steady::now();
    channel* chan = nullptr;
    for (auto& ch : channels) {
        if (ch->busy || ch->writes.empty()) continue;
        const bool poll_due = std::any_of(ch->devices.begin(), ch->devices.end(),
                                          [&](const device_rt* d) { return d->next_due <= now; });
        if (ch->wrote_last && poll_due) continue;
        chan = ch.get();
        break;
    }
    if (!chan) return false;
    auto w = std::move(chan->writes.front());
    chan->writes.pop_front();
    chan->busy = true;
    w.device->polling = true;  // a reload taking the device out waits for this write
    cv.notify_one();           // someone else watches the clock meanwhile
    lock.unlock();
    const auto& cfg = w.device->cfg;
    write_result out;
    read_result r{fault::connect};
    const bool sent = pause_before_request(of(cfg));
    if (!sent) {
        out = {false, false, "ferry is stopping; nothing was written"};
    } else {
        r = chan->lnk->write(of(cfg).unit_id, w.function, w.address, w.values, of(cfg).timeout);
        if (of(cfg).close_after_poll) chan->lnk->close();
        out.ok = r.ok();
        out.attempted = r.err != fault::connect;
        if (!r.ok()) out.error = describe_write_error(r, cfg, *chan->lnk);
    }
    log::debug("modbus", "write",
               {{"device", cfg.id},
                {"point", w.point},
                {"function", std::to_string(w.function)},
                {"address", std::to_string(w.address)},
                {"registers", std::to_string(w.values.size())},
                {"result", !sent    ? "not sent: stopping"
                           : r.ok() ? "ok"
                                    : reason(r)}});
    w.done(std::move(out));
    lock.lock();
    chan->busy = false;
    chan->wrote_last = true;
    w.device->polling = false;
    poll_done.notify_all();
    cv.notify_one();  // the channel is free again
    return true;
}

// At stop: every write still queued is answered as not sent.
void poller::impl::fail_queued_writes() {
    std::vector<pending_write> left;
    {
        std::lock_guard lock(mu);
        for (auto& ch : channels) {
            for (auto& w : ch->writes)
                left.push_back(std::move(w));
            ch->writes.clear();
        }
    }
    for (auto& w : left)
        w.done({false, false, "ferry is stopping; nothing was written"});
}

std::string poller::check_write(std::string_view device, std::string_view point,
                                const ferry::value& v) const {
    pending_write w;
    std::lock_guard lock(impl_->mu);  // a reload may change the devices
    return impl_->prepare_write(device, point, v, w);
}

void poller::write(std::string_view device, std::string_view point, const ferry::value& v,
                   write_done done) {
    pending_write w;
    std::string why;
    {
        std::lock_guard lock(impl_->mu);  // a reload may change the devices
        why = impl_->prepare_write(device, point, v, w);
        if (why.empty() && !impl_->stopping) {
            w.done = std::move(done);
            w.device->chan->writes.push_back(std::move(w));
            done = nullptr;
        }
    }
    if (!why.empty()) {
        done({false, false, std::move(why)});
        return;
    }
    if (done) {  // not queued: the poller stops
        done({false, false, "ferry is stopping; nothing was written"});
        return;
    }
    impl_->cv.notify_all();  // wake a sleeping worker: the write goes before the next poll
}

poller::poller(std::vector<config::device> devices, const driver_context& ctx,
               std::size_t max_workers)
    : impl_(
          std::make_unique<impl>(std::move(devices), ctx, std::max<std::size_t>(max_workers, 1))) {}

poller::~poller() {
    stop();
}

namespace {

// The first poll of every device goes at once; only the devices of the first start are on
// the grid already (it starts now), those a reload adds join it after their first poll.
void poll_now(std::span<device_rt* const> devs, steady::time_point now, bool on_grid) {
    for (auto* d : devs) {
        for (auto& g : d->groups) {
            g.next_due = now;
            g.on_grid = on_grid;
        }
        d->next_due = now;
    }
}

}  // namespace

void poller::start() {
    std::lock_guard lock(impl_->mu);
    if (impl_->started) return;
    impl_->started = true;
    std::vector<device_rt*> all;
    for (auto& d : impl_->devices)
        all.push_back(d.get());
    impl_->grid_epoch = steady::now();
    poll_now(all, impl_->grid_epoch, true);
    impl_->spawn_workers();
}

void poller::check(const std::vector<config::device>& devices) {
    impl::check_channels(devices);
}

void poller::update(std::vector<config::device> devices) {
    impl::check_channels(devices);
    std::unique_lock lock(impl_->mu);
    std::map<std::string, const config::device*> wanted;
    for (const auto& d : devices)
        wanted[d.id] = &d;
    std::vector<device_rt*> gone;
    std::vector<pending_write> unsent;
    std::map<std::string, bool> kept;  // id → unchanged
    for (auto& d : impl_->devices) {
        if (d->retiring) continue;  // on its way out since an earlier reload
        auto it = wanted.find(d->cfg.id);
        const bool same = it != wanted.end() && config::same_settings(d->cfg, *it->second);
        kept[d->cfg.id] = same;
        if (!same) gone.push_back(d.get());
    }
    for (auto* d : gone) {
        const bool stays = wanted.contains(d->cfg.id);
        log::info("modbus", stays ? "device changed; restarting it" : "device removed",
                  {{"device", d->cfg.id}});
        impl_->remove(d, stays, lock, unsent);
    }
    std::map<std::string, std::size_t> order;  // config order, for status()
    for (std::size_t i = 0; i < devices.size(); ++i)
        order[devices[i].id] = i;
    std::vector<device_rt*> added;
    for (auto& d : devices) {
        auto k = kept.find(d.id);
        if (k != kept.end() && k->second) continue;
        if (k == kept.end()) log::info("modbus", "device added", {{"device", d.id}});
        added.push_back(impl_->add(std::move(d)));
    }
    std::sort(impl_->devices.begin(), impl_->devices.end(),
              [&](const auto& a, const auto& b) { return order[a->cfg.id] < order[b->cfg.id]; });
    if (impl_->started) {
        poll_now(added, steady::now(), false);
        impl_->spawn_workers();
    }
    lock.unlock();
    impl_->cv.notify_all();
    for (auto& w : unsent)
        w.done({false, false,
                "the device was changed or removed by a config reload; nothing was written"});
}

void poller::stop() {
    impl_->halting = true;
    {
        std::lock_guard lock(impl_->mu);
        impl_->stopping = true;
    }
    impl_->cv.notify_all();
    impl_->poll_done.notify_all();
    for (auto& t : impl_->workers)
        t.join();
    impl_->workers.clear();
    impl_->fail_queued_writes();
    for (auto& ch : impl_->channels)
        ch->lnk->close();
}

std::vector<device_status> poller::status() const {
    std::lock_guard lock(impl_->mu);
    std::vector<device_status> out;
    for (const auto& d : impl_->devices) {
        if (!d->retiring) out.push_back(d->status);
    }
    return out;
}

std::size_t poller::workers() const {
    std::lock_guard lock(impl_->mu);
    return impl_->workers.size();
}

}  // namespace ferry::drivers::modbus
