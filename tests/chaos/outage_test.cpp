// Acceptance 1 of issue 3, through the real daemon: a broker outage at about 2,000 events/s.
// Also: SIGTERM puts the batches still in memory into the spool, and they arrive after a
// restart.
#include <doctest/doctest.h>

#include <thread>

#include "tests/chaos/chaos_support.hpp"

using namespace ferry::test;

namespace {

constexpr int k_inflight = 16;
const std::string k_topic = "plant/chaos-gw/d1";

}  // namespace

// The issue's numbers, unscaled: 200 registers every 100 ms (2,000 events/s), a 20 s outage.
TEST_CASE("a 20 s broker outage at 2,000 events/s: every seq arrives, in order, few repeats") {
    // Sessions survive the broker's restart: the recorder misses nothing ferry sends meanwhile.
    chaos_rig rig(200, k_inflight);
    auto& [sim, broker_db, broker, rec, dir, o] = rig;
    auto ferry = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry.log"));

    REQUIRE(rec.wait_for_count(k_topic, 20, 15s));
    broker.stop();
    const auto stopped_at = std::chrono::steady_clock::now();
    const auto spooled_before = metric_value(o.http_port, "ferry_spool_messages");
    std::this_thread::sleep_for(20s);
    const auto m = metrics_text(o.http_port);
    CHECK(metric(m, "ferry_mqtt_connected") == 0.0);
    const double spooled = metric(m, "ferry_spool_messages").value_or(-1);
    MESSAGE("after 20 s of outage: ferry_spool_messages="
            << spooled << " (before " << spooled_before << "), polls ok="
            << metric(m, "ferry_driver_polls_total{device=\"d1\",result=\"ok\"}").value_or(-1));
    CHECK(spooled >= 300);  // 20 s × 20 batches/s, minus slack for a loaded machine
    broker.start();
    const auto outage = std::chrono::steady_clock::now() - stopped_at;

    // The backlog drains: ferry's backoff reached 12.8 s in the outage, but the wait ends when
    // its probe sees the broker's port open again (about 0.5 s after the restart).
    const bool drained = wait_until(
        [&] {
            return metric_value(o.http_port, "ferry_mqtt_connected") == 1.0 &&
                   metric_value(o.http_port, "ferry_spool_messages", 1e9) < 5;
        },
        60s);
    const auto reconnected_after = std::chrono::steady_clock::now() - stopped_at;
    REQUIRE(drained);
    std::this_thread::sleep_for(2s);  // some live traffic after the backlog
    const auto before_stop = metrics_text(o.http_port);
    CHECK(ferry->stop(15, 10s) == 0);
    const auto counts = stop_counts(dir.file("ferry.log"));
    REQUIRE(counts.count("produced") == 1);

    // Everything the spool numbered arrived: the file is empty and its last batch number
    // arrived (after SIGTERM the publisher drains what remains).
    const auto st = read_spool_file(dir.file("spool.db"));
    CHECK(st.messages == 0);
    REQUIRE(st.last_batch.count(k_topic) == 1);
    const auto last = st.last_batch.at(k_topic);
    const bool all = wait_until(
        [&] {
            auto c = check_delivery(parse_upstream(rec.messages()));
            return c.last_batch[k_topic] >= last;
        },
        20s);
    auto c = check_delivery(parse_upstream(rec.messages()));
    MESSAGE("outage "
            << std::chrono::duration_cast<std::chrono::milliseconds>(outage).count()
            << " ms, drained "
            << std::chrono::duration_cast<std::chrono::milliseconds>(reconnected_after).count()
            << " ms after the stop; " << c.summary());
    MESSAGE("published ok="
            << metric(before_stop, "ferry_mqtt_published_total{result=\"ok\"}").value_or(-1)
            << " spool sent=" << metric(before_stop, "ferry_spool_sent_total").value_or(-1)
            << " spool received="
            << metric(before_stop, "ferry_spool_received_total").value_or(-1));
    CHECK(all);
    CHECK(c.first_batch[k_topic] == first_batch_logged(dir.file("ferry.log"), k_topic));
    CHECK(c.last_batch[k_topic] == last);
    CHECK(c.batch_gaps.empty());
    CHECK(c.first_seq == seq_start_logged(dir.file("ferry.log")) + 1);
    CHECK(c.seq_gaps.empty());
    CHECK(c.events == c.last_seq - c.first_seq + 1);  // first..last, each once after dedupe
    CHECK(c.reordered == 0);
    CHECK(c.conflicting == 0);
    // Repeats only from the window in flight when the broker went away.
    CHECK(c.repeats <= static_cast<std::size_t>(k_inflight));
    CHECK(c.max_repeat_distance <= static_cast<std::uint64_t>(k_inflight));
    CHECK(c.events >= 40000);  // about 2,000 events/s over more than 20 s
    // Conservation: every event produced arrived (nothing is dropped on this path).
    MESSAGE("produced " << counts.at("produced") << ", dropped " << counts.at("dropped"));
    CHECK(counts.at("dropped") == 0);
    CHECK(counts.at("produced") == c.events);
}

// SIGTERM with the broker down: the open batches (max_age 60 s, so none has left yet) go into
// the spool before exit; the next start, with the broker up, sends them. What arrives is
// compared with what the simulator served (one request of 10 registers per poll) and with
// what ferry produced, over both runs.
TEST_CASE("SIGTERM flushes the batches in memory to the spool; they arrive after a restart") {
    modbus_sim sim(0, holding_registers(10));
    temp_dir dir;
    ferry_options o;
    o.data_dir = dir.path();
    o.http_port = free_port();
    o.modbus_port = sim.port();
    o.registers = 10;
    o.max_events = 100000;
    o.max_age = "60s";
    const auto broker_port = free_port();  // nothing listens yet
    o.uris = {"tcp://127.0.0.1:" + std::to_string(broker_port)};
    auto ferry = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry.log"));
    REQUIRE(wait_until(
        [&] {
            return metric_value(o.http_port,
                                "ferry_driver_polls_total{device=\"d1\",result=\"ok\"}") >= 10;
        },
        10s));
    CHECK(metric_value(o.http_port, "ferry_spool_messages") == 0.0);  // all still in memory
    CHECK(ferry->stop(15, 10s) == 0);
    const auto st = read_spool_file(dir.file("spool.db"));
    MESSAGE("spool after SIGTERM: messages=" << st.messages);
    CHECK(st.messages == 1);
    const auto run1 = stop_counts(dir.file("ferry.log"));
    REQUIRE(run1.count("produced") == 1);
    CHECK(run1.at("dropped") == 0);
    CHECK(run1.at("produced") == sim.stats()["answered"] * 10);

    mosquitto broker(broker_port);
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    o.uris = {broker.uri()};
    auto again = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry2.log"));
    REQUIRE(rec.wait_for_count(k_topic, 1, 10s));
    CHECK(again->stop(15, 10s) == 0);
    const auto run2 = stop_counts(dir.file("ferry2.log"));
    REQUIRE(run2.count("produced") == 1);
    CHECK(run2.at("dropped") == 0);
    const auto served = sim.stats()["answered"] * 10;
    const auto produced = run1.at("produced") + run2.at("produced");
    // Everything both runs spooled was sent before the second stopped: wait for the last.
    wait_until([&] { return check_delivery(parse_upstream(rec.messages())).events >= served; },
               10s);
    auto c = check_delivery(parse_upstream(rec.messages()));
    MESSAGE(c.summary() << "; simulator served " << served << " readings, ferry produced "
                        << produced);
    CHECK(c.first_batch[k_topic] == first_batch_logged(dir.file("ferry.log"), k_topic));
    CHECK(c.first_seq == seq_start_logged(dir.file("ferry.log")) + 1);
    CHECK(c.seq_gaps.size() == 1);  // only at the restart (a new seq block), none within a run
    CHECK(c.events == served);      // every reading the simulator served, each once
    CHECK(c.events == produced);
}
