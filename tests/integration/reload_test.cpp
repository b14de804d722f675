// SIGHUP reload through the real daemon: an invalid file is rejected and the running config
// goes on; a valid one is applied live — a changed device restarts alone, the other devices
// poll on without a pause, added and removed devices come and go, rules change — while the
// spool and the MQTT session stay; a file that changes a restart-only section is not applied;
// a changed profile file changes every device that uses it (docs/PROFILES.md).
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <thread>

#include "tests/support/ferry_run.hpp"

using namespace ferry::test;

namespace {

// Puts tests/configs/reload/NAME.yaml where the running ferry reads its config; returns the text.
std::string use_config(const temp_dir& dir, const std::string& name) {
    return read_file(copy_config(dir, "reload/" + name));
}

double polls_ok(std::uint16_t http_port, const std::string& device) {
    return metric_value(http_port,
                        "ferry_driver_polls_total{device=\"" + device + "\",result=\"ok\"}", 0);
}

bool reloaded(std::uint16_t http_port, const std::string& result, double n) {
    return wait_until(
        [&] {
            return metric_value(http_port,
                                "ferry_config_reloads_total{result=\"" + result + "\"}") == n;
        },
        10s);
}

ino_t inode_of(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

}  // namespace

TEST_CASE("SIGHUP with a broken file keeps the running config, and says why") {
    modbus_sim sim(0, {"holding:0=u16:1"});
    mosquitto broker;
    temp_dir dir;
    auto http_port = free_port();
    const auto good = use_config(dir, "d1_fast");
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    auto env = ferry_vars(dir.path(), http_port, 0, broker.uri());
    env["D1_PORT"] = std::to_string(sim.port());
    auto ferry_p = ferry_process(dir.file("ferry.yaml"), dir.file("ferry.log"), env);
    auto& ferry = *ferry_p;
    wait_ready(ferry, http_port, 10s);
    // Every result is exported from the start, at 0.
    CHECK(metric_value(http_port, "ferry_config_reloads_total{result=\"applied\"}") == 0);

    write_file(dir.file("ferry.yaml"), good + "typo_section: 1\n");
    REQUIRE(::kill(ferry.pid(), SIGHUP) == 0);
    REQUIRE(reloaded(http_port, "invalid", 1));
    auto log = read_file(dir.file("ferry.log"));
    CHECK(log.find("reload rejected; the running config stays") != std::string::npos);
    const auto typo_line = std::count(good.begin(), good.end(), '\n') + 1;
    CHECK(log.find("ferry.yaml:" + std::to_string(typo_line) + ":1: typo_section: unknown key") !=
          std::string::npos);
    // Still running, still delivering.
    CHECK(ferry.running());
    auto before = rec.count();
    CHECK(wait_until([&] { return rec.count() >= before + 5; }, 5s));
    CHECK(metric_value(http_port, "ferry_config_reloads_total{result=\"applied\"}") == 0);

    // A restart-only section (upstream) changed: nothing is applied, the reason is logged.
    use_config(dir, "d1_slow_keepalive_20s");
    REQUIRE(::kill(ferry.pid(), SIGHUP) == 0);
    REQUIRE(reloaded(http_port, "restart_required", 1));
    CHECK(read_file(dir.file("ferry.log")).find("sections=upstream") != std::string::npos);
    // d1 still polls every 100 ms: the 1s in that file was not applied.
    auto p0 = polls_ok(http_port, "d1");
    std::this_thread::sleep_for(1s);
    CHECK(polls_ok(http_port, "d1") - p0 >= 5);
    CHECK(ferry.stop() == 0);
}

TEST_CASE("SIGHUP applies devices and rules live; other devices, the spool and MQTT go on") {
    modbus_sim sim1(0, {"holding:0=u16:11"});
    modbus_sim sim2(0, {"holding:0=u16:22"});
    modbus_sim sim3(0, {"holding:0=u16:33"});
    mosquitto broker;
    temp_dir dir;
    auto http_port = free_port();
    use_config(dir, "d1_slow_d2");
    mqtt_recorder rec(broker.uri(), {"plant/#", "other/#", "ferry/#"});
    auto env = ferry_vars(dir.path(), http_port, 0, broker.uri());
    env["D1_PORT"] = std::to_string(sim1.port());
    env["D2_PORT"] = std::to_string(sim2.port());
    env["D3_PORT"] = std::to_string(sim3.port());
    auto ferry_p = ferry_process(dir.file("ferry.yaml"), dir.file("ferry.log"), env);
    auto& ferry = *ferry_p;
    wait_ready(ferry, http_port, 10s);
    REQUIRE(wait_until([&] { return polls_ok(http_port, "d1") >= 2; }, 10s));
    const auto spool_inode = inode_of(dir.file("spool.db"));
    REQUIRE(spool_inode != 0);

    // Before: d1 polls once a second.
    auto p0 = polls_ok(http_port, "d1");
    std::this_thread::sleep_for(2s);
    const auto slow_polls = polls_ok(http_port, "d1") - p0;
    CHECK(slow_polls <= 3);

    // Reload: d1 every 100 ms, d3 and a rule for it added; d2 untouched.
    use_config(dir, "d1_fast_d2_d3");
    REQUIRE(::kill(ferry.pid(), SIGHUP) == 0);
    REQUIRE(reloaded(http_port, "applied", 1));
    auto log = read_file(dir.file("ferry.log"));
    CHECK(log.find("devices_added=1 devices_changed=1 devices_removed=0 rules=changed") !=
          std::string::npos);
    CHECK(log.find("msg=\"device changed; restarting it\" device=d1") != std::string::npos);
    CHECK(log.find("msg=\"device added\" device=d3") != std::string::npos);
    CHECK(log.find("restarting it\" device=d2") == std::string::npos);  // d2 never restarted

    // The new poll interval took effect: about 20 polls in 2 s, where there were about 2.
    p0 = polls_ok(http_port, "d1");
    std::this_thread::sleep_for(2s);
    CHECK(polls_ok(http_port, "d1") - p0 >= 12);
    // d3 is polled and its values reach both rules' topics.
    CHECK(rec.wait_for_count("other/hup-gw/d3", 3, 5s));
    CHECK(rec.wait_for_count("plant/hup-gw/d3", 3, 5s));
    auto devices = http_get(http_port, "/api/v1/devices").body;
    CHECK(devices.find("\"id\":\"d3\"") != std::string::npos);
    CHECK(http_get(http_port, "/api/v1/values").body.find("\"device\":\"d3\"") !=
          std::string::npos);

    // Reload: d3 and its rule removed again.
    use_config(dir, "d1_fast_d2");
    REQUIRE(::kill(ferry.pid(), SIGHUP) == 0);
    REQUIRE(reloaded(http_port, "applied", 2));
    CHECK(wait_until(
        [&] {
            return http_get(http_port, "/api/v1/devices").body.find("\"d3\"") == std::string::npos;
        },
        5s));
    CHECK(http_get(http_port, "/api/v1/values").body.find("\"device\":\"d3\"") ==
          std::string::npos);
    auto m = metrics_text(http_port);
    CHECK(m.find("ferry_device_up{device=\"d3\"}") == std::string::npos);
    CHECK(m.find("rule=\"third\"") == std::string::npos);
    const auto d3_after_removal = rec.messages_on("plant/hup-gw/d3").size();
    std::this_thread::sleep_for(1s);
    CHECK(rec.messages_on("plant/hup-gw/d3").size() <= d3_after_removal + 1);
    CHECK(ferry.stop() == 0);

    // d2 never paused: its readings, one per 100 ms, have no hole across both reloads.
    auto msgs = parse_upstream(rec.messages(), "plant/");
    std::vector<std::int64_t> d2_ts;
    for (const auto& msg : msgs) {
        for (const auto& e : msg.events) {
            if (e.device == "d2") d2_ts.push_back(e.ts);
        }
    }
    std::sort(d2_ts.begin(), d2_ts.end());
    REQUIRE(d2_ts.size() > 40);
    std::int64_t widest = 0;
    for (std::size_t i = 1; i < d2_ts.size(); ++i)
        widest = std::max(widest, d2_ts[i] - d2_ts[i - 1]);
    MESSAGE("d2 readings: " << d2_ts.size() << ", widest gap " << widest << " ms");
    CHECK(widest < 500);

    // The spool and the MQTT session stayed: one spool file, no batch lost or repeated out
    // of order, one "online" (no reconnect).
    CHECK(inode_of(dir.file("spool.db")) == spool_inode);
    auto check = check_delivery(msgs);
    MESSAGE(check.summary());
    CHECK(check.batch_gaps.empty());
    CHECK(check.reordered == 0);
    std::size_t online = 0;
    for (const auto& msg : rec.messages_on("ferry/hup-gw/status"))
        online += msg.payload == "online" ? 1 : 0;
    CHECK(online == 1);
}

TEST_CASE("SIGHUP after a profile file changed restarts every device that uses it, and no other") {
    modbus_sim sim(0, {"holding:0=u16:11", "holding:1=u16:22"});
    mosquitto broker;
    temp_dir dir;
    auto http_port = free_port();
    std::filesystem::create_directory(dir.file("profiles"));
    write_file(dir.file("profiles/meter.yaml"), "points: [ { name: a, address: 0 } ]\n");
    use_config(dir, "profile_meters");
    auto env = ferry_vars(dir.path(), http_port, 0, broker.uri());
    env["D1_PORT"] = std::to_string(sim.port());
    auto ferry_p = ferry_process(dir.file("ferry.yaml"), dir.file("ferry.log"), env);
    auto& ferry = *ferry_p;
    wait_ready(ferry, http_port, 10s);
    auto value_of = [&](const std::string& device) {
        return "\"device\":\"" + device + "\",\"tag\":\"a\",\"value\":";
    };
    REQUIRE(wait_until(
        [&] {
            return http_get(http_port, "/api/v1/values").body.find(value_of("m3") + "11") !=
                   std::string::npos;
        },
        10s));

    // The profile's point moves to address 1: m1..m3 change, `other` does not.
    write_file(dir.file("profiles/meter.yaml"), "points: [ { name: a, address: 1 } ]\n");
    REQUIRE(::kill(ferry.pid(), SIGHUP) == 0);
    REQUIRE(reloaded(http_port, "applied", 1));
    auto log = read_file(dir.file("ferry.log"));
    CHECK(log.find("devices_added=0 devices_changed=3 devices_removed=0") != std::string::npos);
    for (const char* m : {"m1", "m2", "m3"})
        CHECK(log.find("msg=\"device changed; restarting it\" device=" + std::string(m)) !=
              std::string::npos);
    CHECK(log.find("restarting it\" device=other") == std::string::npos);
    for (const char* m : {"m1", "m2", "m3"}) {
        CAPTURE(m);
        CHECK(wait_until(
            [&] {
                return http_get(http_port, "/api/v1/values").body.find(value_of(m) + "22") !=
                       std::string::npos;
            },
            5s));
    }
    CHECK(http_get(http_port, "/api/v1/values").body.find(value_of("other") + "11") !=
          std::string::npos);
    CHECK(ferry.stop() == 0);
}
