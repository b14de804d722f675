// The daemon: builds the pipeline from a loaded config, runs it, reloads it, stops it.
//
// Build (constructor): the spool, then the identity (seq marks) and the seq source, the bus,
// the rule engine and its `block` subscription, the device status board (device_status.hpp),
// one source per registered driver (drivers/registry.hpp; they get their devices, not
// started, and report up/down to the board), the publisher, the HTTP server
// and read model, the command service. Nothing runs yet.
// Start (run): HTTP, the read thread, commands, the publisher, the rule thread, and last the
// sources: every consumer is there before the first event is sampled.
// Stop (SIGTERM/SIGINT): the reverse where it matters for data: the sources stop first (a
// poll under way finishes; queued writes are answered unsent; online devices' statuses turn
// "offline", reason "stopped"), then commands; the rule
// subscription closes and the rule thread drains it and writes every open batch to the spool;
// then the read thread; the publisher delivers from the spool for what is left of the stop
// budget; the spool closes; HTTP last. A guard releases a wedged pipeline (no room in a
// `block` spool, no progress) and counts what it held as dropped{shutdown}.
// Reload (SIGHUP): load and validate the whole file; sections that change only at a restart
// are compared first (restart_required); each driver's check runs on its new devices; then,
// past the last point that can fail: new points interned and routed, a new rule engine
// handed to the rule thread, the read model, the device status board, each source updated (devices
// that changed driver leave the old source before they join the new one), the command service's
// devices, the log level.
#include "gateway/daemon.hpp"

#include <malloc.h>
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <thread>

#include "commands/commands.hpp"
#include "core/bus.hpp"
#include "core/conservation.hpp"
#include "core/json.hpp"
#include "core/log.hpp"
#include "core/seq.hpp"
#include "drivers/registry.hpp"
#include "gateway/components.hpp"
#include "gateway/device_status.hpp"
#include "gateway/http_server.hpp"
#include "gateway/read_model.hpp"
#include "rules/engine.hpp"
#include "upstream/identity.hpp"
#include "upstream/mqtt_publisher.hpp"
#include "upstream/sparkplug/node.hpp"
#include "upstream/spool.hpp"

namespace ferry {

const char* build_info::version() {
    return FERRY_VERSION;
}
const char* build_info::arch() {
    return FERRY_ARCH;
}
const char* build_info::build_type() {
    return FERRY_BUILD_TYPE;
}

namespace {

using steady = std::chrono::steady_clock;
// Events between the bus and the rule engine (and the read model). Small enough that what
// sits here at a shutdown with a full `block` spool is little (it is counted as
// dropped{shutdown}), large enough for a burst of polls: 8,192 events ≈ 0.5 MiB.
constexpr std::size_t k_rule_queue = 8192;
// How long the rule and read-model threads let events gather once the first is queued,
// instead of waking for each poll's publish (bus.hpp, subscription::pop): at 500 polls/s the
// rule thread woke ~700 times a second. Batches may leave up to this much later than their
// max_age; /api/v1/values may lag the device by this much more.
constexpr auto k_rule_gather = std::chrono::milliseconds(10);
constexpr auto k_read_gather = std::chrono::milliseconds(50);
// SIGTERM → exit when nothing is slow: what is left of it after the pipeline stopped is the
// publisher's time to deliver (at least 100 ms).
constexpr auto k_stop_budget = std::chrono::milliseconds(1800);
// The pipeline's part of a stop waits for progress (a slow device's poll, a draining spool)
// up to this; with the publisher's ≤ 1.9 s after it, within systemd's TimeoutStopSec (20 s).
constexpr auto k_stop_limit = std::chrono::seconds(15);
// No progress for this long while the rule thread waits for spool room: wedged.
constexpr auto k_wedged_after = std::chrono::seconds(2);

// A Prometheus counter that follows a count kept elsewhere (an atomic of the bus, the
// shutdown loss), synced from any thread (the rule thread, a scrape, stop): each increase is
// added exactly once.
struct counter_mirror {
    prometheus::Counter* counter = nullptr;
    std::atomic<std::uint64_t> seen{0};
    void sync(std::uint64_t now) {
        auto prev = seen.load();
        while (now > prev) {
            if (seen.compare_exchange_weak(prev, now)) {
                counter->Increment(static_cast<double>(now - prev));
                return;
            }
        }
    }
};

}  // namespace

struct daemon::impl {
    config::config cfg;
    prometheus::Registry registry;
    point_table points;
    std::unique_ptr<upstream::spool> spool;
    std::unique_ptr<upstream::identity> ids;
    std::unique_ptr<seq_source> seq;
    std::uint64_t seq_start = 0;  // the first seq this run hands out (logged at start)
    std::unique_ptr<ferry::bus> bus;
    std::unique_ptr<rules::engine> engine;
    std::shared_ptr<subscription> rule_sub;
    // Device status upstream (ferry/{gateway}/device/{device}/status), from the drivers'
    // reports to the publisher's retained states.
    std::unique_ptr<device_status_board> statuses;
    // One source per registered driver, in drivers::registered() order.
    std::vector<std::unique_ptr<drivers::source>> sources;
    std::unique_ptr<upstream::mqtt_publisher> publisher;
    // Sparkplug B edge node (upstream.sparkplug): the codec of sparkplug_b rules, births and
    // deaths through the publisher's session hooks (docs/SPARKPLUG.md).
    std::unique_ptr<upstream::sparkplug::node> sparkplug;
    std::unique_ptr<http_server> http;
    // Downlink commands to the sources that take writes (build_commands), same order.
    std::vector<std::unique_ptr<commands::writer>> writers;
    std::unique_ptr<commands::service> commands;
    std::unique_ptr<read_model> reads;
    std::shared_ptr<subscription> read_sub;
    std::thread read_thread;
    std::atomic<bool> running{false};
    prometheus::Family<prometheus::Counter>* reloads = nullptr;
    prometheus::Family<prometheus::Counter>* rule_family = nullptr;
    // A reload hands a new engine to the rule thread, which swaps it in between two passes.
    std::mutex engine_mu;
    std::condition_variable engine_cv;
    std::unique_ptr<rules::engine> pending_engine;
    // True while the rule thread is between its check for a pending engine and the end of
    // its pop (guarded by engine_mu): only events popped then could still reach the old engine.
    bool rule_popping = false;
    // Liveness of the rule thread, for the systemd watchdog: the time of its last loop pass,
    // and whether it is waiting on purpose (a full spool with when_full: block).
    std::atomic<std::int64_t> rule_pulse_ms{0};
    std::atomic<bool> rule_waiting_for_room{false};
    // Bumped by every pass of the rule thread and every append: evidence of progress at stop.
    std::atomic<std::uint64_t> rule_progress{0};
    // How long appends may keep failing for a reason other than a full disk (I/O errors, a
    // spool that cannot be rebuilt) before the watchdog is no longer fed: 10 watchdog
    // intervals, within [5 s, 60 s] (set in run()).
    std::atomic<std::int64_t> append_failure_budget_ms{60000};
    std::thread rule_thread;
    std::atomic<std::uint64_t> lost_at_shutdown{0};

    // Per rule, per outcome (rules::k_outcomes): the counter and the engine's count last seen.
    std::vector<std::array<prometheus::Counter*, rules::k_outcomes.size()>> rule_events;
    std::vector<std::array<std::uint64_t, rules::k_outcomes.size()>> rule_events_seen;
    // Per rule: when the last dead-letter log line was written, and the count it covered.
    std::vector<std::pair<steady::time_point, std::uint64_t>> dead_letter_logged;
    std::array<counter_mirror, static_cast<std::size_t>(drop_reason::count_)> bus_dropped;

    // Conservation (core/conservation.hpp): every event the drivers publish is delivered or
    // counted in ferry_events_dropped_total with a reason. Ours: produced, and the drops of
    // the rule path: filtered, deduped, unrouted, bus_overflow, shutdown.
    prometheus::Counter* produced_events = nullptr;
    std::array<prometheus::Counter*, static_cast<std::size_t>(drop::count_)> events_dropped_by{};
    counter_mirror produced_mirror;   // bus::published()
    counter_mirror unmatched_mirror;  // unrouted: points the rule subscription does not match
    counter_mirror overflow_mirror;   // bus_overflow: the rule subscription's queue drops
    counter_mirror closed_mirror;     // shutdown: published after the rule queue closed
    counter_mirror lost_mirror;       // shutdown: batches the spool could not take at stop
    std::uint64_t engine_unrouted_seen = 0;  // of the current engine (rule thread only)

    std::string status_line() const;
    void reload();
    bool apply(config::config next);
    bool making_progress() const;

    explicit impl(config::config c) : cfg(std::move(c)) {}

    void build() {
        log::set_level(cfg.gateway.level);
        prometheus::BuildGauge()
            .Name("ferry_build_info")
            .Help("Ferry's version and target architecture")
            .Register(registry)
            .Add({{"version", build_info::version()}, {"arch", build_info::arch()}})
            .Set(1);
        reloads = &prometheus::BuildCounter()
                       .Name("ferry_config_reloads_total")
                       .Help("SIGHUP config reloads by result (applied, invalid, restart_required)")
                       .Register(registry);

        for (const auto& d : cfg.devices) {
            for (const auto& p : d.points)
                points.intern(d.id, p.name, p.unit);
        }

        auto spool_dir = std::filesystem::path(cfg.upstream.spool.path).parent_path();
        if (!spool_dir.empty()) std::filesystem::create_directories(spool_dir);
        spool = std::make_unique<upstream::spool>(cfg.upstream.spool, registry);

        // seq never repeats: the start and both copies of its mark (upstream/identity.hpp).
        std::filesystem::create_directories(cfg.gateway.data_dir);
        ids = std::make_unique<upstream::identity>(
            (std::filesystem::path(cfg.gateway.data_dir) / "identity").string(), *spool, registry);
        const auto start = ids->seq_start();  // reads the clock: call it once
        seq_start = start + 1;
        seq = std::make_unique<seq_source>(
            start, [this](std::uint64_t mark) { return ids->persist(mark); });

        bus = std::make_unique<ferry::bus>(points);
        if (cfg.upstream.sparkplug) {
            sparkplug = std::make_unique<upstream::sparkplug::node>(*cfg.upstream.sparkplug, *spool,
                                                                    &registry);
            sparkplug->configure(cfg.devices, points);
        }
        engine = std::make_unique<rules::engine>(cfg.rules, points, cfg.gateway.id,
                                                 cfg.dead_letter.topic, sparkplug.get());
        // `block`: nothing is dropped between the drivers and the spool; when the spool
        // cannot take more (when_full: block), the drivers feel it and skip polls.
        rule_sub =
            bus->subscribe("rules", engine->patterns(), k_rule_queue, overflow_policy::block);

        rule_family = &prometheus::BuildCounter()
                           .Name("ferry_rule_events_total")
                           .Help("Events through each rule by outcome")
                           .Register(registry);
        for (auto* r :
             {&reloads->Add({{"result", "applied"}}), &reloads->Add({{"result", "invalid"}}),
              &reloads->Add({{"result", "restart_required"}})})
            r->Increment(0);
        count_rules();
        auto& dropped = prometheus::BuildCounter()
                            .Name("ferry_bus_dropped_total")
                            .Help("Events dropped by the bus, by reason")
                            .Register(registry);
        for (std::size_t r = 0; r < bus_dropped.size(); ++r) {
            bus_dropped[r].counter =
                &dropped.Add({{"reason", std::string(to_string(static_cast<drop_reason>(r)))}});
        }
        produced_events = &prometheus::BuildCounter()
                               .Name("ferry_events_produced_total")
                               .Help("Events the drivers published onto the bus")
                               .Register(registry)
                               .Add({});
        for (std::size_t r = 0; r < events_dropped_by.size(); ++r)
            events_dropped_by[r] = &events_dropped(registry, static_cast<drop>(r));
        produced_mirror.counter = produced_events;
        unmatched_mirror.counter = events_dropped_by[static_cast<std::size_t>(drop::unrouted)];
        overflow_mirror.counter = events_dropped_by[static_cast<std::size_t>(drop::bus_overflow)];
        closed_mirror.counter = events_dropped_by[static_cast<std::size_t>(drop::shutdown)];
        lost_mirror.counter = events_dropped_by[static_cast<std::size_t>(drop::shutdown)];

        // Each driver gets its devices; the loader accepted only drivers that are registered.
        // Their reports of up/down reach the board only once everything runs (start()).
        statuses = std::make_unique<device_status_board>(
            cfg.gateway.id, drivers::device_ids(cfg.devices),
            [this](const std::string& topic, std::string payload) {
                publisher->set_retained(topic, std::move(payload));
            });
        const drivers::driver_context ctx{
            *bus,
            *seq,
            points,
            registry,
            cfg.upstream.spool.path,
            [this](const std::string& device, bool up, const std::string& reason) {
                statuses->report(device, up, reason);
                if (reads) reads->report(device, up);
                if (sparkplug)
                    if (auto m = sparkplug->device_state(device, up))
                        publisher->send_now({std::move(*m)});
            }};
        auto devices_of = split_by_driver(cfg.devices);
        for (std::size_t i = 0; i < devices_of.size(); ++i)
            sources.push_back(drivers::registered()[i]->make(std::move(devices_of[i]), ctx));
        publisher = std::make_unique<upstream::mqtt_publisher>(
            cfg.upstream.mqtt, cfg.gateway.id, *spool, registry, cfg.dead_letter.topic,
            cfg.upstream.replay);
        if (cfg.http.enabled) {
            http = std::make_unique<http_server>(cfg.http.host, cfg.http.port, registry,
                                                 [this] { return ready(); });
            http->on_scrape([this] { sync_bus_counters(); });
            build_read_model();
        }
        build_commands();
        build_sparkplug();
    }

    // ---- Sparkplug B (docs/SPARKPLUG.md) ----------------------------------------------------
    void build_sparkplug() {
        if (!sparkplug) return;
        upstream::mqtt_publisher::session_hooks h;
        h.will = [this] { return sparkplug->will(); };
        h.after_connect = [this] { return sparkplug->after_connect(); };
        if (!sparkplug->state_topic().empty()) h.gate = [this] { return sparkplug->gate(); };
        h.before_disconnect = [this] {
            return std::vector<upstream::mqtt_publisher::outbound>{sparkplug->death()};
        };
        h.before_send = [this](const std::string& topic, std::string& payload,
                               std::int64_t created_ms) {
            sparkplug->before_send(topic, payload, created_ms);
        };
        h.filters = sparkplug->command_filters();
        if (!sparkplug->state_topic().empty()) h.filters.push_back(sparkplug->state_topic());
        h.inbound = [this](const std::string& topic, const std::string& payload, bool retained) {
            if (!topic.starts_with("spBv1.0/")) return false;
            if (topic == sparkplug->state_topic()) {
                if (auto online = sparkplug->host_state(payload))
                    log::info("sparkplug",
                              *online ? "primary host online: births, then the held "
                                        "data (historical)"
                                      : "primary host offline: data held in the spool",
                              {{"topic", topic}});
                return true;
            }
            on_sparkplug_command(topic, payload, retained);
            return true;
        };
        publisher->set_session_hooks(std::move(h));
    }

    // NCMD "Node Control/Rebirth": every birth again. DCMD: each metric becomes a command on
    // the validated, idempotent path (commands/), as if published to its set topic; the
    // answer goes to that command's result topic, the new value comes in DDATA.
    void on_sparkplug_command(const std::string& topic, const std::string& payload, bool retained) {
        auto cmd = sparkplug->parse_command(topic, payload);
        for (const auto& e : cmd.errors)
            log::warn("sparkplug", "command not understood", {{"topic", topic}, {"error", e}});
        if (cmd.rebirth) {
            log::info("sparkplug", "rebirth requested", {{"topic", topic}});
            publisher->send_now(sparkplug->births());
        }
        for (const auto& w : cmd.writes) {
            std::string json = "{\"id\":";
            json::append_string(json, w.id);
            json += ",\"value\":";
            json::append_value(json, w.value);
            if (w.ts_ms > 0) json += ",\"ts\":" + std::to_string(w.ts_ms);
            json += '}';
            commands->on_message(
                "ferry/" + cfg.gateway.id + "/cmd/" + w.device + "/" + w.tag + "/set", json,
                retained);
        }
    }
    // ---- end of Sparkplug B --------------------------------------------------------------------

    // ---- Downlink commands (issue 9): the write side, apart from telemetry ------------------
    // MQTT set messages -> commands::service (checks, idempotency store beside the spool)
    // -> the source of the device's driver (the Modbus poller's channel scheduler) -> result
    // straight back over MQTT (not the spool). Disabled commands are still subscribed to, and
    // answered "disabled".
    struct source_writer final : commands::writer {
        drivers::source& src;
        explicit source_writer(drivers::source& s) : src(s) {}
        std::string check(const config::device& d, const config::point& p,
                          const ferry::value& v) const override {
            return src.check_write(d.id, p.name, v);
        }
        void write(const config::device& d, const config::point& p, const ferry::value& v,
                   std::function<void(commands::write_outcome)> done) override {
            src.write(d.id, p.name, v, [done = std::move(done)](drivers::write_result r) {
                done({r.ok, r.attempted, std::move(r.error)});
            });
        }
    };

    // The devices of each registered driver, in drivers::registered() order.
    static std::vector<std::vector<config::device>> split_by_driver(
        const std::vector<config::device>& all) {
        const auto registered = drivers::registered();
        std::vector<std::vector<config::device>> out(registered.size());
        for (const auto& d : all) {
            for (std::size_t i = 0; i < registered.size(); ++i) {
                if (registered[i]->serves(d.driver)) {
                    out[i].push_back(d);
                    break;
                }
            }
        }
        return out;
    }

    void build_commands() {
        for (const auto& src : sources)
            writers.push_back(src->takes_writes() ? std::make_unique<source_writer>(*src)
                                                  : nullptr);
        auto dir = std::filesystem::path(cfg.upstream.spool.path).parent_path();
        commands = std::make_unique<commands::service>(
            cfg, (dir / "commands.db").string(),
            [this](const config::device& d) -> commands::writer* {
                const auto registered = drivers::registered();
                for (std::size_t i = 0; i < registered.size(); ++i)
                    if (registered[i]->serves(d.driver)) return writers[i].get();
                return nullptr;
            },
            [this](const std::string& topic, const std::string& payload) {
                return publisher->publish_result(topic, payload);
            },
            registry);
        publisher->set_subscription(
            commands->filter(),
            [this](const std::string& topic, const std::string& payload, bool retained) {
                commands->on_message(topic, payload, retained);
            },
            commands::max_inbound_packet(cfg.commands));
    }
    // ---- end of downlink commands ------------------------------------------------------------

    // The query side: last values and device states, fed from the bus. drop_oldest: a
    // read model that falls behind must never slow the pipeline (its drops are counted).
    void build_read_model() {
        std::vector<device_ref> refs;
        for (const auto& d : cfg.devices)
            refs.push_back({d.id, d.driver});
        reads = std::make_unique<read_model>(points, std::move(refs));
        std::vector<topic_pattern> all{*topic_pattern::compile("#")};
        // Room for a few polls of every point: one poll of a large device is published in one
        // piece, and the consumer cannot pop while it lands (the queue grows only as needed).
        // Sized at start: points a reload adds share that room.
        read_sub = bus->subscribe("read_model", all, std::max(k_rule_queue, 4 * points.size()),
                                  overflow_policy::drop_oldest);
        http->add_json("/api/v1/values", [this] { return reads->values_json(); });
        http->add_json("/api/v1/devices", [this] { return reads->devices_json(); });
    }

    void read_loop() {
        std::vector<event> events;
        for (;;) {
            events.clear();
            read_sub->pop(events, 4096, steady::now() + std::chrono::milliseconds(500),
                          k_read_gather);
            reads->apply(events);
            if (read_sub->drained()) return;
        }
    }

    // Ready once the spool is open and every component runs. A broker that is down is no
    // reason to be unready: the spool takes the data meanwhile.
    readiness ready() const {
        if (!running.load()) return {false, "starting or stopping"};
        return {true, {}};
    }

    void update_counters() {
        for (std::size_t r = 0; r < rule_events.size(); ++r) {
            auto now = engine->counters(r).values();
            auto& seen = rule_events_seen[r];
            for (std::size_t o = 0; o < now.size(); ++o)
                rule_events[r][o]->Increment(static_cast<double>(now[o] - seen[o]));
            // Outcomes that end an event's way are conservation drops (one per route).
            dropped(drop::filtered).Increment(static_cast<double>(now[1] - seen[1]));
            dropped(drop::deduped).Increment(static_cast<double>(now[2] - seen[2]));
            seen = now;
            // A broken filter fails on every event: one line per rule at most every 10 s,
            // with the count since the last line (the counter has every one).
            auto& [logged_at, logged_count] = dead_letter_logged[r];
            if (now[3] > logged_count && steady::now() - logged_at >= std::chrono::seconds(10)) {
                log::warn("rules", "events sent to dead-letter",
                          {{"rule", engine->rule_names()[r]},
                           {"events", std::to_string(now[3] - logged_count)}});
                logged_at = steady::now();
                logged_count = now[3];
            }
        }
        const auto unrouted = engine->unrouted();
        dropped(drop::unrouted).Increment(static_cast<double>(unrouted - engine_unrouted_seen));
        engine_unrouted_seen = unrouted;
        sync_bus_counters();
    }

    static std::uint64_t count(const prometheus::Counter& c) {
        return static_cast<std::uint64_t>(c.Value());
    }
    // "filtered:3,deduped:0,..." over every reason (those other components count too).
    std::string dropped_summary() const {
        std::string out;
        for (std::size_t r = 0; r < events_dropped_by.size(); ++r) {
            if (!out.empty()) out += ',';
            out += std::string(to_string(static_cast<drop>(r))) + ":" +
                   std::to_string(count(*events_dropped_by[r]));
        }
        return out;
    }

    prometheus::Counter& dropped(drop d) { return *events_dropped_by[static_cast<std::size_t>(d)]; }

    // The counts the bus (and stop) keep in atomics, into their metrics. Any thread.
    void sync_bus_counters() {
        for (std::size_t r = 0; r < bus_dropped.size(); ++r)
            bus_dropped[r].sync(bus->dropped(static_cast<drop_reason>(r)));
        produced_mirror.sync(bus->published());
        unmatched_mirror.sync(rule_sub->unmatched());
        overflow_mirror.sync(rule_sub->dropped(drop_reason::drop_oldest) +
                             rule_sub->dropped(drop_reason::drop_newest));
        closed_mirror.sync(rule_sub->dropped(drop_reason::closed));
        lost_mirror.sync(lost_at_shutdown.load());
    }

    // Hands a finished batch to the spool. On an I/O error (disk full) it keeps the batch
    // and retries: the rule thread stalls, the bus fills, the drivers skip polls — data
    // already sampled waits in bounded memory instead of being thrown away.
    // The batches of one pass: as many as the spool takes in one transaction
    // (append_group), the rest one by one.
    void to_spool(const std::vector<rules::batch>& batches) {
        std::size_t done = 0;
        if (batches.size() > 1) {
            std::vector<upstream::group_item> items;
            items.reserve(batches.size());
            for (const auto& b : batches)
                items.push_back({b.topic, b.qos, b.retain, static_cast<std::uint32_t>(b.events),
                                 [&b, this](std::uint64_t batch_no, std::string& out) {
                                     engine->wrap(b, batch_no, out);
                                 },
                                 b.expiry_s});
            done = spool->append_group(items);
            if (done > 0) ++rule_progress;
        }
        for (std::size_t i = done; i < batches.size(); ++i)
            to_spool(batches[i]);
    }

    void to_spool(const rules::batch& b) {
        auto encode = [&](std::uint64_t batch_no, std::string& out) {
            engine->wrap(b, batch_no, out);
        };
        auto backoff = std::chrono::milliseconds(50);
        const auto first_try = steady::now();
        for (;;) {
            rule_waiting_for_room = cfg.upstream.spool.full == config::when_full::block;
            auto r = spool->append(b.topic, b.qos, b.retain, static_cast<std::uint32_t>(b.events),
                                   encode, b.expiry_s);
            rule_waiting_for_room = false;
            if (r != upstream::append_result::error) {
                ++rule_progress;
                if (r == upstream::append_result::closed) lost_at_shutdown += b.events;
                return;
            }
            // A full disk is a wait on purpose too: the watchdog must not restart us for it
            // (a restart would throw away what is held in memory). Any other error is given
            // a budget; past it the watchdog starves and systemd restarts a Ferry that does
            // not recover by itself.
            rule_waiting_for_room = spool->last_append_disk_full() ||
                                    steady::now() - first_try <
                                        std::chrono::milliseconds(append_failure_budget_ms.load());
            std::this_thread::sleep_for(backoff);
            rule_waiting_for_room = false;
            backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
            // A stop does not end the retries: a disk that heals within the stop keeps the
            // batch. Only the stop's release of a wedged pipeline (spool closed: `closed`
            // above, counted as shutdown) gives it up.
        }
    }

    // The counters of the engine's rules, from 0 (a new engine counts from 0).
    void count_rules() {
        rule_events.clear();
        rule_events_seen.clear();
        dead_letter_logged.clear();
        for (const auto& name : engine->rule_names()) {
            auto& row = rule_events.emplace_back();
            for (std::size_t o = 0; o < row.size(); ++o)
                row[o] = &rule_family->Add(
                    {{"rule", name}, {"outcome", std::string(rules::k_outcomes[o])}});
            rule_events_seen.emplace_back();
            dead_letter_logged.emplace_back();
        }
    }

    // On the rule thread: what the old engine holds goes to the spool, then the new one runs.
    void swap_engine(std::vector<rules::batch>& out) {
        std::unique_ptr<rules::engine> next;
        {
            std::lock_guard lock(engine_mu);
            if (!pending_engine) {
                rule_popping = true;
                return;
            }
            next = std::move(pending_engine);
        }
        engine->flush_all(out);
        to_spool(out);
        out.clear();
        update_counters();
        const auto& keep = next->rule_names();
        for (std::size_t r = 0; r < rule_events.size(); ++r) {
            if (std::find(keep.begin(), keep.end(), engine->rule_names()[r]) != keep.end())
                continue;
            for (auto* c : rule_events[r])
                rule_family->Remove(c);
        }
        engine = std::move(next);
        engine_unrouted_seen = 0;
        count_rules();
        {
            std::lock_guard lock(engine_mu);
            rule_popping = true;
        }
        engine_cv.notify_all();
    }

    void rule_loop() {
        std::vector<event> events;
        std::vector<rules::batch> out;
        events.reserve(4096);
        for (;;) {
            swap_engine(out);
            auto now = steady::now();
            auto deadline = std::min(engine->next_deadline(), now + std::chrono::milliseconds(250));
            events.clear();
            rule_sub->pop(events, 4096, deadline, k_rule_gather);
            ++rule_progress;
            {
                std::lock_guard lock(engine_mu);
                rule_popping = false;
            }
            engine_cv.notify_all();
            now = steady::now();
            rule_pulse_ms =
                std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch())
                    .count();
            // Batches are cut below the broker's packet limit once it is known (a CONNACK
            // announces it): a batch over it could only be dead-lettered.
            engine->set_packet_limit(publisher->max_packet_size());
            for (const auto& e : events)
                engine->on_event(e, now, out);
            engine->on_tick(now, out);
            // retain_last values: beside the spool, newest per topic (the publisher keeps one).
            for (auto& v : engine->retained())
                publisher->set_retained(v.topic, std::move(v.payload));
            engine->retained().clear();
            // Counted before the spool is asked: a spool that makes us wait (when_full: block)
            // must not hide what the rules already decided.
            update_counters();
            to_spool(out);
            out.clear();
            // Drained, not "this pop found nothing and the queue is closed": this pass may
            // have spent seconds retrying an append (to_spool) after a pop that timed out
            // empty, while a last poll came in and the stop closed the queue; that poll is
            // still queued and must be spooled.
            if (rule_sub->drained()) break;
        }
        engine->flush_all(out);
        to_spool(out);
        update_counters();
    }

    void start() {
        spool_started_log();
        if (http) http->start();
        if (read_sub) read_thread = std::thread([this] { read_loop(); });
        commands->start();
        publisher->start();
        rule_thread = std::thread([this] { rule_loop(); });
        for (auto& src : sources)
            src->start();
        running = true;
    }

    void spool_started_log() {
        log::info("ferry", "starting",
                  {{"gateway", cfg.gateway.id},
                   {"seq_start", std::to_string(seq_start)},
                   {"version", build_info::version()},
                   {"devices", std::to_string(cfg.devices.size())},
                   {"rules", std::to_string(cfg.rules.size())},
                   {"spool", cfg.upstream.spool.path},
                   {"spooled_messages", std::to_string(spool->messages())}});
    }

    void stop() {
        running = false;
        auto began = steady::now();
        // The pipeline is released (bus and spool closed, what they hold counted as dropped,
        // reason shutdown) only on evidence that it is wedged: the rule thread has waited for
        // room in the spool for k_wedged_after while the spool did not change (a full `block`
        // spool with the broker down). A slow device finishing its poll, a spool taking its
        // time or a broker draining it are progress, and the stop waits for them, up to
        // k_stop_limit. (Before issue 13 a 1 s timer released it, losing a slow device's poll
        // and every open batch.)
        std::mutex m;
        std::condition_variable cv;
        bool done = false;
        std::thread guard([&] {
            std::unique_lock lock(m);
            auto progress_at = steady::now();
            auto seen = std::make_pair(rule_progress.load(), spool->messages());
            while (!cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return done; })) {
                const auto now = steady::now();
                const auto state = std::make_pair(rule_progress.load(), spool->messages());
                if (state != seen || !rule_waiting_for_room.load()) {
                    seen = state;
                    progress_at = now;
                }
                const bool wedged = now - progress_at >= k_wedged_after;
                if (!wedged && now - began < k_stop_limit) continue;
                const auto waited =
                    std::chrono::duration_cast<std::chrono::milliseconds>(now - began);
                log::warn("ferry",
                          wedged ? "pipeline wedged at shutdown (no room in the spool, no "
                                   "progress); releasing it"
                                 : "stop budget spent; releasing the pipeline",
                          {{"waited_ms", std::to_string(waited.count())},
                           {"spooled_messages", std::to_string(spool->messages())}});
                bus->close();
                spool->close();
                return;
            }
        });
        // A source that takes writes answers those still queued: nothing was written.
        for (auto& src : sources)
            src->stop();
        statuses->stopped();  // published before the gateway's "offline" (publisher->stop)
        commands->stop();
        rule_sub->close();
        rule_thread.join();
        if (read_sub) {
            read_sub->close();
            read_thread.join();
        }
        {
            std::lock_guard lock(m);
            done = true;
        }
        cv.notify_all();
        guard.join();
        auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - began);
        auto drain = std::max(std::chrono::milliseconds(100), k_stop_budget - spent);
        publisher->stop(drain);
        spool->close();
        if (http) http->stop();
        sync_bus_counters();
        const auto lost = rule_sub->dropped(drop_reason::closed) + lost_at_shutdown.load();
        if (lost > 0) {
            log::warn("ferry", "events lost at shutdown: they could not be spooled in time",
                      {{"events", std::to_string(lost)},
                       {"metric", "ferry_events_dropped_total{reason=\"shutdown\"}"}});
        }
        // The conservation counts as they stand at exit, for whoever checks a stop (the metrics
        // die with the process): produced, and each reason's drops.
        log::info("ferry", "stopped",
                  {{"spooled_messages", std::to_string(spool->messages())},
                   {"lost_at_shutdown", std::to_string(lost_at_shutdown.load())},
                   {"events_produced", std::to_string(count(*produced_events))},
                   {"events_dropped", dropped_summary()}});
    }
};

daemon::daemon(config::config cfg) : impl_(std::make_unique<impl>(std::move(cfg))) {
    impl_->build();
}

daemon::~daemon() = default;

std::string daemon::impl::status_line() const {
    return "STATUS=devices " + std::to_string(cfg.devices.size()) + ", spool " +
           std::to_string(spool->messages()) + " messages, mqtt " +
           (publisher->connected() ? "connected" : "disconnected");
}

// SIGHUP: the file is read and validated. An invalid one is rejected with every error logged
// and the running config goes on. A valid one is applied whole or not at all: devices, rules
// and the log level change live; the other sections (gateway id and data_dir, http,
// upstream, dead_letter, commands) only at a restart, so a file that changes them is not
// applied (restart_required) and the running config goes on.
void daemon::impl::reload() {
    config::config next;
    try {
        next = ferry::load_config(cfg.file);
    } catch (const config::errors& e) {
        for (const auto& err : e.list()) {
            log::error("config", "reload rejected; the running config stays",
                       {{"error", err.to_string()}});
        }
        reloads->Add({{"result", "invalid"}}).Increment();
        return;
    }
    std::string fixed;
    auto differs = [&](bool changed, const char* section) {
        if (changed) fixed += (fixed.empty() ? "" : ",") + std::string(section);
    };
    differs(next.gateway.id != cfg.gateway.id, "gateway.id");
    differs(next.gateway.data_dir != cfg.gateway.data_dir, "gateway.data_dir");
    differs(!(next.http == cfg.http), "http");
    differs(!(next.upstream == cfg.upstream), "upstream");
    differs(!(next.dead_letter == cfg.dead_letter), "dead_letter");
    differs(!(next.commands == cfg.commands), "commands");
    if (!fixed.empty()) {
        log::error("config",
                   "reload not applied: these settings change only at a restart; the running "
                   "config stays",
                   {{"sections", fixed}});
        reloads->Add({{"result", "restart_required"}}).Increment();
        return;
    }
    if (!apply(std::move(next))) reloads->Add({{"result", "invalid"}}).Increment();
}

// Applies the devices, rules and log level of a valid config. Everything that can fail is
// checked first; past that point nothing fails halfway.
bool daemon::impl::apply(config::config next) {
    auto next_of = split_by_driver(next.devices);
    try {
        for (std::size_t i = 0; i < next_of.size(); ++i)
            drivers::registered()[i]->check(next_of[i]);
    } catch (const std::invalid_argument& e) {
        log::error("config", "reload rejected; the running config stays", {{"error", e.what()}});
        return false;
    }

    std::size_t added = 0, changed = 0, removed = 0;
    for (const auto& d : next.devices) {
        auto it = std::find_if(cfg.devices.begin(), cfg.devices.end(),
                               [&](const config::device& o) { return o.id == d.id; });
        if (it == cfg.devices.end())
            ++added;
        else if (!config::same_settings(*it, d))
            ++changed;
    }
    for (const auto& d : cfg.devices) {
        if (std::none_of(next.devices.begin(), next.devices.end(),
                         [&](const config::device& n) { return n.id == d.id; }))
            ++removed;
    }
    bool rules_changed = next.rules.size() != cfg.rules.size();
    for (std::size_t i = 0; !rules_changed && i < next.rules.size(); ++i)
        rules_changed = !config::same_settings(next.rules[i], cfg.rules[i]);

    // New points first: interned, routed, known to the rules and the read model before any
    // driver samples them.
    const auto known = points.size();
    std::vector<point_id> live;
    for (const auto& d : next.devices) {
        for (const auto& p : d.points)
            live.push_back(points.intern(d.id, p.name, p.unit));
    }
    std::unique_ptr<rules::engine> eng;
    if (rules_changed || points.size() != known) {
        try {
            eng = std::make_unique<rules::engine>(next.rules, points, cfg.gateway.id,
                                                  cfg.dead_letter.topic, sparkplug.get());
        } catch (const std::invalid_argument& e) {
            log::error("config", "reload rejected; the running config stays",
                       {{"error", e.what()}});
            return false;
        }
    }
    bus->add_points();
    if (eng) {
        bus->resubscribe(*rule_sub, eng->patterns());
        std::unique_lock lock(engine_mu);
        pending_engine = std::move(eng);
        // Nothing may reach the old engine once the drivers run the new devices. The rule
        // thread checks for a new engine before each pop, so only a pop already under way
        // could: wait for that pop to end (≤ 250 ms), not for the swap itself, which first
        // writes the old engine's batches and may wait as long as a full `block` spool does.
        engine_cv.wait_for(lock, std::chrono::seconds(5),
                           [&] { return !pending_engine || !rule_popping; });
    }
    if (sparkplug) {
        // The devices' metrics as the new config has them, told to the host by a rebirth.
        try {
            sparkplug->configure(next.devices, points);
        } catch (const std::invalid_argument& e) {
            log::error("sparkplug", "metrics not updated", {{"error", e.what()}});
        }
        publisher->send_now(sparkplug->births());
    }
    if (reads) {
        std::vector<device_ref> refs;
        for (const auto& d : next.devices)
            refs.push_back({d.id, d.driver});
        reads->reconfigure(std::move(refs), live);
    }
    // Before the sources run new devices (their reports would be ignored); clears the topics
    // of removed ones.
    statuses->reconfigure(drivers::device_ids(next.devices));
    // A device that changed driver leaves the old one before it joins the new one (they
    // share its series).
    const auto registered = drivers::registered();
    for (std::size_t i = 0; i < sources.size(); ++i) {
        auto staying = next_of[i];
        std::erase_if(staying, [&](const config::device& d) {
            return std::any_of(cfg.devices.begin(), cfg.devices.end(), [&](const auto& o) {
                return o.id == d.id && !registered[i]->serves(o.driver);
            });
        });
        sources[i]->update(std::move(staying));
    }
    for (std::size_t i = 0; i < sources.size(); ++i)
        sources[i]->update(std::move(next_of[i]));

    commands->update_devices(next.devices);
    log::set_level(next.gateway.level);
    cfg.devices = std::move(next.devices);
    cfg.rules = std::move(next.rules);
    cfg.gateway.level = next.gateway.level;
    log::info("config", "reloaded",
              {{"devices_added", std::to_string(added)},
               {"devices_changed", std::to_string(changed)},
               {"devices_removed", std::to_string(removed)},
               {"rules", rules_changed ? "changed" : "unchanged"}});
    reloads->Add({{"result", "applied"}}).Increment();
    return true;
}

bool daemon::impl::making_progress() const {
    auto now =
        std::chrono::duration_cast<std::chrono::milliseconds>(steady::now().time_since_epoch())
            .count();
    // The rule thread passes its loop at least every 250 ms when healthy.
    return rule_waiting_for_room.load() || now - rule_pulse_ms.load() < 5000;
}

int daemon::run() {
    impl_->start();
    sd_notify(0, ("READY=1\n" + impl_->status_line()).c_str());
    // WATCHDOG=1 at half the interval systemd asks for, and only while the pipeline makes
    // progress: a wedged rule thread lets systemd restart us.
    std::uint64_t watchdog_usec = 0;
    bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0;
    auto notify_every = watchdog ? std::chrono::microseconds(watchdog_usec / 2)
                                 : std::chrono::microseconds(std::chrono::seconds(5));
    notify_every = std::min<std::chrono::microseconds>(notify_every, std::chrono::seconds(5));
    if (watchdog)
        impl_->append_failure_budget_ms = std::clamp<std::int64_t>(
            static_cast<std::int64_t>(watchdog_usec / 100), 5000, 60000);  // 10 intervals
    // Once a second, free heap pages go back to the system: batch bodies and spool rows come
    // and go, and glibc keeps the holes they leave as RSS (bench_e2e: 35 -> 25 MiB after a
    // trim; docs/PERFORMANCE.md). A trim walks the free lists: well under a millisecond here.
    const auto tick = std::min<std::chrono::microseconds>(notify_every, std::chrono::seconds(1));
    auto notified = steady::now();
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    for (;;) {
        timespec timeout{};
        timeout.tv_sec = static_cast<time_t>(tick.count() / 1000000);
        timeout.tv_nsec = static_cast<long>((tick.count() % 1000000) * 1000);
        int sig = sigtimedwait(&set, nullptr, &timeout);
        if (sig < 0) {
            malloc_trim(0);
            if (steady::now() - notified < notify_every) continue;
            notified = steady::now();
            if (watchdog && impl_->making_progress()) sd_notify(0, "WATCHDOG=1");
            sd_notify(0, impl_->status_line().c_str());
            continue;
        }
        if (sig == SIGHUP) {
            impl_->reload();
            continue;
        }
        log::info("ferry", "stopping", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
        break;
    }
    sd_notify(0, "STOPPING=1");
    impl_->stop();
    return 0;
}

}  // namespace ferry
