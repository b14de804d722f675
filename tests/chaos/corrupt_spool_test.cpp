// Acceptance 4 of issue 3, through the real daemon: ferry starts on each damaged spool of
// tests/fixtures/spool/ (made by make_fixtures.sh there): it moves the file aside as
// spool.db.corrupt-<unix seconds>, counts it, says ready and delivers. Issue 13: seq and batch
// go on above what the damaged spool held (flipped_page.db holds seq_high_water 65536 and
// batch 40), at this start and the next.
#include <doctest/doctest.h>

#include <filesystem>
#include <regex>

#include "tests/chaos/chaos_support.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;
namespace fs = std::filesystem;

TEST_CASE("a damaged spool is moved aside and counted; ferry starts, serves and delivers") {
    modbus_sim sim(0, holding_registers(10));
    mosquitto broker;
    for (const std::string name :
         {"truncated.db", "zero_bytes.db", "random_bytes.db", "flipped_page.db"}) {
        CAPTURE(name);
        const std::string fixture = std::string(FERRY_SOURCE_DIR) + "/tests/fixtures/spool/" + name;
        const std::string original = read_file(fixture);
        temp_dir dir;
        fs::copy_file(fixture, dir.file("spool.db"));
        const std::string topic = "plant/chaos-gw/d1";
        mqtt_recorder rec(broker.uri(), {topic});
        ferry_options o;
        o.data_dir = dir.path();
        o.http_port = free_port();
        o.modbus_port = sim.port();
        o.registers = 10;
        o.max_age = "200ms";
        o.uris = {broker.uri()};
        auto ferry = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry.log"));  // /readyz 200
        CHECK(metric_value(o.http_port, "ferry_spool_corrupt_total") == 1.0);
        std::vector<std::string> moved;
        for (const auto& e : fs::directory_iterator(dir.path())) {
            const auto f = e.path().filename().string();
            if (std::regex_match(f, std::regex(R"(spool\.db\.corrupt-[0-9]{10})")))
                moved.push_back(f);
        }
        REQUIRE(moved.size() == 1);
        CHECK(read_file(dir.file(moved[0])) == original);  // kept as it was, for a post-mortem
        CHECK(read_file(dir.file("ferry.log")).find("damaged spool moved aside") !=
              std::string::npos);
        // The fixture's readable rows are salvaged and delivered (their events all carry seq 1,
        // as make_fixtures.sh wrote them, in a body that is not quite the contract's JSON: a
        // trailing comma); the rest is counted as lost.
        const double lost =
            metric_value(o.http_port, "ferry_spool_dropped_total{reason=\"corrupt\"}");
        auto split = [&] {
            std::vector<mqtt_message> old_rows, fresh;
            for (auto& m : rec.messages())
                (m.payload.find("{\"seq\":1,") != std::string::npos ? old_rows : fresh)
                    .push_back(m);
            return std::pair{old_rows, parse_upstream(fresh)};
        };
        REQUIRE(wait_until([&] { return split().second.size() >= 2; }, 10s));
        auto [salvaged, fresh] = split();
        auto c = check_delivery(fresh);
        MESSAGE(name << " (" << original.size() << " bytes) moved to " << moved[0] << "; salvaged "
                     << salvaged.size() << " of 40, lost " << lost << "; new: " << c.summary());
        // A damaged page costs at most the messages on it, not the spool (page 6 of
        // flipped_page.db turns out to hold none of the 40 rows: all are salvaged).
        if (name == "flipped_page.db") CHECK(salvaged.size() > 0);
        if (!salvaged.empty()) CHECK(static_cast<double>(salvaged.size()) + lost == 40.0);
        // Before issue 13 a fresh spool started again at seq 1 and batch 1: a consumer that
        // dedupes on (gateway, seq) dropped every new reading as a repeat.
        CHECK(c.first_seq > 65536);
        CHECK(c.first_batch[topic] > 40);
        CHECK(c.seq_gaps.empty());
        CHECK(ferry->stop(15, 10s) == 0);
        const auto first_run = rec.messages().size();
        // The next start finds a healthy spool: nothing more is moved aside, and both
        // numbers go on from where this run left them.
        auto again = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry2.log"));
        CHECK(metric_value(o.http_port, "ferry_spool_corrupt_total") == 0.0);
        REQUIRE(rec.wait_for_count(topic, first_run + 2, 10s));
        CHECK(again->stop(15, 10s) == 0);
        // Across that restart (same spool): batch +1 without a hole, seq rising.
        auto both = check_delivery(split().second);
        MESSAGE("both runs: " << both.summary());
        CHECK(both.batch_gaps.empty());
        CHECK(both.conflicting == 0);
        CHECK(both.reordered == 0);
        CHECK(both.first_seq == c.first_seq);
    }
}
