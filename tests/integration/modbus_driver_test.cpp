// The complete Modbus driver (issue 4), against real servers on loopback and socat pty pairs:
//   1. golden values of every type × byte order arrive upstream, from our libmodbus simulator
//      and pymodbus, over TCP and RTU;
//   2. 50 points over 300 registers cost the minimal number of requests (the simulator counts);
//   3. a silent unit on an RTU bus costs the others at most its timeout;
//   4. 200 TCP devices are polled every second with as many threads as 4 devices;
//   5. every bad-data case gives bad events and its counter; a desynchronised TCP stream is
//      reopened; an illegal address turns only the offending points bad.
// Daemon tests go through `ferry run` and a real mosquitto; bad-data tests run the poller in
// process so that they can read its counters and events directly.
#include <doctest/doctest.h>

#include <prometheus/registry.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/bus.hpp"
#include "core/config.hpp"
#include "core/topic.hpp"
#include "drivers/modbus/config.hpp"
#include "drivers/modbus/poller.hpp"
#include "tests/support/ferry_run.hpp"
#include "tests/support/paths.hpp"
#include "tests/support/poller_rig.hpp"

using namespace ferry::test;
using nlohmann::json;
namespace modbus = ferry::drivers::modbus;

namespace {

const std::string k_golden = std::string(FERRY_SOURCE_DIR) + "/tests/testcases/modbus/golden/";

std::vector<std::string> lines_of(const std::string& path) {
    std::vector<std::string> out;
    std::istringstream in(read_file(path));
    for (std::string line; std::getline(in, line);) {
        if (!line.empty() && line[0] != '#') out.push_back(line);
    }
    return out;
}

std::string indent(const std::vector<std::string>& lines, const std::string& pad) {
    std::string out;
    for (const auto& l : lines)
        out += pad + l + "\n";
    return out;
}

std::string tcp_device(const std::string& id, std::uint16_t port, const std::string& extra,
                       const std::string& points) {
    return "  - id: " + id +
           "\n    driver: modbus_tcp\n    host: 127.0.0.1\n    port: " + std::to_string(port) +
           "\n" + extra + "    points:\n" + points;
}

std::string rtu_device(const std::string& id, const std::string& port, int unit,
                       const std::string& parity, const std::string& extra,
                       const std::string& points) {
    return "  - id: " + id + "\n    driver: modbus_rtu\n    serial: { port: " + port +
           ", baud: 19200, parity: " + parity + " }\n    unit_id: " + std::to_string(unit) + "\n" +
           extra + "    points:\n" + points;
}

// Every event that arrived, in order.
std::vector<json> events_of(const mqtt_recorder& rec) {
    std::vector<json> out;
    for (const auto& m : rec.messages()) {
        const auto doc = json::parse(m.payload);
        for (const auto& e : doc["events"])
            out.push_back(e);
    }
    return out;
}

struct running_ferry {
    temp_dir dir;
    std::unique_ptr<process> proc;
    // `ferry run` on tests/configs/modbus_driver.yaml with `devices` (list items, maybe followed
    // by more top-level keys) appended; one rule publishes everything to plant/{gateway}/{device}.
    void start(const std::string& mqtt_uri, const std::string& devices) {
        proc = ferry_process(copy_config(dir, "modbus_driver", devices), dir.file("ferry.log"),
                             ferry_vars(dir.path(), 0, 0, mqtt_uri));
    }
    std::string log() const { return read_file(dir.file("ferry.log")); }
};

// ---- 1. golden values ----------------------------------------------------------------------

void check_golden(const mqtt_recorder& rec, const std::string& device) {
    const auto expected = json::parse(read_file(k_golden + "expected.json"));
    std::map<std::string, json> got;
    for (const auto& e : events_of(rec)) {
        if (e["device"] == device) got.emplace(e["tag"].get<std::string>(), e);
    }
    CHECK(got.size() == expected.size());
    for (const auto& [tag, want] : expected.items()) {
        INFO("tag " << tag);
        REQUIRE(got.count(tag) == 1);
        const auto& e = got.at(tag);
        CHECK(e["quality"] == "good");
        CHECK(e["value"] == want["value"]);
        if (want.contains("unit")) CHECK(e["unit"] == want["unit"]);
    }
}

void golden_through_ferry(const std::string& device_yaml, const std::string& device) {
    mosquitto broker;
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    running_ferry f;
    f.start(broker.uri(), device_yaml);
    const auto expected = json::parse(read_file(k_golden + "expected.json"));
    const bool arrived =
        wait_until([&] { return events_of(rec).size() >= expected.size(); }, 20000ms);
    if (!arrived) MESSAGE(f.log());
    REQUIRE(arrived);
    check_golden(rec, device);
    CHECK(f.proc->stop() == 0);
}

std::string golden_points() {
    return indent(lines_of(k_golden + "points.yaml"), "      ");
}

TEST_CASE("golden: every type and byte order arrives upstream (our simulator, TCP)") {
    modbus_sim sim(0, lines_of(k_golden + "input"));
    golden_through_ferry(
        tcp_device("gold", sim.port(), "    poll_interval: 10s\n", golden_points()), "gold");
}

TEST_CASE("golden: every type and byte order arrives upstream (pymodbus, TCP)") {
    pymodbus_sim sim(0, lines_of(k_golden + "input"));
    golden_through_ferry(
        tcp_device("gold", sim.port(), "    poll_interval: 10s\n", golden_points()), "gold");
}

TEST_CASE("golden: every type and byte order arrives upstream (our simulator, RTU over a pty)") {
    socat_pair pty;
    rtu_server sim(pty, false, lines_of(k_golden + "input"), {"--parity", "E", "--unit", "7"});
    golden_through_ferry(
        rtu_device("gold", pty.a(), 7, "E", "    poll_interval: 10s\n", golden_points()), "gold");
}

TEST_CASE("golden: every type and byte order arrives upstream (pymodbus, RTU over a pty)") {
    socat_pair pty;
    // Parity N: pyserial cannot reconfigure a pty that is set to even parity.
    rtu_server sim(pty, true, lines_of(k_golden + "input"));
    golden_through_ferry(
        rtu_device("gold", pty.a(), 7, "N", "    poll_interval: 10s\n", golden_points()), "gold");
}

// ---- 2. coalescing -------------------------------------------------------------------------

TEST_CASE("coalescing: 50 points over 300 registers in 3 requests; max_gap 0 in one per run") {
    std::vector<std::string> sets;
    std::string points;
    for (int a = 0; a < 300; a += 6) {
        const bool wide = a % 12 == 0;
        sets.push_back("holding:" + std::to_string(a) + (wide ? "=f32:cdab:" : "=u16:") +
                       std::to_string(a) + (wide ? ".5" : ""));
        points += "      - { name: r" + std::to_string(a) + ", address: " + std::to_string(a) +
                  (wide ? ", type: float32, byte_order: CDAB }\n" : " }\n");
    }
    modbus_sim wide(0, sets);
    modbus_sim narrow(0, sets);
    mosquitto broker;
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    running_ferry f;
    f.start(broker.uri(), tcp_device("wide", wide.port(), "    poll_interval: 10s\n", points) +
                              tcp_device("narrow", narrow.port(),
                                         "    poll_interval: 10s\n    max_gap: 0\n", points));
    REQUIRE(wait_until([&] { return events_of(rec).size() >= 100; }, 15000ms));
    for (const auto& e : events_of(rec)) {
        const int a = std::stoi(e["tag"].get<std::string>().substr(1));
        CHECK(e["quality"] == "good");
        if (a % 12 == 0)
            CHECK(e["value"] == a + 0.5);
        else
            CHECK(e["value"] == a);
    }
    // One poll each (10 s interval): the simulators counted every request.
    CHECK(wide.stats()["fc3"] == 3);  // ceil(296 / 125): the protocol minimum
    CHECK(narrow.stats()["fc3"] == 50);
    CHECK(f.proc->stop() == 0);
}

// ---- 3. fairness on a serial bus ------------------------------------------------------------

TEST_CASE("fairness: a silent unit on an RTU bus costs the others at most its timeout") {
    socat_pair pty;
    // Units 1 and 2 answer; nobody answers unit 3.
    rtu_server sim(pty, false, {"holding:0=u16:42"}, {"--parity", "E", "--unit", "1,2"});
    mosquitto broker;
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    const std::string timing = "    poll_interval: 200ms\n    timeout: 100ms\n    retries: 2\n";
    const std::string point = "      - { name: v, address: 0 }\n";
    running_ferry f;
    f.start(broker.uri(), rtu_device("u1", pty.a(), 1, "E", timing, point) +
                              rtu_device("u2", pty.a(), 2, "E", timing, point) +
                              rtu_device("u3", pty.a(), 3, "E", timing, point));
    REQUIRE(wait_until([&] { return events_of(rec).size() >= 3; }, 15000ms));
    const auto before = sim.stats();
    std::this_thread::sleep_for(4000ms);
    const auto after = sim.stats();
    // 4 s at 200 ms: 20 polls each; within 10 % (and the slot the window may cut).
    for (const char* unit : {"unit1", "unit2"}) {
        INFO(unit);
        const auto polls = after.at(unit) - before.at(unit);
        CHECK(polls >= 17);
        CHECK(polls <= 21);
    }
    // The silent unit is down after 3 polls and then tried once per retry_every (30 s), not at
    // the poll rate.
    const auto silent = after.at("unit3") - before.at("unit3");
    CHECK(silent <= 8);
    CHECK(f.proc->stop() == 0);

    // Upstream: between consecutive samples of a live unit, never more than the interval plus
    // 10 % plus one timeout (200 * 1.1 + 100 = 320 ms); the silent unit's values are bad.
    std::map<std::string, std::vector<std::int64_t>> ts;
    for (const auto& e : events_of(rec)) {
        const auto dev = e["device"].get<std::string>();
        if (dev == "u3") {
            CHECK(e["quality"] == "bad");
            CHECK(e["value"].is_null());
        } else {
            CHECK(e["quality"] == "good");
            CHECK(e["value"] == 42);
            ts[dev].push_back(e["ts"].get<std::int64_t>());
        }
    }
    for (const auto& [dev, stamps] : ts) {
        INFO(dev);
        CHECK(stamps.size() >= 20);
        std::int64_t worst = 0;
        for (std::size_t i = 1; i < stamps.size(); ++i)
            worst = std::max(worst, stamps[i] - stamps[i - 1]);
        CHECK(worst <= 320);
    }
}

// ---- 4. scale --------------------------------------------------------------------------------

int threads_with(std::size_t devices, std::uint16_t sim_port, std::uint16_t mqtt_port,
                 std::uint64_t& requests_per_s, const modbus_sim& sim) {
    std::string devs;
    for (std::size_t i = 0; i < devices; ++i) {
        devs += tcp_device("d" + std::to_string(i), sim_port,
                           "    poll_interval: 1s\n    timeout: 500ms\n",
                           "      - { name: a, address: 0 }\n      - { name: b, address: 1 }\n");
    }
    mqtt_recorder rec("tcp://127.0.0.1:" + std::to_string(mqtt_port), {"plant/#"});
    running_ferry f;
    f.start("tcp://127.0.0.1:" + std::to_string(mqtt_port), devs);
    // Every device's values arrive upstream.
    const bool all = wait_until(
        [&] {
            std::set<std::string> seen;
            for (const auto& e : events_of(rec))
                seen.insert(e["device"].get<std::string>());
            return seen.size() == devices;
        },
        15000ms);
    if (!all) MESSAGE(f.log());
    CHECK(all);
    const auto r0 = sim.requests();
    std::this_thread::sleep_for(3000ms);
    requests_per_s = (sim.requests() - r0) / 3;
    const int threads = thread_count(f.proc->pid());
    CHECK(f.proc->stop() == 0);
    return threads;
}

TEST_CASE("scale: 200 TCP devices polled every second on as many threads as 4 devices") {
    modbus_sim sim(0, {"holding:0=u16:1", "holding:1=u16:2"});
    mosquitto broker;
    std::uint64_t rate_small = 0;
    std::uint64_t rate_large = 0;
    const int small = threads_with(4, sim.port(), broker.port(), rate_small, sim);
    const int large = threads_with(200, sim.port(), broker.port(), rate_large, sim);
    MESSAGE("threads: 4 devices " << small << ", 200 devices " << large << "; requests/s "
                                  << rate_small << ", " << rate_large);
    CHECK(small > 0);
    CHECK(large == small);
    CHECK(rate_small >= 3);
    CHECK(rate_large >= 180);  // every device every second (10 % slack for the window)
    CHECK(rate_large <= 220);
}

// ---- 5. bad data, in process ------------------------------------------------------------------

// The poller with a bus and a registry of its own.
struct rig : ferry::test::poller_rig {
    using poller_rig::poller_rig;

    // Events of one tag, in order.
    std::vector<ferry::event> of(const std::string& tag) {
        std::vector<ferry::event> out;
        for (const auto& e : events())
            if (points.get(e.point).tag == tag) out.push_back(e);
        return out;
    }
    double errors(const std::string& device, const std::string& reason) {
        return metric("ferry_driver_errors_total", {{"device", device}, {"reason", reason}});
    }
};

ferry::config::point pt(const std::string& name, std::uint32_t address,
                        ferry::config::point_type type = ferry::config::point_type::uint16) {
    return modbus::make_point(name, modbus::table::holding, address, type);
}

ferry::config::device tcp_dev(const std::string& id, std::uint16_t port,
                              std::vector<ferry::config::point> points) {
    auto d = modbus::make_tcp_device(id, "127.0.0.1", port, std::move(points));
    d.poll_interval = std::chrono::milliseconds(100);
    d.settings.change<modbus::device_settings>([](auto& s) {
        s.timeout = std::chrono::milliseconds(100);
        s.retries = 0;
    });
    return d;
}

ferry::config::device rtu_dev(const std::string& id, const std::string& port,
                              std::vector<ferry::config::point> points) {
    auto d = modbus::make_rtu_device(
        id, ferry::config::serial_settings{port, 19200, ferry::config::parity::none, 8, 1}, 1,
        std::move(points));
    d.poll_interval = std::chrono::milliseconds(100);
    d.settings.change<modbus::device_settings>([](auto& s) {
        s.timeout = std::chrono::milliseconds(100);
        s.retries = 0;
    });
    return d;
}

// A point far from the others (another request) that must stay good throughout.
const std::uint32_t k_far = 1000;

void check_bad_and_good(rig& r, const std::string& bad_tag) {
    REQUIRE(
        wait_until([&] { return r.of(bad_tag).size() >= 3 && r.of("good").size() >= 3; }, 5000ms));
    for (const auto& e : r.of(bad_tag)) {
        CHECK(e.quality == ferry::quality::bad);
        CHECK(std::holds_alternative<std::monostate>(e.value));
    }
    for (const auto& e : r.of("good")) {
        CHECK(e.quality == ferry::quality::good);
        CHECK(e.value == ferry::value{std::uint64_t{0}});  // uint16 decodes unsigned
    }
}

TEST_CASE("bad data over TCP: transaction-id mismatch reopens the connection") {
    modbus_sim sim(0, {}, {}, {"--corrupt", "tid:10-10"});
    rig r({tcp_dev("dev", sim.port(), {pt("bad", 10), pt("good", k_far)})});
    check_bad_and_good(r, "bad");
    CHECK(wait_until([&] { return r.errors("dev", "transaction_id") >= 3; }, 3000ms));
    // Each mismatch closes the stream: the simulator accepted a new connection per poll.
    CHECK(sim.stats()["accepted"] >= 3);
    CHECK(r.metric("ferry_device_up", {{"device", "dev"}}) == 1);
}

TEST_CASE("bad data over TCP: short frame, exception, answer from another unit") {
    modbus_sim sim(0, {}, {},
                   {"--corrupt", "short:10-10", "--corrupt", "unit:20-20", "--fail", "30-30"});
    rig r({tcp_dev("s", sim.port(), {pt("bad", 10), pt("good", k_far)}),
           tcp_dev("u", sim.port(), {pt("bad", 20), pt("good", k_far)}),
           tcp_dev("x", sim.port(), {pt("bad", 30), pt("good", k_far)})});
    check_bad_and_good(r, "bad");
    CHECK(wait_until([&] { return r.errors("s", "short_frame") >= 1; }, 3000ms));
    CHECK(wait_until([&] { return r.errors("u", "bad_slave") >= 1; }, 3000ms));
    CHECK(wait_until([&] { return r.errors("x", "illegal_address") >= 1; }, 3000ms));
    // A short frame or a foreign unit leaves the stream in step: no reconnect for those.
    CHECK(sim.stats()["accepted"] <= 3 + 1);  // one connection per device (+ wait_for_port's)
}

TEST_CASE("bad data: timeouts turn the device down, then one try per retry_every") {
    modbus_sim sim(0, {}, {}, {"--silent"});
    auto dev = tcp_dev("dev", sim.port(), {pt("v", 0)});
    rig r({dev});
    REQUIRE(wait_until([&] { return r.of("v").size() >= 2; }, 5000ms));
    for (const auto& e : r.of("v"))
        CHECK(e.quality == ferry::quality::bad);
    CHECK(wait_until([&] { return r.errors("dev", "timeout") >= 2; }, 3000ms));
    CHECK(r.metric("ferry_device_up", {{"device", "dev"}}) == 0);
    // Down after down_after (3) silent polls: after 2 s at a 100 ms poll interval, far fewer
    // than 20 attempts; with retry_every 30 s, exactly those 3.
    std::this_thread::sleep_for(2000ms);
    CHECK(sim.requests() <= 8);
    CHECK(sim.requests() == 3);
    CHECK(r.metric("ferry_driver_polls_total", {{"device", "dev"}, {"result", "error"}}) >= 2);
}

TEST_CASE("bad data over RTU: CRC errors, short frames and silence give bad events") {
    socat_pair pty;
    rtu_server sim(pty, false, {},
                   {"--unit", "1,2,3", "--corrupt", "crc:10-10", "--corrupt", "short:20-20"});
    auto crc = rtu_dev("crc", pty.a(), {pt("bad", 10), pt("good", k_far)});
    auto shrt = rtu_dev("short", pty.a(), {pt("bad", 20), pt("good", k_far)});
    auto silent = rtu_dev("silent", pty.a(), {pt("bad", 0)});
    crc.settings.change<modbus::device_settings>([](auto& s) { s.unit_id = 1; });
    shrt.settings.change<modbus::device_settings>([](auto& s) { s.unit_id = 2; });
    silent.settings.change<modbus::device_settings>([](auto& s) { s.unit_id = 9; });
    rig r({crc, shrt, silent});
    check_bad_and_good(r, "bad");
    CHECK(wait_until([&] { return r.errors("crc", "bad_crc") >= 3; }, 3000ms));
    CHECK(wait_until([&] { return r.errors("short", "short_frame") >= 3; }, 3000ms));
    CHECK(wait_until([&] { return r.errors("silent", "timeout") >= 1; }, 3000ms));
    CHECK(r.metric("ferry_device_up", {{"device", "crc"}}) == 1);
    CHECK(r.metric("ferry_device_up", {{"device", "silent"}}) == 0);
}

TEST_CASE("illegal address: the block is split down to the offending point, once") {
    std::vector<std::string> sets;
    std::vector<ferry::config::point> pts;
    for (std::uint32_t a = 0; a < 16; ++a) {
        sets.push_back("holding:" + std::to_string(a) + "=u16:" + std::to_string(a + 100));
        pts.push_back(pt("p" + std::to_string(a), a));
    }
    // Register 11 does not exist; register 40 is in a bridged gap (points at 30 and 45).
    modbus_sim sim(0, sets, {}, {"--fail", "11-11", "--fail", "40-40"});
    pts.push_back(pt("q30", 30));
    pts.push_back(pt("q45", 45));
    auto dev = tcp_dev("dev", sim.port(), pts);
    dev.settings.change<modbus::device_settings>([](auto& s) { s.max_gap = 20; });
    dev.poll_interval = std::chrono::milliseconds(200);
    rig r({dev});
    REQUIRE(wait_until([&] { return r.of("q45").size() >= 4; }, 5000ms));
    for (std::uint32_t a = 0; a < 16; ++a) {
        const auto evs = r.of("p" + std::to_string(a));
        REQUIRE(!evs.empty());
        for (const auto& e : evs) {
            INFO("p" << a);
            if (a == 11) {
                CHECK(e.quality == ferry::quality::bad);
            } else {
                CHECK(e.quality == ferry::quality::good);
                CHECK(e.value == ferry::value{std::uint64_t{a + 100}});
            }
        }
    }
    for (const char* t : {"q30", "q45"})
        for (const auto& e : r.of(t))
            CHECK(e.quality == ferry::quality::good);
    CHECK(wait_until([&] { return r.errors("dev", "illegal_address") >= 1; }, 3000ms));
    // Later polls use the split plan: the requests per poll settle at a handful, and every
    // later poll fails exactly one request (register 11's).
    const auto s0 = r.poller->status()[0];
    const auto e0 = r.errors("dev", "illegal_address");
    REQUIRE(wait_until([&] { return r.poller->status()[0].polls_failed >= s0.polls_failed + 3; },
                       5000ms));
    const auto s1 = r.poller->status()[0];
    const auto polls = (s1.polls_ok + s1.polls_failed) - (s0.polls_ok + s0.polls_failed);
    const auto per_poll =
        static_cast<double>(s1.requests - s0.requests) / static_cast<double>(polls);
    MESSAGE("requests per poll after splitting: " << per_poll);
    CHECK(per_poll <= 8);
    // (the counter and the status are read a moment apart: one poll either way)
    const auto failed = r.errors("dev", "illegal_address") - e0;
    CHECK(failed >= static_cast<double>(polls) - 1);
    CHECK(failed <= static_cast<double>(polls) + 1);
}

// ---- issue 14, item 8: a passing illegal address; NaN never good ---------------------------

// A device that answers "illegal data address" while it boots (here: its first request) used
// to be polled piece by piece until a reload; the split block is now read whole again once
// its pieces have been answered for a few polls.
TEST_CASE("illegal address while booting: the split block is read whole again afterwards") {
    mosquitto broker;
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    modbus_sim sim(0, holding_registers(10), {}, {"--fail-first", "1"});
    std::string points;
    for (int a = 0; a < 10; ++a)
        points +=
            "      - { name: r" + std::to_string(a) + ", address: " + std::to_string(a) + " }\n";
    running_ferry f;
    const auto http = free_port();
    f.start(broker.uri(), tcp_device("boot", sim.port(), "    poll_interval: 100ms\n", points) +
                              "http: { listen: 127.0.0.1:" + std::to_string(http) + " }\n");
    auto polls = [&] {
        return metric_value(http, "ferry_driver_polls_total{device=\"boot\",result=\"ok\"}", 0) +
               metric_value(http, "ferry_driver_polls_total{device=\"boot\",result=\"error\"}", 0);
    };
    REQUIRE_MESSAGE(wait_until([&] { return polls() >= 20; }, 20s), f.log());
    CHECK(metric_value(
              http, "ferry_driver_errors_total{device=\"boot\",reason=\"illegal_address\"}") == 1);
    // Requests per poll, measured over 10 polls: 1 when read whole, 2 while split in halves.
    const auto r0 = static_cast<double>(sim.requests());
    const auto p0 = polls();
    REQUIRE(wait_until([&] { return polls() >= p0 + 10; }, 20s));
    const auto per_poll = (static_cast<double>(sim.requests()) - r0) / (polls() - p0);
    MESSAGE("requests per poll once booted: " << per_poll);
    CHECK(per_poll < 1.5);
    CHECK(f.log().find("reading a split block whole again") != std::string::npos);
    // Every value after the first poll is good.
    std::size_t good = 0;
    for (const auto& e : events_of(rec)) {
        if (e["quality"] == "good") ++good;
        if (e["quality"] == "good")
            CHECK(e["value"] == std::stoi(e["tag"].get<std::string>().substr(1)));
    }
    CHECK(good >= 100);
    CHECK(f.proc->stop() == 0);
}

TEST_CASE("a NaN or infinite float register is published bad (value null), never good") {
    mosquitto broker;
    mqtt_recorder rec(broker.uri(), {"plant/#"});
    modbus_sim sim(
        0, {"holding:0=f32:abcd:nan", "holding:2=f32:abcd:inf", "holding:4=f64:abcd:-inf",
            "holding:8=f32:abcd:21.5", "holding:12=f64:abcd:1e308", "holding:20=str:abcd:Z\xfcri"});
    running_ferry f;
    const auto http = free_port();
    f.start(broker.uri(),
            tcp_device("m", sim.port(), "    poll_interval: 200ms\n",
                       "      - { name: nan, address: 0, type: float32 }\n"
                       "      - { name: inf, address: 2, type: float32 }\n"
                       "      - { name: ninf, address: 4, type: float64 }\n"
                       "      - { name: ok, address: 8, type: float32 }\n"
                       "      - { name: big, address: 12, type: float64, scale: 10 }\n"
                       "      - { name: text, address: 20, type: string, length: 2 }\n") +
                "http: { listen: 127.0.0.1:" + std::to_string(http) + " }\n");
    std::map<std::string, std::vector<json>> by;
    REQUIRE_MESSAGE(wait_until(
                        [&] {
                            by.clear();
                            for (const auto& e : events_of(rec))
                                by[e["tag"].get<std::string>()].push_back(e);
                            return by["big"].size() >= 2;
                        },
                        10s),
                    f.log());
    for (const char* t : {"nan", "inf", "ninf", "big"}) {
        INFO(t);
        REQUIRE(!by[t].empty());
        for (const auto& e : by[t]) {
            CHECK(e["quality"] == "bad");
            CHECK(e["value"].is_null());
        }
    }
    for (const auto& e : by["ok"]) {
        CHECK(e["quality"] == "good");
        CHECK(e["value"] == 21.5);
    }
    // A string register in Latin-1 ("Züri"): valid UTF-8 upstream, U+FFFD for the bad byte.
    REQUIRE(!by["text"].empty());
    for (const auto& e : by["text"])
        CHECK(e["value"] == "Z\xef\xbf\xbdri");
    CHECK(metric_value(http, "ferry_invalid_utf8_total{device=\"m\"}", 0) >= 2);
    CHECK(metric_value(http, "ferry_driver_errors_total{device=\"m\",reason=\"not_finite\"}", 0) >=
          8);
    CHECK(metric_value(http, "ferry_input_rejected_total{input=\"modbus\",reason=\"not_finite\"}",
                       0) >= 8);
    // The device itself answers fine: it stays up and its polls are ok.
    CHECK(metric_value(http, "ferry_device_up{device=\"m\"}") == 1);
    CHECK(f.log().find("not a finite number") != std::string::npos);
    CHECK(f.proc->stop() == 0);
}

TEST_CASE("illegal address for good inside a bridged gap: whole-block retries back off") {
    // Register 40 does not exist; the points at 30 and 45 are read together (max_gap 20), so
    // the block is refused, split, and its halves answered. Trying it whole again costs one
    // exception each time, with a doubling wait: 2, 4, 8, ... polls.
    modbus_sim sim(0, {"holding:30=u16:30", "holding:45=u16:45"}, {}, {"--fail", "40-40"});
    auto dev = tcp_dev("gap", sim.port(), {pt("q30", 30), pt("q45", 45)});
    dev.settings.change<modbus::device_settings>([](auto& s) { s.max_gap = 20; });
    dev.poll_interval = std::chrono::milliseconds(50);
    rig r({dev});
    REQUIRE(wait_until([&] { return r.poller->status()[0].polls_ok >= 60; }, 60000ms));
    const auto s = r.poller->status()[0];
    const auto refused = r.errors("gap", "illegal_address");
    const auto polls = static_cast<double>(s.polls_ok + s.polls_failed);
    MESSAGE("polls " << polls << ", exceptions " << refused << ", requests " << s.requests);
    // The first split, then tries after 2, 4, 8, 16 and 32 clean polls: a handful, not one
    // per poll; every try is split again in the same poll, so no value is lost.
    CHECK(refused >= 3);
    CHECK(refused <= 2 + std::log2(polls));
    CHECK(static_cast<double>(s.requests) <= 2 * polls + refused + 2);
    for (const char* t : {"q30", "q45"})
        for (const auto& e : r.of(t))
            CHECK(e.quality == ferry::quality::good);
    CHECK(r.of("q45").size() >= 60);
}

// ---- probe ----------------------------------------------------------------------------------

cli_result run_ferry(const std::vector<std::string>& args) {
    return ferry_cli(args, 10000ms);
}

TEST_CASE("ferry probe modbus prints every decoding; exit codes 0, 2, 3") {
    modbus_sim sim(0, {"holding:100=f32:cdab:3.14159", "holding:102=u16:7"});
    const auto ok =
        run_ferry({"probe", "modbus", "--host", "127.0.0.1", "--port", std::to_string(sim.port()),
                   "--unit", "1", "--table", "holding", "--address", "100", "--count", "4"});
    CHECK(ok.code == 0);
    // The float a user is looking for shows up under CDAB, beside the other orders.
    CHECK(ok.out.find("CDAB") != std::string::npos);
    CHECK(ok.out.find("3.14159012") != std::string::npos);
    CHECK(ok.out.find("0x0FD0") != std::string::npos);
    CHECK(ok.out.find("float64") != std::string::npos);

    socat_pair pty;
    rtu_server rtu(pty, false, {"holding:5=i16:-2"}, {"--parity", "E", "--unit", "4"});
    const auto serial =
        run_ferry({"probe", "modbus", "--serial", pty.a(), "--baud", "19200", "--parity", "E",
                   "--unit", "4", "--address", "5", "--count", "1"});
    CHECK(serial.code == 0);
    CHECK(serial.out.find("-2 ") != std::string::npos);
    const auto silent =
        run_ferry({"probe", "modbus", "--serial", pty.a(), "--baud", "19200", "--parity", "E",
                   "--unit", "5", "--address", "5", "--timeout", "200"});
    CHECK(silent.code == 3);
    CHECK(silent.out.find("timeout") != std::string::npos);

    CHECK(run_ferry({"probe", "modbus", "--host", "127.0.0.1", "--port",
                     std::to_string(free_port()), "--address", "0"})
              .code == 3);
    CHECK(run_ferry({"probe", "modbus", "--host", "127.0.0.1"}).code == 2);  // no --address
    CHECK(run_ferry({"probe", "modbus", "--address", "0"}).code == 2);       // no target
    CHECK(run_ferry({"probe", "bacnet"}).code == 2);
}

}  // namespace
