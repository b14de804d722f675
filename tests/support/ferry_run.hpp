// Running the real `ferry` binary in an integration or chaos test: which config, with which
// per-run values, and the one wait for "ready".
//
// Configs are checked-in YAML files under tests/configs/. What differs per run (free ports, the
// temp data directory, broker URIs) reaches them through Ferry's own ${NAME} substitution
// (core/config.cpp expands ${NAME} in every scalar value): the test passes those values as the
// environment of the child `ferry run`, never by editing text. A test reads its config as a
// user would, and `ferry check` can be run on it by hand with the same variables exported.
// A few are templates whose last key is a list the test generates (copy_config appends it).
//
// ferry_yaml() is the one exception, a builder: the chaos tests vary the *shape* of the config
// (1 to 2,000 generated points, optional tls/keepalive/mqtt keys, extra devices), which no
// substitution of values can express.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tests/support/harness.hpp"

namespace ferry::test {

// tests/configs/NAME.yaml in the source tree.
std::string config_path(const std::string& name);

// Copies tests/configs/NAME.yaml to dir/ferry.yaml with `tail` appended; returns the copy's
// path. For a config the test edits before a SIGHUP, and for a template whose last key is a
// list the test generates (its header says so: http_big, modbus_driver, serial_line).
std::string copy_config(const temp_dir& dir, const std::string& name, const std::string& tail = {});

// The values for a config's ${NAME} references (and any other variable the child needs, e.g.
// LD_PRELOAD), added to the test runner's environment for the child.
using ferry_env = std::map<std::string, std::string>;

// The variables most configs under tests/configs take: DATA_DIR, HTTP_PORT, MODBUS_PORT and
// MQTT_URI. A port of 0 or an empty URI is left out (the config does not use it). Add the
// config's own (POLL, MAX_AGE, ...) to the result.
ferry_env ferry_vars(const std::string& data_dir, std::uint16_t http_port,
                     std::uint16_t modbus_port, const std::string& mqtt_uri);

// `ferry run -c CONFIG` with `env`, stdout and stderr appended to `log`. Returns at once.
std::unique_ptr<process> ferry_process(const std::string& config, const std::string& log,
                                       const ferry_env& env = {});

// Waits until ferry answers GET /readyz with 200 on 127.0.0.1:http_port while `p` runs.
// FAILs the test (REQUIRE-like) after `timeout`, or as soon as `p` exits, printing the tail of
// its log: a ferry that refused its config fails here with the reason, not 15 s later.
inline void wait_ready(process& p, std::uint16_t http_port,
                       std::chrono::milliseconds timeout = 15000ms) {
    const bool ready =
        wait_until([&] { return !p.running() || http_get(http_port, "/readyz").status == 200; },
                   timeout) &&
        p.running();
    if (!ready) {
        std::string text = p.log_file().empty() ? std::string() : read_file_if_exists(p.log_file());
        if (text.size() > 3000) text = text.substr(text.size() - 3000);
        FAIL("ferry did not become ready on port " << http_port << "; log:\n" << text);
    }
}

// A config for `ferry run`: one Modbus TCP device "d1" reading holding registers 0..registers-1
// (points r0, r1, ...), one rule "all" over every point publishing to
// "plant/{gateway}/{device}" at QoS 1, the spool in data_dir. Built, not checked in: see above.
struct ferry_options {
    std::string gateway = "chaos-gw";
    std::string data_dir;
    std::uint16_t http_port = 0;    // 0: no http section
    std::uint16_t modbus_port = 0;  // required
    int registers = 200;
    std::string poll = "100ms";
    std::string timeout = "1s";  // the device's
    std::string extra_devices;   // YAML list items appended to `devices:` (e.g. a serial_line)
    std::size_t max_events = 100;
    std::string max_age = "500ms";
    std::vector<std::string> uris;
    std::string tls;  // the value of upstream.mqtt.tls, e.g. "{ ca_file: x }", or empty
    int inflight = 16;
    std::vector<std::string> mqtt_keys;  // more upstream.mqtt keys, e.g. "ack_timeout: 2s"
    std::string max_bytes = "64MiB";
    std::string when_full = "drop_oldest";
    std::string fsync = "batch";
    std::string compress;  // upstream.spool.compress ("true", "false"); empty: the default
    std::string log_level = "info";
    std::string keepalive;  // upstream.mqtt.keepalive, e.g. "2s"; empty: the default
    std::string replay;     // upstream.replay, e.g. "{ rate: 30 }"; empty: the default
};
std::string ferry_yaml(const ferry_options& o);

}  // namespace ferry::test
