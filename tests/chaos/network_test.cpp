// Network faults under the link, not the socket (issue 13): the test runs inside a network
// namespace of its own (tests/chaos/netns_run.sh), where it may take the loopback link down (a
// partition: packets vanish, no RST, no error, only silence), throttle it with tbf (a slow
// uplink), or, where the kernel has netem, delay and lose packets. Everything - simulator,
// broker, recorder, ferry - talks over that one loopback, so a fault hits polling and delivery
// alike, as a real outage does.
//
// Each case checks what a consumer and an operator would: every batch number arrives (no hole),
// nothing reordered, repeats only within the in-flight window, and conservation from ferry's own
// `stopped` line: events produced = distinct seqs that arrived + events dropped with a reason.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "tests/chaos/chaos_support.hpp"

using namespace ferry::test;

namespace {

constexpr int k_inflight = 16;
const std::string k_topic = "plant/chaos-gw/d1";

void sh(const std::string& cmd) {
    INFO("command: " << cmd);
    REQUIRE(std::system(cmd.c_str()) == 0);
}

struct felt {
    double connection_lost = 0;  // ferry_mqtt_errors_total{reason="connection_lost"} after it
    double waited = 0;           // messages that spent more than 1 s in the spool
};

// One ferry (50 registers every 100 ms: 500 events/s, keepalive 2 s) through a broker on this
// namespace's loopback; `fault` is applied for `hold`, then `heal`; then the checks. Returns
// what ferry felt, for the caller to check the fault did bite.
felt run_with_fault(const std::string& fault, std::chrono::seconds hold, const std::string& heal) {
    chaos_rig rig(50, k_inflight);
    auto& [sim, broker_db, broker, rec, dir, o] = rig;
    o.fsync = "always";
    o.keepalive = "2s";
    auto ferry = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry.log"));
    REQUIRE(rec.wait_for_count(k_topic, 10, 20s));

    felt f;
    sh(fault);
    std::this_thread::sleep_for(hold);
    sh(heal);

    // Ferry finds out (keepalive, ack timeout), reconnects and drains what it spooled.
    const bool drained = wait_until(
        [&] {
            const auto m = metrics_text(o.http_port);
            return metric(m, "ferry_mqtt_connected") == 1.0 &&
                   metric(m, "ferry_spool_messages").value_or(1e9) < 3;
        },
        120s);
    const auto m = metrics_text(o.http_port);
    MESSAGE("after the fault: connects ok="
            << metric(m, "ferry_mqtt_connects_total{result=\"ok\"}").value_or(-1)
            << " connection_lost="
            << metric(m, "ferry_mqtt_errors_total{reason=\"connection_lost\"}").value_or(-1)
            << " polls error="
            << metric(m, "ferry_driver_polls_total{device=\"d1\",result=\"error\"}").value_or(-1));
    f.connection_lost =
        metric(m, "ferry_mqtt_errors_total{reason=\"connection_lost\"}").value_or(-1);
    f.waited = metric(m, "ferry_delivery_latency_seconds_count").value_or(0) -
               metric(m, "ferry_delivery_latency_seconds_bucket{le=\"1\"}").value_or(0);
    REQUIRE(drained);
    std::this_thread::sleep_for(2s);  // live traffic after the backlog
    REQUIRE(ferry->stop(15, 30s) == 0);
    auto counts = stop_counts(dir.file("ferry.log"));
    REQUIRE(counts.count("produced") == 1);

    const auto st = read_spool_file(dir.file("spool.db"));
    CHECK(st.messages == 0);
    const auto last = st.last_batch.count(k_topic) ? st.last_batch.at(k_topic) : 0;
    wait_until(
        [&] { return check_delivery(parse_upstream(rec.messages())).last_batch[k_topic] >= last; },
        30s);
    auto c = check_delivery(parse_upstream(rec.messages()));
    MESSAGE(c.summary());
    MESSAGE("ferry's stopped line: produced=" << counts["produced"]
                                              << " dropped=" << counts["dropped"]);
    CHECK(c.last_batch[k_topic] == last);
    CHECK(c.batch_gaps.empty());
    CHECK(c.seq_gaps.empty());
    CHECK(c.conflicting == 0);
    CHECK(c.reordered == 0);
    CHECK(c.max_repeat_distance <= static_cast<std::uint64_t>(k_inflight));
    CHECK(counts["produced"] == c.events + counts["dropped"]);
    CHECK(counts["dropped"] == 0);
    return f;
}

}  // namespace

TEST_CASE("partition: the link goes silent for 8 s mid-stream; nothing is lost or reordered") {
    // Down, the loopback drops every packet without an error or a reset: both ends of every
    // connection only stop hearing from each other, which is what a cut cable looks like.
    // 8 s is four keepalives: ferry must notice the silence, give the connection up, fail to
    // reconnect while the link is down, and resend from the spool once it is back.
    const auto f = run_with_fault("ip link set lo down", 8s, "ip link set lo up");
    CHECK(f.connection_lost >= 1);
}

TEST_CASE("slow uplink: the link throttled to 200 kbit/s for 15 s; the spool takes the rest") {
    // 500 events/s need about 400 kbit/s upstream: the backlog grows in the spool, not in RAM,
    // and drains once the link is fast again.
    const auto f =
        run_with_fault("tc qdisc add dev lo root tbf rate 200kbit burst 16kbit latency 2s", 15s,
                       "tc qdisc del dev lo root");
    MESSAGE(f.waited << " messages waited more than 1 s in the spool");
    CHECK(f.waited >= 10);  // a backlog formed, in the spool
}

TEST_CASE("netem: packets delayed 100 +- 50 ms and 10 % lost for 15 s") {
    // Run only where the kernel has netem (netns_run.sh --need-netem skips loudly otherwise).
    run_with_fault("tc qdisc add dev lo root netem delay 100ms 50ms loss 10%", 15s,
                   "tc qdisc del dev lo root");
}
