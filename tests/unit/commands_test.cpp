// Downlink commands without a broker or a device: payload parsing, value checks (types,
// whole raw steps after the inverse of scale/offset), age, the token bucket, the idempotency
// store (also across a reopen), and the service with a fake writer.
#include <doctest/doctest.h>
#include <unistd.h>

#include <prometheus/registry.h>
#include <sqlite3.h>

#include <filesystem>
#include <map>

#include "commands/commands.hpp"
#include "commands/store.hpp"
#include "drivers/modbus/codec.hpp"
#include "drivers/modbus/config.hpp"
#include "tests/unit/unit_support.hpp"

namespace cmd = ferry::commands;
namespace cfg = ferry::config;
namespace mb = ferry::drivers::modbus;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

using ferry::unit::tmp_dir;

cfg::point point(const std::string& name, mb::table t, cfg::point_type type, double scale = 1,
                 double offset = 0) {
    auto p = mb::make_point(name, t, 0, type, mb::byte_order::abcd,
                            type == cfg::point_type::string ? 4 : 0);
    p.scale = scale;
    p.offset = offset;
    p.writable = true;
    return p;
}

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace

TEST_CASE("payloads are parsed strictly; a malformed one keeps its id for the answer") {
    auto p = cmd::parse_payload(R"({"id":"c-17","value":12.5})");
    CHECK(p.error.empty());
    CHECK(*p.id == "c-17");
    CHECK(std::get<double>(p.value) == 12.5);
    CHECK_FALSE(p.ts);
    p = cmd::parse_payload(R"({"id":"c-1","value":true,"ts":1764236400123})");
    CHECK(p.error.empty());
    CHECK(std::get<bool>(p.value));
    CHECK(*p.ts == 1764236400123);
    CHECK(std::get<std::int64_t>(cmd::parse_payload(R"({"id":"a","value":-3})").value) == -3);
    CHECK(std::get<std::string>(cmd::parse_payload(R"({"id":"a","value":"AB"})").value) == "AB");

    CHECK(cmd::parse_payload("nope").error == "malformed payload: not valid JSON");
    CHECK(cmd::parse_payload("[1]").error == "malformed payload: not a JSON object");
    CHECK(cmd::parse_payload(R"({"value":1})").error ==
          "malformed payload: \"id\" must be a non-empty string");
    CHECK(cmd::parse_payload(R"({"id":"","value":1})").error ==
          "malformed payload: \"id\" must be a non-empty string");
    CHECK(cmd::parse_payload(R"({"id":7,"value":1})").error ==
          "malformed payload: \"id\" must be a non-empty string");
    p = cmd::parse_payload(R"({"id":"c-2"})");
    CHECK(p.error == "malformed payload: \"value\" is missing");
    CHECK(*p.id == "c-2");
    CHECK(cmd::parse_payload(R"({"id":"c","value":null})").error ==
          "malformed payload: \"value\" must be a number, true/false or a string");
    CHECK(cmd::parse_payload(R"({"id":"c","value":1,"ts":"now"})").error ==
          "malformed payload: \"ts\" must be an integer (Unix time in milliseconds)");
    CHECK(cmd::parse_payload(R"({"id":"c","value":1,"force":true})").error ==
          "malformed payload: unknown key \"force\" (allowed: id, value, ts)");
    CHECK(cmd::parse_payload(R"({"id":")" + std::string(300, 'x') + R"(","value":1})").error ==
          "malformed payload: \"id\" is longer than 256 bytes");
}

TEST_CASE("result messages: the contract's shape, id first, null when there was none") {
    CHECK(cmd::result_json(std::string("c-17"), true, "") == R"({"id":"c-17","ok":true})");
    CHECK(cmd::result_json(std::string("c-17"), false, "a \"quoted\" reason") ==
          R"({"id":"c-17","ok":false,"error":"a \"quoted\" reason"})");
    CHECK(cmd::result_json(std::nullopt, false, "x") == R"({"id":null,"ok":false,"error":"x"})");
}

TEST_CASE("values must have the point's type and be whole raw steps for integer types") {
    using cfg::point_type;
    using mb::table;
    const auto coil = point("pump", table::coil, point_type::boolean);
    CHECK(cmd::check_value(coil, true).empty());
    CHECK(cmd::check_value(coil, std::int64_t{1}) == "value must be true or false (a coil)");
    const auto flag = point("flag", table::holding, point_type::boolean);
    CHECK(cmd::check_value(flag, 1.0) == "value must be true or false (type bool)");
    const auto name = point("name", table::holding, point_type::string);
    CHECK(cmd::check_value(name, std::string("AB")).empty());
    CHECK(cmd::check_value(name, 1.0) == "value must be a string (type string)");
    const auto sp = point("sp", table::holding, point_type::float32);
    CHECK(cmd::check_value(sp, 12.34).empty());
    CHECK(cmd::check_value(sp, std::string("12")) == "value must be a number (type float32)");
    CHECK(cmd::check_value(sp, true) == "value must be a number (type float32)");

    // int16 with scale 0.1, offset 0: 12.3 is raw 123 (12.3 / 0.1 is 122.99999999999999 in
    // binary: still whole), 12.34 is not a whole step.
    const auto scaled = point("t", table::holding, point_type::int16, 0.1);
    CHECK(cmd::check_value(scaled, 12.3).empty());
    CHECK(cmd::check_value(scaled, -0.5).empty());
    CHECK(cmd::check_value(scaled, 12.34) ==
          "12.34 is not a whole number of raw steps for type int16: (value - offset) / scale = "
          "123.39999999999999 (scale 0.1, offset 0)");
    const auto offset = point("o", table::holding, point_type::uint16, 0.5, 10);
    CHECK(cmd::check_value(offset, 11.5).empty());  // raw 3
    CHECK_FALSE(cmd::check_value(offset, 11.2).empty());
    const auto big = point("b", table::holding, point_type::int64);
    CHECK(cmd::check_value(big, std::int64_t{1} << 53).empty());
    CHECK(cmd::check_value(big, (std::int64_t{1} << 53) + 1) ==
          "9007199254740993 cannot be written exactly (beyond 2^53 in magnitude)");
}

// Issue 14, items 1, 5, 6: the budget, exact steps on the decimal text, ts near ±2^63.
TEST_CASE("budgets and exact checks: size, depth, duplicate keys, decimal steps, ts overflow") {
    using cfg::point_type;
    using mb::table;
    auto p = cmd::parse_payload(R"({"id":"big","value":")" + std::string(5000, 'x') + "\"}");
    CHECK(p.too_large);
    CHECK(p.id == "big");
    CHECK(p.error == "payload too large: 5023 bytes, more than commands.max_payload (4096 bytes)");
    CHECK(cmd::find_id(R"({"value":[[1]],"ts":1,"id":"late"})") == "late");
    CHECK_FALSE(cmd::find_id(R"({"value":")" + std::string(3000, 'x') + R"(","id":"far"})"));
    CHECK_FALSE(cmd::find_id(R"([{"id":"not-top"}])"));
    p = cmd::parse_payload(R"({"id":"d","value":)" + std::string(17, '[') + std::string(17, ']') +
                           "}");
    CHECK(p.too_deep);
    CHECK(p.id == "d");
    CHECK(p.error == "malformed payload: nested deeper than 16 levels");
    CHECK(cmd::parse_payload(R"({"value":[1],"id":"x"})").error ==
          "malformed payload: \"value\" must be a number, true/false or a string");
    CHECK(cmd::parse_payload(R"({"value":[1],"id":"x"})").id == "x");
    CHECK(cmd::parse_payload(R"({"id":"a","value":1,"value":2})").error ==
          "malformed payload: \"value\" is given twice");
    CHECK_FALSE(cmd::parse_payload(R"({"id":"a","id":"b","value":2})").id);
    CHECK(cmd::parse_payload(R"({"id":"a","value":1e999})").error ==
          "malformed payload: not valid JSON");  // nlohmann refuses numbers beyond a double
    CHECK(cmd::parse_payload(R"({"id":"a","value":3000000000.4})").decimal == "3000000000.4");

    const auto u32 = point("u", table::holding, point_type::uint32);
    CHECK_FALSE(cmd::check_value(u32, 3000000000.4, "3000000000.4").empty());
    CHECK_FALSE(cmd::check_value(u32, 3000000000.4).empty());  // from the double's digits
    CHECK_FALSE(cmd::check_value(u32, 4294967295.0, "4294967295.0000001").empty());
    CHECK(cmd::check_value(u32, 4294967295.0, "4294967295.000").empty());
    CHECK(cmd::check_value(u32, 3e9, "3e9").empty());
    const auto i32 = point("i", table::holding, point_type::int32, 0.001);
    CHECK(cmd::check_value(i32, 2000000.0004, "2000000.0004") ==
          "2000000.0004 is not a whole number of raw steps for type int32: (value - offset) / "
          "scale = 2000000000.4 (scale 0.001, offset 0)");
    CHECK(cmd::check_value(i32, 2000000.001, "2000000.001").empty());
    CHECK(cmd::check_value(i32, -1.999, "-1.999").empty());
    CHECK_FALSE(cmd::check_value(i32, 1e-30, "1e-30").empty());
    CHECK(cmd::check_value(i32, 0.0, "0e-99999").empty());
    const auto shifted = point("s", table::holding, point_type::int16, 0.5, 0.25);
    CHECK(cmd::check_value(shifted, 1.25, "1.25").empty());  // raw 2
    CHECK_FALSE(cmd::check_value(shifted, 1.5, "1.5").empty());

    constexpr auto max = std::numeric_limits<std::int64_t>::max();
    constexpr auto min = std::numeric_limits<std::int64_t>::min();
    bool future = false;
    CHECK(cmd::check_age(max, 1000, 30s, &future).find("ms ahead of this gateway's clock") !=
          std::string::npos);
    CHECK(future);
    CHECK(cmd::check_age(min, 1000, 30s, &future) ==
          "stale: \"ts\" is 9223372036854776808 ms old, more than commands.max_age (30000 ms)");
    CHECK_FALSE(future);
    CHECK(cmd::check_age(max, max, 30s).empty());
    CHECK(cmd::check_age(1000 + 30000, 1000, 30s).empty());
    CHECK_FALSE(cmd::check_age(1000 + 30001, 1000, 30s).empty());
}

TEST_CASE("the inverse of scale/offset, min/max and the raw range: the codec the writer uses") {
    using cfg::point_type;
    auto p = point("t", mb::table::holding, point_type::int16, 0.1, -5);
    p.min = -20;
    p.max = 100;
    std::vector<std::uint16_t> regs;
    std::string why;
    REQUIRE(ferry::drivers::modbus::encode_registers(p, 12.3, regs, &why));
    CHECK(regs == std::vector<std::uint16_t>{173});  // (12.3 + 5) / 0.1
    REQUIRE(ferry::drivers::modbus::encode_registers(p, -20, regs, &why));
    CHECK(regs == std::vector<std::uint16_t>{static_cast<std::uint16_t>(-150)});
    CHECK_FALSE(ferry::drivers::modbus::encode_registers(p, 100.5, regs, &why));
    CHECK(why == "100.5 is above max 100");
    auto f = point("sp", mb::table::holding, point_type::float32);
    f.settings.change<mb::point_settings>([](auto& s) { s.order = mb::byte_order::cdab; });
    REQUIRE(ferry::drivers::modbus::encode_registers(f, 12.5, regs, &why));
    CHECK(regs == std::vector<std::uint16_t>{0x0000, 0x4148});  // 12.5f = 0x41480000, CDAB
    auto u = point("u", mb::table::holding, point_type::uint16);
    CHECK_FALSE(ferry::drivers::modbus::encode_registers(u, 70000, regs, &why));
    CHECK(why == "70000 does not fit uint16");
}

TEST_CASE("age: a command older than max_age is stale; no ts is never stale") {
    CHECK(cmd::check_age(std::nullopt, 100000, 30s).empty());
    CHECK(cmd::check_age(70000, 100000, 30s).empty());
    CHECK(cmd::check_age(69999, 100000, 30s) ==
          "stale: \"ts\" is 30001 ms old, more than commands.max_age (30000 ms)");
}

TEST_CASE("token bucket: a burst of capacity, then the refill rate") {
    cmd::token_bucket b(2, 1000ms);
    const auto t0 = std::chrono::steady_clock::time_point{} + 1h;
    CHECK(b.take(t0));
    CHECK(b.take(t0));
    CHECK_FALSE(b.take(t0));
    CHECK_FALSE(b.take(t0 + 400ms));  // 0.8 tokens
    CHECK(b.take(t0 + 500ms));        // 1.0
    CHECK_FALSE(b.take(t0 + 500ms));
    CHECK(b.take(t0 + 10s));  // full again, but never above capacity
    CHECK(b.take(t0 + 10s));
    CHECK_FALSE(b.take(t0 + 10s));
}

TEST_CASE("store: results by id, kept across a reopen; in progress becomes outcome unknown") {
    tmp_dir dir;
    const auto path = dir.file("commands.db");
    const auto t = now_ms();
    {
        cmd::store s(path, {});
        CHECK_FALSE(s.find("c-1", t));
        s.begin("c-1", "boiler1", "setpoint", t);
        auto e = s.find("c-1", t);
        REQUIRE(e);
        CHECK(e->in_progress);
        s.finish("c-1", true, "");
        s.begin("c-2", "boiler1", "setpoint", t);
        s.finish("c-2", false, "timeout");
        s.begin("c-3", "boiler1", "setpoint", t);  // ferry "stops" during this write
        s.begin("c-4", "boiler1", "setpoint", t);
        s.forget("c-4");  // nothing was sent
        CHECK(s.size() == 3);
    }
    cmd::store s(path, {});
    auto e1 = s.find("c-1", t);
    REQUIRE(e1);
    CHECK(e1->ok);
    CHECK_FALSE(e1->in_progress);
    auto e2 = s.find("c-2", t);
    REQUIRE(e2);
    CHECK_FALSE(e2->ok);
    CHECK(e2->error == "timeout");
    auto e3 = s.find("c-3", t);
    REQUIRE(e3);
    CHECK_FALSE(e3->ok);
    CHECK_FALSE(e3->in_progress);
    CHECK(e3->error == "outcome unknown: ferry stopped during the write");
    CHECK_FALSE(s.find("c-4", t));
}

TEST_CASE("store: bounded by count (oldest evicted) and by TTL") {
    tmp_dir dir;
    cmd::store s(dir.file("commands.db"), {3, 1000ms});
    const std::int64_t t = 1'000'000;
    for (int i = 0; i < 5; ++i) {
        const auto id = "c-" + std::to_string(i);
        s.begin(id, "d", "p", t + i);
        s.finish(id, true, "");
    }
    CHECK(s.size() == 3);
    CHECK_FALSE(s.find("c-0", t + 5));
    CHECK_FALSE(s.find("c-1", t + 5));
    CHECK(s.find("c-4", t + 5));
    // Older than the TTL: not answered any more, and evicted at the next begin.
    CHECK_FALSE(s.find("c-4", t + 4 + 1001));
    s.begin("c-9", "d", "p", t + 5000);
    CHECK(s.size() == 1);
}

TEST_CASE(
    "store: ages by running time, persisted across a reopen; a version-1 file keeps its ids") {
    tmp_dir dir;
    const auto path = dir.file("commands.db");
    std::int64_t at = 0;
    {
        cmd::store s(path, {10, 1000ms});
        at = s.now();
        s.begin("c-1", "d", "p", at);
        s.finish("c-1", true, "");
    }
    {
        // The running time goes on from where the last run left it, whatever the wall clock.
        cmd::store s(path, {10, 1000ms});
        CHECK(s.now() >= at);
        CHECK(s.now() < at + 1000);  // not the wall clock: nothing like 1.7e12 ms
        CHECK(s.find("c-1", s.now()));
        CHECK_FALSE(s.find("c-1", at + 1001));
    }
    // A file of the first version: ids aged by the wall clock (at_ms), no run_ms column.
    const auto old_path = dir.file("old.db");
    {
        sqlite3* db = nullptr;
        REQUIRE(sqlite3_open(old_path.c_str(), &db) == SQLITE_OK);
        REQUIRE(sqlite3_exec(db,
                             "CREATE TABLE commands(id TEXT PRIMARY KEY, device TEXT NOT NULL, "
                             "point TEXT NOT NULL, state INTEGER NOT NULL, error TEXT NOT NULL "
                             "DEFAULT '', at_ms INTEGER NOT NULL);"
                             "INSERT INTO commands VALUES ('old-1', 'd', 'p', 1, '', 1000);",
                             nullptr, nullptr, nullptr) == SQLITE_OK);
        sqlite3_close(db);
    }
    cmd::store s(old_path, {10, 1000ms});
    auto e = s.find("old-1", s.now());  // kept: it starts a full TTL of running time now
    REQUIRE(e);
    CHECK(e->ok);
    CHECK_FALSE(s.find("old-1", s.now() + 1001));
}

TEST_CASE("store: a file that is not a database is refused with its path") {
    tmp_dir dir;
    const auto path = dir.file("commands.db");
    {
        std::FILE* f = std::fopen(path.c_str(), "wb");
        REQUIRE(f);
        std::fputs("this is not an SQLite database, not at all, really not", f);
        std::fclose(f);
    }
    CHECK_THROWS_WITH_AS(cmd::store(path, {}), doctest::Contains(path.c_str()), std::runtime_error);
}

namespace {

// Completes writes at once, or holds them for the test to complete.
struct fake_writer final : cmd::writer {
    std::vector<std::pair<std::string, ferry::value>> written;
    bool hold = false;
    std::vector<std::function<void(cmd::write_outcome)>> held;
    cmd::write_outcome outcome{true, true, ""};
    std::string check(const cfg::device&, const cfg::point& p,
                      const ferry::value& v) const override {
        if (p.max && ferry::as_double(v) && *ferry::as_double(v) > *p.max) return "above max";
        return {};
    }
    void write(const cfg::device& d, const cfg::point& p, const ferry::value& v,
               std::function<void(cmd::write_outcome)> done) override {
        written.emplace_back(d.id + "/" + p.name, v);
        if (hold)
            held.push_back(std::move(done));
        else
            done(outcome);
    }
};

struct rig {
    tmp_dir dir;
    prometheus::Registry registry;
    fake_writer writer;
    std::vector<std::pair<std::string, std::string>> published;
    std::unique_ptr<cmd::service> svc;

    explicit rig(bool enabled, std::uint32_t rate = 100) {
        cfg::config c;
        c.gateway.id = "gw";
        c.commands.enabled = enabled;
        c.commands.rate_limit = rate;
        c.commands.rate_period = 1h;
        cfg::device d;
        d.id = "boiler1";
        d.driver = "modbus_tcp";
        auto sp = point("setpoint", mb::table::holding, cfg::point_type::float32);
        sp.max = 90;
        d.points.push_back(sp);
        auto ro = point("temperature", mb::table::holding, cfg::point_type::float32);
        ro.writable = false;
        d.points.push_back(ro);
        c.devices.push_back(d);
        cfg::device w;
        w.id = "weather";
        w.driver = "serial_line";
        w.points.push_back(point("humidity", mb::table::holding, cfg::point_type::float64));
        c.devices.push_back(w);
        svc = std::make_unique<cmd::service>(
            c, dir.file("commands.db"),
            [this](const cfg::device& dev) -> cmd::writer* {
                return dev.driver == "modbus_tcp" ? &writer : nullptr;
            },
            [this](const std::string& t, const std::string& p) {
                published.emplace_back(t, p);
                return true;
            },
            registry);
    }
    // Sends one command and returns the answer published for it.
    std::string send(const std::string& device, const std::string& point,
                     const std::string& payload) {
        const auto before = published.size();
        svc->handle("ferry/gw/cmd/" + device + "/" + point + "/set", payload);
        if (published.size() != before + 1) return "<no answer>";
        CHECK(published.back().first == "ferry/gw/cmd/" + device + "/" + point + "/result");
        return published.back().second;
    }
    std::uint64_t count(cmd::result r) const { return svc->counts()[static_cast<std::size_t>(r)]; }
};

}  // namespace

TEST_CASE("service: checks before the write, answers, counts; a repeated id is never rewritten") {
    rig r(true, 3);
    CHECK(r.svc->filter() == "ferry/gw/cmd/+/+/set");
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-1","value":21.5})") ==
          R"({"id":"c-1","ok":true})");
    REQUIRE(r.writer.written.size() == 1);
    CHECK(std::get<double>(r.writer.written[0].second) == 21.5);
    // The same id again: the stored answer, no second write.
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-1","value":30})") ==
          R"({"id":"c-1","ok":true})");
    CHECK(r.writer.written.size() == 1);
    CHECK(r.count(cmd::result::duplicate) == 1);

    CHECK(r.send("boiler9", "setpoint", R"({"id":"c-2","value":1})") ==
          R"({"id":"c-2","ok":false,"error":"unknown device 'boiler9'"})");
    CHECK(r.send("boiler1", "nope", R"({"id":"c-3","value":1})") ==
          R"({"id":"c-3","ok":false,"error":"device 'boiler1' has no point 'nope'"})");
    CHECK(r.send("boiler1", "temperature", R"({"id":"c-4","value":1})") ==
          R"({"id":"c-4","ok":false,"error":"point 'boiler1/temperature' is not writable )"
          R"j((writable: false in the config)"})j");
    CHECK(r.send("weather", "humidity", R"({"id":"c-5","value":1})") ==
          R"({"id":"c-5","ok":false,"error":"device 'weather' (driver serial_line) does not )"
          R"(take writes"})");
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-6","value":"hot"})") ==
          R"j({"id":"c-6","ok":false,"error":"value must be a number (type float32)"})j");
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-7","value":95})") ==
          R"({"id":"c-7","ok":false,"error":"above max"})");
    CHECK(r.send("boiler1", "setpoint",
                 R"({"id":"c-8","value":1,"ts":)" + std::to_string(now_ms() - 60000) + "}")
              .find(R"("ok":false,"error":"stale: \"ts\" is 60)") != std::string::npos);
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-9"})") ==
          R"({"id":"c-9","ok":false,"error":"malformed payload: \"value\" is missing"})");
    CHECK(r.writer.written.size() == 1);  // none of those reached the writer
    // A refused id was not kept: once fixed, it is written.
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-7","value":85})") ==
          R"({"id":"c-7","ok":true})");
    // Rate limit 3 per hour: c-1 and c-7 took two tokens; one more passes.
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-10","value":1})") ==
          R"({"id":"c-10","ok":true})");
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-11","value":1})") ==
          R"({"id":"c-11","ok":false,"error":"rate limited: device 'boiler1' takes at most 3 )"
          R"j(commands per 3600000 ms (commands.rate_limit)"})j");
    CHECK(r.writer.written.size() == 3);
    // A retained set (replayed by the broker at every subscribe) is refused.
    r.svc->handle("ferry/gw/cmd/boiler1/setpoint/set", R"({"id":"c-12","value":1})", true);
    CHECK(r.published.back().second ==
          R"({"id":"c-12","ok":false,"error":"a retained command is not executed (the broker )"
          R"(would replay it at every reconnect); publish commands with retain false"})");
    // Topics outside the filter's shape are ignored.
    r.svc->handle("ferry/gw/cmd/boiler1/setpoint/extra/set", R"({"id":"x","value":1})");
    r.svc->handle("ferry/other/cmd/boiler1/setpoint/set", R"({"id":"x","value":1})");

    using cmd::result;
    CHECK(r.count(result::ok) == 3);
    CHECK(r.count(result::rejected) == 8);
    CHECK(r.count(result::stale) == 1);
    CHECK(r.count(result::rate_limited) == 1);
    CHECK(r.count(result::duplicate) == 1);
    CHECK(r.count(result::device_error) == 0);
    CHECK(r.count(result::disabled) == 0);
}

TEST_CASE("service: device errors are kept; nothing-sent errors are not; repeats while writing") {
    rig r(true);
    r.writer.outcome = {false, true, "the device answered with Modbus exception 3 (illegal_value)"};
    const auto failed = R"({"id":"c-1","ok":false,"error":"the device answered with Modbus )"
                        R"j(exception 3 (illegal_value)"})j";
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-1","value":1})") == failed);
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-1","value":1})") == failed);
    CHECK(r.writer.written.size() == 1);
    CHECK(r.count(cmd::result::device_error) == 1);

    r.writer.outcome = {false, false, "connect: cannot reach 127.0.0.1:1; nothing was written"};
    r.send("boiler1", "setpoint", R"({"id":"c-2","value":1})");
    r.writer.outcome = {true, true, ""};
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-2","value":1})") ==
          R"({"id":"c-2","ok":true})");
    CHECK(r.writer.written.size() == 3);

    // A repeat that arrives while the first is being written is answered with it.
    r.writer.hold = true;
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-3","value":2})") == "<no answer>");
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-3","value":2})") == "<no answer>");
    CHECK(r.writer.written.size() == 4);
    REQUIRE(r.writer.held.size() == 1);
    const auto before = r.published.size();
    r.writer.held[0]({true, true, ""});
    REQUIRE(r.published.size() == before + 2);
    CHECK(r.published[before].second == R"({"id":"c-3","ok":true})");
    CHECK(r.published[before + 1].second == R"({"id":"c-3","ok":true})");
}

TEST_CASE("service: disabled commands are answered as such and nothing is written") {
    rig r(false);
    CHECK(r.send("boiler1", "setpoint", R"({"id":"c-1","value":21.5})") ==
          R"({"id":"c-1","ok":false,"error":"commands are disabled in this gateway's config )"
          R"j((commands.enabled: false)"})j");
    CHECK(r.writer.written.empty());
    CHECK(r.count(cmd::result::disabled) == 1);
    CHECK_FALSE(fs::exists(r.dir.file("commands.db")));  // no store when disabled
}
