// The command line of CONTRACT.md, run as a user runs it: the real `ferry` binary.
#include <doctest/doctest.h>

#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <sstream>

#include "tests/support/golden.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;

namespace {

struct result {
    int code;
    std::string output;  // stdout + stderr
};

result run_ferry(std::vector<std::string> args) {
    temp_dir dir;
    args.insert(args.begin(), FERRY_BINARY);
    process p(args, dir.file("out"));
    auto code = p.wait(60s);
    REQUIRE(code);
    return {*code, read_file(dir.file("out"))};
}

std::vector<std::string> lines_of(const std::string& s) {
    std::vector<std::string> out;
    std::istringstream in(s);
    for (std::string line; std::getline(in, line);)
        out.push_back(line);
    return out;
}

const std::string k_cases = std::string(FERRY_SOURCE_DIR) + "/tests/testcases/config/";

// `ferry COMMAND -c ./ferry.yaml` run in a golden case's folder, as a user would: what it
// prints (stdout and stderr); CHECKs its exit code.
std::string check_in_case(const std::filesystem::path& dir, const std::string& command,
                          int expected_code) {
    temp_dir out;
    process p({"/bin/sh", "-c", "cd \"$1\" && exec \"$0\" " + command + " -c ./ferry.yaml",
               FERRY_BINARY, dir.string()},
              out.file("out"));
    auto code = p.wait(60s);
    REQUIRE(code);
    CHECK(*code == expected_code);
    return read_file(out.file("out"));
}

}  // namespace

TEST_CASE("ferry check: each config error case exits 1 and prints exactly its `errors` file") {
    // The golden cases of tests/testcases/config/<case>/ (tests/unit/config_test.cpp checks the
    // loader on them): `ferry check -c ./ferry.yaml`, run in the case folder as a user would,
    // prints exactly `errors`, nothing else, and exits 1.
    const auto cases = check_golden("config", "errors", [](const std::filesystem::path& dir) {
        return check_in_case(dir, "check", 1);
    });
    CHECK(cases >= 25);
}

TEST_CASE("ferry check: pinned examples of the error format") {
    auto r = run_ferry({"check", "-c", k_cases + "unknown_driver/ferry.yaml"});
    CHECK(r.code == 1);
    REQUIRE(lines_of(r.output).size() == 1);
    CHECK(lines_of(r.output)[0].find(": devices[0].driver: unknown driver 'modbus_udp'") !=
          std::string::npos);
    r = run_ferry({"check", "-c", k_cases + "missing_gateway_id/ferry.yaml"});
    CHECK(r.code == 1);
    CHECK(r.output.find(": gateway: missing required key 'id'") != std::string::npos);
}

TEST_CASE("ferry check: every example config in the tree is valid") {
    for (const char* rel : {"config/ferry.yaml", "drivers/modbus/example.yaml",
                            "tests/testcases/config/every_feature.yaml"}) {
        CAPTURE(rel);
        auto file = std::string(FERRY_SOURCE_DIR) + "/" + rel;
        auto r = run_ferry({"check", "-c", file});
        CHECK(r.code == 0);
        CHECK(r.output == file + ": ok\n");
    }
}

TEST_CASE("usage errors exit 2, a missing file exits 1, version answers") {
    CHECK(run_ferry({}).code == 2);
    CHECK(run_ferry({"frobnicate"}).code == 2);
    CHECK(run_ferry({"check"}).code == 2);
    CHECK(run_ferry({"check", "-c"}).code == 2);
    CHECK(run_ferry({"run", "-c", "x.yaml", "--extra"}).code == 2);
    auto missing = run_ferry({"check", "-c", "/nonexistent/ferry.yaml"});
    CHECK(missing.code == 1);
    CHECK(missing.output.find("/nonexistent/ferry.yaml:0:0: cannot read file") == 0);
    auto v = run_ferry({"version"});
    CHECK(v.code == 0);
    CHECK(v.output.rfind("ferry 0.1.0 (", 0) == 0);
}

TEST_CASE("probe without --address is a usage error naming what is missing") {
    auto probe = run_ferry({"probe", "modbus", "--host", "127.0.0.1", "--unit", "1"});
    CHECK(probe.code == 2);
    CHECK(probe.output.find("missing --address") != std::string::npos);
}

// ---- Operator files within budgets (issue 14, items 7 and 8) --------------------------------
// Files that used to run out of memory, take seconds, or pass check and then fail at run time:
// each must be one FILE:LINE:COLUMN: key.path: message line (FILE:0:0 when the file cannot be
// read) and exit 1.

namespace {

result check_file(const std::string& file) {
    return run_ferry({"check", "-c", file});
}

// The largest peak RSS of any child waited for so far, in KiB.
long children_peak_kib() {
    rusage u{};
    getrusage(RUSAGE_CHILDREN, &u);
    return u.ru_maxrss;
}

const std::string k_head = "gateway:\n  id: gw1\n";

std::string device(const std::string& id, const std::string& extra = {}) {
    return "  - id: " + id + "\n    driver: modbus_tcp\n    host: 127.0.0.1\n" + extra +
           "    points:\n      - { name: t, address: 0 }\n";
}

}  // namespace

TEST_CASE("-c /dev/zero and password_file: /dev/zero end in an error, not out of memory") {
    auto r = check_file("/dev/zero");
    CHECK(r.code == 1);
    CHECK(r.output ==
          "/dev/zero:0:0: cannot read file: larger than 4194304 bytes (the limit for this file)\n");

    temp_dir dir;
    write_file(dir.file("f.yaml"),
               k_head + "upstream:\n  mqtt:\n    username: u\n    password_file: /dev/zero\n");
    r = check_file(dir.file("f.yaml"));
    CHECK(r.code == 1);
    CHECK(r.output == dir.file("f.yaml") +
                          ":6:20: upstream.mqtt.password_file: cannot read password file "
                          "'/dev/zero': larger than 65536 bytes (the limit for this file)\n");
    CHECK(children_peak_kib() < 64 * 1024);
}

TEST_CASE("a short file whose YAML aliases expand to millions of values is refused quickly") {
    // 86 KB: one device of 1,000 points, then the same device 3,000 times by alias. Before:
    // 9 s and 470 MB building 3,000,000 points.
    std::ostringstream y;
    y << k_head << "devices:\n  - &dev\n    id: d\n    driver: modbus_tcp\n    host: 127.0.0.1\n"
      << "    points:\n";
    for (int i = 0; i < 1000; ++i)
        y << "      - { name: p" << i << ", address: " << i << " }\n";
    for (int i = 0; i < 3000; ++i)
        y << "  - *dev\n";
    temp_dir dir;
    write_file(dir.file("f.yaml"), y.str());
    const auto began = std::chrono::steady_clock::now();
    auto r = check_file(dir.file("f.yaml"));
    const auto s = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    MESSAGE("alias bomb: ferry check took " << s << " s, peak RSS of children "
                                            << children_peak_kib() / 1024 << " MiB");
    CHECK(r.code == 1);
    // One line, at the alias entry where the bound was passed.
    CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
    CHECK(r.output.rfind(dir.file("f.yaml") + ":", 0) == 0);
    CHECK(r.output.find(": devices[") != std::string::npos);
    CHECK(r.output.find("the file expands to more than 1000000 values (each use of a YAML alias "
                        "counts as a copy of what it refers to)") != std::string::npos);
    CHECK(children_peak_kib() < 200 * 1024);
}

// Durations past 720h (before: accepted by check, then overflowing steady_clock arithmetic at
// run time) are the duration_too_long and poll_interval_too_long config error cases.

TEST_CASE("names longer than 128 bytes are refused: they would make topics too long") {
    // Before: a device id of 70,000 bytes passed check; no topic naming it can be published.
    temp_dir dir;
    const std::string id(70000, 'd');
    write_file(dir.file("f.yaml"), k_head + "devices:\n" + device(id));
    auto r = check_file(dir.file("f.yaml"));
    CHECK(r.code == 1);
    CHECK(r.output == dir.file("f.yaml") + ":4:9: devices[0].id: '" + std::string(32, 'd') +
                          "...' (70000 bytes) is not a valid device id: longer than 128 "
                          "bytes\n");
    write_file(dir.file("f.yaml"),
               k_head + "rules:\n  - name: r\n    match: \"#\"\n    publish: { topic: \"" +
                   std::string(2000, 't') + "\" }\n");
    r = check_file(dir.file("f.yaml"));
    CHECK(r.code == 1);
    CHECK(r.output == dir.file("f.yaml") +
                          ":6:23: rules[0].publish.topic: topic template of 2000 bytes is longer "
                          "than 1024\n");
    // 128 is fine.
    write_file(dir.file("f.yaml"), k_head + "devices:\n" + device(std::string(128, 'd')));
    CHECK(check_file(dir.file("f.yaml")).code == 0);
}

// ---- ferry check --expand (profiles and unit-id ranges, docs/PROFILES.md) ----------------

TEST_CASE("ferry check --expand: each expand case prints exactly its `expected` file") {
    const auto cases = check_golden("expand", "expected", [](const std::filesystem::path& dir) {
        return check_in_case(dir, "check --expand", 0);
    });
    CHECK(cases >= 1);
}

TEST_CASE("30 meters through a shipped profile: --expand lists every point; a typo is one line") {
    const std::string shipped = std::string(FERRY_SOURCE_DIR) + "/config/profiles";
    temp_dir dir;
    auto config = [](const std::string& profiles_dir) {
        return "gateway: { id: plant, profiles_dir: " + profiles_dir +
               " }\n"
               "devices:\n"
               "  - id: \"meter{unit_id}\"\n"
               "    driver: modbus_rtu\n"
               "    serial: { port: /dev/ttyUSB0, baud: 9600 }\n"
               "    unit_id: \"1-30\"\n"
               "    profile: eastron_sdm630\n";
    };
    write_file(dir.file("ferry.yaml"), config(shipped));
    CHECK(lines_of(read_file(dir.file("ferry.yaml"))).size() <= 15);
    auto r = run_ferry({"check", "--expand", "-c", dir.file("ferry.yaml")});
    CHECK(r.code == 0);
    const auto profile = read_file(shipped + "/eastron_sdm630.yaml");
    std::vector<std::string> names;
    for (const auto& line : lines_of(profile)) {
        const auto at = line.find("- { name: ");
        if (at != std::string::npos)
            names.push_back(line.substr(at + 10, line.find(',', at) - at - 10));
    }
    REQUIRE(names.size() == 36);
    // Each meter's block lists every point of the profile, in order.
    const auto out = lines_of(r.output);
    for (int m = 1; m <= 30; ++m) {
        CAPTURE(m);
        auto it = std::find(out.begin(), out.end(), "  - id: meter" + std::to_string(m));
        REQUIRE(it != out.end());
        CHECK(std::find(it, out.end(), "    unit_id: " + std::to_string(m)) != out.end());
        for (const auto& name : names) {
            it = std::find_if(it, out.end(), [&](const std::string& l) {
                return l.find("- {name: " + name + ",") != std::string::npos;
            });
            CHECK(it != out.end());
        }
    }

    // The same profile with a typo, from a profiles directory of the user's.
    std::filesystem::create_directory(dir.file("profiles"));
    // An optional key misspelt: one error (a required one would also be missing).
    const std::string good = "address: 0x0034, type: float32, unit: W";
    auto bad = profile;
    const auto at = bad.find(good);
    REQUIRE(at != std::string::npos);
    bad.replace(at, good.size(), "address: 0x0034, type: float32, unti: W");
    write_file(dir.file("profiles/eastron_sdm630.yaml"), bad);
    write_file(dir.file("ferry.yaml"), config("profiles"));
    r = run_ferry({"check", "-c", dir.file("ferry.yaml")});
    CHECK(r.code == 1);
    const auto line =
        std::to_string(std::count(bad.begin(), bad.begin() + static_cast<long>(at), '\n') + 1);
    const auto column = std::to_string(at - bad.rfind('\n', at) +
                                       std::string("address: 0x0034, type: float32, ").size());
    CHECK(lines_of(r.output) ==
          std::vector<std::string>{dir.file("profiles/eastron_sdm630.yaml") + ":" + line + ":" +
                                   column +
                                   ": points[21].unti: unknown key (did you mean 'unit'?)"});
    r = run_ferry({"check", "--expand", "-c", dir.file("ferry.yaml")});
    CHECK(r.code == 1);
    CHECK(lines_of(r.output).size() == 1);
}

TEST_CASE("--expand belongs to check: ferry run --expand is a usage error") {
    auto r = run_ferry({"run", "--expand", "-c", k_cases + "every_feature.yaml"});
    CHECK(r.code == 2);
    CHECK(r.output.find("unknown argument '--expand'") != std::string::npos);
}
