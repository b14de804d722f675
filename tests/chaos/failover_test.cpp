// Acceptance 6 of issue 3, through the real daemon: two brokers in `uris`, the first killed
// (SIGSTOP for a second, so the in-flight window is full, then SIGKILL) mid-stream at about
// 2,000 events/s; delivery continues on the second with no loss.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <signal.h>

#include <thread>

#include "tests/chaos/chaos_support.hpp"

using namespace ferry::test;

namespace {

constexpr int k_inflight = 16;
const std::string k_topic = "plant/chaos-gw/d1";

}  // namespace

TEST_CASE("failover: the first broker is killed mid-stream; the second gets the rest, no loss") {
    modbus_sim sim(0, holding_registers(200));
    mosquitto first;
    mosquitto second;
    mqtt_recorder rec_first(first.uri(), {"plant/#"});
    mqtt_recorder rec_second(second.uri(), {"plant/#"});
    temp_dir dir;
    ferry_options o;
    o.data_dir = dir.path();
    o.http_port = free_port();
    o.modbus_port = sim.port();
    o.uris = {first.uri(), second.uri()};
    o.inflight = k_inflight;
    auto ferry = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry.log"));

    REQUIRE(rec_first.wait_for_count(k_topic, 40, 15s));
    // Freeze the first broker for a second, so that the window is full of unacknowledged
    // messages when it dies, then kill it: ferry must resend those to the second.
    ::kill(first.pid(), SIGSTOP);
    std::this_thread::sleep_for(1s);
    const auto inflight = metric_value(o.http_port, "ferry_mqtt_inflight");
    first.kill9();
    const auto killed = std::chrono::steady_clock::now();
    const bool moved = rec_second.wait_for_count(k_topic, 1, 15s);
    const auto took = std::chrono::steady_clock::now() - killed;
    REQUIRE(moved);
    REQUIRE(rec_second.wait_for_count(k_topic, 40, 15s));  // some seconds of live traffic
    CHECK(ferry->stop(15, 10s) == 0);

    const auto st = read_spool_file(dir.file("spool.db"));
    CHECK(st.messages == 0);
    REQUIRE(st.last_batch.count(k_topic) == 1);
    const auto last = st.last_batch.at(k_topic);
    CHECK(wait_until(
        [&] {
            return check_delivery(parse_upstream(rec_second.messages())).last_batch[k_topic] >=
                   last;
        },
        20s));
    // The union, in the order it happened: everything on the first broker came before the kill.
    auto all = rec_first.messages();
    for (auto& m : rec_second.messages())
        all.push_back(std::move(m));
    auto c = check_delivery(parse_upstream(all));
    const auto on_first = rec_first.messages_on(k_topic).size();
    const auto on_second = rec_second.messages_on(k_topic).size();
    MESSAGE(inflight << " in flight at the kill; first broker got " << on_first
                     << " messages, second " << on_second << "; first message on the second "
                     << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                     << " ms after the kill; union: " << c.summary());
    CHECK(c.first_batch[k_topic] == first_batch_logged(dir.file("ferry.log"), k_topic));
    CHECK(c.last_batch[k_topic] == last);
    CHECK(c.batch_gaps.empty());
    CHECK(c.first_seq == seq_start_logged(dir.file("ferry.log")) + 1);
    CHECK(c.seq_gaps.empty());
    CHECK(c.events == c.last_seq - c.first_seq + 1);
    CHECK(c.reordered == 0);
    CHECK(c.conflicting == 0);
    CHECK(c.repeats <= static_cast<std::size_t>(k_inflight));
    CHECK(c.max_repeat_distance <= static_cast<std::uint64_t>(k_inflight));
}
