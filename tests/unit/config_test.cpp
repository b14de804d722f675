#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/config_reader.hpp"
#include "drivers/modbus/config.hpp"
#include "drivers/serial/config.hpp"
#include "gateway/components.hpp"
#include "tests/support/golden.hpp"
#include "tests/support/paths.hpp"

namespace cfg = ferry::config;
namespace mb = ferry::drivers::modbus;
using namespace std::chrono_literals;
using lines = std::vector<std::string>;
namespace fs = std::filesystem;

namespace doctest {
// Failed comparisons of error lists print the lists, one line each.
template <>
struct StringMaker<lines> {
    static String convert(const lines& v) {
        std::string out = "\n";
        for (const auto& l : v)
            out += "  " + l + "\n";
        return out.c_str();
    }
};
}  // namespace doctest

namespace {

const std::string k_dir = std::string(FERRY_SOURCE_DIR) + "/tests/testcases/config/";

lines to_lines(const cfg::errors& e) {
    lines out;
    for (const auto& x : e.list())
        out.push_back(x.to_string());
    return out;
}

// The error lines of a fixture; the file name in them is the full path `k_dir + name`.
lines errors_of(const std::string& name) {
    try {
        ferry::load_config(k_dir + name);
    } catch (const cfg::errors& e) {
        return to_lines(e);
    }
    FAIL("expected errors from " << name);
    return {};
}

}  // namespace

TEST_CASE("the example config/ferry.yaml loads with the expected values") {
    auto c = ferry::load_config(std::string(FERRY_SOURCE_DIR) + "/config/ferry.yaml");
    CHECK(c.gateway.id == "plant-a-gw1");
    CHECK(c.gateway.data_dir == "/var/lib/ferry");
    CHECK(c.gateway.level == cfg::log_level::info);
    CHECK(c.http.enabled);
    CHECK(c.http.host == "127.0.0.1");
    CHECK(c.http.port == 9108);

    REQUIRE(c.devices.size() == 2);
    const auto& b = c.devices[0];
    CHECK(b.id == "boiler1");
    CHECK(b.driver == "modbus_tcp");
    CHECK(mb::of(b).host == "127.0.0.1");
    CHECK(mb::of(b).port == 5020);
    CHECK(mb::of(b).unit_id == 1);
    CHECK(b.poll_interval == 1s);
    CHECK(mb::of(b).timeout == 500ms);
    CHECK(mb::of(b).retries == 2);
    CHECK(b.where.line == 15);
    REQUIRE(b.points.size() == 5);
    CHECK(b.points[0].name == "temperature");
    CHECK(mb::of(b.points[0]).tbl == mb::table::holding);
    CHECK(mb::of(b.points[0]).address == 100);
    CHECK(b.points[0].type == cfg::point_type::float32);
    CHECK(mb::of(b.points[0]).order == mb::byte_order::abcd);
    CHECK(b.points[0].unit == "degC");
    CHECK(b.points[1].type == cfg::point_type::int16);
    CHECK(b.points[1].scale == doctest::Approx(0.01));
    CHECK(b.points[2].writable);
    CHECK(b.points[2].min == 20.0);
    CHECK(b.points[2].max == 90.0);
    CHECK(mb::of(b.points[3]).tbl == mb::table::coil);
    CHECK(b.points[3].type == cfg::point_type::boolean);
    CHECK(b.points[4].type == cfg::point_type::string);
    CHECK(mb::of(b.points[4]).length == 8);
    CHECK(mb::register_count(b.points[4]) == 8);

    const auto& m = c.devices[1];
    CHECK(m.id == "meter7");
    CHECK(mb::of(m).unit_id == 7);
    CHECK(m.poll_interval == 5s);
    CHECK(mb::of(m).timeout == 500ms);  // default
    REQUIRE(m.points.size() == 3);
    CHECK(mb::of(m.points[0]).tbl == mb::table::input);
    CHECK(m.points[0].type == cfg::point_type::uint32);
    CHECK(mb::of(m.points[0]).order == mb::byte_order::cdab);
    CHECK(m.points[2].type == cfg::point_type::uint64);

    REQUIRE(c.rules.size() == 3);
    CHECK(c.rules[0].name == "boiler");
    CHECK(c.rules[0].match == lines{"boiler1/#"});
    CHECK(c.rules[0].batch.max_events == 500);
    CHECK(c.rules[0].batch.max_bytes == 256 * 1024);
    CHECK(c.rules[0].batch.max_age == 1s);
    CHECK(c.rules[0].publish.topic == "plant/{gateway}/{device}");
    CHECK(c.rules[0].publish.qos == 1);
    CHECK_FALSE(c.rules[0].publish.retain);
    CHECK(c.rules[1].match == lines{"meter*/energy", "meter*/power"});
    CHECK(c.rules[1].batch.max_events == 100);
    CHECK(c.rules[1].batch.max_bytes == 256 * 1024);  // default
    CHECK(c.rules[1].batch.max_age == 10s);
    CHECK(c.rules[2].name == "boiler_temperature_f");
    CHECK(c.rules[2].filter == "value > -40 and value < 200");
    REQUIRE(c.rules[2].transform);
    CHECK(c.rules[2].transform->scale == 1.8);
    CHECK(c.rules[2].transform->offset == 32.0);
    CHECK(c.rules[2].transform->unit == "degF");
    REQUIRE(c.rules[2].deadband);
    CHECK(c.rules[2].deadband->kind == cfg::deadband_kind::absolute);
    CHECK(c.rules[2].deadband->amount == 0.5);
    CHECK(c.rules[2].heartbeat == 60s);

    CHECK(c.dead_letter.topic == "ferry/{gateway}/dead-letter");
    CHECK_FALSE(c.commands.enabled);
    CHECK(c.commands.max_age == 30s);
    CHECK(c.commands.rate_limit == 10);
    CHECK(c.commands.rate_period == 1s);

    const auto& q = c.upstream.mqtt;
    CHECK(q.uris == lines{"tcp://127.0.0.1:1883"});
    CHECK(q.client_id == "ferry-plant-a-gw1");
    CHECK(q.version == 0);  // negotiated
    CHECK(q.keepalive == 30s);
    CHECK(q.inflight == 16);
    CHECK(q.password.empty());
    CHECK_FALSE(q.tls.has_value());
    const auto& s = c.upstream.spool;
    CHECK(s.path == "/var/lib/ferry/spool.db");
    CHECK(s.max_bytes == 512ull * 1024 * 1024);
    CHECK(s.full == cfg::when_full::drop_oldest);
    CHECK(s.fsync == cfg::fsync_mode::always);
}

TEST_CASE("defaults of a minimal config") {
    auto c = ferry::load_config_text("gateway: { id: gw_1 }\n", "min.yaml");
    CHECK(c.file == "min.yaml");
    CHECK(c.gateway.data_dir == "/var/lib/ferry");
    CHECK_FALSE(c.http.enabled);
    CHECK(c.devices.empty());
    CHECK(c.rules.empty());
    CHECK(c.upstream.mqtt.client_id == "gw_1");
    CHECK(c.upstream.mqtt.uris == lines{"tcp://127.0.0.1:1883"});
    CHECK(c.upstream.spool.path == "/var/lib/ferry/spool.db");

    c = ferry::load_config_text(
        "gateway: { id: gw, data_dir: /d }\nhttp:\nupstream:\n"
        "  spool: { path: '{data_dir}/{gateway}.db' }\n  mqtt: { version: 3.1.1 }\n",
        "t.yaml");
    CHECK(c.http.enabled);  // present, even empty
    CHECK(c.http.port == 9108);
    CHECK(c.upstream.spool.path == "/d/gw.db");
    CHECK(c.upstream.mqtt.version == 4);

    c = ferry::load_config_text(
        "gateway: { id: gw }\nhttp: { listen: '[::1]:8080' }\n"
        "upstream: { mqtt: { version: \"4\", uris: ssl://b:8883, tls: {} } }\n",
        "t.yaml");
    CHECK(c.http.host == "::1");
    CHECK(c.http.port == 8080);
    CHECK(c.upstream.mqtt.version == 4);
    CHECK(c.upstream.mqtt.uris == lines{"ssl://b:8883"});
    REQUIRE(c.upstream.mqtt.tls.has_value());
    CHECK(c.upstream.mqtt.tls->verify_hostname);
}

// Config error cases are golden cases: tests/testcases/config/<case>/ferry.yaml and `errors`,
// the exact lines the loader reports (and `ferry check` prints: tests/integration/cli_test.cpp
// runs the binary on the same cases), with the case folder's path written as ".".
TEST_CASE("config error golden cases: every line, in file order, FILE:LINE:COLUMN: key.path") {
    const auto cases = ferry::test::check_golden("config", "errors", [](const fs::path& dir) {
        std::string out;
        try {
            ferry::load_config((dir / "ferry.yaml").string());
            FAIL("loads without error");
        } catch (const cfg::errors& e) {
            for (const auto& line : to_lines(e))
                out += line + "\n";
        }
        return ferry::test::replace_all(out, dir.string(), ".");
    });
    CHECK(cases >= 25);
}

TEST_CASE("errors::what() holds every line") {
    try {
        ferry::load_config(k_dir + "port_out_of_range/ferry.yaml");
        FAIL("expected errors");
    } catch (const cfg::errors& e) {
        auto f = k_dir + "port_out_of_range/ferry.yaml";
        CHECK(std::string(e.what()) ==
              f + ":4:11: http.listen: port 99999 is out of range (1..65535)\n" + f +
                  ":9:11: devices[0].port: 70000 is out of range (1..65535)\n" + f +
                  ":15:11: devices[1].port: 0 is out of range (1..65535)");
    }
}

TEST_CASE("an unreadable file is one error without a position") {
    try {
        ferry::load_config("/nonexistent/ferry.yaml");
        FAIL("expected errors");
    } catch (const cfg::errors& e) {
        CHECK(to_lines(e) ==
              lines{"/nonexistent/ferry.yaml:0:0: cannot read file: No such file or directory"});
        REQUIRE(e.list().size() == 1);
        CHECK(e.list()[0].line == 0);
    }
}

TEST_CASE("every feature of the contract loads, downlink commands included") {
    // Nothing is refused as not built any more (k_not_built_yet is empty).
    auto c = ferry::load_config(k_dir + "every_feature.yaml");
    CHECK(c.commands.enabled);
    CHECK(c.commands.max_age == 30s);
    CHECK(c.commands.rate_limit == 10);
    CHECK(c.commands.rate_period == 1s);
    // Built features have their values checked: see the bad_deadband_heartbeat case.
    CHECK_NOTHROW(
        ferry::load_config_text("gateway: { id: g }\ncommands: { enabled: false }\n", "t"));
    CHECK_NOTHROW(
        ferry::load_config_text("gateway: { id: g }\ncommands: { enabled: true }\n", "t"));
}

TEST_CASE("upstream.sparkplug and format: sparkplug_b load with templates expanded") {
    auto c = ferry::load_config_text(
        "gateway: { id: gw-7 }\n"
        "rules:\n"
        "  - { name: a, match: '#', publish: { format: sparkplug_b, "
        "qos: 0 } }\n"
        "  - { name: b, match: '#' }\n"
        "upstream:\n"
        "  sparkplug: { group_id: 'site-{gateway}', "
        "primary_host_id: scada }\n",
        "t.yaml");
    REQUIRE(c.upstream.sparkplug);
    CHECK(c.upstream.sparkplug->group_id == "site-gw-7");
    CHECK(c.upstream.sparkplug->edge_node_id == "gw-7");  // the default, {gateway}
    CHECK(c.upstream.sparkplug->primary_host_id == "scada");
    CHECK(c.rules[0].publish.format == ferry::config::payload_format::sparkplug_b);
    CHECK(c.rules[0].publish.qos == 0);
    CHECK(c.rules[1].publish.format == ferry::config::payload_format::json);
    CHECK_FALSE(ferry::load_config_text("gateway: { id: g }\n", "t").upstream.sparkplug);
}

TEST_CASE("${NAME} substitution in values") {
    auto f = k_dir + "env.yaml";
    ::unsetenv("FERRY_TEST_GATEWAY");
    ::unsetenv("FERRY_TEST_DATA");
    ::unsetenv("FERRY_TEST_HOST");
    ::unsetenv("FERRY_TEST_PORT");
    CHECK(errors_of("env.yaml") ==
          lines{f + ":2:7: gateway.id: environment variable FERRY_TEST_GATEWAY is not set",
                f + ":3:13: gateway.data_dir: environment variable FERRY_TEST_DATA is not set",
                f + ":7:11: devices[0].host: environment variable FERRY_TEST_HOST is not set",
                f + ":8:11: devices[0].port: environment variable FERRY_TEST_PORT is not set"});

    ::setenv("FERRY_TEST_GATEWAY", "gw-env", 1);
    ::setenv("FERRY_TEST_DATA", "/srv/ferry", 1);
    ::setenv("FERRY_TEST_HOST", "10.0.0.5", 1);
    ::setenv("FERRY_TEST_PORT", "1502", 1);
    auto c = ferry::load_config(f);
    CHECK(c.gateway.id == "gw-env");
    CHECK(c.gateway.data_dir == "/srv/ferry/state");
    CHECK(c.upstream.spool.path == "/srv/ferry/state/spool.db");
    CHECK(c.upstream.mqtt.client_id == "gw-env");
    REQUIRE(c.devices.size() == 1);
    CHECK(mb::of(c.devices[0]).host == "10.0.0.5");
    CHECK(mb::of(c.devices[0]).port == 1502);
    CHECK(c.devices[0].points[0].unit == "$HOME and ${not valid} stay");

    // A substituted value is checked like a written one.
    ::setenv("FERRY_TEST_PORT", "http", 1);
    CHECK(errors_of("env.yaml") ==
          lines{f + ":8:11: devices[0].port: expected an integer, got 'http'"});
    for (auto n : {"FERRY_TEST_GATEWAY", "FERRY_TEST_DATA", "FERRY_TEST_HOST", "FERRY_TEST_PORT"})
        ::unsetenv(n);
}

TEST_CASE("password_file is read, relative to the config file, and never shown") {
    auto c = ferry::load_config(k_dir + "password_file.yaml");
    CHECK(c.upstream.mqtt.username == "ferry");
    CHECK(c.upstream.mqtt.password == "s3cret-pass");  // trailing newline stripped

    // A missing password file: the password_file_missing case.

    // Another error in a file with a readable password: the password appears nowhere.
    std::string text = "gateway: { id: g }\nupstream:\n  mqtt:\n    password_file: " + k_dir +
                       "mqtt.pass\n    inflight: 0\n";
    try {
        ferry::load_config_text(text, "t.yaml");
        FAIL("expected errors");
    } catch (const cfg::errors& e) {
        CHECK(std::string(e.what()).find("s3cret") == std::string::npos);
        CHECK(to_lines(e) == lines{"t.yaml:5:15: upstream.mqtt.inflight: 0 is out of range "
                                   "(1..65535)"});
    }
}

TEST_CASE("TLS settings and broker URIs agree") {
    // Disagreeing ones: the tls_plain_uri_half_cert and ssl_without_tls cases.
    auto c = ferry::load_config_text(
        "gateway: { id: g }\nupstream: { mqtt: { uris: [ssl://b], tls: { ca_file: ca.pem, "
        "verify_hostname: false } } }\n",
        "/etc/ferry/ferry.yaml");
    REQUIRE(c.upstream.mqtt.tls.has_value());
    CHECK(c.upstream.mqtt.tls->ca_file == "/etc/ferry/ca.pem");
    CHECK_FALSE(c.upstream.mqtt.tls->verify_hostname);
}

TEST_CASE("point checks") {
    std::string head =
        "gateway: { id: g }\ndevices:\n  - id: d\n    driver: modbus_tcp\n"
        "    host: h\n    points:\n";
    // A bool from a register, a bool from a coil (type may be left out), all types.
    auto c = ferry::load_config_text(head +
                                         "      - { name: a, address: 0, type: bool }\n"
                                         "      - { name: b, table: discrete, address: 0 }\n"
                                         "      - { name: c, address: 0x10, type: float64 }\n"
                                         "      - { name: d, address: 65532, type: int64 }\n",
                                     "t.yaml");
    const auto& p = c.devices[0].points;
    CHECK(p[0].type == cfg::point_type::boolean);
    CHECK(mb::of(p[0]).tbl == mb::table::holding);
    CHECK(p[1].type == cfg::point_type::boolean);
    CHECK(mb::of(p[2]).address == 16);
    CHECK(mb::register_count(p[3]) == 4);
    CHECK(p[3].where.line == 10);
    CHECK(p[3].where.column == 17);
    // Points that fail their checks: the point_checks case.
}

TEST_CASE("parse_duration") {
    struct row {
        const char* text;
        std::optional<cfg::duration> want;
    };
    const row rows[] = {
        {"250ms", 250ms},
        {"2s", 2s},
        {"5m", 5min},
        {"1h", 1h},
        {"0s", 0ms},
        {"1500ms", 1500ms},
        {"", std::nullopt},
        {"5", std::nullopt},
        {"ms", std::nullopt},
        {"1.5s", std::nullopt},
        {"-1s", std::nullopt},
        {"2 s", std::nullopt},
        {"1h30m", std::nullopt},
        {"2S", std::nullopt},
        {"1d", std::nullopt},
        {"99999999999999999999h", std::nullopt},
        {"9223372036854775807h", std::nullopt},
    };
    for (const auto& r : rows) {
        CAPTURE(r.text);
        CHECK(cfg::parse_duration(r.text) == r.want);
    }
}

TEST_CASE("parse_size") {
    struct row {
        const char* text;
        std::optional<std::uint64_t> want;
    };
    const row rows[] = {
        {"512", 512},
        {"0", 0},
        {"64KiB", 64 * 1024},
        {"512MiB", 512ull << 20},
        {"1GiB", 1ull << 30},
        {"2TiB", 2ull << 40},
        {"", std::nullopt},
        {"KiB", std::nullopt},
        {"64kib", std::nullopt},
        {"64KB", std::nullopt},
        {"1.5GiB", std::nullopt},
        {"-1", std::nullopt},
        {"64 KiB", std::nullopt},
        {"99999999999TiB", std::nullopt},
    };
    for (const auto& r : rows) {
        CAPTURE(r.text);
        CHECK(cfg::parse_size(r.text) == r.want);
    }
}

TEST_CASE("register_count") {
    mb::point_settings p;
    using t = cfg::point_type;
    const std::pair<t, std::uint32_t> rows[] = {
        {t::boolean, 1}, {t::int16, 1}, {t::uint16, 1}, {t::int32, 2},   {t::uint32, 2},
        {t::float32, 2}, {t::int64, 4}, {t::uint64, 4}, {t::float64, 4},
    };
    for (auto [type, n] : rows)
        CHECK(mb::register_count(type, p) == n);
    p.length = 8;
    CHECK(mb::register_count(t::string, p) == 8);
    p.tbl = mb::table::coil;
    CHECK(mb::register_count(t::boolean, p) == 1);
}

// The slot a driver keeps its own keys in (core/config.hpp): compared by value, so a reload
// tells a changed device from one that only moved; read as another driver's, a loud bug.
TEST_CASE("driver settings: compared by value, read only as the driver's own type") {
    using t = cfg::point_type;
    auto a = mb::make_tcp_device("d", "10.0.0.1", 502,
                                 {mb::make_point("p", mb::table::holding, 7, t::uint16)});
    auto b = mb::make_tcp_device("d", "10.0.0.1", 502,
                                 {mb::make_point("p", mb::table::holding, 7, t::uint16)});
    b.where = {30, 5};
    b.points[0].where = {31, 9};
    CHECK(a.settings == b.settings);  // two allocations, equal values
    CHECK(cfg::same_settings(a, b));  // moved, not changed
    b.points[0].settings.change<mb::point_settings>([](auto& s) { s.address = 8; });
    CHECK_FALSE(cfg::same_settings(a, b));
    CHECK(mb::of(a.points[0]).address == 7);  // copies share the value; change() replaced b's
    b = a;
    b.settings.change<mb::device_settings>([](auto& s) { s.max_gap = 0; });
    CHECK_FALSE(cfg::same_settings(a, b));

    CHECK(cfg::driver_settings{} == cfg::driver_settings{});
    CHECK_FALSE(a.settings == cfg::driver_settings{});
    CHECK_FALSE(a.settings == a.points[0].settings);  // other types never compare equal
    CHECK(a.points[0].settings.kind().empty());
    CHECK(mb::make_point("c", mb::table::coil, 0, t::boolean).settings.kind() == "a coil");
    CHECK_THROWS_WITH_AS(ferry::drivers::serial::of(a),
                         "config: expected serial_line device settings, found modbus device "
                         "settings",
                         std::logic_error);
    CHECK_THROWS_WITH_AS(mb::of(cfg::point{}),
                         "config: expected modbus point settings, found no driver settings",
                         std::logic_error);
}

namespace {

// A document embeds generated tables between `begin` and "<!-- END GENERATED -->"; run with
// FERRY_UPDATE_REFERENCE=1 to rewrite that part after changing a declaration.
void check_generated(const std::string& path, const std::string& begin,
                     const std::string& generated) {
    CAPTURE(path);
    const std::string end = "<!-- END GENERATED -->";
    std::string doc = ferry::test::read_file(path);
    auto b = doc.find(begin);
    REQUIRE(b != std::string::npos);
    auto e = doc.find(end, b);
    REQUIRE(e != std::string::npos);
    if (std::getenv("FERRY_UPDATE_REFERENCE")) {
        doc = doc.substr(0, b + begin.size()) + generated + doc.substr(e);
        std::ofstream(path) << doc;
    }
    CHECK(doc.substr(b + begin.size(), e - b - begin.size()) == generated);
}

}  // namespace

TEST_CASE("config/REFERENCE.md documents every declared key") {
    check_generated(
        std::string(FERRY_SOURCE_DIR) + "/config/REFERENCE.md",
        "<!-- BEGIN GENERATED from the components' declarations (gateway/components.cpp) -->\n",
        ferry::reference_markdown());
}

// Each component's README shows the keys it declares, from the same declarations.
TEST_CASE("component READMEs document their declared keys") {
    const auto& schema = ferry::config_schema();
    const std::string begin = "<!-- BEGIN GENERATED keys, from the declarations -->\n";
    const std::string_view modbus[] = {"modbus_tcp", "modbus_rtu"};
    const std::string_view serial[] = {"serial_line"};
    const std::string_view system[] = {"system"};
    check_generated(std::string(FERRY_SOURCE_DIR) + "/drivers/modbus/README.md", begin,
                    cfg::driver_markdown(schema, modbus));
    check_generated(std::string(FERRY_SOURCE_DIR) + "/drivers/serial/README.md", begin,
                    cfg::driver_markdown(schema, serial));
    check_generated(std::string(FERRY_SOURCE_DIR) + "/drivers/system/README.md", begin,
                    cfg::driver_markdown(schema, system));
    check_generated(std::string(FERRY_SOURCE_DIR) + "/rules/README.md", begin,
                    cfg::section_markdown(schema, "rules"));
}

TEST_CASE("upstream.mqtt ack_timeout and refused policy (issue 13)") {
    auto c = ferry::load_config_text("gateway: { id: g }\n", "t.yaml");
    CHECK(c.upstream.mqtt.ack_timeout == 30s);
    CHECK(c.upstream.mqtt.refused == cfg::refused_policy::block);
    CHECK(c.upstream.mqtt.refused_attempts == 3);
    c = ferry::load_config_text(
        "gateway: { id: g }\nupstream:\n  mqtt: { ack_timeout: 5s, refused: drop, "
        "refused_attempts: 1 }\n",
        "t.yaml");
    CHECK(c.upstream.mqtt.ack_timeout == 5s);
    CHECK(c.upstream.mqtt.refused == cfg::refused_policy::drop);
    CHECK(c.upstream.mqtt.refused_attempts == 1);
    try {
        ferry::load_config_text(
            "gateway: { id: g }\nupstream:\n  mqtt:\n    ack_timeout: 500ms\n"
            "    refused: skip\n    refused_attempts: 0\n",
            "t.yaml");
        FAIL("expected errors");
    } catch (const cfg::errors& e) {
        const auto got = to_lines(e);
        REQUIRE(got.size() == 3);
        CHECK(got[0] == "t.yaml:4:18: upstream.mqtt.ack_timeout: ack_timeout must be 1s..1h");
        CHECK(got[1].find("upstream.mqtt.refused: ") != std::string::npos);
        CHECK(got[2] == "t.yaml:6:23: upstream.mqtt.refused_attempts: 0 is out of range (1..1000)");
    }
}

TEST_CASE("upstream.mqtt.max_packet_size (issue 14)") {
    auto c = ferry::load_config_text("gateway: { id: g }\n", "t.yaml");
    CHECK(c.upstream.mqtt.max_packet_size == 0);  // none: the CONNACK's, if any
    c = ferry::load_config_text(
        "gateway: { id: g }\nupstream:\n  mqtt: { version: 3.1.1, max_packet_size: 128KiB }\n",
        "t.yaml");
    CHECK(c.upstream.mqtt.max_packet_size == 131072);
    for (const char* bad : {"100", "1GiB", "big"}) {
        CAPTURE(bad);
        try {
            ferry::load_config_text(
                std::string("gateway: { id: g }\nupstream:\n  mqtt:\n    max_packet_size: ") + bad +
                    "\n",
                "t.yaml");
            FAIL("expected an error");
        } catch (const cfg::errors& e) {
            const auto got = to_lines(e);
            REQUIRE(got.size() == 1);
            CHECK(got[0].rfind("t.yaml:4:22: upstream.mqtt.max_packet_size: ", 0) == 0);
        }
    }
}

// The seam fuzzers use: `*_file` reads and ${NAME} go through load_hooks when given.
TEST_CASE("load_hooks replace file reads and the environment; their budgets still apply") {
    cfg::load_hooks h;
    std::size_t asked_max = 0;
    h.read_file = [&](const std::string& path, std::size_t max_bytes,
                      std::string& why) -> std::optional<std::string> {
        asked_max = max_bytes;
        if (path == "/big") {
            why = "larger than " + std::to_string(max_bytes) + " bytes";
            return std::nullopt;
        }
        return std::string("from-hook\n");
    };
    h.getenv = [](const std::string& name) -> std::optional<std::string> {
        if (name == "GW") return "hooked";
        return std::nullopt;
    };
    auto c = ferry::load_config_text(
        "gateway: { id: \"${GW}\" }\nupstream: { mqtt: { username: u, password_file: /p } }\n",
        "t.yaml", h);
    CHECK(c.gateway.id == "hooked");
    CHECK(c.upstream.mqtt.password == "from-hook");
    CHECK(asked_max == cfg::k_max_secret_file);
    try {
        ferry::load_config_text(
            "gateway: { id: \"${HOME}\" }\nupstream: { mqtt: { username: u, password_file: /big "
            "} }\n",
            "t.yaml", h);
        FAIL("loaded");
    } catch (const cfg::errors& e) {
        REQUIRE(e.list().size() == 2);
        CHECK(e.list()[0].to_string() ==
              "t.yaml:1:16: gateway.id: environment variable HOME is not set");
        CHECK(e.list()[1].to_string() ==
              "t.yaml:2:49: upstream.mqtt.password_file: cannot read password file '/big': "
              "larger than 65536 bytes");
    }
}

TEST_CASE("modbus down_after and retry_every (issue 17)") {
    const std::string head =
        "gateway: { id: g }\ndevices:\n  - id: d\n    driver: modbus_tcp\n"
        "    host: h\n    points: [ { name: t, address: 0 } ]\n";
    auto c = ferry::load_config_text(head, "t.yaml");
    CHECK(mb::of(c.devices[0]).down_after == 3);
    CHECK(mb::of(c.devices[0]).retry_every == 30s);
    c = ferry::load_config_text(head + "    down_after: 1\n    retry_every: 1s\n", "t.yaml");
    CHECK(mb::of(c.devices[0]).down_after == 1);
    CHECK(mb::of(c.devices[0]).retry_every == 1s);
    c = ferry::load_config_text(head + "    down_after: 100\n    retry_every: 24h\n", "t.yaml");
    CHECK(mb::of(c.devices[0]).down_after == 100);
    CHECK(mb::of(c.devices[0]).retry_every == 24h);
    // Out of range and malformed values: the modbus_backoff_keys golden case.
}

TEST_CASE("modbus poll groups: a point's own poll_interval overrides the device's (issue 17)") {
    const auto c = ferry::load_config_text(
        "gateway: { id: g }\ndevices:\n  - id: d\n    driver: modbus_tcp\n"
        "    host: h\n    poll_interval: 10s\n    points:\n"
        "      - { name: fast, address: 0, poll_interval: 1s }\n"
        "      - { name: slow, address: 1 }\n"
        "      - { name: hourly, address: 2, poll_interval: 1h }\n",
        "t.yaml");
    const auto& d = c.devices[0];
    CHECK(mb::poll_interval_of(d, d.points[0]) == 1s);
    CHECK(mb::poll_interval_of(d, d.points[1]) == 10s);
    CHECK(mb::poll_interval_of(d, d.points[2]) == 1h);
    CHECK(mb::of(d.points[1]).poll_interval_ms == 0);  // the device's, whatever it becomes
    // Zero, too long, malformed, on another driver: the modbus_poll_groups golden case.
}

TEST_CASE(
    "modbus quirk settings: max_registers, max_coils, request_delay, connect_delay, "
    "close_after_poll (issue 17)") {
    const std::string head =
        "gateway: { id: g }\ndevices:\n  - id: d\n    driver: modbus_tcp\n"
        "    host: h\n    points: [ { name: t, address: 0 } ]\n";
    auto c = ferry::load_config_text(head, "t.yaml");
    auto s = mb::of(c.devices[0]);
    CHECK(s.max_registers == 125);
    CHECK(s.max_coils == 2000);
    CHECK(s.request_delay == 0ms);
    CHECK(s.connect_delay == 0ms);
    CHECK_FALSE(s.close_after_poll);
    c = ferry::load_config_text(head +
                                    "    max_registers: 1\n    max_coils: 1\n"
                                    "    request_delay: 20ms\n    connect_delay: 10s\n"
                                    "    close_after_poll: true\n",
                                "t.yaml");
    s = mb::of(c.devices[0]);
    CHECK(s.max_registers == 1);
    CHECK(s.max_coils == 1);
    CHECK(s.request_delay == 20ms);
    CHECK(s.connect_delay == 10s);
    CHECK(s.close_after_poll);
    // A point fits in max_registers exactly; a string of 8 needs 8.
    CHECK_NOTHROW(ferry::load_config_text(
        "gateway: { id: g }\ndevices:\n  - id: d\n    driver: modbus_rtu\n"
        "    serial: { port: /dev/x }\n    max_registers: 8\n"
        "    points: [ { name: s, address: 0, type: string, length: 8 } ]\n",
        "t.yaml"));
    // Out of range, malformed, on the wrong driver, a point too long: the modbus_quirk_keys
    // golden case.
}
