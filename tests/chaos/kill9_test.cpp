// Acceptance 2 of issue 3, through the real daemon: `kill -9` five times at random moments
// while ferry publishes about 2,000 events/s, restarting it on the same data_dir each time.
#include <doctest/doctest.h>

#include <random>
#include <set>
#include <thread>

#include "tests/chaos/chaos_support.hpp"

using namespace ferry::test;

namespace {

constexpr int k_inflight = 16;
constexpr int k_kills = 5;
constexpr std::int64_t k_max_age_ms = 1000;
constexpr std::int64_t k_poll_ms = 100;
constexpr std::int64_t k_events_per_poll = 200;
const std::string k_topic = "plant/chaos-gw/d1";

}  // namespace

TEST_CASE(
    "kill -9 five times while publishing: everything spooled arrives, losses only from "
    "memory") {
    modbus_sim sim(0, holding_registers(static_cast<int>(k_events_per_poll)));
    mosquitto broker;
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    temp_dir dir;
    ferry_options o;
    o.data_dir = dir.path();
    o.http_port = free_port();
    o.modbus_port = sim.port();
    o.uris = {broker.uri()};
    o.inflight = k_inflight;
    o.max_events = 200;  // 100 ms of data at 2,000 events/s
    o.max_age = std::to_string(k_max_age_ms) + "ms";
    o.fsync = "batch";  // survives kill -9 (docs/SPOOL.md)

    const auto seed = std::random_device{}();
    MESSAGE("seed " << seed);
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> pause_ms(1500, 4000);
    std::vector<std::int64_t> killed_at;  // Unix ms, just before each SIGKILL
    for (int k = 0; k < k_kills; ++k) {
        auto ferry = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry.log"));
        REQUIRE(rec.wait_for_count(k_topic, rec.messages_on(k_topic).size() + 3, 10s));
        std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms(rng)));
        killed_at.push_back(unix_ms());
        ferry->kill9();
    }
    auto ferry = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry.log"));
    std::this_thread::sleep_for(2s);
    CHECK(ferry->stop(15, 10s) == 0);
    // The last run stopped cleanly: its "stopped" line (the killed runs wrote none).
    const auto last_run = stop_counts(dir.file("ferry.log"));
    REQUIRE(last_run.count("produced") == 1);

    const auto st = read_spool_file(dir.file("spool.db"));
    CHECK(st.messages == 0);
    REQUIRE(st.last_batch.count(k_topic) == 1);
    const auto last = st.last_batch.at(k_topic);
    const bool all = wait_until(
        [&] { return check_delivery(parse_upstream(rec.messages())).last_batch[k_topic] >= last; },
        20s);
    auto c = check_delivery(parse_upstream(rec.messages()));
    MESSAGE(c.summary());
    CHECK(all);
    // Nothing that entered the spool is lost: batch numbers first..last, no hole, none repeated
    // with other content, nothing out of order.
    CHECK(c.first_batch[k_topic] == first_batch_logged(dir.file("ferry.log"), k_topic));
    CHECK(c.last_batch[k_topic] == last);
    CHECK(c.batch_gaps.empty());
    CHECK(c.conflicting == 0);
    CHECK(c.reordered == 0);
    // Each restart resends at most the window that was in flight.
    CHECK(c.repeats <= static_cast<std::size_t>(k_kills * k_inflight));
    CHECK(c.max_repeat_distance <= static_cast<std::uint64_t>(k_inflight));

    // seq has holes only at the kills: what was sampled but still batching in memory, plus
    // the seq block the dead process had reserved. Match each hole to its kill and bound what
    // was lost by time: every event sampled between the last one delivered and the kill.
    CHECK(c.first_seq == seq_start_logged(dir.file("ferry.log")) + 1);
    CHECK(c.seq_gaps.size() == static_cast<std::size_t>(k_kills));
    const std::int64_t allowed_ms = k_max_age_ms;  // rate × max_age, in time
    for (std::size_t k = 0; k < c.seq_gaps.size() && k < killed_at.size(); ++k) {
        const auto& g = c.seq_gaps[k];
        const auto lost_ms = killed_at[k] - g.ts_before;
        const auto lost_events = (lost_ms / k_poll_ms) * k_events_per_poll;
        MESSAGE("kill " << k + 1 << ": last delivered seq " << g.before << " sampled " << lost_ms
                        << " ms before the kill (about " << lost_events
                        << " events lost from memory; allowed " << allowed_ms << " ms = "
                        << allowed_ms / k_poll_ms * k_events_per_poll << " events); next seq "
                        << g.after << " sampled " << g.ts_after - killed_at[k] << " ms after it");
        CHECK(g.ts_before <= killed_at[k]);
        CHECK(g.ts_after >= killed_at[k]);
        CHECK(lost_ms <= allowed_ms);
    }

    // The SIGTERM of the last run loses nothing: every seq it produced arrived (its seqs are
    // those after the last hole).
    REQUIRE(!c.seq_gaps.empty());
    std::set<std::uint64_t> last_seqs;
    for (const auto& m : parse_upstream(rec.messages()))
        for (const auto& e : m.events)
            if (e.seq >= c.seq_gaps.back().after) last_seqs.insert(e.seq);
    MESSAGE("last run: produced " << last_run.at("produced") << ", arrived " << last_seqs.size()
                                  << ", dropped " << last_run.at("dropped"));
    CHECK(last_run.at("dropped") == 0);
    CHECK(last_run.at("produced") == last_seqs.size());
}
