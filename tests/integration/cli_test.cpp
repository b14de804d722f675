// The command line of CONTRACT.md, run as a user runs it: the real `ferry` binary.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <filesystem>
#include <sstream>

#include "gateway/config.hpp"
#include "tests/support/harness.hpp"

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
    auto code = p.wait(20s);
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

}  // namespace

TEST_CASE("ferry check: each broken config exits 1 with FILE:LINE:COLUMN: key.path: message") {
    // The exact lines are pinned in tests/unit/config_test.cpp; here the binary must print
    // exactly what the loader found, nothing else, and exit 1.
    const char* broken[] = {"unknown_key",        "wrong_type",          "bad_duration",
                            "missing_gateway_id", "duplicate_device_id", "bad_topic_template",
                            "bad_match_pattern",  "port_out_of_range",   "empty_points",
                            "unknown_driver",     "several_errors",      "yaml_syntax"};
    for (const char* name : broken) {
        CAPTURE(name);
        auto file = k_cases + name + ".yaml";
        std::vector<std::string> expected;
        try {
            ferry::config::load_config(file);
            FAIL("fixture loads without error");
        } catch (const ferry::config::errors& e) {
            for (const auto& err : e.list())
                expected.push_back(err.to_string());
        }
        auto r = run_ferry({"check", "-c", file});
        CHECK(r.code == 1);
        CHECK(lines_of(r.output) == expected);
        for (const auto& line : expected)
            CHECK(line.rfind(file + ":", 0) == 0);
    }
}

TEST_CASE("ferry check: pinned examples of the error format") {
    auto r = run_ferry({"check", "-c", k_cases + "unknown_driver.yaml"});
    CHECK(r.code == 1);
    REQUIRE(lines_of(r.output).size() == 1);
    CHECK(lines_of(r.output)[0].find(": devices[0].driver: unknown driver 'modbus_udp'") !=
          std::string::npos);
    r = run_ferry({"check", "-c", k_cases + "missing_gateway_id.yaml"});
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
