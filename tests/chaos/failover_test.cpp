// Acceptance 6 of issue 3, through the real daemon: two brokers in `uris`, the first killed
// (SIGSTOP until the in-flight window is full, then SIGKILL) mid-stream at about 2,000
// events/s; delivery continues on the second with no loss. The test asserts the window was
// full at the kill (ferry_mqtt_inflight 16) before it claims those 16 were resent, and it
// checks seq and batch as consecutive from the first seen, not from 1.
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
    // Freeze the first broker until the window is full of unacknowledged messages (about
    // 0.8 s at 20 messages/s), then kill it: ferry must resend those to the second.
    ::kill(first.pid(), SIGSTOP);
    wait_until([&] { return metric_value(o.http_port, "ferry_mqtt_inflight") >= k_inflight; }, 10s);
    std::this_thread::sleep_for(200ms);  // still full: nothing is acked while it is frozen
    const auto inflight = metric_value(o.http_port, "ferry_mqtt_inflight");
    REQUIRE(inflight == k_inflight);
    first.kill9();
    const auto killed = std::chrono::steady_clock::now();
    const bool moved = rec_second.wait_for_count(k_topic, 1, 15s);
    const auto took = std::chrono::steady_clock::now() - killed;
    REQUIRE(moved);
    REQUIRE(rec_second.wait_for_count(k_topic, 40, 15s));  // some seconds of live traffic
    CHECK(ferry->stop(15, 10s) == 0);

    const auto last = check_spool_drained(dir.file("spool.db"), rec_second, k_topic);
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
    // The window that was full at the kill was resent to the second broker: its stream starts
    // right after (or, with repeats, within the window before) the first broker's last batch.
    auto c_second = check_delivery(parse_upstream(rec_second.messages()));
    auto c_first = check_delivery(parse_upstream(rec_first.messages()));
    CHECK(c_second.first_batch[k_topic] <= c_first.last_batch[k_topic] + 1);
    CHECK(c_second.first_batch[k_topic] + static_cast<std::uint64_t>(k_inflight) >
          c_first.last_batch[k_topic]);
    CHECK(on_second >= static_cast<std::size_t>(k_inflight));
    check_consumer_view(c, k_topic, last, k_inflight, k_inflight);
    CHECK(c.first_batch[k_topic] == first_batch_logged(dir.file("ferry.log"), k_topic));
    CHECK(c.first_seq == seq_start_logged(dir.file("ferry.log")) + 1);
}
