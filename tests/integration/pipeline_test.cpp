// The first path end to end: a Modbus server → `ferry run` → a real mosquitto → a subscriber.
// Against our libmodbus simulator and against pymodbus, an independent implementation.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <set>

#include "tests/support/ferry_run.hpp"

using namespace ferry::test;
using nlohmann::json;

namespace {

const std::vector<std::string> k_registers = {
    "holding:0=u16:1234",
    "holding:1=i16:-42",
    "holding:2=f32:abcd:21.5",
    "holding:10=f32:abcd:-3.25",
};

// `ferry run` on tests/configs/pipeline.yaml with these values, logging to dir/ferry.log.
std::unique_ptr<process> run_pipeline(const temp_dir& dir, std::uint16_t modbus_port,
                                      const mosquitto& broker, const std::string& poll,
                                      std::size_t max_events, const std::string& max_age) {
    auto env = ferry_vars(dir.path(), 0, modbus_port, broker.uri());
    env["POLL"] = poll;
    env["MAX_EVENTS"] = std::to_string(max_events);
    env["MAX_AGE"] = max_age;
    return ferry_process(config_path("pipeline"), dir.file("ferry.log"), env);
}

struct expected_point {
    json value;
    const char* unit;
};

const std::map<std::string, expected_point> k_expected = {
    {"counter", {1234, "n"}},
    {"delta", {-42, "K"}},
    {"temperature", {21.5, "degC"}},
    {"outdoor", {-3.25, "degC"}},
};

// Checks everything a consumer relies on in what arrived; returns the number of events.
std::size_t check_messages(const std::vector<mqtt_message>& msgs, std::size_t max_events) {
    std::uint64_t last_seq = 0;
    std::int64_t last_batch = -1;
    std::size_t events = 0;
    for (const auto& m : msgs) {
        CHECK(m.topic == "plant/test-gw/boiler1");
        auto j = json::parse(m.payload);
        CHECK(j["gateway"] == "test-gw");
        auto batch = j["batch"].get<std::int64_t>();
        if (last_batch >= 0) CHECK(batch == last_batch + 1);  // no gap, no repeat
        last_batch = batch;
        CHECK(j["events"].size() >= 1);
        CHECK(j["events"].size() <= max_events);
        for (const auto& e : j["events"]) {
            CHECK(e["device"] == "boiler1");
            auto tag = e["tag"].get<std::string>();
            REQUIRE(k_expected.count(tag) == 1);
            CHECK(e["value"] == k_expected.at(tag).value);
            CHECK(e["unit"] == k_expected.at(tag).unit);
            CHECK(e["quality"] == "good");
            auto seq = e["seq"].get<std::uint64_t>();
            CHECK(seq > last_seq);  // strictly increasing
            last_seq = seq;
            auto ts = e["ts"].get<std::int64_t>();
            auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
            CHECK(ts > now - 60000);
            CHECK(ts <= now);
            ++events;
        }
    }
    return events;
}

template <typename Server>
void full_batches_arrive(Server& server) {
    mosquitto broker;
    temp_dir dir;
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    auto ferry_p = run_pipeline(dir, server.port(), broker, "100ms", 6, "5s");
    auto& ferry = *ferry_p;
    bool arrived = rec.wait_for_count(8, 15s);
    if (!arrived) MESSAGE(read_file(dir.file("ferry.log")));
    REQUIRE(arrived);
    auto msgs = rec.messages();
    // max_events 6 and 4 points per poll: full batches of exactly 6 leave long before max_age.
    for (const auto& m : msgs)
        CHECK(json::parse(m.payload)["events"].size() == 6);
    CHECK(check_messages(msgs, 6) == msgs.size() * 6);
    CHECK(ferry.stop() == 0);
}

}  // namespace

TEST_CASE("Modbus TCP (our simulator) to MQTT: names, values, units, seq, batch limits") {
    modbus_sim sim(0, k_registers);
    full_batches_arrive(sim);
}

TEST_CASE("Modbus TCP (pymodbus) to MQTT: the same path against an independent server") {
    pymodbus_sim sim(0, k_registers);
    full_batches_arrive(sim);
}

TEST_CASE("a partial batch leaves after max_age") {
    modbus_sim sim(0, k_registers);
    mosquitto broker;
    temp_dir dir;
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    // One poll every 10 s; the 4 events of the first poll cannot fill max_events (100).
    auto ferry_p = run_pipeline(dir, sim.port(), broker, "10s", 100, "700ms");
    auto& ferry = *ferry_p;
    REQUIRE(wait_until([&] { return rec.count() >= 1; }, 10s));
    auto arrived = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
    auto msgs = rec.messages();
    REQUIRE(msgs.size() == 1);
    auto j = json::parse(msgs[0].payload);
    REQUIRE(j["events"].size() == 4);
    auto sampled = j["events"][0]["ts"].get<std::int64_t>();
    // Not before max_age (700 ms) after sampling, and well before the next poll (10 s).
    CHECK(arrived - sampled >= 700);
    CHECK(arrived - sampled < 5000);
    CHECK(check_messages(msgs, 100) == 4);
    CHECK(ferry.stop() == 0);
}

TEST_CASE("SIGTERM stops within 2 seconds and publishes what was batched") {
    modbus_sim sim(0, k_registers);
    mosquitto broker;
    temp_dir dir;
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    // Batches would only leave after 60 s: everything that arrives was flushed by SIGTERM.
    auto ferry_p = run_pipeline(dir, sim.port(), broker, "200ms", 10000, "60s");
    auto& ferry = *ferry_p;
    REQUIRE(wait_until([&] { return sim.requests() >= 5; }, 10s));
    CHECK(rec.count() == 0);
    auto began = std::chrono::steady_clock::now();
    CHECK(ferry.stop(15, 5s) == 0);
    auto took = std::chrono::steady_clock::now() - began;
    CHECK(took < 2s);
    REQUIRE(rec.wait_for_count(1, 5s));
    auto msgs = rec.messages();
    auto events = check_messages(msgs, 10000);
    CHECK(events >= 5 * 4);  // at least the polls seen before SIGTERM
    CHECK(events % 4 == 0);  // whole polls
}
