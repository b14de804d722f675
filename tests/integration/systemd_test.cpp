// sd_notify as systemd sees it: NOTIFY_SOCKET points at a datagram socket the test reads.
#include <doctest/doctest.h>

#include <unistd.h>

#include "tests/support/ferry_run.hpp"

using namespace ferry::test;

namespace {

std::size_t count_with(const std::vector<std::string>& msgs, const std::string& part) {
    std::size_t n = 0;
    for (const auto& m : msgs)
        n += m.find(part) != std::string::npos ? 1 : 0;
    return n;
}

}  // namespace

TEST_CASE("READY=1 once running, WATCHDOG=1 while healthy, STATUS= lines, STOPPING=1 on SIGTERM") {
    modbus_sim sim(0, {"holding:0=u16:1"});
    mosquitto broker;
    temp_dir dir;
    notify_socket sock(dir.file("notify.sock"));
    auto env = ferry_vars(dir.path(), 0, sim.port(), broker.uri());
    env["NOTIFY_SOCKET"] = dir.file("notify.sock");
    env["WATCHDOG_USEC"] = "600000";
    auto ferry_p = ferry_process(config_path("systemd"), dir.file("ferry.log"), env);
    auto& ferry = *ferry_p;
    REQUIRE(sock.collect_until([](auto& m) { return count_with(m, "READY=1") == 1; }, 10s));
    CHECK(sock.messages.front().rfind("READY=1\nSTATUS=devices 1, spool ", 0) == 0);
    // Half the watchdog interval: 300 ms; expect several pings within 2 s.
    REQUIRE(sock.collect_until([](auto& m) { return count_with(m, "WATCHDOG=1") >= 4; }, 3s));
    CHECK(count_with(sock.messages, "STATUS=devices 1, spool ") >= 2);
    CHECK(sock.collect_until([](auto& m) { return count_with(m, "mqtt connected") >= 1; }, 5s));
    CHECK(count_with(sock.messages, "STOPPING=1") == 0);
    CHECK(ferry.stop() == 0);
    CHECK(sock.collect_until([](auto& m) { return count_with(m, "STOPPING=1") == 1; }, 2s));
}
