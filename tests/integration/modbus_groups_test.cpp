// Poll groups (issue 17): a meter whose points poll at 1 s and at 10 s, against pymodbus as the
// independent server. Its request log (tests/support/pymodbus_log.hpp) shows how often each
// group was read and when; the poller's events show what the pipeline got.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <map>
#include <string>
#include <thread>
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

TEST_CASE("poll groups: points at 1 s and at 10 s are read at their own rates (issue 17)") {
    temp_dir dir;
    const std::string log = dir.file("requests.log");
    pymodbus_sim server(
        0, {"holding:0=u16:11", "holding:1=u16:12", "holding:2=u16:21", "holding:3=u16:22"}, {},
        {"--log", log});
    using ferry::config::point_type;
    // The device's poll_interval is 10 s; the two power points carry their own 1 s.
    auto d = modbus::make_tcp_device(
        "meter", "127.0.0.1", server.port(),
        {modbus::make_point("power", modbus::table::holding, 0, point_type::uint16,
                            modbus::byte_order::abcd, 0, 1000ms),
         modbus::make_point("energy", modbus::table::holding, 2, point_type::uint16),
         modbus::make_point("reactive", modbus::table::holding, 1, point_type::uint16,
                            modbus::byte_order::abcd, 0, 1000ms),
         modbus::make_point("hours", modbus::table::holding, 3, point_type::uint16)});
    d.poll_interval = 10s;
    const auto run = 60s;
    std::map<std::string, int> events;
    std::map<std::string, ferry::value> last;
    {
        poller_rig rig({d});
        std::this_thread::sleep_for(run + 500ms);
        rig.poller->stop();
        for (const auto& e : rig.events()) {
            const auto& p = rig.points.get(e.point);
            ++events[p.tag];
            CHECK(e.quality == ferry::quality::good);
            last[p.tag] = e.value;
        }
        CHECK(rig.metric("ferry_driver_overruns_total", {{"device", "meter"}}) == 0);
    }
    const auto all = of_unit(request_log(log), 1);
    REQUIRE(!all.empty());
    // Over the minute after the first poll: one request per group and slot. The groups' registers
    // (0-1 and 2-3) are adjacent: read as one group they would be one request of 4.
    const double epoch = all.front().ms;
    std::vector<double> fast, slow;
    for (const auto& r : all) {
        // Slots 0..59; the request of slot 60 may come before epoch + 60 s (the first
        // request, which sets epoch, costs a connect).
        if (r.ms >= epoch + static_cast<double>(std::chrono::milliseconds(run).count()) - 500)
            break;
        INFO("fc " << r.function << " address " << r.address << " count " << r.count);
        CHECK(r.function == 3);
        CHECK(r.count == 2);
        (r.address == 0 ? fast : slow).push_back(r.ms);
        if (r.address != 0) CHECK(r.address == 2);
    }
    MESSAGE("in 60 s: " << fast.size() << " requests of the 1 s group, " << slow.size()
                        << " of the 10 s group");
    CHECK(fast.size() >= 59);
    CHECK(fast.size() <= 61);
    CHECK(slow.size() >= 5);
    CHECK(slow.size() <= 7);
    // Each group on its grid: the n-th poll within 250 ms of slot n (the machine may be busy;
    // the interval is four times that), and the 10 s group read in the same poll as every
    // tenth 1 s one.
    for (std::size_t n = 0; n < fast.size(); ++n)
        CHECK(std::abs(fast[n] - (epoch + 1000.0 * static_cast<double>(n))) < 250);
    for (std::size_t n = 0; n < slow.size(); ++n) {
        CHECK(std::abs(slow[n] - (epoch + 10000.0 * static_cast<double>(n))) < 250);
        CHECK(std::abs(slow[n] - fast[10 * n]) < 100);
    }
    // The pipeline got each point at its group's rate, with the server's values.
    CHECK(events["power"] >= 59);
    CHECK(events["power"] <= 62);
    CHECK(events["reactive"] == events["power"]);
    CHECK(events["energy"] >= 5);
    CHECK(events["energy"] <= 8);
    CHECK(events["hours"] == events["energy"]);
    CHECK(last["power"] == ferry::value{std::uint64_t{11}});
    CHECK(last["reactive"] == ferry::value{std::uint64_t{12}});
    CHECK(last["energy"] == ferry::value{std::uint64_t{21}});
    CHECK(last["hours"] == ferry::value{std::uint64_t{22}});
}
