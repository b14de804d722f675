// Conservation end to end (issue 13): every event the drivers publish is delivered or counted
// in ferry_events_dropped_total with a reason. One rule over part of a device, with a filter
// and a deadband, so that every reason of the rule path occurs: unrouted (points no rule
// matches), filtered, deduped. The consumer counts distinct seqs (what a consumer that
// dedupes on (gateway, seq) keeps); ferry's "stopped" line gives produced and dropped as they
// stand at exit. With one rule, each event is counted once:
//   produced = distinct seqs delivered + sum(dropped)
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <set>
#include <thread>

#include "tests/support/harness.hpp"

using namespace ferry::test;

namespace {

// d1: r0..r9 hold 0..9. The rule takes r0..r7 (r8, r9: unrouted), passes value < 6 (r6, r7:
// filtered), and a deadband with a heartbeat passes r0..r5 about every 300 ms (the polls in
// between: deduped). A generous device timeout: a poll that timed out would give `bad`
// events, which the filter cannot compare (dead-letter), and the exact counts below assume none.
std::string config_text(const std::string& dir, std::uint16_t modbus_port, std::uint16_t mqtt_port,
                        std::uint16_t http_port) {
    std::string y = "gateway: { id: cons-gw, data_dir: " + dir + " }\n";
    y += "http: { listen: 127.0.0.1:" + std::to_string(http_port) + " }\n";
    y += "devices:\n  - id: d1\n    driver: modbus_tcp\n    host: 127.0.0.1\n    port: " +
         std::to_string(modbus_port) + "\n    poll_interval: 100ms\n    timeout: 5s\n    points:\n";
    for (int i = 0; i < 10; ++i)
        y += "      - { name: r" + std::to_string(i) +
             ", table: holding, address: " + std::to_string(i) + ", type: uint16 }\n";
    y += R"(rules:
  - name: some
    match: ["d1/r0", "d1/r1", "d1/r2", "d1/r3", "d1/r4", "d1/r5", "d1/r6", "d1/r7"]
    filter: "value < 6"
    deadband: { absolute: 1 }
    heartbeat: 300ms
    batch: { max_events: 50, max_age: 200ms }
    publish: { topic: "plant/{gateway}/{device}" }
upstream:
  mqtt: { uris: ["tcp://127.0.0.1:)" +
         std::to_string(mqtt_port) + R"("] }
  spool: { fsync: never }
)";
    return y;
}

}  // namespace

TEST_CASE("produced = delivered + dropped by reason, live and at exit") {
    modbus_sim sim(0, holding_registers(10));
    mosquitto broker;
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    temp_dir dir;
    const auto http_port = free_port();
    write_file(dir.file("ferry.yaml"),
               config_text(dir.path(), sim.port(), broker.port(), http_port));
    process ferry({FERRY_BINARY, "run", "-c", dir.file("ferry.yaml")}, dir.file("ferry.log"));
    REQUIRE(wait_until([&] { return http_get(http_port, "/readyz").status == 200; }, 15000ms));

    // Live: every reason of the rule path shows up, and every reason is exported.
    auto value = [&](const std::string& text, const std::string& reason) {
        return metric(text, "ferry_events_dropped_total{reason=\"" + reason + "\"}").value_or(-1);
    };
    std::string m;
    REQUIRE(wait_until(
        [&] {
            m = metrics_text(http_port);
            return metric(m, "ferry_events_produced_total").value_or(0) >= 200 &&
                   value(m, "deduped") > 0;
        },
        15000ms));
    MESSAGE("live: produced " << metric(m, "ferry_events_produced_total").value_or(-1)
                              << ", unrouted " << value(m, "unrouted") << ", filtered "
                              << value(m, "filtered") << ", deduped " << value(m, "deduped"));
    CHECK(value(m, "unrouted") > 0);
    CHECK(value(m, "filtered") > 0);
    for (const char* r :
         {"bus_overflow", "spool_full", "too_large", "refused", "corrupt", "shutdown", "encode"})
        CHECK(value(m, r) == 0.0);
    // Per poll, 2 of 10 points are unrouted and 2 filtered: the live counts agree within a
    // poll or two (the scrape races the next poll).
    const double produced_live = metric(m, "ferry_events_produced_total").value_or(-1);
    CHECK(value(m, "unrouted") >= produced_live * 0.2 - 20);
    CHECK(value(m, "unrouted") <= produced_live * 0.2 + 20);

    std::this_thread::sleep_for(2s);
    REQUIRE(ferry.stop(15, 10s) == 0);
    const auto counts = stop_counts(dir.file("ferry.log"));
    REQUIRE(counts.count("produced") == 1);

    // Everything spooled was sent before exit (the broker is up): wait for the last to arrive.
    std::set<std::uint64_t> seqs;
    std::size_t stable = 0, last_size = 0;
    wait_until(
        [&] {
            seqs.clear();
            for (const auto& msg : parse_upstream(rec.messages()))
                for (const auto& e : msg.events)
                    seqs.insert(e.seq);
            stable = seqs.size() == last_size ? stable + 1 : 0;
            last_size = seqs.size();
            return stable >= 25;  // unchanged for 0.5 s
        },
        10000ms);
    const auto delivered = seqs.size();
    MESSAGE("at exit: produced " << counts.at("produced") << ", delivered (distinct seqs) "
                                 << delivered << ", dropped " << counts.at("dropped")
                                 << " (unrouted " << counts.at("unrouted") << ", filtered "
                                 << counts.at("filtered") << ", deduped " << counts.at("deduped")
                                 << ", shutdown " << counts.at("shutdown") << ")");
    CHECK(delivered > 0);
    CHECK(counts.at("shutdown") == 0);
    CHECK(counts.at("produced") == delivered + counts.at("dropped"));
    // Each reason is what the config makes it: per poll 2 unrouted, 2 filtered.
    CHECK(counts.at("unrouted") * 5 == counts.at("produced"));
    CHECK(counts.at("filtered") * 5 == counts.at("produced"));
}
