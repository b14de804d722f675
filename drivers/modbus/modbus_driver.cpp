#include "drivers/modbus/modbus_driver.hpp"

#include <modbus.h>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "drivers/modbus/codec.hpp"
#include "gateway/log.hpp"

namespace ferry::drivers::modbus {
namespace {

using steady = std::chrono::steady_clock;

constexpr std::uint32_t k_max_registers = 125;  // per read request (FC 3/4)
constexpr std::uint32_t k_max_bits = 2000;      // per read request (FC 1/2)
constexpr std::uint32_t k_max_gap = 16;         // unused registers bridged to save a request
constexpr auto k_max_backoff = std::chrono::seconds(30);

bool is_bit_table(config::table t) {
    return t == config::table::coil || t == config::table::discrete;
}

// Errors after which the TCP stream can no longer be trusted: reopen the connection.
bool connection_lost(int err) {
    return err == ETIMEDOUT || err == ECONNRESET || err == EPIPE || err == EBADF ||
           err == ENOTCONN || err == ECONNREFUSED || err == EMBBADDATA || err == EMBBADCRC;
}

std::string error_reason(int err) {
    switch (err) {
        case ETIMEDOUT:
            return "timeout";
        case EMBXILFUN:
            return "illegal_function";
        case EMBXILADD:
            return "illegal_address";
        case EMBXILVAL:
            return "illegal_value";
        case EMBXSFAIL:
            return "device_failure";
        case EMBXSBUSY:
            return "device_busy";
        case EMBXGPATH:
        case EMBXGTAR:
            return "gateway_error";
        case EMBBADCRC:
            return "bad_crc";
        case EMBBADDATA:
            return "bad_data";
        case EMBBADEXC:
            return "bad_exception";
        case EMBMDATA:
            return "too_many_data";
        case EMBBADSLAVE:
            return "bad_slave";
        default:
            return "io";
    }
}

struct read_block {
    config::table tbl;
    std::uint32_t start = 0;
    std::uint32_t count = 0;
    std::vector<std::size_t> points;  // indexes into device points
};

// Groups points of one table into the fewest requests within the protocol limits.
std::vector<read_block> plan_blocks(const std::vector<config::point>& points) {
    std::vector<std::size_t> order(points.size());
    for (std::size_t i = 0; i < order.size(); ++i)
        order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        if (points[a].tbl != points[b].tbl) return points[a].tbl < points[b].tbl;
        return points[a].address < points[b].address;
    });
    std::vector<read_block> blocks;
    for (auto i : order) {
        const auto& p = points[i];
        std::uint32_t n = config::register_count(p);
        std::uint32_t limit = is_bit_table(p.tbl) ? k_max_bits : k_max_registers;
        if (!blocks.empty()) {
            auto& b = blocks.back();
            std::uint32_t end = std::max(b.start + b.count, p.address + n);
            if (b.tbl == p.tbl && p.address <= b.start + b.count + k_max_gap &&
                end - b.start <= limit) {
                b.count = end - b.start;
                b.points.push_back(i);
                continue;
            }
        }
        blocks.push_back(read_block{p.tbl, p.address, n, {i}});
    }
    return blocks;
}

}  // namespace

struct device_rt {
    config::device cfg;
    std::vector<point_id> ids;
    std::vector<read_block> blocks;
    modbus_t* ctx = nullptr;
    bool up = false;
    bool busy = false;
    steady::time_point next_due;
    steady::time_point retry_at;
    std::chrono::milliseconds backoff{0};
    device_status status;
    std::vector<std::uint16_t> regs;
    std::vector<std::uint8_t> bits;
    std::vector<event> out;

    prometheus::Counter* polls_ok = nullptr;
    prometheus::Counter* polls_error = nullptr;
    prometheus::Counter* overruns = nullptr;
    prometheus::Counter* values_read = nullptr;
    prometheus::Counter* events_sent = nullptr;
    prometheus::Gauge* up_gauge = nullptr;
    prometheus::Histogram* poll_seconds = nullptr;
    prometheus::Family<prometheus::Counter>* errors_family = nullptr;

    void close() {
        if (ctx) {
            modbus_close(ctx);
            modbus_free(ctx);
            ctx = nullptr;
        }
    }
};

struct poller::impl {
    driver_context ctx;
    std::size_t max_workers;
    std::vector<std::unique_ptr<device_rt>> devices;
    mutable std::mutex mu;
    std::condition_variable cv;
    bool stopping = false;
    std::vector<std::thread> workers;
    std::mt19937 rng{std::random_device{}()};

    impl(std::vector<config::device> devs, driver_context c, std::size_t w)
        : ctx(c), max_workers(w) {
        auto& polls = prometheus::BuildCounter()
                          .Name("ferry_driver_polls_total")
                          .Help("Device polls by result")
                          .Register(ctx.registry);
        auto& overrun =
            prometheus::BuildCounter()
                .Name("ferry_driver_overruns_total")
                .Help("Poll slots missed because a poll overran or the pipeline pushed back")
                .Register(ctx.registry);
        auto& received = prometheus::BuildCounter()
                             .Name("ferry_driver_received_total")
                             .Help("Point values read from devices")
                             .Register(ctx.registry);
        auto& sent = prometheus::BuildCounter()
                         .Name("ferry_driver_sent_total")
                         .Help("Events published on the bus")
                         .Register(ctx.registry);
        auto& errors = prometheus::BuildCounter()
                           .Name("ferry_driver_errors_total")
                           .Help("Failed device requests by reason")
                           .Register(ctx.registry);
        auto& up = prometheus::BuildGauge()
                       .Name("ferry_device_up")
                       .Help("1 while the device answers")
                       .Register(ctx.registry);
        auto& seconds = prometheus::BuildHistogram()
                            .Name("ferry_driver_poll_seconds")
                            .Help("Duration of one poll of one device")
                            .Register(ctx.registry);
        prometheus::Histogram::BucketBoundaries bounds{
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
        for (auto& d : devs) {
            auto rt = std::make_unique<device_rt>();
            for (const auto& p : d.points) {
                auto id = ctx.points.find(d.id + "/" + p.name);
                if (!id) throw std::logic_error("point not interned: " + d.id + "/" + p.name);
                rt->ids.push_back(*id);
            }
            rt->blocks = plan_blocks(d.points);
            rt->polls_ok = &polls.Add({{"device", d.id}, {"result", "ok"}});
            rt->polls_error = &polls.Add({{"device", d.id}, {"result", "error"}});
            rt->overruns = &overrun.Add({{"device", d.id}});
            rt->values_read = &received.Add({{"device", d.id}});
            rt->events_sent = &sent.Add({{"device", d.id}});
            rt->up_gauge = &up.Add({{"device", d.id}});
            rt->poll_seconds = &seconds.Add({{"device", d.id}}, bounds);
            rt->errors_family = &errors;
            rt->cfg = std::move(d);
            devices.push_back(std::move(rt));
        }
    }

    ~impl() {
        for (auto& d : devices)
            d->close();
    }

    void set_up(device_rt& d, bool up) {
        if (d.up == up) return;
        d.up = up;
        d.up_gauge->Set(up ? 1 : 0);
        if (up)
            log::info("modbus", "device up", {{"device", d.cfg.id}});
        else
            log::warn("modbus", "device down", {{"device", d.cfg.id}});
    }

    void count_error(device_rt& d, const std::string& reason) {
        d.errors_family->Add({{"device", d.cfg.id}, {"reason", reason}}).Increment();
    }

    bool connect(device_rt& d) {
        if (d.ctx) return true;
        auto port = std::to_string(d.cfg.port);
        d.ctx = modbus_new_tcp_pi(d.cfg.host.c_str(), port.c_str());
        if (!d.ctx) {
            count_error(d, "io");
            return false;
        }
        auto ms = d.cfg.timeout.count();
        modbus_set_response_timeout(d.ctx, static_cast<std::uint32_t>(ms / 1000),
                                    static_cast<std::uint32_t>((ms % 1000) * 1000));
        modbus_set_slave(d.ctx, d.cfg.unit_id);
        if (modbus_connect(d.ctx) == -1) {
            int err = errno;
            log::warn("modbus", "connect failed",
                      {{"device", d.cfg.id},
                       {"host", d.cfg.host},
                       {"port", port},
                       {"error", modbus_strerror(err)}});
            count_error(d, "connect");
            d.close();
            return false;
        }
        return true;
    }

    // Reads one block, with retries. Returns 0 or the errno of the last failure.
    int read_block_regs(device_rt& d, const read_block& b) {
        int err = 0;
        for (int attempt = 0; attempt <= d.cfg.retries; ++attempt) {
            if (!connect(d)) return ECONNREFUSED;
            int rc;
            auto addr = static_cast<int>(b.start);
            auto n = static_cast<int>(b.count);
            switch (b.tbl) {
                case config::table::holding:
                    d.regs.resize(b.count);
                    rc = modbus_read_registers(d.ctx, addr, n, d.regs.data());
                    break;
                case config::table::input:
                    d.regs.resize(b.count);
                    rc = modbus_read_input_registers(d.ctx, addr, n, d.regs.data());
                    break;
                case config::table::coil:
                    d.bits.resize(b.count);
                    rc = modbus_read_bits(d.ctx, addr, n, d.bits.data());
                    break;
                case config::table::discrete:
                default:
                    d.bits.resize(b.count);
                    rc = modbus_read_input_bits(d.ctx, addr, n, d.bits.data());
                    break;
            }
            if (rc == n) return 0;
            err = rc == -1 ? errno : EMBMDATA;
            count_error(d, error_reason(err));
            // A protocol exception is the device's definite answer: retrying will not help.
            if (err >= EMBXILFUN && err <= EMBXGTAR) return err;
            if (connection_lost(err)) d.close();
        }
        return err;
    }

    void poll(device_rt& d) {
        auto started = steady::now();
        d.out.clear();
        bool all_ok = true;
        bool reachable = true;
        for (const auto& b : d.blocks) {
            int err = reachable ? read_block_regs(d, b) : ECONNREFUSED;
            auto ts = wall_clock::now();
            if (err != 0) {
                all_ok = false;
                if (!d.ctx) reachable = false;  // no connection left: the rest would fail too
            }
            for (auto i : b.points) {
                event e;
                e.point = d.ids[i];
                e.ts = ts;
                const auto& p = d.cfg.points[i];
                if (err != 0) {
                    e.quality = quality::bad;
                } else if (is_bit_table(b.tbl)) {
                    e.value = decode_bit(p, d.bits[p.address - b.start]);
                } else {
                    auto n = config::register_count(p);
                    e.value = decode_registers(p, std::span<const std::uint16_t>(
                                                      d.regs.data() + (p.address - b.start), n));
                    if (std::holds_alternative<std::monostate>(e.value)) e.quality = quality::bad;
                }
                d.out.push_back(std::move(e));
            }
        }
        if (!d.out.empty()) {
            auto first = ctx.seq.next_n(d.out.size());
            for (std::size_t i = 0; i < d.out.size(); ++i)
                d.out[i].seq = first + i;
        }
        d.poll_seconds->Observe(std::chrono::duration<double>(steady::now() - started).count());
        if (all_ok) {
            d.polls_ok->Increment();
            ++d.status.polls_ok;
            d.backoff = std::chrono::milliseconds(0);
            set_up(d, true);
        } else {
            d.polls_error->Increment();
            ++d.status.polls_failed;
            if (!reachable) {
                set_up(d, false);
                // Exponential backoff with jitter for a device that does not answer at all.
                auto base = d.backoff.count() == 0 ? d.cfg.poll_interval : d.backoff * 2;
                d.backoff = std::min<std::chrono::milliseconds>(base, k_max_backoff);
                std::uniform_real_distribution<double> jitter(0.8, 1.2);
                d.retry_at =
                    steady::now() + std::chrono::milliseconds(static_cast<std::int64_t>(
                                        static_cast<double>(d.backoff.count()) * jitter(rng)));
            }
        }
        std::uint64_t good = 0;
        for (const auto& e : d.out)
            good += e.quality == quality::good ? 1 : 0;
        d.values_read->Increment(static_cast<double>(good));
        // May block when the pipeline applies backpressure (spool full, when_full: block).
        ctx.bus.publish(d.out);
        d.events_sent->Increment(static_cast<double>(d.out.size()));
    }

    void reschedule(device_rt& d, steady::time_point now) {
        d.next_due += d.cfg.poll_interval;
        if (d.next_due <= now) {
            auto missed = (now - d.next_due) / d.cfg.poll_interval + 1;
            d.next_due += d.cfg.poll_interval * missed;
            d.overruns->Increment(static_cast<double>(missed));
            d.status.overruns += static_cast<std::uint64_t>(missed);
        }
        // A device in backoff waits for its retry time, aligned to its poll grid.
        while (d.next_due < d.retry_at)
            d.next_due += d.cfg.poll_interval;
    }

    void worker() {
        std::unique_lock lock(mu);
        while (!stopping) {
            device_rt* next = nullptr;
            for (auto& d : devices) {
                if (!d->busy && (!next || d->next_due < next->next_due)) next = d.get();
            }
            if (!next) {
                cv.wait(lock);
                continue;
            }
            if (next->next_due > steady::now()) {
                cv.wait_until(lock, next->next_due);
                continue;  // re-evaluate: another worker may have taken it, or we stop
            }
            next->busy = true;
            lock.unlock();
            poll(*next);
            lock.lock();
            next->busy = false;
            reschedule(*next, steady::now());
            cv.notify_all();
        }
    }
};

poller::poller(std::vector<config::device> devices, driver_context ctx, std::size_t max_workers)
    : impl_(
          std::make_unique<impl>(std::move(devices), ctx, std::max<std::size_t>(max_workers, 1))) {}

poller::~poller() {
    stop();
}

void poller::start() {
    std::lock_guard lock(impl_->mu);
    if (!impl_->workers.empty()) return;
    auto now = steady::now();
    for (auto& d : impl_->devices)
        d->next_due = now;
    std::size_t n = std::min(impl_->max_workers, impl_->devices.size());
    for (std::size_t i = 0; i < n; ++i)
        impl_->workers.emplace_back([this] { impl_->worker(); });
}

void poller::stop() {
    {
        std::lock_guard lock(impl_->mu);
        impl_->stopping = true;
    }
    impl_->cv.notify_all();
    for (auto& t : impl_->workers)
        t.join();
    impl_->workers.clear();
    for (auto& d : impl_->devices)
        d->close();
}

std::vector<device_status> poller::status() const {
    std::lock_guard lock(impl_->mu);
    std::vector<device_status> out;
    for (const auto& d : impl_->devices) {
        auto s = d->status;
        s.up = d->up;
        out.push_back(s);
    }
    return out;
}

}  // namespace ferry::drivers::modbus
