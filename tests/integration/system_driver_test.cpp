// The system driver through `ferry run` and a real mosquitto: the box's own health arrives
// as good values beside the plant data; a wrong metric name or a key of another driver is
// refused by `ferry check` with its place.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <map>
#include <set>

#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;
using nlohmann::json;

namespace {
const std::string k_dir = std::string(FERRY_SOURCE_DIR) + "/tests/testcases/system/";
}  // namespace

TEST_CASE("system: load1, mem_available, disk_free, uptime arrive as good values") {
    mosquitto broker;
    temp_dir dir;
    mqtt_recorder rec(broker.uri(), {"site/#"});
    process ferry({FERRY_BINARY, "run", "-c", k_dir + "ferry.yaml"}, dir.file("ferry.log"),
                  {{"DATA_DIR", dir.path()}, {"MQTT_PORT", std::to_string(broker.port())}});
    const bool arrived = rec.wait_for_count("site/sys-gw/box", 3, 20s);
    if (!arrived) MESSAGE(read_file(dir.file("ferry.log")));
    REQUIRE(arrived);

    std::map<std::string, std::vector<json>> by_tag;
    std::uint64_t last_seq = 0;
    for (const auto& m : rec.messages_on("site/sys-gw/box")) {
        const auto doc = json::parse(m.payload);
        for (const auto& e : doc["events"]) {
            CHECK(e["device"] == "box");
            CHECK(e["seq"].get<std::uint64_t>() > last_seq);
            last_seq = e["seq"].get<std::uint64_t>();
            by_tag[e["tag"].get<std::string>()].push_back(e);
        }
    }
    // Every poll sends all six points.
    CHECK(by_tag.size() == 6);
    for (const auto& tag : {"load1", "mem_available", "disk_free", "uptime", "spool_bytes"}) {
        INFO(tag);
        REQUIRE(!by_tag[tag].empty());
        for (const auto& e : by_tag[tag]) {
            CHECK(e["quality"] == "good");
            CHECK(e["value"].is_number());
        }
    }
    auto last = [&](const char* tag) { return by_tag[tag].back(); };
    CHECK(last("load1")["value"].get<double>() >= 0.0);
    CHECK(!last("load1").contains("unit"));  // load1 has no unit
    CHECK(last("mem_available")["value"].get<std::uint64_t>() > 1024 * 1024);
    CHECK(last("mem_available")["unit"] == "B");
    CHECK(last("disk_free")["value"].get<std::uint64_t>() > 0);
    CHECK(last("uptime")["value"].get<double>() > 0.0);
    CHECK(last("uptime")["unit"] == "s");
    // `unit` in the config replaces the metric's own.
    CHECK(last("spool_bytes")["unit"] == "bytes");
    CHECK(last("spool_bytes")["value"].get<std::uint64_t>() > 0);
    // uptime grows between polls.
    CHECK(by_tag["uptime"].back()["value"].get<double>() >
          by_tag["uptime"].front()["value"].get<double>());
    // cpu_temp: a plausible temperature where the board has a thermal zone, else bad with a
    // null value (containers and some VMs have none).
    for (const auto& e : by_tag["cpu_temp"]) {
        if (e["quality"] == "good") {
            CHECK(e["value"].get<double>() > -40.0);
            CHECK(e["value"].get<double>() < 150.0);
            CHECK(e["unit"] == "degC");
        } else {
            CHECK(e["quality"] == "bad");
            CHECK(e["value"].is_null());
        }
    }
    CHECK(ferry.stop() == 0);
}

TEST_CASE("system: ferry check names a wrong metric and a key of another driver") {
    temp_dir dir;
    const std::string file = k_dir + "bad.yaml";
    process check({FERRY_BINARY, "check", "-c", file}, dir.file("out"));
    auto code = check.wait(60s);
    REQUIRE(code);
    CHECK(*code == 1);
    const auto out = read_file(dir.file("out"));
    CHECK(out == file + ":5:5: devices[0].host: 'host' does not apply to driver 'system'\n" + file +
                     ":7:17: devices[0].points[0].name: 'load5' is not a metric of the system "
                     "driver (known: load1, mem_available, disk_free, uptime, cpu_temp, "
                     "spool_bytes)\n" +
                     file +
                     ":8:25: devices[0].points[1].address: 'address' does not apply to driver "
                     "'system'\n");
}
