// Downlink commands end to end: MQTT set → `ferry run` → pymodbus's server, checked with an
// independent Modbus client (tests/tools/modbus_client.py on pymodbus), never with Ferry's
// own code. Results on .../result, ferry_commands_total{result} on /metrics.
#include <doctest/doctest.h>

#include <signal.h>

#include <mqtt/async_client.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <map>
#include <sstream>
#include <thread>

#include "tests/support/ferry_run.hpp"

using namespace ferry::test;
using nlohmann::json;

namespace {

const std::string k_gw = "test-gw";  // gateway.id in tests/configs/commands.yaml
const std::string k_cmd = "ferry/" + k_gw + "/cmd/";

// Initial registers: setpoint 20.0 (float32 CDAB at 100), pump off (coil 5), valve raw 0
// (int16, scale 0.1, at 200), temperature 215 (uint16, read-only, at 300), total 0 (uint32
// at 400), rate raw 0 (int32, scale 0.001, at 410).
std::vector<std::string> registers() {
    return {"holding:100=f32:cdab:20.0", "coil:5=bool:0",     "holding:200=i16:0",
            "holding:300=u16:215",       "holding:400=u32:0", "holding:410=i32:0"};
}

// Commands sent before Ferry's subscription would never arrive: wait for it.
bool subscribed(const std::string& log) {
    const bool ok = wait_until(
        [&] { return read_file_if_exists(log).find("msg=subscribed") != std::string::npos; }, 15s);
    if (!ok) MESSAGE(read_file_if_exists(log));
    return ok;
}

// Peak resident set size of a process in KiB (VmHWM in /proc/PID/status), 0 if unknown.
std::uint64_t peak_rss_kib(pid_t pid) {
    std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/status"));
    for (std::string line; std::getline(in, line);)
        if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6));
    return 0;
}

std::uint32_t u32_at(std::uint16_t port, int address) {
    const auto r = pymodbus_read(port, "holding", address, 2);
    return static_cast<std::uint32_t>((r[0] << 16) | r[1]);
}

// float32 in CDAB: the low word first. Decoded here, not with Ferry's codec.
float setpoint(std::uint16_t port) {
    const auto r = pymodbus_read(port, "holding", 100, 2);
    return std::bit_cast<float>(static_cast<std::uint32_t>((r[1] << 16) | r[0]));
}
void set_setpoint(std::uint16_t port, float v) {
    const auto bits = std::bit_cast<std::uint32_t>(v);
    CHECK(pymodbus_client(port, "write holding 100 " + std::to_string(bits & 0xFFFF) + " " +
                                    std::to_string(bits >> 16)) == "ok");
}
unsigned pump(std::uint16_t port) {
    return pymodbus_read(port, "coil", 5, 1)[0];
}
std::int16_t valve_raw(std::uint16_t port) {
    return static_cast<std::int16_t>(pymodbus_read(port, "holding", 200, 1)[0]);
}

// Publishes commands at QoS 1 (MQTT 5, its own client id).
class commander {
  public:
    explicit commander(const std::string& uri)
        : client_(uri, "commander-" + std::to_string(free_port()),
                  mqtt::create_options(MQTTVERSION_5)) {
        auto opts = mqtt::connect_options_builder()
                        .mqtt_version(MQTTVERSION_5)
                        .clean_start(true)
                        .connect_timeout(std::chrono::seconds(5))
                        .finalize();
        client_.connect(opts)->wait();
    }
    ~commander() {
        try {
            client_.disconnect()->wait_for(std::chrono::seconds(2));
        } catch (const mqtt::exception&) {
        }
    }
    void send(const std::string& device, const std::string& tag, const std::string& payload,
              bool retain = false) {
        client_.publish(k_cmd + device + "/" + tag + "/set", payload, 1, retain)->wait();
    }

  private:
    mqtt::async_client client_;
};

// The running pieces of one test.
// Server: pymodbus_sim (the default, an independent implementation) or modbus_sim (for
// --fail and --delay); its constructor arguments are passed through.
template <class Server = pymodbus_sim>
struct rig {
    Server sim;
    std::string timeout = "500ms";  // the device's
    std::string rate = "100/s";     // commands.rate_limit
    std::string version = "5";      // upstream.mqtt.version
    mosquitto broker;
    temp_dir dir;
    std::uint16_t http = free_port();
    mqtt_recorder results{broker.uri(), {k_cmd + "+/+/result"}};
    std::unique_ptr<process> ferry;
    int starts = 0;
    std::map<std::string, std::string> env;  // extra environment for ferry (libfaketime)

    rig() : sim(0, registers()) {}
    template <class... Args>
    explicit rig(Args&&... args) : sim(std::forward<Args>(args)...) {}

    void start(bool enabled = true) {
        auto vars = ferry_vars(dir.path(), http, sim.port(), broker.uri());
        vars["COMMANDS"] = enabled ? "true" : "false";
        vars["DEVICE_TIMEOUT"] = timeout;
        vars["RATE_LIMIT"] = rate;
        vars["MQTT_VERSION"] = version;
        vars.insert(env.begin(), env.end());
        const auto log = dir.file("ferry" + std::to_string(++starts) + ".log");
        // A copy: a test may edit it and send SIGHUP.
        ferry = ferry_process(copy_config(dir, "commands"), log, vars);
        REQUIRE(subscribed(log));
    }
    std::string log() const {
        return read_file_if_exists(dir.file("ferry" + std::to_string(starts) + ".log"));
    }

    // The n-th answer (1-based) carrying this id, parsed; null JSON when none came in time.
    json answer(const std::string& id, std::size_t n = 1) {
        json found;
        wait_until(
            [&] {
                std::size_t seen = 0;
                for (const auto& m : results.messages()) {
                    auto j = json::parse(m.payload, nullptr, false);
                    if (j.is_object() && j.value("id", json()) == id && ++seen == n) {
                        found = j;
                        return true;
                    }
                }
                return false;
            },
            10s);
        if (found.is_null()) MESSAGE(log());
        return found;
    }
    double commands_total(const std::string& result) {
        return metric_value(http, "ferry_commands_total{result=\"" + result + "\"}");
    }
};

// How many answers recorded so far satisfy `pred` (given the parsed answer).
template <class Rig, class Pred>
std::size_t answers_where(Rig& r, Pred pred) {
    std::size_t n = 0;
    for (const auto& m : r.results.messages())
        if (pred(json::parse(m.payload, nullptr, false))) ++n;
    return n;
}

void check_refused(const json& a, const std::string& error) {
    REQUIRE(a.is_object());
    CHECK(a["ok"] == false);
    CHECK(a["error"] == error);
}

}  // namespace

TEST_CASE(
    "setpoint (float32 CDAB), coil and scaled int16 written over MQTT, read back "
    "independently") {
    rig<> r;
    r.start();
    // Every label exists from the start, at 0.
    for (const char* label :
         {"ok", "rejected", "stale", "rate_limited", "duplicate", "device_error", "disabled"})
        CHECK(r.commands_total(label) == 0);
    commander c(r.broker.uri());

    c.send("boiler1", "setpoint", R"({"id":"c-1","value":42.75})");
    auto a = r.answer("c-1");
    REQUIRE(a.is_object());
    CHECK(a == json::parse(R"({"id":"c-1","ok":true})"));
    CHECK(r.results.messages_on(k_cmd + "boiler1/setpoint/result").size() == 1);
    CHECK(setpoint(r.sim.port()) == 42.75f);

    c.send("boiler1", "pump", R"({"id":"c-2","value":true})");
    CHECK(r.answer("c-2") == json::parse(R"({"id":"c-2","ok":true})"));
    CHECK(pump(r.sim.port()) == 1);

    // value = raw * 0.1: -12.3 is raw -123.
    c.send("boiler1", "valve",
           R"({"id":"c-3","value":-12.3,"ts":)" + std::to_string(unix_ms()) + "}");
    CHECK(r.answer("c-3") == json::parse(R"({"id":"c-3","ok":true})"));
    CHECK(valve_raw(r.sim.port()) == -123);

    c.send("boiler1", "pump", R"({"id":"c-4","value":false})");
    CHECK(r.answer("c-4") == json::parse(R"({"id":"c-4","ok":true})"));
    CHECK(pump(r.sim.port()) == 0);

    // Round trips, set published to result recorded (20 ms polling resolution): measured, and
    // bounded loosely so that a slow CI box does not fail.
    std::vector<double> ms;
    for (int i = 0; i < 10; ++i) {
        const auto id = "t-" + std::to_string(i);
        const auto began = std::chrono::steady_clock::now();
        c.send("boiler1", "valve", R"({"id":")" + id + R"(","value":)" + std::to_string(i) + "}");
        REQUIRE(r.answer(id).is_object());
        ms.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - began)
                .count());
    }
    std::sort(ms.begin(), ms.end());
    MESSAGE("command round trip (MQTT set -> Modbus write -> result), ms: median "
            << ms[5] << ", max " << ms.back());
    CHECK(ms[5] < 1000);
    CHECK(valve_raw(r.sim.port()) == 90);  // 9 / 0.1

    CHECK(wait_until([&] { return r.commands_total("ok") == 14; }, 5s));
    // One log line per write, with id, device, point, value and result.
    const auto log = r.log();
    CHECK(log.find("msg=write id=c-1 device=boiler1 point=setpoint value=42.75 result=ok") !=
          std::string::npos);
    CHECK(log.find("msg=write id=c-3 device=boiler1 point=valve value=-12.3 result=ok") !=
          std::string::npos);
    CHECK(r.ferry->stop() == 0);
}

TEST_CASE("refused commands: each error is named and nothing is written") {
    rig<> r;
    r.start();
    commander c(r.broker.uri());
    const auto unchanged = [&] {
        CHECK(setpoint(r.sim.port()) == 20.0f);
        CHECK(pump(r.sim.port()) == 0);
        CHECK(valve_raw(r.sim.port()) == 0);
        CHECK(pymodbus_read(r.sim.port(), "holding", 300, 1)[0] == 215);
    };

    c.send("boiler9", "setpoint", R"({"id":"r-1","value":30})");
    check_refused(r.answer("r-1"), "unknown device 'boiler9'");
    c.send("weather", "humidity", R"({"id":"r-11","value":30})");
    check_refused(r.answer("r-11"), "device 'weather' (driver serial_line) does not take writes");
    c.send("boiler1", "flow", R"({"id":"r-2","value":30})");
    check_refused(r.answer("r-2"), "device 'boiler1' has no point 'flow'");
    c.send("boiler1", "temperature", R"({"id":"r-3","value":30})");
    check_refused(r.answer("r-3"),
                  "point 'boiler1/temperature' is not writable (writable: false in the config)");
    c.send("boiler1", "setpoint", R"({"id":"r-4","value":90.5})");
    check_refused(r.answer("r-4"), "90.5 is above max 90");
    c.send("boiler1", "valve", R"({"id":"r-5","value":-100.1})");
    check_refused(r.answer("r-5"), "-100.1 is below min -100");
    c.send("boiler1", "setpoint", R"({"id":"r-6","value":"warm"})");
    check_refused(r.answer("r-6"), "value must be a number (type float32)");
    c.send("boiler1", "pump", R"({"id":"r-7","value":1})");
    check_refused(r.answer("r-7"), "value must be true or false (a coil)");
    c.send("boiler1", "valve", R"({"id":"r-8","value":1.25})");
    check_refused(r.answer("r-8"),
                  "1.25 is not a whole number of raw steps for type int16: (value - offset) / "
                  "scale = 12.5 (scale 0.1, offset 0)");
    c.send("boiler1", "setpoint",
           R"({"id":"r-9","value":30,"ts":)" + std::to_string(unix_ms() - 45000) + "}");
    const auto stale = r.answer("r-9");
    REQUIRE(stale.is_object());
    CHECK(stale["ok"] == false);
    CHECK(stale["error"].get<std::string>().rfind("stale: \"ts\" is ", 0) == 0);
    CHECK(stale["error"].get<std::string>().find("more than commands.max_age (30000 ms)") !=
          std::string::npos);
    c.send("boiler1", "setpoint", R"({"value":30})");
    c.send("boiler1", "setpoint", R"({"id":"r-10","value":30,"force":1})");
    check_refused(r.answer("r-10"),
                  "malformed payload: unknown key \"force\" (allowed: id, value, ts)");
    const auto no_id = r.results.messages_on(k_cmd + "boiler1/setpoint/result");
    CHECK(std::any_of(no_id.begin(), no_id.end(), [](const mqtt_message& m) {
        return m.payload ==
               R"({"id":null,"ok":false,"error":"malformed payload: \"id\" must be a non-empty string"})";
    }));
    unchanged();
    CHECK(wait_until([&] { return r.commands_total("rejected") == 11; }, 5s));
    CHECK(r.commands_total("stale") == 1);
    CHECK(r.commands_total("ok") == 0);
    CHECK(r.ferry->stop() == 0);

    // Commands disabled: still answered, with the reason, and counted as such.
    r.start(false);
    commander c2(r.broker.uri());
    c2.send("boiler1", "setpoint", R"({"id":"d-1","value":30})");
    check_refused(r.answer("d-1"),
                  "commands are disabled in this gateway's config (commands.enabled: false)");
    unchanged();
    CHECK(wait_until([&] { return r.commands_total("disabled") == 1; }, 5s));
    CHECK(r.commands_total("ok") == 0);
    CHECK(r.ferry->stop() == 0);
}

TEST_CASE("the same id twice writes once, also after a restart") {
    rig<> r;
    r.start();
    {
        commander c(r.broker.uri());
        c.send("boiler1", "setpoint", R"({"id":"i-1","value":55.5})");
        CHECK(r.answer("i-1") == json::parse(R"({"id":"i-1","ok":true})"));
        CHECK(setpoint(r.sim.port()) == 55.5f);
        // The test changes the register; a repeat of i-1 must not write it back.
        set_setpoint(r.sim.port(), 33.25f);
        c.send("boiler1", "setpoint", R"({"id":"i-1","value":55.5})");
        CHECK(r.answer("i-1", 2) == json::parse(R"({"id":"i-1","ok":true})"));
        CHECK(setpoint(r.sim.port()) == 33.25f);
        CHECK(wait_until([&] { return r.commands_total("duplicate") == 1; }, 5s));
        CHECK(r.commands_total("ok") == 1);
        // A refused id is not remembered: fixed, it is written.
        c.send("boiler1", "setpoint", R"({"id":"i-2","value":95})");
        check_refused(r.answer("i-2"), "95 is above max 90");
        c.send("boiler1", "setpoint", R"({"id":"i-2","value":60})");
        CHECK(r.answer("i-2", 2) == json::parse(R"({"id":"i-2","ok":true})"));
        CHECK(setpoint(r.sim.port()) == 60.0f);
        set_setpoint(r.sim.port(), 33.25f);
    }
    CHECK(r.ferry->stop() == 0);
    CHECK(std::filesystem::exists(r.dir.file("commands.db")));

    // Same data_dir: the ids are remembered.
    r.start();
    commander c(r.broker.uri());
    c.send("boiler1", "setpoint", R"({"id":"i-1","value":55.5})");
    CHECK(r.answer("i-1", 3) == json::parse(R"({"id":"i-1","ok":true})"));
    c.send("boiler1", "setpoint", R"({"id":"i-2","value":60})");
    CHECK(r.answer("i-2", 3) == json::parse(R"({"id":"i-2","ok":true})"));
    CHECK(setpoint(r.sim.port()) == 33.25f);
    CHECK(wait_until([&] { return r.commands_total("duplicate") == 2; }, 5s));
    CHECK(r.commands_total("ok") == 0);  // counters start again with the process
    // A new id is written.
    c.send("boiler1", "setpoint", R"({"id":"i-3","value":12.5})");
    CHECK(r.answer("i-3") == json::parse(R"({"id":"i-3","ok":true})"));
    CHECK(setpoint(r.sim.port()) == 12.5f);
    CHECK(wait_until([&] { return r.commands_total("ok") == 1; }, 5s));
    CHECK(r.ferry->stop() == 0);
}

TEST_CASE("a device error is answered with the exception's name and kept for the id") {
    // ferry_modbus_sim answers ILLEGAL_DATA_ADDRESS for addresses 100..101 (--fail).
    rig<modbus_sim> r(std::uint16_t{0}, std::vector<std::string>{"holding:300=u16:1"},
                      std::string(), std::vector<std::string>{"--fail", "100-101"});
    r.start();
    commander c(r.broker.uri());
    c.send("boiler1", "setpoint", R"({"id":"e-1","value":10})");
    c.send("boiler1", "setpoint", R"({"id":"e-1","value":10})");
    const std::string error = "the device answered with Modbus exception 2 (illegal_address)";
    check_refused(r.answer("e-1"), error);
    check_refused(r.answer("e-1", 2), error);
    CHECK(wait_until([&] { return r.commands_total("duplicate") == 1; }, 5s));
    CHECK(r.commands_total("device_error") == 1);
    CHECK(r.sim.stats()["fc16"] == 1);  // written once
    CHECK(r.ferry->stop() == 0);
}

TEST_CASE("the command subscription is made again after the broker restarts") {
    rig<> r;
    r.start();
    {
        commander c(r.broker.uri());
        c.send("boiler1", "setpoint", R"({"id":"s-1","value":11})");
        CHECK(r.answer("s-1") == json::parse(R"({"id":"s-1","ok":true})"));
    }
    r.broker.stop();
    r.broker.start();
    auto subscriptions = [&] {
        const auto log = r.log();
        std::size_t n = 0;
        for (auto at = log.find("msg=subscribed"); at != std::string::npos;
             at = log.find("msg=subscribed", at + 1))
            ++n;
        return n;
    };
    REQUIRE(wait_until([&] { return subscriptions() == 2; }, 20s));
    REQUIRE(wait_until([&] { return r.results.connected(); }, 10s));
    // The recorder subscribes again on its own schedule: try fresh ids until one's answer
    // is recorded.
    commander c(r.broker.uri());
    bool answered = false;
    for (int k = 0; k < 5 && !answered; ++k) {
        const auto id = "s-2-" + std::to_string(k);
        c.send("boiler1", "setpoint", R"({"id":")" + id + R"(","value":12})");
        answered = wait_until(
            [&] {
                for (const auto& m : r.results.messages())
                    if (m.payload == R"({"id":")" + id + R"(","ok":true})") return true;
                return false;
            },
            3s);
    }
    CHECK(answered);
    CHECK(setpoint(r.sim.port()) == 12.0f);
    CHECK(r.ferry->stop() == 0);
}

TEST_CASE("kill -9 during a write: the id is answered 'outcome unknown' and never written again") {
    // Every answer takes 2 s, so the write is still queued or on the wire when ferry dies.
    rig<modbus_sim> r(std::uint16_t{0}, std::vector<std::string>{"holding:100=f32:cdab:20.0"},
                      std::string(), std::vector<std::string>{"--delay", "2000"});
    r.timeout = "5s";
    r.start();
    commander c(r.broker.uri());
    c.send("boiler1", "setpoint", R"({"id":"k-1","value":10})");
    // The id is recorded (fsynced) before the write is queued; this line follows it.
    REQUIRE(
        wait_until([&] { return r.log().find("msg=writing id=k-1") != std::string::npos; }, 10s));
    r.ferry->kill9();
    CHECK(r.results.count() == 0);
    const auto written_before = r.sim.stats()["fc16"];
    CHECK(written_before <= 1);

    r.start();
    c.send("boiler1", "setpoint", R"({"id":"k-1","value":10})");
    check_refused(r.answer("k-1"), "outcome unknown: ferry stopped during the write");
    CHECK(r.log().find("commands were in progress when ferry stopped") != std::string::npos);
    std::this_thread::sleep_for(3s);  // a second write would reach the simulator by now
    CHECK(r.sim.stats()["fc16"] == written_before);
    CHECK(r.commands_total("duplicate") == 1);
    r.sim.stop();  // else a poll waiting 2 s for its answer holds up the stop
    CHECK(r.ferry->stop(15, 10s) == 0);
}

TEST_CASE("rate limit per device, and retained commands are refused") {
    rig<> r;
    r.rate = "2/m";
    r.start();
    commander c(r.broker.uri());
    c.send("boiler1", "setpoint", R"({"id":"q-1","value":21})");
    CHECK(r.answer("q-1") == json::parse(R"({"id":"q-1","ok":true})"));
    c.send("boiler1", "pump", R"({"id":"q-2","value":true})");
    CHECK(r.answer("q-2") == json::parse(R"({"id":"q-2","ok":true})"));
    c.send("boiler1", "setpoint", R"({"id":"q-3","value":22})");
    check_refused(r.answer("q-3"),
                  "rate limited: device 'boiler1' takes at most 2 commands per "
                  "60000 ms (commands.rate_limit)");
    CHECK(setpoint(r.sim.port()) == 21.0f);
    CHECK(wait_until([&] { return r.commands_total("rate_limited") == 1; }, 5s));

    // A retained set reaches Ferry as retained only when it subscribes after it was
    // published: restart Ferry with the command waiting on the broker.
    CHECK(r.ferry->stop() == 0);
    c.send("boiler1", "valve", R"({"id":"q-4","value":5})", true);
    r.start();
    check_refused(r.answer("q-4"),
                  "a retained command is not executed (the broker would replay "
                  "it at every reconnect); publish commands with retain false");
    CHECK(valve_raw(r.sim.port()) == 0);
    c.send("boiler1", "valve", "", true);  // clear the retained message
    CHECK(r.ferry->stop() == 0);
}

TEST_CASE("a reload that makes a point writable: commands follow the running config") {
    rig<> r;
    r.start();
    commander c(r.broker.uri());
    c.send("boiler1", "temperature", R"({"id":"h-1","value":300})");
    check_refused(r.answer("h-1"),
                  "point 'boiler1/temperature' is not writable (writable: false in the config)");
    CHECK(pymodbus_read(r.sim.port(), "holding", 300, 1)[0] == 215);

    // SIGHUP with temperature writable (boiler1 restarts; MQTT and the store stay).
    auto text = read_file(r.dir.file("ferry.yaml"));
    const std::string from = "{ name: temperature, table: holding, address: 300, type: uint16 }";
    const auto at = text.find(from);
    REQUIRE(at != std::string::npos);
    text.replace(at, from.size(),
                 "{ name: temperature, table: holding, address: 300, type: uint16, "
                 "writable: true, max: 400 }");
    write_file(r.dir.file("ferry.yaml"), text);
    REQUIRE(::kill(r.ferry->pid(), SIGHUP) == 0);
    REQUIRE(wait_until(
        [&] { return metric_value(r.http, "ferry_config_reloads_total{result=\"applied\"}") == 1; },
        10s));

    c.send("boiler1", "temperature", R"({"id":"h-2","value":300})");
    CHECK(r.answer("h-2") == json::parse(R"({"id":"h-2","ok":true})"));
    CHECK(pymodbus_read(r.sim.port(), "holding", 300, 1)[0] == 300);
    // The new max applies too.
    c.send("boiler1", "temperature", R"({"id":"h-3","value":401})");
    check_refused(r.answer("h-3"), "401 is above max 400");
    CHECK(pymodbus_read(r.sim.port(), "holding", 300, 1)[0] == 300);
    CHECK(r.ferry->stop() == 0);
}

// Clock steps (issue 13, item 7): the wall clock of ferry (libfaketime, FAKETIME_TIMESTAMP_FILE
// re-read at every call; the monotonic clock untouched, as an NTP step leaves it) jumps by
// ±25 h, more than the store's 24 h TTL. A repeated id is answered from commands.db and never
// written twice: the store ages ids by Ferry's running time, not by the wall clock.
TEST_CASE("clock steps of +25 h and -25 h never make a command id write twice") {
    const std::string lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if (!std::filesystem::exists(lib)) {
        MESSAGE("SKIPPED: libfaketime not installed (Debian package faketime)");
        return;
    }
    rig<> r;
    const auto clock_file = r.dir.file("faketime");
    write_file(clock_file, "+0\n");
    r.env = {{"LD_PRELOAD", lib},
             {"FAKETIME_TIMESTAMP_FILE", clock_file},
             {"FAKETIME_NO_CACHE", "1"},
             {"FAKETIME_DONT_FAKE_MONOTONIC", "1"}};
    r.start();
    commander c(r.broker.uri());
    // Written once; then the register is changed behind Ferry's back, so a second write of the
    // same id would show.
    auto write_once = [&](const std::string& id, float value) {
        c.send("boiler1", "setpoint",
               R"({"id":")" + id + R"(","value":)" + std::to_string(value) + "}");
        CHECK(r.answer(id) == json::parse(R"({"id":")" + id + R"(","ok":true})"));
        CHECK(setpoint(r.sim.port()) == value);
        set_setpoint(r.sim.port(), 33.25f);
    };
    // The id again: answered ok from the store, the register untouched.
    auto repeat = [&](const std::string& id, float value, std::size_t nth) {
        c.send("boiler1", "setpoint",
               R"({"id":")" + id + R"(","value":)" + std::to_string(value) + "}");
        CHECK(r.answer(id, nth) == json::parse(R"({"id":")" + id + R"(","ok":true})"));
        CHECK(setpoint(r.sim.port()) == 33.25f);
    };
    auto step_to = [&](const std::string& offset) {
        write_file(clock_file, offset + "\n");
        std::this_thread::sleep_for(300ms);  // a poll or two under the new clock
    };

    write_once("s-1", 55.5f);
    step_to("+25h");  // forward 25 h
    repeat("s-1", 55.5f, 2);
    step_to("-25h");  // back 50 h
    repeat("s-1", 55.5f, 3);
    write_once("s-2", 60.0f);  // recorded while the clock is behind
    step_to("+0");             // forward 25 h
    repeat("s-2", 60.0f, 2);
    repeat("s-1", 55.5f, 4);
    CHECK(wait_until([&] { return r.commands_total("duplicate") == 4; }, 5s));
    CHECK(r.commands_total("ok") == 2);
    CHECK(r.ferry->stop() == 0);
}

// Issue 14, item 1: a command payload is checked against commands.max_payload before it is
// parsed. Before: the whole payload was parsed into a document (a 20 MB one of nested arrays
// took Ferry from 13 to 775 MiB peak RSS), even with commands disabled.
TEST_CASE("a 20 MB command is refused unparsed: peak RSS stays within 32 MiB of idle") {
    auto run = [](const std::string& version, std::size_t big_bytes) {
        CAPTURE(version);
        rig<> r;
        r.version = version;
        r.start();
        commander c(r.broker.uri());
        c.send("boiler1", "setpoint", R"({"id":"m-0","value":21})");
        CHECK(r.answer("m-0") == json::parse(R"({"id":"m-0","ok":true})"));
        const auto idle = peak_rss_kib(r.ferry->pid());
        REQUIRE(idle > 0);

        // `{"id":"a","value":` + n × `[` + n × `]` + `}`. MQTT 5: Ferry's Maximum Packet Size
        // keeps it at the broker. MQTT 3.1.1: it arrives, and only its head is looked at.
        const std::size_t n = big_bytes / 2;
        c.send("boiler1", "setpoint",
               R"({"id":"a","value":)" + std::string(n, '[') + std::string(n, ']') + "}");
        // Over max_payload (4 KiB) but under the packet limit: answered, with its id.
        c.send("boiler1", "setpoint",
               R"({"id":"m-1","value":)" + std::string(50000, '[') + std::string(50000, ']') + "}");
        check_refused(r.answer("m-1"),
                      "payload too large: 100021 bytes, more than commands.max_payload (4096 "
                      "bytes)");
        // Within the budget but nested: refused at the 17th level.
        c.send("boiler1", "setpoint",
               R"({"id":"m-2","value":)" + std::string(1000, '[') + std::string(1000, ']') + "}");
        check_refused(r.answer("m-2"), "malformed payload: nested deeper than 16 levels");
        // Too large and its id not within the first 2 KiB: counted and logged, no answer.
        c.send("boiler1", "setpoint",
               R"({"value":")" + std::string(5000, 'x') + R"(","id":"m-3"})");
        c.send("boiler1", "setpoint", R"({"id":"m-4","value":22})");
        CHECK(r.answer("m-4") == json::parse(R"({"id":"m-4","ok":true})"));
        if (version == "3.1.1") {
            CHECK(r.answer("a").is_object());  // it arrived, and was answered from its head
        }
        const auto peak = peak_rss_kib(r.ferry->pid());
        MESSAGE("MQTT " << version << ": peak RSS idle " << idle / 1024 << " MiB, after a "
                        << big_bytes / 1000000 << " MB command " << peak / 1024 << " MiB");
        CHECK(peak - idle < 32 * 1024);
        CHECK(r.results.messages_on(k_cmd + "boiler1/setpoint/result").size() ==
              (version == "3.1.1" ? 5u : 4u));  // none for m-3
        const std::string rejected = "ferry_input_rejected_total{input=\"command\",reason=";
        CHECK(metric_value(r.http, rejected + "\"too_large\"}") == (version == "3.1.1" ? 3 : 2));
        CHECK(metric_value(r.http, rejected + "\"too_deep\"}") == 1);
        CHECK(r.log().find("msg=\"command payload too large; dropped without an answer\"") !=
              std::string::npos);
        CHECK(setpoint(r.sim.port()) == 22.0f);
        CHECK(r.ferry->stop() == 0);
    };
    run("5", 20'000'000);
    // Paho reads a 3.1.1 message whole (its buffer and the C++ copy): 8 MB stays well inside
    // the bound and still shows that Ferry adds nothing to it.
    run("3.1.1", 8'000'000);
}

// Issue 14, item 5: whole raw steps, exactly. Before: a relative tolerance (1e-9 × |raw|)
// took 3000000000.4 for raw 3000000000 and 2000000.0004 / 0.001 for raw 2000000000.
TEST_CASE("a value between two raw steps is refused, however large the raw value") {
    rig<> r;
    r.start();
    commander c(r.broker.uri());
    auto refused_as_between = [&](const std::string& id, const std::string& prefix) {
        const auto a = r.answer(id);
        REQUIRE(a.is_object());
        CHECK(a["ok"] == false);
        CHECK(a.value("error", std::string()).rfind(prefix, 0) == 0);
    };
    c.send("boiler1", "total", R"({"id":"x-1","value":3000000000.4})");
    refused_as_between("x-1", "3000000000.4 is not a whole number of raw steps for type uint32");
    CHECK(u32_at(r.sim.port(), 400) == 0);
    c.send("boiler1", "rate", R"({"id":"x-2","value":2000000.0004})");
    refused_as_between("x-2", "2000000.0004 is not a whole number of raw steps for type int32");
    CHECK(u32_at(r.sim.port(), 410) == 0);
    c.send("boiler1", "total", R"({"id":"x-3","value":4294967295.0000001})");
    refused_as_between("x-3",
                       "4294967295.0000001 is not a whole number of raw steps for type uint32");
    CHECK(u32_at(r.sim.port(), 400) == 0);

    // The steps themselves are written.
    c.send("boiler1", "total", R"({"id":"x-4","value":3000000000})");
    CHECK(r.answer("x-4") == json::parse(R"({"id":"x-4","ok":true})"));
    CHECK(u32_at(r.sim.port(), 400) == 3000000000u);
    c.send("boiler1", "rate", R"({"id":"x-5","value":2000000.001})");
    CHECK(r.answer("x-5") == json::parse(R"({"id":"x-5","ok":true})"));
    CHECK(u32_at(r.sim.port(), 410) == 2000000001u);
    c.send("boiler1", "rate", R"({"id":"x-6","value":-1.999})");
    CHECK(r.answer("x-6") == json::parse(R"({"id":"x-6","ok":true})"));
    CHECK(static_cast<std::int32_t>(u32_at(r.sim.port(), 410)) == -1999);
    c.send("boiler1", "valve", R"({"id":"x-7","value":1.2e1})");
    CHECK(r.answer("x-7") == json::parse(R"({"id":"x-7","ok":true})"));
    CHECK(valve_raw(r.sim.port()) == 120);
    CHECK(r.ferry->stop() == 0);
}

// Issue 14, item 6: "ts" near ±2^63. Before: now - ts overflowed (UBSan) and such a command
// was taken as fresh, and written.
TEST_CASE("a command whose ts is near plus or minus 2^63 is refused, not taken as fresh") {
    rig<> r;
    r.start();
    commander c(r.broker.uri());
    c.send("boiler1", "setpoint", R"({"id":"ts-1","value":30,"ts":9223372036854775807})");
    const auto ahead = r.answer("ts-1");
    REQUIRE(ahead.is_object());
    CHECK(ahead["ok"] == false);
    CHECK(ahead.value("error", std::string()).find("ms ahead of this gateway's clock") !=
          std::string::npos);
    c.send("boiler1", "setpoint", R"({"id":"ts-2","value":31,"ts":-9223372036854775808})");
    const auto old = r.answer("ts-2");
    REQUIRE(old.is_object());
    CHECK(old["ok"] == false);
    CHECK(old.value("error", std::string()).rfind("stale: \"ts\" is 9223", 0) == 0);
    c.send("boiler1", "setpoint", R"({"id":"ts-3","value":32,"ts":18446744073709551615})");
    check_refused(r.answer("ts-3"),
                  "malformed payload: \"ts\" is out of range (Unix time in milliseconds)");
    CHECK(setpoint(r.sim.port()) == 20.0f);
    CHECK(r.commands_total("stale") == 1);
    CHECK(r.commands_total("ok") == 0);
    CHECK(r.ferry->stop() == 0);
}

// Issue 14, item 8: repeats of an id whose write hangs. Before: each one added its reply
// topic to a list without bound (and was answered only when the write ended).
TEST_CASE("repeats of an id during a hanging write: at most 16 wait, the rest are answered") {
    // The write takes 2 s: it hangs while the repeats arrive. (Reads stay quick: with every
    // answer slow, the write also waited behind a poll of the six points.)
    rig<modbus_sim> r(std::uint16_t{0}, std::vector<std::string>{"holding:100=f32:cdab:20.0"},
                      std::string(), std::vector<std::string>{"--write-delay", "2000"});
    r.timeout = "5s";
    r.start();
    commander c(r.broker.uri());
    const std::string cmd = R"({"id":"w-1","value":10})";
    c.send("boiler1", "setpoint", cmd);
    REQUIRE(
        wait_until([&] { return r.log().find("msg=writing id=w-1") != std::string::npos; }, 10s));
    for (int i = 0; i < 40; ++i)
        c.send("boiler1", "setpoint", cmd);
    // About 2 s; the bound is generous for a loaded CI box.
    REQUIRE(wait_until([&] { return r.results.count() >= 41; }, 90s));
    // The write's own answer and the 16 that waited for it; the other 24 answered at once.
    CHECK(answers_where(r, [](const json& j) { return j.value("ok", false); }) == 17);
    CHECK(answers_where(r, [](const json& j) {
              return j.value("error", std::string())
                         .rfind("a write with this id is in progress", 0) == 0;
          }) == 24);
    CHECK(metric_value(
              r.http,
              "ferry_input_rejected_total{input=\"command\",reason=\"too_many_waiting\"}") == 24);
    CHECK(r.sim.stats()["fc16"] == 1);  // written once
    r.sim.stop();
    CHECK(r.ferry->stop(15, 10s) == 0);
}

// Issue 14, item 8 (found while confirming the above): distinct ids for a hanging device.
// Before: every command the rate limit let through queued at the poller without bound.
// Only the writes hang (1 s each): with every answer slow, each write also waited for a whole
// poll of the six points (6 s), and the test took 50 s instead of 10.
TEST_CASE("a hanging device holds at most 8 writes; more commands are refused at once") {
    rig<modbus_sim> r(std::uint16_t{0}, std::vector<std::string>{"holding:100=f32:cdab:20.0"},
                      std::string(), std::vector<std::string>{"--write-delay", "1000"});
    r.timeout = "5s";
    r.start();
    commander c(r.broker.uri());
    for (int i = 0; i < 20; ++i)
        c.send("boiler1", "setpoint",
               R"({"id":"b-)" + std::to_string(i) + R"(","value":)" + std::to_string(i) + "}");
    REQUIRE(wait_until([&] { return r.results.count() >= 20; }, 120s));
    CHECK(answers_where(r, [](const json& j) { return j.value("ok", false); }) == 8);
    CHECK(answers_where(r, [](const json& j) {
              return j.value("error", std::string()) ==
                     "device 'boiler1' is busy: 8 writes are waiting for it; nothing was written";
          }) == 12);
    CHECK(metric_value(r.http,
                       "ferry_input_rejected_total{input=\"command\",reason=\"device_busy\"}") ==
          12);
    CHECK(r.sim.stats()["fc16"] == 8);
    r.sim.stop();
    CHECK(r.ferry->stop(15, 10s) == 0);
}
