// Conservation end to end (issue 13): every event the drivers publish is delivered or counted
// in ferry_events_dropped_total with a reason. One rule over part of a device, with a filter
// and a deadband, so that every reason of the rule path occurs: unrouted (points no rule
// matches), filtered, deduped. The consumer counts distinct seqs (what a consumer that
// dedupes on (gateway, seq) keeps); ferry's "stopped" line gives produced and dropped as they
// stand at exit. With one rule, each event is counted once:
//   produced = distinct seqs delivered + sum(dropped)
#include <doctest/doctest.h>

#include <set>
#include <thread>

#include "tests/support/ferry_run.hpp"

using namespace ferry::test;

TEST_CASE("produced = delivered + dropped by reason, live and at exit") {
    modbus_sim sim(0, holding_registers(10));
    mosquitto broker;
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    temp_dir dir;
    const auto http_port = free_port();
    // What each point does (routed, filtered, deduped): tests/configs/conservation.yaml.
    auto ferry_p = ferry_process(config_path("conservation"), dir.file("ferry.log"),
                                 ferry_vars(dir.path(), http_port, sim.port(), broker.uri()));
    auto& ferry = *ferry_p;
    wait_ready(ferry, http_port, 15000ms);

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
