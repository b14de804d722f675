// Secrets never reach the log: an MQTT password (from password_file) is not printed, at debug
// level, whether the broker takes it or refuses it.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <cstdlib>
#include <thread>

#include "tests/support/ferry_run.hpp"

using namespace ferry::test;

namespace {

// tests/configs/secrets.yaml with the password read from `password_file`.
std::unique_ptr<process> run_with_password(const temp_dir& dir, std::uint16_t sim_port,
                                           std::uint16_t http_port, const std::string& uri,
                                           const std::string& password_file,
                                           const std::string& log) {
    auto env = ferry_vars(dir.path(), http_port, sim_port, uri);
    env["PASSWORD_FILE"] = password_file;
    return ferry_process(config_path("secrets"), log, env);
}

}  // namespace

TEST_CASE("the MQTT password is never logged, accepted or refused") {
    temp_dir dir;
    const std::string right = "Right-Pass-7391";
    const std::string wrong = "Wrong-Pass-2648";
    auto passwd = dir.file("mosquitto.passwd");
    REQUIRE(
        std::system(("mosquitto_passwd -c -b " + passwd + " ferry " + right + " >/dev/null 2>&1")
                        .c_str()) == 0);
    // mosquitto started as root drops to its own user: it must be able to read the file.
    REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
    REQUIRE(::chmod(passwd.c_str(), 0644) == 0);
    mosquitto broker(0, "allow_anonymous false\npassword_file " + passwd + "\n");
    modbus_sim sim(0, holding_registers(2));
    auto http_port = free_port();

    // Refused: ferry keeps trying (and logs why), the password is not in the log.
    write_file(dir.file("wrong.pass"), wrong + "\n");
    {
        auto ferry_p = run_with_password(dir, sim.port(), http_port, broker.uri(),
                                         dir.file("wrong.pass"), dir.file("wrong.log"));
        auto& ferry = *ferry_p;
        wait_ready(ferry, http_port, 10s);
        CHECK(wait_until(
            [&] {
                return read_file(dir.file("wrong.log")).find("component=mqtt") != std::string::npos;
            },
            10s));
        std::this_thread::sleep_for(2s);
        CHECK(metric_value(http_port, "ferry_mqtt_connected") == 0.0);
        CHECK(ferry.stop() == 0);
    }
    auto log = read_file(dir.file("wrong.log"));
    CHECK(log.find(wrong) == std::string::npos);
    // ... and the reason is in words.
    CHECK(log.find("error=\"Not authorized (reason code 135)\"") != std::string::npos);

    // Accepted: connected, delivering, and still not in the log.
    write_file(dir.file("right.pass"), right + "\n");
    {
        auto ferry_p = run_with_password(dir, sim.port(), http_port, broker.uri(),
                                         dir.file("right.pass"), dir.file("right.log"));
        auto& ferry = *ferry_p;
        CHECK(wait_until([&] { return metric_value(http_port, "ferry_mqtt_connected") == 1.0; },
                         10s));
        CHECK(wait_until(
            [&] {
                return metric_value(http_port, "ferry_mqtt_published_total{result=\"ok\"}", 0) >= 1;
            },
            10s));
        CHECK(ferry.stop() == 0);
    }
    log = read_file(dir.file("right.log"));
    CHECK(log.find(right) == std::string::npos);
    CHECK(log.find("Right-Pass") == std::string::npos);
}
