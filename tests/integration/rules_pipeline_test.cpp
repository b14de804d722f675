// Rules end to end: our Modbus simulator (changing values) → `ferry run` with two rules → a
// real mosquitto → a subscriber, checked as a user would: topics, transformed values and units,
// deadband spacing, the same seq on both rules, the dead-letter message and the counters.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <map>

#include "tests/support/ferry_run.hpp"

using namespace ferry::test;
using nlohmann::json;

namespace {

std::vector<json> events_on(const mqtt_recorder& rec, const std::string& topic,
                            const char* key = "events") {
    std::vector<json> out;
    for (const auto& m : rec.messages_on(topic)) {
        auto payload = json::parse(m.payload);  // kept alive for the loop (C++20 range-for)
        for (auto& e : payload[key])
            out.push_back(e);
    }
    return out;
}

}  // namespace

TEST_CASE("two rules over one plant: filter, transform, deadband, fan-out and dead-letter") {
    // --wave: holding 0 counts seconds, holding 2..3 is a slow temperature sine (19..24 degC).
    modbus_sim sim(0, {"holding:20=str:PUMP-1"}, {}, {"--wave"});
    mosquitto broker;
    temp_dir dir;
    // One recorder per filter: Paho C++ 1.2 crashes subscribing to several with options.
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    mqtt_recorder dead_rec(broker.uri(), {"ferry/+/dead-letter"});
    auto http_port = free_port();
    auto ferry_p = ferry_process(config_path("rules_pipeline"), dir.file("ferry.log"),
                                 ferry_vars(dir.path(), http_port, sim.port(), broker.uri()));
    auto& ferry = *ferry_p;

    const std::string counter_topic = "plant/rules-gw/changes/counter";
    // Four changes of the counter take a bit over three seconds of polling every 100 ms.
    bool enough = wait_until([&] { return events_on(rec, counter_topic).size() >= 4; }, 20s);
    if (!enough) {
        for (const auto& m : rec.messages())
            MESSAGE(m.topic << " " << m.payload);
        MESSAGE(read_file(dir.file("ferry.log")));
    }
    REQUIRE(enough);
    auto metrics = http_get(http_port, "/metrics").body;
    CHECK(ferry.stop() == 0);

    // Rule "changes", deadband 1 on a counter sampled ten times per value: each value once,
    // rising (by exactly 1 unless a whole second of polls was missed on a loaded machine).
    auto counters = events_on(rec, counter_topic);
    for (std::size_t i = 1; i < counters.size(); ++i)
        CHECK(counters[i]["value"].get<int>() > counters[i - 1]["value"].get<int>());
    for (const auto& e : counters) {
        CHECK(e["tag"] == "counter");
        CHECK(e.count("unit") == 0);  // the point has none and the rule sets none
    }

    // Rule "fahrenheit": only temperatures, in degF, never closer than the deadband.
    auto temps = events_on(rec, "plant/rules-gw/fahrenheit/boiler1");
    REQUIRE(temps.size() >= 2);
    for (std::size_t i = 0; i < temps.size(); ++i) {
        CAPTURE(temps[i]);
        CHECK(temps[i]["tag"] == "temperature");
        CHECK(temps[i]["unit"] == "degF");
        CHECK(temps[i]["quality"] == "good");
        double f = temps[i]["value"].get<double>();
        CHECK(f >= 1.8 * 18.9 + 32);  // 21.5 ± 2.5 degC, as a float32
        CHECK(f <= 1.8 * 24.1 + 32);
        if (i > 0) {
            CHECK(std::fabs(f - temps[i - 1]["value"].get<double>()) >= 0.2);
            CHECK(temps[i]["seq"].get<std::uint64_t>() > temps[i - 1]["seq"].get<std::uint64_t>());
        }
    }

    // Fan-out: the first temperature reading passes both rules (nothing was published before),
    // with the same seq on both topics, in degF on one and degC on the other.
    auto celsius = events_on(rec, "plant/rules-gw/changes/temperature");
    REQUIRE(!celsius.empty());
    CHECK(celsius[0]["seq"] == temps[0]["seq"]);
    CHECK(celsius[0]["unit"] == "degC");
    CHECK(temps[0]["value"].get<double>() ==
          doctest::Approx(celsius[0]["value"].get<double>() * 1.8 + 32).epsilon(1e-9));

    // The string point cannot be compared with a number: dead-letter, and the pipeline went on.
    auto dead = events_on(dead_rec, "ferry/rules-gw/dead-letter", "dead_letters");
    REQUIRE(!dead.empty());
    for (const auto& d : dead) {
        CHECK(d["rule"] == "changes");
        CHECK(d["reason"] == "filter at position 7: '>=' compares a string with a number");
        CHECK(d["event"]["device"] == "boiler1");
        CHECK(d["event"]["tag"] == "label");
        CHECK(d["event"]["value"] == "PUMP-1");
    }
    CHECK(rec.messages_on("plant/rules-gw/changes/label").empty());
    for (const auto& m : dead_rec.messages_on("ferry/rules-gw/dead-letter"))
        CHECK(json::parse(m.payload)["gateway"] == "rules-gw");

    // The counters a user graphs, taken while ferry ran.
    auto sample = [&](const char* rule, const char* outcome) {
        return metric(metrics, std::string("ferry_rule_events_total{outcome=\"") + outcome +
                                   "\",rule=\"" + rule + "\"}")
            .value_or(-1);
    };
    CHECK(sample("changes", "dead_letter") >= 1);
    CHECK(sample("changes", "deduped") >= 10);  // the counter repeats ~10 times per value
    CHECK(sample("fahrenheit", "passed") >= 1);
    CHECK(sample("fahrenheit", "filtered") == 0);
    // Rule "frost": a counter is never below 0: every reading filtered, nothing published.
    CHECK(sample("frost", "filtered") >= 10);
    CHECK(sample("frost", "passed") == 0);
    CHECK(rec.messages_on("plant/rules-gw/frost/counter").empty());
    CHECK(sample("fahrenheit", "dead_letter") == 0);
}
