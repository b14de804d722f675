// Field-grade Modbus (issue 17), against pymodbus as the independent server, whose request log
// (tests/tools/pymodbus_server.py --log: time, unit, function, address, count) is what the
// assertions read:
//   1. failing units backed off: 30 slaves on one RS-485 line at 9600 baud over a socat pty,
//      3 of them silent (one of which starts answering mid-run): the 27 live ones keep their
//      schedule, each silent one is tried once per retry_every, and the one that comes back
//      is polled on its schedule again at once;
//   2. quirk settings, over TCP: max_registers and max_coils cap each request,
//      request_delay spaces requests, connect_delay waits after connecting,
//      close_after_poll opens a new connection for every poll.
// The poller runs in process (tests/support/poller_rig.hpp) so that its events and counters
// are read directly.
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

using namespace ferry::test;
using namespace std::chrono_literals;
namespace modbus = ferry::drivers::modbus;

namespace {

// One line of pymodbus_server.py's request log.
struct request {
    double ms = 0;  // Unix time
    int unit = 0;
    bool answered = false;
    int function = 0;
    int address = 0;
    int count = 0;
    bool connect = false;  // a TCP connection accepted, no request
};

std::vector<request> request_log(const std::string& path) {
    std::vector<request> out;
    std::istringstream in(read_file_if_exists(path));
    for (std::string line; std::getline(in, line);) {
        std::istringstream f(line);
        request r;
        std::string unit, what;
        f >> r.ms >> unit >> what;
        if (unit == "connect") {
            r.connect = true;
            out.push_back(r);
            continue;
        }
        r.unit = std::stoi(unit);
        r.answered = what != "silent";
        if (r.answered) {
            r.function = std::stoi(what);
            f >> r.address >> r.count;
        }
        out.push_back(r);
    }
    return out;
}

std::vector<request> of_unit(const std::vector<request>& all, int unit) {
    std::vector<request> out;
    std::copy_if(all.begin(), all.end(), std::back_inserter(out),
                 [&](const request& r) { return !r.connect && r.unit == unit; });
    return out;
}

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

TEST_CASE("failing units backed off: 27 live slaves keep their schedule among 3 silent ones") {
    // Shortened from the 2 minutes and 30 s: a 40 s run with retry_every 5 s still
    // holds 6-8 tries of each silent unit, and a comeback at 20 s.
    const auto interval = 2000ms;
    const auto timeout = 200ms;
    const auto retry_every = 5000ms;
    const int units = 30;
    // Silent units among the live ones, so that the live units after them in a round wait
    // for their timeouts. 25 answers again from 20 s after the server starts.
    const std::vector<int> silent{5, 15, 25};
    const int comeback_unit = 25;
    socat_pair pty;
    const std::string log = pty.dir().file("requests.log");
    rtu_server server(pty, true, {"holding:0=u16:7", "holding:1=u16:8"},
                      {"--baud", "9600", "--units", "1-4,6-14,16-24,26-30", "--answer-after",
                       std::to_string(comeback_unit) + "=20", "--log", log});
    std::vector<ferry::config::device> devices;
    for (int u = 1; u <= units; ++u) {
        auto d = modbus::make_rtu_device(
            "m" + std::to_string(u),
            ferry::config::serial_settings{pty.a(), 9600, ferry::config::parity::none, 8, 1}, u,
            {modbus::make_point("a", modbus::table::holding, 0, ferry::config::point_type::uint16),
             modbus::make_point("b", modbus::table::holding, 1,
                                ferry::config::point_type::uint16)});
        d.poll_interval = interval;
        d.settings.change<modbus::device_settings>([&](auto& s) {
            s.timeout = timeout;
            s.retries = 2;
            s.down_after = 3;
            s.retry_every = retry_every;
        });
        devices.push_back(std::move(d));
    }
    poller_rig rig(std::move(devices));
    std::this_thread::sleep_for(40s);
    const double up_comeback = rig.metric("ferry_device_up", {{"device", "m25"}});
    const double up_dead = rig.metric("ferry_device_up", {{"device", "m5"}}) +
                           rig.metric("ferry_device_up", {{"device", "m15"}});
    double overruns_live = 0;
    for (int u = 1; u <= units; ++u) {
        if (std::find(silent.begin(), silent.end(), u) == silent.end())
            overruns_live +=
                rig.metric("ferry_driver_overruns_total", {{"device", "m" + std::to_string(u)}});
    }
    rig.poller->stop();
    const auto all = request_log(log);
    REQUIRE(!all.empty());

    // The grid: every device's first poll is due at the start; unit 1 goes first. Its first
    // request, as logged, may come a little after the grid's start (the server's first request
    // costs more), so a poll may look up to k_early ms early.
    const double k_early = 50;
    const auto first = of_unit(all, 1);
    REQUIRE(!first.empty());
    const double epoch = first.front().ms;
    const double iv = static_cast<double>(interval.count());
    const double to = static_cast<double>(timeout.count());
    const double end = all.back().ms;

    // Live units: the n-th poll within one interval plus one timeout of slot n, no slot
    // skipped, every request answered. (The pty does not pace bytes at 9600 baud: a round of
    // the line is mostly the silent units' timeouts.)
    double worst_late = 0;
    for (int u = 1; u <= units; ++u) {
        if (std::find(silent.begin(), silent.end(), u) != silent.end()) continue;
        INFO("unit " << u);
        const auto reqs = of_unit(all, u);
        const auto slots = static_cast<std::size_t>((end - epoch) / iv);
        CHECK(reqs.size() >= slots);
        CHECK(reqs.size() <= slots + 2);
        for (std::size_t n = 0; n < reqs.size(); ++n) {
            CHECK(reqs[n].answered);
            const double late = reqs[n].ms - (epoch + static_cast<double>(n) * iv);
            worst_late = std::max(worst_late, late);
            CHECK(late >= -k_early);
            CHECK(late <= iv + to);
        }
    }
    MESSAGE("live units: latest poll " << worst_late << " ms after its slot (bound " << iv + to
                                       << " ms)");
    CHECK(overruns_live == 0);  // no slot skipped

    // Silent units: down_after tries on the grid, then one per retry_every (±20 %, and at most
    // a round of the line later: the try waits for the channel).
    for (int u : {5, 15}) {
        INFO("unit " << u);
        const auto reqs = of_unit(all, u);
        REQUIRE(reqs.size() >= 4);
        for (const auto& r : reqs)
            CHECK(!r.answered);
        for (std::size_t n = 1; n < 3; ++n)
            CHECK(reqs[n].ms - reqs[n - 1].ms == doctest::Approx(iv).epsilon(0.5));
        const double re = static_cast<double>(retry_every.count());
        for (std::size_t n = 3; n < reqs.size(); ++n) {
            const double gap = reqs[n].ms - reqs[n - 1].ms;
            CHECK(gap >= 0.8 * re);
            CHECK(gap <= 1.2 * re + iv);
        }
        // Over 40 s: 3 on the grid and at most one per 0.8 × retry_every after that.
        CHECK(reqs.size() <= 3 + static_cast<std::size_t>((end - epoch) / (0.8 * re)));
    }
    CHECK(up_dead == 0);

    // The unit that comes back: tried at most retry_every (+20 %) after it answers again, then
    // on its grid at once: the next poll within one interval, and each one after within one
    // interval plus one timeout of its slot.
    const auto back = of_unit(all, comeback_unit);
    const auto answered =
        std::find_if(back.begin(), back.end(), [](const request& r) { return r.answered; });
    REQUIRE(answered != back.end());
    REQUIRE(answered != back.begin());
    const double silent_last = std::prev(answered)->ms;
    CHECK(answered->ms - silent_last <= 1.2 * static_cast<double>(retry_every.count()) + iv);
    REQUIRE(std::distance(answered, back.end()) >= 3);
    CHECK(std::next(answered)->ms - answered->ms <= iv + to);
    const double slot0 = std::ceil((answered->ms - epoch) / iv) * iv + epoch;
    for (auto it = std::next(answered); it != back.end(); ++it) {
        CHECK(it->answered);
        const double slot = slot0 + static_cast<double>(std::distance(answered, it) - 1) * iv;
        CHECK(it->ms - slot >= -k_early);
        CHECK(it->ms - slot <= iv + to);
    }
    CHECK(up_comeback == 1);

    // What the pipeline saw: live values good, silent ones bad, the comeback good at the end.
    std::map<std::string, ferry::event> last;
    for (const auto& e : rig.events())
        last[rig.points.get(e.point).device + "/" + rig.points.get(e.point).tag] = e;
    CHECK(last.at("m1/a").quality == ferry::quality::good);
    CHECK(last.at("m1/a").value == ferry::value{std::uint64_t{7}});
    CHECK(last.at("m5/a").quality == ferry::quality::bad);
    CHECK(last.at("m15/a").quality == ferry::quality::bad);
    CHECK(last.at("m25/b").quality == ferry::quality::good);
    CHECK(last.at("m25/b").value == ferry::value{std::uint64_t{8}});
}

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
