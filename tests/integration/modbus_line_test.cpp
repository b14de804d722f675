// Issue 17's acceptance run, end to end through `ferry run`, a real mosquitto and pymodbus as
// the independent server: 30 meters on one RS-485 line at 9600 baud over a socat pty, through
// one profile with two poll groups (power every 2 s, energy every 10 s), 3 units not answering
// (one of which starts answering after a minute). Over 2 minutes:
//   - every group of the 27 live units stays within one interval plus one timeout of its slot
//     (pymodbus's request log: time, unit, function, address, count);
//   - each silent unit is tried at most once per retry_every once it is down;
//   - each unit's status message is retained and right, one per change;
//   - the unit that comes back is polled on its schedule again from its first answer.
// (The pty does not pace bytes at 9600 baud: the line's timing is the silent units' timeouts.)
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/ferry_run.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/pymodbus_log.hpp"

using namespace ferry::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

constexpr double k_interval = 2000;  // the power group: the profile's poll_interval
constexpr double k_slow = 10000;     // the energy group: the point's own
constexpr double k_timeout = 200;
constexpr double k_retry = 10000;  // retry_every
constexpr int k_units = 30;
const std::set<int> k_silent{5, 15, 25};  // among the live ones: the units after them wait
constexpr int k_comeback = 25;            // answers from 60 s after the server starts

std::string status_topic(int unit) {
    return "ferry/line-gw/device/m" + std::to_string(unit) + "/status";
}

// Requests of `unit` for the group at `address`.
std::vector<request> group_of(const std::vector<request>& all, int unit, int address) {
    std::vector<request> out;
    for (const auto& r : of_unit(all, unit))
        if (!r.answered || r.address == address) out.push_back(r);
    return out;
}

}  // namespace

TEST_CASE(
    "30 meters on one RS-485 line, 3 silent: groups keep their schedule, silent units backed "
    "off, statuses retained and right, a unit that comes back is polled again at once") {
    socat_pair pty;
    const std::string log = pty.dir().file("requests.log");
    rtu_server server(pty, true, {"holding:0=u16:7", "holding:1=u16:8", "holding:10=u32:123456"},
                      {"--baud", "9600", "--units", "1-4,6-14,16-24,26-30", "--answer-after",
                       std::to_string(k_comeback) + "=60", "--log", log});
    mosquitto broker;
    temp_dir dir;
    const auto http_port = free_port();
    mqtt_recorder rec(broker.uri(), {"ferry/line-gw/device/+/status", "plant/#"});
    auto env = ferry_vars(dir.path(), http_port, 0, broker.uri());
    env["PTY"] = pty.a();
    env["RETRY_EVERY"] = "10s";
    auto ferry = ferry_process(config_path("modbus_line"), dir.file("ferry.log"), env);
    wait_ready(*ferry, http_port);
    INFO("ferry log: " << dir.file("ferry.log") << ", requests: " << log);
    std::this_thread::sleep_for(120s);

    // ---- What the operator sees: metrics, and each unit's retained status. ----
    double overruns_live = 0;
    for (int u = 1; u <= k_units; ++u) {
        const std::string dev = "{device=\"m" + std::to_string(u) + "\"}";
        INFO("unit " << u);
        const bool silent = k_silent.count(u) && u != k_comeback;
        CHECK(metric_value(http_port, "ferry_device_up" + dev) == (silent ? 0 : 1));
        if (!k_silent.count(u))
            overruns_live += metric_value(http_port, "ferry_driver_overruns_total" + dev);
    }
    CHECK(overruns_live == 0);             // no slot of a live unit skipped
    const auto statuses = rec.messages();  // before the stop turns them "offline"/"stopped"
    {
        mqtt_recorder late(broker.uri(), {"ferry/line-gw/device/+/status"});
        REQUIRE(late.wait_for_count(k_units, 10s));
        std::this_thread::sleep_for(200ms);
        std::map<std::string, mqtt_message> retained;
        for (const auto& m : late.messages())
            retained[m.topic] = m;
        CHECK(retained.size() == k_units);
        for (int u = 1; u <= k_units; ++u) {
            INFO("unit " << u);
            REQUIRE(retained.count(status_topic(u)) == 1);
            const auto& m = retained[status_topic(u)];
            CHECK(m.retained);
            const auto doc = json::parse(m.payload);
            if (k_silent.count(u) && u != k_comeback) {
                CHECK(doc["state"] == "offline");
                CHECK(doc["reason"] == "timeout");
            } else {
                CHECK(doc["state"] == "online");
                CHECK(!doc.contains("reason"));
            }
        }
    }
    CHECK(ferry->stop() == 0);
    const auto all = request_log(log);
    REQUIRE(!all.empty());

    // One status message per change: the live units "online" once, the silent ones "offline"
    // once (after down_after polls), the comeback "offline" and then "online".
    std::map<std::string, std::vector<json>> changes;
    for (const auto& m : statuses)
        if (m.topic.rfind("ferry/", 0) == 0) changes[m.topic].push_back(json::parse(m.payload));
    for (int u = 1; u <= k_units; ++u) {
        INFO("unit " << u);
        const auto& seen = changes[status_topic(u)];
        if (u == k_comeback) {
            REQUIRE(seen.size() == 2);
            CHECK(seen[0]["state"] == "offline");
            CHECK(seen[1]["state"] == "online");
            CHECK(seen[1]["since"].get<double>() > seen[0]["since"].get<double>());
        } else {
            REQUIRE(seen.size() == 1);
            CHECK(seen[0]["state"] == (k_silent.count(u) ? "offline" : "online"));
        }
    }

    // ---- The line, as pymodbus saw it. ----
    // The grid starts with ferry's poller: unit 1 goes first. Its first request, as logged,
    // may come a little after the grid's start (the first request costs more), so a poll may
    // look up to k_early ms early.
    const double k_early = 50;
    const double epoch = of_unit(all, 1).front().ms;
    const double end = all.back().ms;
    double worst_late = 0;
    for (int u = 1; u <= k_units; ++u) {
        if (k_silent.count(u)) continue;
        INFO("unit " << u);
        for (const auto& [address, iv] : {std::pair{0, k_interval}, std::pair{10, k_slow}}) {
            INFO("group at " << address);
            const auto reqs = group_of(all, u, address);
            const auto slots = static_cast<std::size_t>((end - epoch) / iv);
            CHECK(reqs.size() >= slots);
            CHECK(reqs.size() <= slots + 2);
            for (std::size_t n = 0; n < reqs.size(); ++n) {
                CHECK(reqs[n].answered);
                CHECK(reqs[n].count == 2);
                const double late = reqs[n].ms - (epoch + static_cast<double>(n) * iv);
                worst_late = std::max(worst_late, late);
                CHECK(late >= -k_early);
                CHECK(late <= k_interval + k_timeout);
            }
        }
    }
    MESSAGE("live units: latest poll " << worst_late << " ms after its slot (bound "
                                       << k_interval + k_timeout << " ms)");

    // Silent units: down_after tries on the grid, then one per retry_every (±20 %, and at most
    // a round of the line later: the try waits for the channel).
    for (int u : {5, 15}) {
        INFO("unit " << u);
        const auto reqs = of_unit(all, u);
        REQUIRE(reqs.size() >= 4);
        for (const auto& r : reqs)
            CHECK(!r.answered);
        for (std::size_t n = 1; n < 3; ++n)
            CHECK(reqs[n].ms - reqs[n - 1].ms == doctest::Approx(k_interval).epsilon(0.5));
        for (std::size_t n = 3; n < reqs.size(); ++n) {
            const double gap = reqs[n].ms - reqs[n - 1].ms;
            CHECK(gap >= 0.8 * k_retry);
            CHECK(gap <= 1.2 * k_retry + k_interval);
        }
        CHECK(reqs.size() <= 3 + static_cast<std::size_t>((end - epoch) / (0.8 * k_retry)));
    }

    // The unit that comes back: tried at most retry_every (+20 %) after it answers again, then
    // on its grid at once: every group's next poll within one interval plus one timeout of
    // its slot.
    const auto back = of_unit(all, k_comeback);
    const auto answered =
        std::find_if(back.begin(), back.end(), [](const request& r) { return r.answered; });
    REQUIRE(answered != back.end());
    REQUIRE(answered != back.begin());
    CHECK(answered->ms - std::prev(answered)->ms <= 1.2 * k_retry + k_interval);
    const double came_back = answered->ms;
    CHECK(changes[status_topic(k_comeback)].back()["since"].get<double>() >= came_back - 1000);
    for (const auto& [address, iv] : {std::pair{0, k_interval}, std::pair{10, k_slow}}) {
        INFO("group at " << address);
        // The try that found it answering read every group (a few ms); what follows is its
        // schedule: the first poll of each group within one interval plus one timeout, on a
        // slot of the grid, and each one after on the next slot.
        std::vector<request> after;
        for (const auto& r : group_of(all, k_comeback, address))
            if (r.ms > came_back + 100) after.push_back(r);
        REQUIRE(after.size() >= 2);
        CHECK(after[0].ms - came_back <= iv + k_timeout);
        const double slot0 = std::floor((after[0].ms - epoch + k_early) / iv) * iv + epoch;
        for (std::size_t n = 0; n < after.size(); ++n) {
            CHECK(after[n].answered);
            const double slot = slot0 + static_cast<double>(n) * iv;
            CHECK(after[n].ms - slot >= -k_early);
            CHECK(after[n].ms - slot <= k_interval + k_timeout);
        }
    }

    // ---- What arrived upstream: good values from the live units, bad from the silent. ----
    std::map<std::string, json> newest;  // device/point -> its newest event
    for (const auto& m : statuses) {
        if (m.topic.rfind("plant/", 0) != 0) continue;
        const auto doc = json::parse(m.payload);
        for (const auto& e : doc["events"])
            newest[e["device"].get<std::string>() + "/" + e["tag"].get<std::string>()] = e;
    }
    REQUIRE(newest.count("m1/energy") == 1);
    CHECK(newest["m1/power"]["quality"] == "good");
    CHECK(newest["m1/power"]["value"] == 7);
    CHECK(newest["m1/energy"]["value"] == 123456);
    CHECK(newest["m30/current"]["value"] == 8);
    CHECK(newest["m5/power"]["quality"] == "bad");
    CHECK(newest["m25/energy"]["quality"] == "good");
}
