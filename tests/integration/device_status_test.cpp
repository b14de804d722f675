// Per-device status (issue 17, item 5) through `ferry run`, a real mosquitto and our Modbus
// simulator: ferry/{gateway}/device/{device}/status is retained and right for a device that
// answers and one that does not, follows the dead one when it comes back, is published again
// after a broker restart (persistence off: the broker forgot it), is cleared when a reload
// removes the device, and turns "offline", reason "stopped", at a clean stop. What a user
// checks: what a subscriber that comes late receives, retained.
#include <doctest/doctest.h>
#include <signal.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <thread>

#include "tests/support/ferry_run.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;
using nlohmann::json;

namespace {

const std::string k_live = "ferry/status-gw/device/live/status";
const std::string k_dead = "ferry/status-gw/device/dead/status";
const std::string k_box = "ferry/status-gw/device/box/status";  // the system driver

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// What a subscriber that comes now receives on the device status topics: the retained
// message of each (waits up to `timeout` for `topics` to have one each).
std::map<std::string, mqtt_message> retained_now(const std::string& uri,
                                                 const std::vector<std::string>& topics,
                                                 std::chrono::milliseconds timeout = 10s) {
    mqtt_recorder late(uri, {"ferry/status-gw/device/+/status"});
    wait_until(
        [&] {
            for (const auto& t : topics) {
                if (late.messages_on(t).empty()) return false;
            }
            return true;
        },
        timeout);
    // The broker sends all retained messages at once, in no promised order: let the others
    // (those not waited for) arrive too.
    std::this_thread::sleep_for(200ms);
    std::map<std::string, mqtt_message> out;
    for (const auto& m : late.messages())
        out[m.topic] = m;  // the newest per topic
    return out;
}

// The newest status on `topic` recorded by `rec` whose state is `state`, or null.
json newest_with_state(const mqtt_recorder& rec, const std::string& topic,
                       const std::string& state) {
    json found;
    for (const auto& m : rec.messages_on(topic)) {
        if (m.payload.empty()) continue;
        auto doc = json::parse(m.payload);
        if (doc["state"] == state) found = doc;
    }
    return found;
}

}  // namespace

TEST_CASE(
    "device status: retained per device, follows the device, again after a broker "
    "restart, cleared on removal, offline at a clean stop") {
    modbus_sim live(0, {"holding:0=u16:7"});
    const auto dead_port = free_port();  // nothing listens here yet
    mosquitto broker;
    temp_dir dir;
    const auto http_port = free_port();
    copy_config(dir, "device_status/two");
    mqtt_recorder rec(broker.uri(), {"ferry/#"});
    auto env = ferry_vars(dir.path(), http_port, 0, broker.uri());
    env["LIVE_PORT"] = std::to_string(live.port());
    env["DEAD_PORT"] = std::to_string(dead_port);
    const auto started_ms = now_ms();
    auto ferry_p = ferry_process(dir.file("ferry.yaml"), dir.file("ferry.log"), env);
    auto& ferry = *ferry_p;
    wait_ready(ferry, http_port);
    INFO("ferry log: " << dir.file("ferry.log"));

    // ---- 1. Each device's status, retained: a subscriber that comes late gets both. ----
    REQUIRE(wait_until(
        [&] { return !rec.messages_on(k_live).empty() && !rec.messages_on(k_dead).empty(); }, 10s));
    auto first = retained_now(broker.uri(), {k_live, k_dead, k_box});
    REQUIRE(first.count(k_live) == 1);
    REQUIRE(first.count(k_dead) == 1);
    CHECK(first[k_live].retained);
    CHECK(first[k_dead].retained);
    const auto live_doc = json::parse(first[k_live].payload);
    const auto dead_doc = json::parse(first[k_dead].payload);
    CHECK(live_doc["state"] == "online");
    CHECK(!live_doc.contains("reason"));  // a reason only when offline
    CHECK(live_doc["since"].get<std::int64_t>() >= started_ms);
    CHECK(live_doc["since"].get<std::int64_t>() <= now_ms());
    // Not Modbus only: the system driver reports too.
    REQUIRE(first.count(k_box) == 1);
    CHECK(json::parse(first[k_box].payload)["state"] == "online");
    CHECK(dead_doc["state"] == "offline");
    CHECK(dead_doc["reason"] == "connect: 127.0.0.1:" + std::to_string(dead_port));
    const auto dead_since = dead_doc["since"].get<std::int64_t>();
    CHECK(dead_since >= started_ms);
    // One message per change, not per poll: the live device polled many times by now.
    std::this_thread::sleep_for(1s);
    CHECK(rec.messages_on(k_live).size() == 1);
    CHECK(rec.messages_on(k_dead).size() == 1);

    // The same picture in the metrics: ferry_device_up per device, and the requests of each
    // line (channel) by result.
    const auto live_channel = "127.0.0.1:" + std::to_string(live.port());
    const auto dead_channel = "127.0.0.1:" + std::to_string(dead_port);
    CHECK(metric_value(http_port, "ferry_device_up{device=\"live\"}") == 1);
    CHECK(metric_value(http_port, "ferry_device_up{device=\"dead\"}") == 0);
    CHECK(metric_value(http_port, "ferry_modbus_channel_requests_total{channel=\"" + live_channel +
                                      "\",result=\"ok\"}") >= 3);
    CHECK(metric_value(http_port, "ferry_modbus_channel_requests_total{channel=\"" + dead_channel +
                                      "\",result=\"connect\"}") >= 1);
    CHECK(metric_value(http_port, "ferry_modbus_channel_requests_total{channel=\"" + dead_channel +
                                      "\",result=\"ok\"}") == 0);
    CHECK(metric_value(http_port, "ferry_modbus_channel_request_seconds_count{channel=\"" +
                                      live_channel + "\"}") >= 3);

    // ---- 2. The dead device comes back: "online", with a later since. ----
    modbus_sim revived(dead_port, {"holding:0=u16:9"});
    const auto revived_ms = now_ms();
    // Once down, the dead device is tried once per `retry_every` (1 s here, ±20 %).
    REQUIRE(wait_until([&] { return !newest_with_state(rec, k_dead, "online").is_null(); }, 10s));
    const auto back = newest_with_state(rec, k_dead, "online");
    CHECK(back["since"].get<std::int64_t>() > dead_since);
    CHECK(back["since"].get<std::int64_t>() >= revived_ms);
    CHECK(!back.contains("reason"));
    auto second = retained_now(broker.uri(), {k_live, k_dead});
    REQUIRE(second.count(k_dead) == 1);
    CHECK(json::parse(second[k_dead].payload)["state"] == "online");
    CHECK(json::parse(second[k_live].payload) == live_doc);  // unchanged: not published again
    CHECK(metric_value(http_port, "ferry_device_up{device=\"dead\"}") == 1);

    // ---- 3. Broker restart (persistence off: every retained message is gone). ----
    const auto connects = [&] {
        return metric_value(http_port, "ferry_mqtt_connects_total{result=\"ok\"}", 0);
    };
    const auto connects_before = connects();
    broker.stop();
    broker.start();
    REQUIRE(wait_until([&] { return connects() > connects_before; }, 20s));
    auto third = retained_now(broker.uri(), {k_live, k_dead, k_box});
    REQUIRE(third.count(k_live) == 1);
    REQUIRE(third.count(k_dead) == 1);
    CHECK(third[k_live].retained);
    CHECK(third[k_dead].retained);
    CHECK(third.count(k_box) == 1);
    // The same statuses, `since` included: the devices did not change, the broker did.
    CHECK(json::parse(third[k_live].payload) == live_doc);
    CHECK(json::parse(third[k_dead].payload) == back);

    // ---- 4. A reload removes "dead": its topic is cleared, "live" stays. ----
    copy_config(dir, "device_status/live_only");
    REQUIRE(::kill(ferry.pid(), SIGHUP) == 0);
    REQUIRE(wait_until(
        [&] {
            return metric_value(http_port, "ferry_config_reloads_total{result=\"applied\"}") == 1;
        },
        10s));
    // (`rec` may still be resubscribing after the broker restart: late subscribers ask.)
    REQUIRE(wait_until(
        [&] {
            return retained_now(broker.uri(), {k_live, k_box}).count(k_dead) == 0;
        },
        10s));
    auto fourth = retained_now(broker.uri(), {k_live, k_box});
    CHECK(fourth.count(k_dead) == 0);
    REQUIRE(fourth.count(k_live) == 1);
    CHECK(json::parse(fourth[k_live].payload) == live_doc);

    // ---- 5. A clean stop: "live" goes offline, reason "stopped", then the gateway. ----
    mqtt_recorder at_stop(broker.uri(), {"ferry/#"});  // subscribed now, on the new broker
    const auto stop_ms = now_ms();
    CHECK(ferry.stop() == 0);
    auto fifth = retained_now(broker.uri(), {k_live, k_box});
    REQUIRE(fifth.count(k_live) == 1);
    const auto stopped = json::parse(fifth[k_live].payload);
    CHECK(stopped["state"] == "offline");
    CHECK(stopped["reason"] == "stopped");
    CHECK(stopped["since"].get<std::int64_t>() >= stop_ms);
    CHECK(fifth.count(k_dead) == 0);
    REQUIRE(fifth.count(k_box) == 1);
    CHECK(json::parse(fifth[k_box].payload)["reason"] == "stopped");
    // The device's "offline" came before the gateway's own.
    REQUIRE(wait_until(
        [&] {
            const auto gw = at_stop.messages_on("ferry/status-gw/status");
            return !gw.empty() && gw.back().payload == "offline";
        },
        5s));
    const auto all = at_stop.messages();
    std::size_t device_off = all.size(), gateway_off = all.size();
    for (std::size_t i = 0; i < all.size(); ++i) {
        if (all[i].topic == k_live && all[i].payload.find("stopped") != std::string::npos)
            device_off = i;
        if (all[i].topic == "ferry/status-gw/status" && all[i].payload == "offline")
            gateway_off = i;
    }
    CHECK(device_off < gateway_off);
    CHECK(gateway_off < all.size());
}
