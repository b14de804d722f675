#include "drivers/serial/reader.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/serial_port.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <thread>

#include "core/log.hpp"
#include "drivers/serial/framer.hpp"
#include "drivers/serial/parser.hpp"

namespace ferry::drivers::serial {
namespace {

namespace asio = boost::asio;
using steady = std::chrono::steady_clock;
using boost::system::error_code;

constexpr auto k_first_backoff = std::chrono::milliseconds(250);
constexpr auto k_max_backoff = std::chrono::milliseconds(10000);
constexpr std::size_t k_read_chunk = 4096;
const char* const k_component = "serial";
// How long update() waits for the io thread to apply a reload (it may be held in the bus).
constexpr auto k_update_wait = std::chrono::seconds(2);

// Every reason a serial_line device counts, created at 0 so a dashboard sees them all.
constexpr std::array<std::string_view, 5> k_reasons = {"parse", "checksum", "too_long", "open",
                                                       "io"};
enum reason_index : std::size_t { r_parse, r_checksum, r_too_long, r_open, r_io };

std::size_t reason_of(frame_error e) {
    switch (e) {
        case frame_error::checksum:
            return r_checksum;
        case frame_error::too_long:
            return r_too_long;
        default:
            return r_parse;
    }
}

// A frame as it may appear in a log line: at most 80 bytes, non-printable bytes as \xNN.
std::string excerpt(std::string_view f) {
    static const char* const hex = "0123456789abcdef";
    std::string out;
    for (std::size_t i = 0; i < f.size() && i < 80; ++i) {
        const auto c = static_cast<unsigned char>(f[i]);
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out += static_cast<char>(c);
        } else {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    if (f.size() > 80) out += "...";
    return out;
}

enum class port_state { unknown, up, down };

struct port_rt : std::enable_shared_from_this<port_rt> {
    port_rt(config::device c, asio::io_context& io)
        : cfg(std::move(c)),
          parser(*of(cfg).parse, cfg.points),
          frm(of(cfg).framing),
          port(io),
          reopen_timer(io),
          poll_timer(io) {}

    config::device cfg;
    std::vector<point_id> ids;
    bool retired = false;  // a reload took it out: handlers still queued do nothing
    device_status status;  // guarded by reader::impl::mu
    line_parser parser;
    framer frm;
    asio::serial_port port;
    asio::steady_timer reopen_timer;
    asio::steady_timer poll_timer;
    std::array<char, k_read_chunk> rbuf{};
    std::vector<field> fields;
    parse_details details;
    std::vector<event> out;
    port_state state = port_state::unknown;
    std::chrono::milliseconds backoff{0};
    steady::time_point next_poll;
    bool writing = false;
    std::array<bool, k_reasons.size()> warned{};  // first error of each reason logged at warn
    bool warned_utf8 = false;

    prometheus::Gauge* up_gauge = nullptr;
    std::array<prometheus::Counter*, k_reasons.size()> errors{};
    prometheus::Counter* frames_ok = nullptr;
    prometheus::Counter* frames_bad = nullptr;
    prometheus::Counter* values_read = nullptr;
    prometheus::Counter* events_sent = nullptr;
    prometheus::Counter* invalid_utf8 = nullptr;
};

}  // namespace

struct reader::impl {
    driver_context ctx;
    asio::io_context io;
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
    std::vector<std::shared_ptr<port_rt>> ports;  // in config order; changed under mu
    std::thread thread;
    std::atomic<bool> stopping{false};
    std::atomic<int> pending_updates{0};  // reloads posted to the io thread, not applied yet
    mutable std::mutex mu;                // guards ports (the vector) and each port's status
    std::mt19937 rng{std::random_device{}()};

    driver_families shared;  // ferry_device_up and the received/sent/errors trio
    prometheus::Family<prometheus::Counter>* frames = nullptr;
    // ferry_input_rejected_total{input="serial",reason}: frames refused by a check, over all
    // devices (the per-device detail is in ferry_driver_errors_total).
    std::array<prometheus::Counter*, k_reasons.size()> rejected{};

    impl(std::vector<config::device> devs, driver_context c) : ctx(c), shared(c.registry) {
        frames = &prometheus::BuildCounter()
                      .Name("ferry_serial_frames_total")
                      .Help("Frames read from serial_line devices, by result (ok, error)")
                      .Register(ctx.registry);
        auto& refused = prometheus::BuildCounter()
                            .Name("ferry_input_rejected_total")
                            .Help("Inputs refused by a budget or a check, by input and reason")
                            .Register(ctx.registry);
        for (auto r : {r_parse, r_checksum, r_too_long})
            rejected[r] =
                &refused.Add({{"input", "serial"}, {"reason", std::string(k_reasons[r])}});
        for (auto& d : devs)
            ports.push_back(make(std::move(d)));
        for (auto& p : ports)
            add_series(*p);
    }

    // Builds a port from its config without touching the port or any series. Throws
    // std::invalid_argument (naming the device) for settings it cannot use.
    std::shared_ptr<port_rt> make(config::device d) {
        if (d.driver != "serial_line" || !of(d).serial || !of(d).parse)
            throw std::invalid_argument("device " + d.id + ": not a serial_line device");
        const std::string id = d.id;
        std::shared_ptr<port_rt> rt;
        try {
            rt = std::make_shared<port_rt>(std::move(d), io);
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument("device " + id + ": " + e.what());
        }
        for (const auto& p : rt->cfg.points) {
            auto pid = ctx.points.find(id + "/" + p.name);
            if (!pid) throw std::logic_error("point not interned: " + id + "/" + p.name);
            rt->ids.push_back(*pid);
        }
        return rt;
    }

    void add_series(port_rt& rt) {
        const auto& id = rt.cfg.id;
        rt.up_gauge = &shared.up.Add({{"device", id}});
        for (std::size_t r = 0; r < k_reasons.size(); ++r)
            rt.errors[r] =
                &shared.errors.Add({{"device", id}, {"reason", std::string(k_reasons[r])}});
        rt.frames_ok = &frames->Add({{"device", id}, {"result", "ok"}});
        rt.frames_bad = &frames->Add({{"device", id}, {"result", "error"}});
        rt.values_read = &shared.received.Add({{"device", id}});
        rt.events_sent = &shared.sent.Add({{"device", id}});
        rt.invalid_utf8 = &shared.invalid_utf8.Add({{"device", id}});
    }

    void remove_series(port_rt& rt) {
        shared.up.Remove(rt.up_gauge);
        for (auto* c : rt.errors)
            shared.errors.Remove(c);
        frames->Remove(rt.frames_ok);
        frames->Remove(rt.frames_bad);
        shared.received.Remove(rt.values_read);
        shared.sent.Remove(rt.events_sent);
        shared.invalid_utf8.Remove(rt.invalid_utf8);
    }

    // On the io thread: the port closes; handlers still queued see `retired` and return.
    static void retire(port_rt& d) {
        d.retired = true;
        error_code ignored;
        d.reopen_timer.cancel();
        d.poll_timer.cancel();
        d.port.close(ignored);
    }

    // ---- port state ---------------------------------------------------------------------

    void open(port_rt& d) {
        if (stopping || d.retired) return;
        const auto& s = *of(d.cfg).serial;
        error_code ec;
        d.port.open(s.port, ec);
        std::string setting;
        if (!ec) setting = configure(d, ec);
        if (ec) {
            error_code ignored;
            if (d.port.is_open()) d.port.close(ignored);
            d.errors[r_open]->Increment();
            log::write(
                d.state != port_state::down ? config::log_level::warn : config::log_level::debug,
                k_component, "cannot open port",
                {{"device", d.cfg.id},
                 {"port", s.port},
                 {"setting", setting.empty() ? std::string("-") : setting},
                 {"error", ec.message()}});
            go_down(d, "cannot open port: " + ec.message());
            schedule_reopen(d);
            return;
        }
        d.frm.reset();  // a partial frame from before is gone
        d.state = port_state::up;
        d.backoff = std::chrono::milliseconds(0);
        d.up_gauge->Set(1);
        {
            std::lock_guard lock(mu);
            d.status.up = true;
            ++d.status.opens;
        }
        log::info(k_component, "port open",
                  {{"device", d.cfg.id}, {"port", s.port}, {"baud", std::to_string(s.baud)}});
        if (ctx.on_status) ctx.on_status(d.cfg.id, true, "");
        read(d);
        if (of(d.cfg).request) {
            d.writing = false;
            d.next_poll = steady::now();
            poll_tick(d);
        }
    }

    // Applies the line settings; on failure says which one the port refused (a pty, for
    // one, takes only 8 data bits).
    static std::string configure(port_rt& d, error_code& ec) {
        const auto& s = *of(d.cfg).serial;
        using base = asio::serial_port_base;
        base::parity::type par = base::parity::none;
        if (s.par == config::parity::even) par = base::parity::even;
        if (s.par == config::parity::odd) par = base::parity::odd;
        d.port.set_option(base::baud_rate(s.baud), ec);
        if (ec) return "baud";
        d.port.set_option(base::character_size(static_cast<unsigned>(s.data_bits)), ec);
        if (ec) return "data_bits";
        d.port.set_option(base::parity(par), ec);
        if (ec) return "parity";
        d.port.set_option(
            base::stop_bits(s.stop_bits == 2 ? base::stop_bits::two : base::stop_bits::one), ec);
        if (ec) return "stop_bits";
        d.port.set_option(base::flow_control(base::flow_control::none), ec);
        return ec ? "flow_control" : "";
    }

    // The port went away (EOF, I/O error): close it, go down, try again later.
    void lost(port_rt& d, const error_code& ec) {
        d.errors[r_io]->Increment();
        log::warn(
            k_component, "port lost",
            {{"device", d.cfg.id}, {"port", of(d.cfg).serial->port}, {"error", ec.message()}});
        error_code ignored;
        d.poll_timer.cancel();
        d.port.close(ignored);
        go_down(d, "port lost: " + ec.message());
        schedule_reopen(d);
    }

    // Once per outage: the gauge drops and every point gets one `bad` event, so consumers see
    // that the values they hold are stale.
    void go_down(port_rt& d, const std::string& why) {
        if (d.state == port_state::down) return;
        if (ctx.on_status) ctx.on_status(d.cfg.id, false, why);
        d.state = port_state::down;
        d.up_gauge->Set(0);
        {
            std::lock_guard lock(mu);
            d.status.up = false;
        }
        log::warn(k_component, "device down", {{"device", d.cfg.id}});
        const auto ts = wall_clock::now();
        d.out.clear();
        for (auto id : d.ids) {
            event e;
            e.point = id;
            e.quality = quality::bad;
            e.ts = ts;
            d.out.push_back(std::move(e));
        }
        publish(d);
    }

    void schedule_reopen(port_rt& d) {
        if (stopping || d.retired) return;
        d.backoff =
            d.backoff.count() == 0 ? k_first_backoff : std::min(d.backoff * 2, k_max_backoff);
        std::uniform_real_distribution<double> jitter(0.8, 1.2);
        const auto wait = std::chrono::milliseconds(
            static_cast<std::int64_t>(static_cast<double>(d.backoff.count()) * jitter(rng)));
        d.reopen_timer.expires_after(wait);
        d.reopen_timer.async_wait([this, self = d.shared_from_this()](const error_code& ec) {
            if (!ec) open(*self);
        });
    }

    // ---- reading ------------------------------------------------------------------------

    void read(port_rt& d) {
        d.port.async_read_some(asio::buffer(d.rbuf), [this, self = d.shared_from_this()](
                                                         const error_code& ec, std::size_t n) {
            auto& p = *self;
            if (ec == asio::error::operation_aborted || stopping || p.retired) return;
            if (ec) return lost(p, ec);
            on_bytes(p, std::string_view(p.rbuf.data(), n));
            read(p);
        });
    }

    void count_error(port_rt& d, std::size_t reason, std::string_view frame) {
        d.errors[reason]->Increment();
        if (rejected[reason]) rejected[reason]->Increment();
        d.frames_bad->Increment();
        {
            std::lock_guard lock(mu);
            ++d.status.frames_bad;
        }
        const bool first = !d.warned[reason];
        d.warned[reason] = true;
        if (first || log::enabled(config::log_level::debug))
            log::write(
                first ? config::log_level::warn : config::log_level::debug, k_component,
                first ? "frame skipped (further ones are logged at debug level)" : "frame skipped",
                {{"device", d.cfg.id},
                 {"reason", std::string(k_reasons[reason])},
                 {"frame", excerpt(frame)}});
    }

    // Text that was not valid UTF-8 reaches consumers repaired (U+FFFD); the first time per
    // device it is logged at warn, with the raw bytes.
    void count_invalid_utf8(port_rt& d, std::string_view frame) {
        d.invalid_utf8->Increment();
        const bool first = !d.warned_utf8;
        d.warned_utf8 = true;
        if (first || log::enabled(config::log_level::debug))
            log::write(first ? config::log_level::warn : config::log_level::debug, k_component,
                       first ? "text is not valid UTF-8; sent with U+FFFD in place of the bad "
                               "bytes (further ones are logged at debug level)"
                             : "text is not valid UTF-8; sent with U+FFFD",
                       {{"device", d.cfg.id}, {"frame", excerpt(frame)}});
    }

    void on_bytes(port_rt& d, std::string_view bytes) {
        const auto ts = wall_clock::now();
        d.out.clear();
        std::uint64_t ok = 0;
        std::size_t values = 0;
        d.frm.feed(
            bytes,
            [&](std::string_view frame) {
                const auto r = d.parser.parse(frame, d.fields, &d.details);
                if (r != frame_error::none) {
                    count_error(d, reason_of(r), frame);
                    // The readings this frame was meant to carry failed: consumers see `bad`
                    // for them rather than a silent gap (ARCHITECTURE.md: bad device data).
                    for (auto i : d.details.named) {
                        event e;
                        e.point = d.ids[i];
                        e.quality = quality::bad;
                        e.ts = ts;
                        d.out.push_back(std::move(e));
                    }
                    return;
                }
                ++ok;
                if (d.details.repaired > 0) count_invalid_utf8(d, frame);
                values += d.fields.size();
                for (auto& f : d.fields) {
                    event e;
                    e.point = d.ids[f.point];
                    e.value = std::move(f.value);
                    e.ts = ts;
                    d.out.push_back(std::move(e));
                }
            },
            [&] { count_error(d, r_too_long, {}); });
        if (ok > 0) {
            d.frames_ok->Increment(static_cast<double>(ok));
            std::lock_guard lock(mu);
            d.status.frames_ok += ok;
        }
        if (d.out.empty()) return;
        if (values > 0) d.values_read->Increment(static_cast<double>(values));
        publish(d);
    }

    void publish(port_rt& d) {
        if (d.out.empty()) return;
        const auto first = ctx.seq.next_n(d.out.size());
        for (std::size_t i = 0; i < d.out.size(); ++i)
            d.out[i].seq = first + i;
        // May block under backpressure (spool full, when_full: block): no port is read then.
        ctx.bus.publish(d.out);
        d.events_sent->Increment(static_cast<double>(d.out.size()));
        d.out.clear();
    }

    // ---- poll requests ------------------------------------------------------------------

    void poll_tick(port_rt& d) {
        if (stopping || d.retired || !d.port.is_open()) return;
        if (!d.writing) {
            d.writing = true;
            asio::async_write(d.port, asio::buffer(of(d.cfg).request->request),
                              [self = d.shared_from_this()](const error_code& ec, std::size_t) {
                                  self->writing = false;
                                  // A failed write means the port is going; the read side
                                  // sees it too and handles the loss once.
                                  if (ec && ec != asio::error::operation_aborted)
                                      log::debug(
                                          k_component, "poll request not written",
                                          {{"device", self->cfg.id}, {"error", ec.message()}});
                              });
        }
        // Fixed rate without drift; slots missed (the thread was blocked) are skipped.
        const auto now = steady::now();
        d.next_poll += of(d.cfg).request->interval;
        if (d.next_poll <= now) d.next_poll = now + of(d.cfg).request->interval;
        d.poll_timer.expires_at(d.next_poll);
        d.poll_timer.async_wait([this, self = d.shared_from_this()](const error_code& ec) {
            if (!ec) poll_tick(*self);
        });
    }
};

reader::reader(std::vector<config::device> devices, const driver_context& ctx)
    : impl_(std::make_unique<impl>(std::move(devices), ctx)) {}

reader::~reader() {
    stop();
}

void reader::start() {
    if (impl_->thread.joinable()) return;
    impl_->stopping = false;
    impl_->work.emplace(impl_->io.get_executor());
    for (auto& d : impl_->ports)
        asio::post(impl_->io, [this, p = d.get()] { impl_->open(*p); });
    impl_->thread = std::thread([this] { impl_->io.run(); });
}

void reader::stop() {
    if (!impl_->thread.joinable()) return;
    impl_->stopping = true;
    asio::post(impl_->io, [this] {
        for (auto& d : impl_->ports) {
            error_code ignored;
            d->reopen_timer.cancel();
            d->poll_timer.cancel();
            d->port.close(ignored);
        }
    });
    impl_->work.reset();
    impl_->thread.join();
    impl_->io.restart();
}

std::vector<device_status> reader::status() const {
    std::lock_guard lock(impl_->mu);
    std::vector<device_status> out;
    for (const auto& p : impl_->ports)
        out.push_back(p->status);
    return out;
}

void reader::check(const std::vector<config::device>& devices) {
    for (const auto& d : devices) {
        if (d.driver != "serial_line" || !of(d).serial || !of(d).parse)
            throw std::invalid_argument("device " + d.id + ": not a serial_line device");
        try {
            line_parser(*of(d).parse, d.points);
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument("device " + d.id + ": " + e.what());
        }
    }
}

void reader::update(std::vector<config::device> devices) {
    auto& m = *impl_;
    // Every device is built here, so a device that cannot be used throws before anything
    // changes. Which of them replace a running port is decided on the io thread, against the
    // ports running then: an earlier reload that could not wait for the io thread (see below)
    // is applied first, in order.
    std::vector<std::shared_ptr<port_rt>> built;
    built.reserve(devices.size());
    for (auto& d : devices)
        built.push_back(m.make(std::move(d)));
    if (m.pending_updates == 0) {
        std::lock_guard lock(m.mu);
        const bool same =
            built.size() == m.ports.size() &&
            std::all_of(built.begin(), built.end(), [&](const std::shared_ptr<port_rt>& b) {
                return std::any_of(m.ports.begin(), m.ports.end(), [&](const auto& p) {
                    return p->cfg.id == b->cfg.id && config::same_settings(p->cfg, b->cfg);
                });
            });
        if (same) return;  // the same ports: nothing to hand over
    }
    // Applied on the io thread, between handlers: the other ports are read on before and
    // after. Waits until it is done, but not longer than k_update_wait: the io thread may be
    // inside a publish that waits for room on the bus (a full `block` spool), and a reload
    // must finish anyway (issue 13); the change then applies once that publish returns.
    auto apply = [&m, built = std::move(built)] {
        std::map<std::string, std::shared_ptr<port_rt>> current;
        {
            std::lock_guard lock(m.mu);
            for (const auto& p : m.ports)
                current[p->cfg.id] = p;
        }
        std::vector<std::shared_ptr<port_rt>> next, fresh;
        for (const auto& b : built) {
            auto it = current.find(b->cfg.id);
            if (it != current.end() && config::same_settings(it->second->cfg, b->cfg)) {
                next.push_back(it->second);
                continue;
            }
            fresh.push_back(b);
            next.push_back(b);
        }
        for (auto& [id, p] : current) {
            if (std::find(next.begin(), next.end(), p) != next.end()) continue;
            impl::retire(*p);
            // (`&name = id`: clang 14, the fuzz build's compiler, cannot capture a binding.)
            const bool stays = std::any_of(built.begin(), built.end(), [&name = id](const auto& b) {
                return b->cfg.id == name;
            });
            log::info(k_component, stays ? "device changed; restarting it" : "device removed",
                      {{"device", id}});
            if (!stays) m.remove_series(*p);
        }
        for (auto& p : fresh) {
            if (!current.contains(p->cfg.id))
                log::info(k_component, "device added", {{"device", p->cfg.id}});
            m.add_series(*p);
        }
        {
            std::lock_guard lock(m.mu);
            m.ports = next;
        }
        if (m.thread.joinable()) {
            for (auto& p : fresh)
                m.open(*p);
        }
    };
    if (!m.thread.joinable()) return apply();
    // An earlier update still waiting means the io thread is held: queue this one behind it.
    const bool held = m.pending_updates++ > 0;
    auto done = std::make_shared<std::promise<void>>();
    auto applied = done->get_future();
    asio::post(m.io, [&m, apply = std::move(apply), done] {
        apply();
        --m.pending_updates;
        done->set_value();
    });
    if (held || applied.wait_for(k_update_wait) != std::future_status::ready)
        log::warn(k_component,
                  "reload waits for the pipeline; the serial devices change once it has room");
}

}  // namespace ferry::drivers::serial
