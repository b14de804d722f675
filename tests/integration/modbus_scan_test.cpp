// `ferry probe modbus --scan` (issue 17 item 6) through the binary, against pymodbus as the
// independent server: several units on one RTU line over a socat pty, some silent, each with a
// sparse register map of its own (a read of an address it lacks is answered with exception 2),
// one map the shipped Eastron SDM630 profile fits and others it does not; a late answer on the
// line (our simulator's --delay) never taken for the next unit's; TCP lines with silent units
// (no answer at all, or a gateway's exception 0x0B); profiles of a directory of one's own; and
// the suggested YAML loading with `ferry check`.
#include <doctest/doctest.h>

#include <sstream>
#include <string>
#include <vector>

#include "tests/support/files.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

// The line of the output that starts with `prefix` ("unit 5 " for the scan's line of unit 5,
// the first one; the profile section's line is the second), or "" when there is none.
std::string line_of(const std::string& out, const std::string& prefix, int nth = 1) {
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);)
        if (line.rfind(prefix, 0) == 0 && --nth == 0) return line;
    return {};
}

bool has(const std::string& text, const std::string& what) {
    return text.find(what) != std::string::npos;
}

// --unit-set arguments giving `unit` registers at every address the shipped eastron_sdm630
// profile reads (config/profiles/eastron_sdm630.yaml: input 0x0000-0x004F in one request,
// 0x00C8-0x00CD, 0x00E0-0x00E1, 0x0156-0x0159), zero but for a few plausible floats; `full`
// false stops after the first block, `voltage_l2` is written as it is (e.g. "nan").
void sdm630_map(std::vector<std::string>& args, int unit, bool full = true,
                const std::string& voltage_l2 = "231.4") {
    const std::string u = std::to_string(unit) + ":";
    auto reg = [&](const std::string& spec) {
        args.push_back("--unit-set");
        args.push_back(u + spec);
    };
    std::vector<std::pair<int, int>> ranges{{0, 80}};
    if (full) ranges.insert(ranges.end(), {{200, 206}, {224, 226}, {342, 346}});
    for (auto [from, to] : ranges)
        for (int a = from; a < to; ++a)
            reg("input:" + std::to_string(a) + "=u16:0");
    reg("input:0=f32:230.1");
    reg("input:2=f32:" + voltage_l2);
    reg("input:4=f32:229.8");
    reg("input:70=f32:50.01");
}

}  // namespace

TEST_CASE("a scan of an RTU line names the units that answer and the profile that fits") {
    socat_pair pty;
    // Units 1, 2, 5, 7, 9 answer; 3, 4, 6, 8 are not on the line.
    //   1: holding 0 only                  -> answers, no profile fits
    //   2: holding 0, the SDM630's first block only -> no profile fits (input 200.. refused)
    //   5: the SDM630 map, no holding 0    -> exception 2 at the scan's read, fits eastron_sdm630
    //   7: holding 0, the SDM630 map with voltage_l2 NaN -> no profile fits (not finite)
    //   9: holding 0, the SDM630 map       -> fits eastron_sdm630
    std::vector<std::string> extra{"--sparse", "--units", "1,2,5,7,9"};
    for (const char* u : {"1", "2", "7", "9"}) {
        extra.push_back("--unit-set");
        extra.push_back(std::string(u) + ":holding:0=u16:7");
    }
    sdm630_map(extra, 2, false);
    sdm630_map(extra, 5);
    sdm630_map(extra, 7, true, "nan");
    sdm630_map(extra, 9);
    rtu_server server(pty, true, {}, extra);

    const auto r =
        ferry_cli({"probe", "modbus", "--serial", pty.a(), "--baud", "19200", "--scan", "1-9",
                   "--profiles", std::string(FERRY_SOURCE_DIR) + "/config/profiles"});
    INFO(r.out);
    CHECK(r.code == 0);
    CHECK(has(r.out, "scanning 9 unit ids at " + pty.a() +
                         ": holding 0 (1 register), timeout 200 ms, one attempt each"));
    // The scan: one line per unit id, in order, with its latency.
    for (const char* u : {"1", "2", "7", "9"})
        CHECK(has(line_of(r.out, std::string("unit ") + u + " "), " answers "));
    CHECK(has(line_of(r.out, "unit 5 "), " exception 2 (illegal_address) "));
    for (const char* u : {"3", "4", "6", "8"}) {
        const auto line = line_of(r.out, std::string("unit ") + u + " ");
        CHECK(has(line, " no answer "));
        CHECK(line.size() > 3);
        CHECK(line.substr(line.size() - 3) == " ms");
    }
    CHECK(has(r.out, "5 of 9 unit ids answered"));
    // The suggestion: a second line for each unit that answered.
    CHECK(line_of(r.out, "unit 5 ", 2) == "unit 5    fits eastron_sdm630");
    CHECK(line_of(r.out, "unit 9 ", 2) == "unit 9    fits eastron_sdm630");
    for (const char* u : {"1", "2", "7"})
        CHECK(line_of(r.out, std::string("unit ") + u + " ", 2) ==
              std::string("unit ") + u + "    no profile fits");
    CHECK(line_of(r.out, "unit 3 ", 2).empty());  // silent units are not tried
    CHECK(has(r.out, "  eastron_sdm630: input 200..205: exception 2 (illegal_address)"));
    CHECK(
        has(r.out, "  eastron_sdm630: point voltage_l2 (input 2, float32) is not a finite value"));
    CHECK(has(r.out, "  carlo_gavazzi_em24: holding 0..79: exception 2 (illegal_address)"));
    // The YAML for the two meters.
    const std::string item =
        "- id: \"eastron_sdm630-{unit_id}\"\n"
        "  driver: modbus_rtu\n"
        "  serial: { port: \"" +
        pty.a() +
        "\", baud: 19200, parity: N, data_bits: 8, stop_bits: 1 }\n"
        "  unit_id: [5, 9]\n"
        "  profile: eastron_sdm630\n";
    CHECK(has(r.out, item));
    CHECK_FALSE(has(r.out, "carlo_gavazzi_em24-{unit_id}"));

    // What it suggests is a config `ferry check` takes: two devices with the profile's points.
    temp_dir dir;
    write_file(dir.file("ferry.yaml"),
               "gateway:\n  id: scan\n  profiles_dir: " + std::string(FERRY_SOURCE_DIR) +
                   "/config/profiles\ndevices:\n" + item);
    const auto check = ferry_cli({"check", "--expand", "-c", dir.file("ferry.yaml")});
    INFO(check.out);
    CHECK(check.code == 0);
    CHECK(has(check.out, "id: eastron_sdm630-5"));
    CHECK(has(check.out, "id: eastron_sdm630-9"));
}

TEST_CASE("a scan where nothing answers exits 3") {
    socat_pair pty;
    rtu_server server(pty, true, {"holding:0=u16:1"}, {"--units", "10"});
    const auto r = ferry_cli({"probe", "modbus", "--serial", pty.a(), "--baud", "19200", "--scan",
                              "3,4", "--timeout", "100"});
    INFO(r.out);
    CHECK(r.code == 3);
    CHECK(has(line_of(r.out, "unit 3 "), " no answer "));
    CHECK(has(line_of(r.out, "unit 4 "), " no answer "));
    CHECK(has(r.out, "0 of 2 unit ids answered"));
    CHECK_FALSE(has(r.out, "profiles in"));

    const auto none =
        ferry_cli({"probe", "modbus", "--serial", pty.dir().file("nothing"), "--scan", "1-3"});
    CHECK(none.code == 3);
    CHECK(has(none.out, "cannot open " + pty.dir().file("nothing")));
}

TEST_CASE("a late answer on the line is not taken for the next unit's") {
    // Our simulator answers unit 1 only, 450 ms after each request; the scan waits 300 ms. Unit
    // 1's answer arrives during unit 2's wait: the RTU link sees unit 1's id in it.
    socat_pair pty;
    rtu_server server(pty, false, {"holding:0=u16:7"}, {"--unit", "1", "--delay", "450"});
    const auto r = ferry_cli({"probe", "modbus", "--serial", pty.a(), "--baud", "19200", "--scan",
                              "1,2", "--timeout", "300"});
    INFO(r.out);
    CHECK(has(line_of(r.out, "unit 1 "), " no answer "));
    CHECK(has(line_of(r.out, "unit 2 "), " bad frame (bad_slave) "));
    CHECK(r.code == 3);
}

TEST_CASE("a scan over TCP: a unit the server does not have is no answer, the next answers") {
    pymodbus_sim server(0, {"holding:0=u16:7"}, {}, {"--units", "2,4"});
    const auto r = ferry_cli({"probe", "modbus", "--host", "127.0.0.1", "--port",
                              std::to_string(server.port()), "--scan", "1-4", "--profiles",
                              std::string(FERRY_SOURCE_DIR) + "/config/profiles"});
    INFO(r.out);
    CHECK(r.code == 0);
    CHECK(has(line_of(r.out, "unit 1 "), " no answer "));
    CHECK(has(line_of(r.out, "unit 2 "), " answers "));
    CHECK(has(line_of(r.out, "unit 3 "), " no answer "));
    CHECK(has(line_of(r.out, "unit 4 "), " answers "));
    // Not sparse: every register there, zero: the integer profile fits, the float one too
    // (0.0 is finite), SunSpec's strings and integers too: all three, for both units.
    CHECK(line_of(r.out, "unit 2 ", 2) ==
          "unit 2    fits carlo_gavazzi_em24, eastron_sdm630, sunspec_inverter_103");
    CHECK(has(r.out, "  host: \"127.0.0.1\"\n  port: " + std::to_string(server.port()) +
                         "\n  unit_id: [2, 4]\n"));
    CHECK(has(r.out, "# unit 2 fits 3 profiles: keep one of its devices"));

    CHECK(ferry_cli({"probe", "modbus", "--host", "127.0.0.1", "--port",
                     std::to_string(free_port()), "--scan", "1-3"})
              .code == 3);
}

TEST_CASE("a TCP gateway's 'target failed to respond' is no answer; profiles of your own") {
    // Our simulator over TCP answers unit 2 only and gives the others exception 0x0B, as a
    // Modbus TCP gateway does for a slave behind it that is silent.
    // Address 5 refuses every read: planned as one request (max_gap bridges 2..9), the pump's
    // two points would touch it; `ferry run` reads them apart, as two poll groups.
    modbus_sim server(0, {"holding:0=u16:7", "holding:1=u16:8"}, {},
                      {"--unit", "2", "--fail", "5-5"});
    temp_dir profiles;
    write_file(profiles.file("pump.yaml"),
               "points:\n"
               "  - { name: speed, address: 1, type: uint16 }\n"
               "  - { name: hours, address: 10, type: uint16, "
               "poll_interval: 10s }\n");
    write_file(profiles.file("broken.yaml"),
               "points:\n  - { name: speed, address: 1, type: unit16 }\n");
    write_file(profiles.file("README.md"), "not a profile\n");
    const auto r =
        ferry_cli({"probe", "modbus", "--host", "127.0.0.1", "--port",
                   std::to_string(server.port()), "--scan", "1-3", "--profiles", profiles.path()});
    INFO(r.out);
    CHECK(r.code == 0);
    CHECK(has(line_of(r.out, "unit 1 "), " no answer (gateway: exception 11 gateway_target) "));
    CHECK(has(line_of(r.out, "unit 2 "), " answers "));
    CHECK(has(line_of(r.out, "unit 3 "), " no answer (gateway: exception 11 gateway_target) "));
    CHECK(has(r.out, "1 of 3 unit ids answered"));
    // The broken profile is reported as `ferry check` would, at its line, and left out.
    CHECK(has(r.out,
              "ferry: probe: profile broken left out: " + profiles.file("broken.yaml") + ":2:"));
    CHECK(has(r.out, "profiles in " + profiles.path() + ": pump\n"));
    CHECK(line_of(r.out, "unit 2 ", 2) == "unit 2    fits pump");
    CHECK(has(r.out,
              "with gateway.profiles_dir: \"" + profiles.path() + "\"\n- id: \"pump-{unit_id}\""));
    CHECK(has(r.out, "  unit_id: 2\n  profile: pump\n"));

    CHECK(ferry_cli({"probe", "modbus", "--host", "127.0.0.1", "--port",
                     std::to_string(server.port()), "--scan", "1,3"})
              .code == 3);
}
