// Benchmark (not a test): bus + rule engine + JSON encoding on one core.
//
// One thread does what the daemon's drivers and rule thread do between them: publish events on
// the bus (chunks of 4096, as one poll of a big device would), pop them from the rules
// subscription, run them through the engine and wrap each finished batch into its payload
// (what the spool stores). The spool and MQTT are not included (see docs/SPOOL.md and
// docs/DELIVERY.md for their costs).
//
// Plant: 100 devices x 10 tags = 1,000 points, values changing on every event.
// Rule sets (every event matches exactly one rule, so the rule count is what changes):
//   rules=1        one rule, match "#"
//   rules=100      rule i matches "devI/#"
//   rules=10000    the 100 above plus 9,900 rules for devices this gateway does not have
//   rules=100+stages  the 100 rules, each with a filter, a transform and a deadband of 0
//                  (every value moves, so every event passes all three stages)
//   rules=10000-globs  the 100 plus 9,900 rules "dev*/xI*" that match no point: the worst case
//                  of the trie, where every point is tried against 9,900 `*` levels
// Prints one line per set: events/s and ns/event by the wall clock and by this thread's CPU
// time (the honest figure on a busy machine), the time to build the engine (rules compiled,
// points matched through the trie), the time of the bus subscription (the bus matches every
// point against every pattern), and bytes of engine state per tracked device/tag.
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/bus.hpp"
#include "rules/engine.hpp"

using namespace ferry;
using clock_type = std::chrono::steady_clock;

namespace {

// CPU time of this thread: on a shared machine, wall time also counts other processes' turns.
double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct rule_set {
    const char* name;
    std::size_t rules;
    bool stages;
    bool globs = false;
};

std::vector<config::rule> make_rules(const rule_set& set) {
    std::vector<config::rule> out;
    for (std::size_t i = 0; i < set.rules; ++i) {
        config::rule r;
        r.name = "r" + std::to_string(i);
        if (set.rules == 1)
            r.match = {"#"};
        else if (i < 100)
            r.match = {"dev" + std::to_string(i) + "/#"};
        else if (set.globs)
            r.match = {"dev*/x" + std::to_string(i) + "*"};
        else
            r.match = {"other" + std::to_string(i) + "/+"};
        r.publish.topic = "plant/{gateway}/{device}";
        r.batch.max_events = 500;
        if (set.stages) {
            r.filter = "value > -1000000 and value < 1000000 and quality == 'good'";
            r.transform = config::transform_settings{1.8, 32.0, "degF"};
            r.deadband = config::deadband_settings{config::deadband_kind::absolute, 0.0};
        }
        out.push_back(std::move(r));
    }
    return out;
}

void run(const rule_set& set, std::uint64_t total) {
    point_table points;
    for (int d = 0; d < 100; ++d)
        for (int t = 0; t < 10; ++t)
            points.intern("dev" + std::to_string(d), "tag" + std::to_string(t), "degC");

    auto rules = make_rules(set);
    auto build_start = clock_type::now();
    rules::engine eng(rules, points, "plant-a-gw1");
    auto build_s = std::chrono::duration<double>(clock_type::now() - build_start).count();
    auto subscribe_start = clock_type::now();
    bus b(points);
    auto sub = b.subscribe("rules", eng.patterns(), 8192, overflow_policy::block);
    auto subscribe_s = std::chrono::duration<double>(clock_type::now() - subscribe_start).count();

    constexpr std::size_t chunk = 4096;
    std::vector<event> events(chunk);
    std::vector<event> popped;
    popped.reserve(chunk);
    std::vector<rules::batch> out;
    std::string payload;
    std::uint64_t batch_no = 0, bytes = 0, seq = 0;
    const auto ts0 = wall_clock::time_point(std::chrono::milliseconds(1764236400000));

    auto start = clock_type::now();
    auto cpu_start = thread_cpu_seconds();
    for (std::uint64_t done = 0; done < total; done += chunk) {
        for (std::size_t i = 0; i < chunk; ++i) {
            auto& e = events[i];
            e.seq = ++seq;
            e.point = static_cast<point_id>(seq % points.size());
            e.value = 20.0 + static_cast<double>(seq % 977) * 0.013;
            e.ts = ts0 + std::chrono::milliseconds(seq / 1000);
        }
        b.publish(events);
        popped.clear();
        sub->pop(popped, chunk, clock_type::now());
        auto now = clock_type::now();
        for (const auto& e : popped)
            eng.on_event(e, now, out);
        eng.on_tick(now, out);
        for (const auto& bt : out) {
            eng.wrap(bt, ++batch_no, payload);
            bytes += payload.size();
        }
        out.clear();
    }
    eng.flush_all(out);
    auto secs = std::chrono::duration<double>(clock_type::now() - start).count();
    auto cpu = thread_cpu_seconds() - cpu_start;
    std::uint64_t passed = 0;
    for (std::size_t r = 0; r < eng.rule_names().size(); ++r)
        passed += eng.counters(r).passed;
    std::printf(
        "rules_pipeline set=%-16s events=%llu passed=%llu events_per_s=%.0f ns_per_event=%.1f "
        "events_per_cpu_s=%.0f cpu_ns_per_event=%.1f payload_bytes_per_event=%.1f build_ms=%.1f "
        "subscribe_ms=%.1f state_bytes_per_tracked=%.1f\n",
        set.name, static_cast<unsigned long long>(total), static_cast<unsigned long long>(passed),
        static_cast<double>(total) / secs, secs * 1e9 / static_cast<double>(total),
        static_cast<double>(total) / cpu, cpu * 1e9 / static_cast<double>(total),
        static_cast<double>(bytes) / static_cast<double>(total), build_s * 1e3, subscribe_s * 1e3,
        static_cast<double>(eng.state_bytes()) / static_cast<double>(eng.routes()));
}

}  // namespace

int main(int argc, char** argv) {
    // Whole chunks of 4096 events: 977 of them by default (about 4 million events).
    std::uint64_t total = 4096 * (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 977);
    for (const auto& set :
         {rule_set{"1", 1, false}, rule_set{"100", 100, false}, rule_set{"10000", 10000, false},
          rule_set{"100+stages", 100, true}, rule_set{"10000-globs", 10000, false, true}})
        run(set, total);
}
