// Field-grade Modbus (issue 17), against pymodbus as the independent server, whose request log
// (tests/support/pymodbus_log.hpp) is what the assertions read: the quirk settings, over TCP:
// max_registers and max_coils cap each request, request_delay spaces requests, connect_delay
// waits after connecting, close_after_poll opens a new connection for every poll; over RTU:
// request_delay keeps the line quiet before each request of its device, whoever spoke last.
// The poller runs in process (tests/support/poller_rig.hpp). Failing units on a line backed
// off, with poll groups and status messages: modbus_line_test.cpp; poll groups' rates:
// modbus_groups_test.cpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "core/config.hpp"
#include "drivers/modbus/config.hpp"
#include "tests/support/files.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/poller_rig.hpp"
#include "tests/support/pymodbus_log.hpp"

using namespace ferry::test;
using namespace std::chrono_literals;
namespace modbus = ferry::drivers::modbus;

namespace {

ferry::config::device tcp_device(const std::string& id, std::uint16_t port, int unit,
                                 std::vector<ferry::config::point> points) {
    auto d = modbus::make_tcp_device(id, "127.0.0.1", port, std::move(points));
    d.poll_interval = 1000ms;
    d.settings.change<modbus::device_settings>([&](auto& s) {
        s.unit_id = unit;
        s.timeout = 500ms;
    });
    return d;
}

ferry::config::point holding(std::uint32_t address) {
    return modbus::make_point("h" + std::to_string(address), modbus::table::holding, address,
                              ferry::config::point_type::uint16);
}

}  // namespace

TEST_CASE("quirk settings: each one seen in pymodbus's request log (TCP)") {
    temp_dir dir;
    // Server 1: unit 1 reads with max_registers 4 and max_coils 2, unit 2 with request_delay;
    // server 2: one device with connect_delay and close_after_poll.
    pymodbus_sim server1(0, {}, {}, {"--log", dir.file("one.log")});
    pymodbus_sim server2(0, {}, {}, {"--log", dir.file("two.log")});
    std::vector<ferry::config::point> capped;
    for (std::uint32_t a = 0; a < 10; ++a)
        capped.push_back(holding(a));
    for (std::uint32_t a = 0; a < 5; ++a)
        capped.push_back(modbus::make_point("c" + std::to_string(a), modbus::table::coil, a,
                                            ferry::config::point_type::boolean));
    auto cap = tcp_device("cap", server1.port(), 1, std::move(capped));
    cap.settings.change<modbus::device_settings>([](auto& s) {
        s.max_registers = 4;
        s.max_coils = 2;
    });
    auto slow = tcp_device("slow", server1.port(), 2, {holding(0), holding(100), holding(200)});
    slow.poll_interval = 2000ms;
    slow.settings.change<modbus::device_settings>([](auto& s) { s.request_delay = 250ms; });
    auto once = tcp_device("once", server2.port(), 1, {holding(0)});
    once.settings.change<modbus::device_settings>([](auto& s) {
        s.connect_delay = 300ms;
        s.close_after_poll = true;
    });
    {
        poller_rig rig({cap, slow, once});
        std::this_thread::sleep_for(4500ms);
    }
    const auto one = request_log(dir.file("one.log"));
    const auto two = request_log(dir.file("two.log"));

    // max_registers 4 and max_coils 2: 10 registers in 4 + 4 + 2, 5 coils in 2 + 2 + 1.
    const std::set<std::tuple<int, int, int>> planned{{3, 0, 4}, {3, 4, 4}, {3, 8, 2},
                                                      {1, 0, 2}, {1, 2, 2}, {1, 4, 1}};
    std::map<std::tuple<int, int, int>, int> seen;
    for (const auto& r : of_unit(one, 1)) {
        INFO("fc " << r.function << " address " << r.address << " count " << r.count);
        CHECK(planned.count({r.function, r.address, r.count}) == 1);
        ++seen[{r.function, r.address, r.count}];
    }
    CHECK(seen.size() == planned.size());
    for (const auto& [req, n] : seen)
        CHECK(n >= 4);  // 5 polls in 4.5 s

    // request_delay 250 ms: the 3 requests of a poll at least 250 ms apart (polls 2 s apart).
    const auto delayed = of_unit(one, 2);
    REQUIRE(delayed.size() >= 6);
    int spaced = 0;
    for (std::size_t i = 1; i < delayed.size(); ++i) {
        const double gap = delayed[i].ms - delayed[i - 1].ms;
        CHECK(gap >= 245);
        if (gap < 1000) ++spaced;  // within one poll
    }
    CHECK(spaced >= 4);
    MESSAGE("request_delay 250 ms: requests of a poll " << (delayed[1].ms - delayed[0].ms)
                                                        << " ms apart");

    // Devices without close_after_poll keep one connection each (and the harness's probe).
    CHECK(std::count_if(one.begin(), one.end(), [](const request& r) { return r.connect; }) <= 3);

    // close_after_poll: a new connection before every request; connect_delay 300 ms: the
    // request comes at least 300 ms after its connection.
    std::size_t requests = 0;
    for (std::size_t i = 0; i < two.size(); ++i) {
        if (two[i].connect) continue;
        ++requests;
        REQUIRE(i > 0);
        CHECK(two[i - 1].connect);
        CHECK(two[i].ms - two[i - 1].ms >= 295);
        CHECK(two[i].ms - two[i - 1].ms <= 450);
    }
    CHECK(requests >= 4);
}

TEST_CASE("quirk settings: request_delay keeps an RTU line quiet before each request") {
    socat_pair pty;
    const std::string log = pty.dir().file("requests.log");
    rtu_server server(pty, true, {}, {"--log", log});
    auto rtu = [&](const std::string& id, int unit) {
        auto d = modbus::make_rtu_device(
            id, ferry::config::serial_settings{pty.a(), 19200, ferry::config::parity::none, 8, 1},
            unit, {holding(0), holding(100)});  // two requests per poll
        d.poll_interval = 1000ms;
        d.settings.change<modbus::device_settings>([](auto& s) { s.timeout = 300ms; });
        return d;
    };
    auto quiet = rtu("quiet", 1);
    quiet.settings.change<modbus::device_settings>([](auto& s) { s.request_delay = 150ms; });
    {
        poller_rig rig({rtu("plain", 2), quiet});
        std::this_thread::sleep_for(3500ms);
    }
    const auto all = request_log(log);
    // Each request to unit 1 comes at least 150 ms after the line's previous request (unit 2's
    // or its own); unit 2's follow at once.
    std::size_t checked = 0;
    double plain_gap = 1e9;
    for (std::size_t i = 1; i < all.size(); ++i) {
        const double gap = all[i].ms - all[i - 1].ms;
        if (all[i].unit == 1) {
            CHECK(gap >= 145);
            ++checked;
        } else if (all[i - 1].unit == 2) {
            plain_gap = std::min(plain_gap, gap);
        }
    }
    CHECK(checked >= 6);
    CHECK(plain_gap < 100);
    MESSAGE("unit 2 (no request_delay): its second request " << plain_gap << " ms after its first");
}

TEST_CASE("a stop does not wait out a connect_delay, nor send the request it delays") {
    temp_dir dir;
    pymodbus_sim server(0, {}, {}, {"--log", dir.file("requests.log")});
    auto slow = tcp_device("slow", server.port(), 1, {holding(0)});
    slow.settings.change<modbus::device_settings>([](auto& s) { s.connect_delay = 10s; });
    poller_rig rig({slow});
    std::this_thread::sleep_for(500ms);  // connected, waiting out its delay
    const auto before = std::chrono::steady_clock::now();
    rig.poller->stop();
    const auto took = std::chrono::steady_clock::now() - before;
    MESSAGE("stop took " << std::chrono::duration<double, std::milli>(took).count() << " ms");
    CHECK(took < 1s);
    const auto log = request_log(dir.file("requests.log"));
    CHECK(std::count_if(log.begin(), log.end(), [](const request& r) { return r.connect; }) ==
          2);                        // the harness's probe and the poller's connection
    CHECK(of_unit(log, 1).empty());  // no request: it was never sent without its delay
    // Nothing went down: a stop is not the device's silence.
    CHECK(rig.metric("ferry_driver_errors_total", {{"device", "slow"}}) == 0);
    CHECK(rig.events().empty());
}
