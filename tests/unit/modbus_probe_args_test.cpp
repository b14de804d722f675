// `ferry probe modbus` arguments: --scan's unit-id ranges and lists, what --scan changes in the
// defaults, the usage errors; and the YAML item the profile suggestion prints.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "core/config_reader.hpp"
#include "drivers/modbus/probe.hpp"
#include "drivers/modbus/scan.hpp"

namespace modbus = ferry::drivers::modbus;

namespace {

std::vector<int> ids(const std::string& text, int lo = 1, int hi = 247) {
    std::string why;
    auto out = modbus::parse_unit_ids(text, lo, hi, why);
    CHECK((out.empty() == !why.empty()));
    return out;
}

std::string ids_error(const std::string& text, int lo = 1, int hi = 247) {
    std::string why;
    CHECK(modbus::parse_unit_ids(text, lo, hi, why).empty());
    return why;
}

std::string parse(std::vector<std::string> args, modbus::probe_args& a) {
    args.insert(args.begin(), "modbus");
    return modbus::parse_probe_args(args, a);
}

}  // namespace

TEST_CASE("--scan takes a range, a list, or both, in the order given") {
    CHECK(ids("1-5") == std::vector<int>{1, 2, 3, 4, 5});
    CHECK(ids("1,2,5") == std::vector<int>{1, 2, 5});
    CHECK(ids("1-3,20") == std::vector<int>{1, 2, 3, 20});
    CHECK(ids("20, 1 - 2 ,7") == std::vector<int>{20, 1, 2, 7});
    CHECK(ids("9") == std::vector<int>{9});
    CHECK(ids("247") == std::vector<int>{247});
    CHECK(ids("0-2", 0, 255) == std::vector<int>{0, 1, 2});
    CHECK(ids("1-247").size() == 247);
}

TEST_CASE("--scan errors say what is wrong") {
    CHECK(ids_error("5-1") == "the range 5-1 runs backwards (write \"1-5\")");
    CHECK(ids_error("0-3") == "unit id 0 is out of range (1..247)");
    CHECK(ids_error("1-248") == "unit id 248 is out of range (1..247)");
    CHECK(ids_error("256", 0, 255) == "unit id 256 is out of range (0..255)");
    CHECK(ids_error("1-3,2") == "unit id 2 is listed twice");
    CHECK(ids_error("1,,2") == "an empty item in '1,,2'");
    CHECK(ids_error("") == "an empty item in ''");
    CHECK(ids_error("1,") == "an empty item in '1,'");
    CHECK(ids_error("1-x") == "expected a range such as 1-30, got '1-x'");
    CHECK(ids_error("1-2-3") == "expected a range such as 1-30, got '1-2-3'");
    CHECK(ids_error("a").find("got 'a'") != std::string::npos);
    CHECK(ids_error("-3").find("got '-3'") != std::string::npos);
    CHECK(ids_error("0x10").find("got '0x10'") != std::string::npos);
}

TEST_CASE("the range syntax is the one unit_id ranges of the config take") {
    auto r = ferry::config::parse_range(" 3 - 30 ");
    REQUIRE(r);
    CHECK(r->first == 3);
    CHECK(r->last == 30);
    CHECK_FALSE(ferry::config::parse_range("30"));
    CHECK_FALSE(ferry::config::parse_range("-3"));
    CHECK_FALSE(ferry::config::parse_range("1-"));
    CHECK(ferry::config::check_range({1, 300}, 1, 247, "unit_id") ==
          "unit_id 300 is out of range (1..247)");
    CHECK(ferry::config::check_range({30, 1}, 1, 247, "unit_id") ==
          "the range 30-1 runs backwards (write \"1-30\")");
    CHECK(ferry::config::check_range({1, 30}, 1, 247, "unit_id").empty());
}

TEST_CASE("--scan: RTU ids 1..247, TCP 0..255; holding 0, one register, 200 ms by default") {
    modbus::probe_args a;
    REQUIRE(parse({"--serial", "/dev/ttyUSB0", "--scan", "1-3"}, a) == "");
    CHECK(a.scan == std::vector<int>{1, 2, 3});
    CHECK(a.address == 0);
    CHECK(a.count == 1u);
    CHECK(a.tbl == modbus::table::holding);
    CHECK(a.timeout == modbus::k_scan_timeout);
    CHECK(a.timeout.count() == 200);
    CHECK(a.profiles_dir.empty());

    modbus::probe_args b;
    REQUIRE(parse({"--host", "10.0.0.2", "--scan", "0,255", "--table", "input", "--address", "0x10",
                   "--count", "2", "--timeout", "1500", "--profiles", "config/profiles"},
                  b) == "");
    CHECK(b.scan == std::vector<int>{0, 255});
    CHECK(b.tbl == modbus::table::input);
    CHECK(b.address == 16);
    CHECK(b.count == 2u);
    CHECK(b.timeout.count() == 1500);
    CHECK(b.profiles_dir == "config/profiles");

    modbus::probe_args c;
    CHECK(parse({"--serial", "/dev/ttyUSB0", "--scan", "0-3"}, c) ==
          "bad value for --scan: unit id 0 is out of range (1..247)");
}

TEST_CASE("--scan usage errors") {
    auto error = [](std::vector<std::string> args) {
        modbus::probe_args a;
        return parse(std::move(args), a);
    };
    CHECK(error({"--host", "h", "--scan", "1-3", "--unit", "4"}) ==
          "--scan and --unit exclude each other");
    CHECK(error({"--host", "h", "--profiles", "dir", "--address", "0"}) ==
          "--profiles needs --scan");
    CHECK(error({"--host", "h", "--scan"}) == "--scan needs a value");
    CHECK(error({"--host", "h", "--scan", "1-3", "--profiles", ""}) ==
          "bad value for --profiles: ''");
    CHECK(error({"--scan", "1-3"}) == "give exactly one of --host and --serial");
    CHECK(error({"--host", "h", "--scan", "9-1"}) ==
          "bad value for --scan: the range 9-1 runs backwards (write \"1-9\")");
    CHECK(error({"--host", "h", "--scan", "1", "--count", "126"}) ==
          "--count is at most 125 for this table");
    // Without --scan the single probe still wants its address.
    CHECK(error({"--host", "h"}) == "missing --address");
}

TEST_CASE("the suggested device item names the line, the unit ids and the profile") {
    modbus::probe_args rtu;
    REQUIRE(parse({"--serial", "/dev/ttyUSB0", "--baud", "19200", "--parity", "E", "--scan", "1-9"},
                  rtu) == "");
    CHECK(modbus::device_snippet(rtu, "eastron_sdm630", {1, 2, 5}) ==
          "- id: \"eastron_sdm630-{unit_id}\"\n"
          "  driver: modbus_rtu\n"
          "  serial: { port: \"/dev/ttyUSB0\", baud: 19200, parity: E, data_bits: 8, "
          "stop_bits: 1 }\n"
          "  unit_id: [1, 2, 5]\n"
          "  profile: eastron_sdm630\n");
    modbus::probe_args tcp;
    REQUIRE(parse({"--host", "10.0.0.2", "--port", "1502", "--scan", "3"}, tcp) == "");
    CHECK(modbus::device_snippet(tcp, "em24", {3}) ==
          "- id: \"em24-{unit_id}\"\n"
          "  driver: modbus_tcp\n"
          "  host: \"10.0.0.2\"\n"
          "  port: 1502\n"
          "  unit_id: 3\n"
          "  profile: em24\n");
}
