// Acceptance 4 of issue 3, through the real daemon: ferry starts on each damaged spool of
// tests/fixtures/spool/ (made by make_fixtures.sh there): it moves the file aside as
// spool.db.corrupt-<unix seconds>, counts it, says ready and delivers.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <filesystem>
#include <regex>

#include "tests/chaos/chaos_support.hpp"

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
        REQUIRE(rec.wait_for_count(topic, 2, 10s));
        auto c = check_delivery(parse_upstream(rec.messages()));
        MESSAGE(name << " (" << original.size() << " bytes) moved to " << moved[0] << "; "
                     << c.summary());
        CHECK(c.first_batch[topic] == 1);  // a fresh spool: batch numbers start again
        CHECK(c.seq_gaps.empty());
        CHECK(ferry->stop(15, 10s) == 0);
        // The next start finds a healthy spool: nothing more is moved aside.
        auto again = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry2.log"));
        CHECK(metric_value(o.http_port, "ferry_spool_corrupt_total") == 0.0);
        CHECK(again->stop(15, 10s) == 0);
    }
}
