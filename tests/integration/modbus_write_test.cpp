// Modbus writes (downlink commands, issue 9) through the poller, in process:
//   1. every function code and encoding, read back by an independent client (pymodbus);
//   2. writes share a TCP connection with continuous polls and never overlap them (an overlap
//      would desynchronise the stream: transaction-id errors and a reconnect);
//   3. the same on an RS-485 line (socat pty, two units on one bus, libmodbus writes);
//   4. what is refused without I/O, what a device refuses, and writes queued at stop.
#include <doctest/doctest.h>

#include <bit>
#include <future>
#include <sstream>
#include <thread>

#include "drivers/modbus/config.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/poller_rig.hpp"

using namespace ferry::test;
namespace modbus = ferry::drivers::modbus;
namespace cfg = ferry::config;

namespace {

cfg::point pt(const std::string& name, modbus::table t, std::uint32_t address, cfg::point_type type,
              modbus::byte_order order = modbus::byte_order::abcd) {
    auto p = modbus::make_point(name, t, address, type, order);
    p.writable = true;
    return p;
}

// Changes a device's Modbus settings.
template <class F>
void tune(cfg::device& d, F&& edit) {
    d.settings.change<modbus::device_settings>(std::forward<F>(edit));
}

cfg::device device(const std::string& id, std::vector<cfg::point> points) {
    auto d = modbus::make_tcp_device(id, "127.0.0.1", 502, std::move(points));
    d.poll_interval = std::chrono::milliseconds(100);
    tune(d, [](auto& s) {
        s.timeout = std::chrono::milliseconds(500);
        s.retries = 0;
    });
    return d;
}

// The poller in process, with helpers for writes.
struct rig : poller_rig {
    using poller_rig::poller_rig;

    // Writes and waits for the result.
    modbus::write_result write(const std::string& dev, const std::string& point,
                               const ferry::value& v) {
        auto done = std::make_shared<std::promise<modbus::write_result>>();
        auto result = done->get_future();
        poller->write(dev, point, v, [done](modbus::write_result r) { done->set_value(r); });
        REQUIRE(result.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
        return result.get();
    }
    // The latest good polled value of "device/tag".
    std::optional<ferry::value> latest(const std::string& address) {
        std::optional<ferry::value> out;
        for (const auto& e : events())
            if (e.quality == ferry::quality::good && points.get(e.point).address == address)
                out = e.value;
        return out;
    }
};

}  // namespace

TEST_CASE("every function code and encoding, read back by pymodbus's client") {
    modbus_sim sim(0, {"holding:0=u16:0"});
    using cfg::point_type;
    using modbus::byte_order;
    using modbus::table;
    auto scaled = pt("scaled", table::holding, 10, point_type::int16);
    scaled.scale = 0.1;
    scaled.offset = -5;
    auto text = pt("label", table::holding, 40, point_type::string, byte_order::badc);
    text.settings.change<modbus::point_settings>([](auto& s) { s.length = 3; });
    auto d = device("d", {pt("pump", table::coil, 5, point_type::boolean), scaled,
                          pt("count", table::holding, 20, point_type::uint32),
                          pt("big", table::holding, 30, point_type::float64, byte_order::dcba),
                          text, pt("sp", table::holding, 50, point_type::float32, byte_order::cdab),
                          pt("flag", table::holding, 60, point_type::boolean)});
    tune(d, [&](auto& s) { s.port = sim.port(); });
    rig r({d});

    CHECK(r.write("d", "pump", true).ok);
    CHECK(r.write("d", "scaled", 12.3).ok);  // raw (12.3 + 5) / 0.1 = 173
    CHECK(r.write("d", "count", std::int64_t{0x12345678}).ok);
    CHECK(r.write("d", "big", -2.5).ok);
    CHECK(r.write("d", "label", std::string("Hey")).ok);
    CHECK(r.write("d", "sp", 42.75).ok);
    CHECK(r.write("d", "flag", true).ok);

    const auto port = sim.port();
    CHECK(pymodbus_read(port, "coil", 5, 1) == std::vector<unsigned>{1});
    CHECK(pymodbus_read(port, "holding", 10, 1) == std::vector<unsigned>{173});
    CHECK(pymodbus_read(port, "holding", 20, 2) == std::vector<unsigned>{0x1234, 0x5678});
    // -2.5 = 0xC004000000000000; DCBA: registers reversed and bytes swapped.
    CHECK(pymodbus_read(port, "holding", 30, 4) ==
          std::vector<unsigned>{0x0000, 0x0000, 0x0000, 0x04C0});
    // "Hey" NUL-padded to 3 registers, bytes swapped (BADC).
    CHECK(pymodbus_read(port, "holding", 40, 3) == std::vector<unsigned>{('e' << 8) | 'H', 'y', 0});
    const auto sp = pymodbus_read(port, "holding", 50, 2);
    CHECK(std::bit_cast<float>(static_cast<std::uint32_t>((sp[1] << 16) | sp[0])) == 42.75f);
    CHECK(pymodbus_read(port, "holding", 60, 1) == std::vector<unsigned>{1});
    auto stats = sim.stats();
    CHECK(stats["fc5"] == 1);
    CHECK(stats["fc6"] == 2);   // scaled int16, bool in a register
    CHECK(stats["fc16"] == 4);  // uint32, float64, string, float32
}

TEST_CASE("writes and continuous polls share one TCP connection without overlapping") {
    // Every answer takes 2 ms; the device is due again at once (1 ms interval), so the channel
    // is busy polling all the time and writes must wait for it to be free.
    modbus_sim sim(0, {"holding:0=u16:0"}, {}, {"--delay", "2"});
    auto d = device("d", {pt("v", modbus::table::holding, 0, cfg::point_type::uint16),
                          pt("w", modbus::table::holding, 1, cfg::point_type::uint16)});
    tune(d, [&](auto& s) { s.port = sim.port(); });
    d.poll_interval = std::chrono::milliseconds(1);
    rig r({d});
    REQUIRE(wait_until([&] { return r.poller->status()[0].polls_ok >= 5; }, 5s));
    const auto polls_before = r.poller->status()[0].polls_ok;
    const auto accepted = sim.stats()["accepted"];

    constexpr int threads = 4, each = 25;
    std::atomic<int> ok{0};
    std::vector<std::thread> writers;
    for (int t = 0; t < threads; ++t) {
        writers.emplace_back([&, t] {
            for (int i = 0; i < each; ++i) {
                if (r.write("d", "v", std::int64_t{t * 1000 + i}).ok) ++ok;
            }
        });
    }
    for (auto& w : writers)
        w.join();
    CHECK(ok == threads * each);
    const auto status = r.poller->status()[0];
    CHECK(status.polls_failed == 0);
    // Writes and due polls alternate: a hundred writes did not starve the polls.
    CHECK(status.polls_ok - polls_before >= 50);
    auto stats = sim.stats();
    CHECK(stats["fc6"] == threads * each);
    CHECK(stats["accepted"] == accepted);  // never reconnected: the stream never went out of step
}

TEST_CASE("writes on an RS-485 line: two units on one bus, polled while written") {
    socat_pair pty;
    rtu_server sim(pty, false, {"holding:0=u16:7"}, {"--unit", "1,2"});
    std::vector<cfg::device> devices;
    for (int unit : {1, 2}) {
        cfg::device d = device(
            "u" + std::to_string(unit),
            {pt("v", modbus::table::holding, 0, cfg::point_type::uint16),
             pt("f", modbus::table::holding, 2, cfg::point_type::float32, modbus::byte_order::cdab),
             pt("c", modbus::table::coil, 3, cfg::point_type::boolean)});
        d.driver = "modbus_rtu";
        tune(d, [&](auto& s) {
            s.host.clear();
            s.serial = cfg::serial_settings{pty.a(), 19200, cfg::parity::none, 8, 1};
            s.unit_id = unit;
        });
        d.poll_interval = std::chrono::milliseconds(20);
        devices.push_back(std::move(d));
    }
    rig r(devices);
    REQUIRE(wait_until([&] { return r.poller->status()[1].polls_ok >= 3; }, 10s));
    for (int i = 1; i <= 20; ++i)
        REQUIRE(r.write("u2", "v", std::int64_t{100 + i}).ok);
    CHECK(r.write("u2", "f", 21.5).ok);
    CHECK(r.write("u1", "c", true).ok);
    // Read back by the polls that follow on the same bus.
    CHECK(wait_until(
        [&] {
            auto v = r.latest("u2/v");
            auto f = r.latest("u2/f");
            auto c = r.latest("u1/c");
            return v && f && c && *ferry::as_double(*v) == 120 && *ferry::as_double(*f) == 21.5 &&
                   std::get<bool>(*c);
        },
        5s));
    auto stats = sim.stats();
    CHECK(stats["fc6"] == 20);
    CHECK(stats["fc16"] == 1);
    CHECK(stats["fc5"] == 1);
    for (const auto& s : r.poller->status())
        CHECK(s.polls_failed == 0);  // no CRC error, no timeout: nothing overlapped on the bus
}

TEST_CASE("refused without I/O, refused by the device, unreachable, and queued at stop") {
    modbus_sim sim(0, {"holding:0=u16:0"}, {}, {"--fail", "7-7"});
    auto d = device("d", {pt("v", modbus::table::holding, 0, cfg::point_type::uint16),
                          pt("bad", modbus::table::holding, 7, cfg::point_type::uint16),
                          pt("c", modbus::table::coil, 3, cfg::point_type::boolean)});
    tune(d, [&](auto& s) { s.port = sim.port(); });
    auto gone = device("gone", {pt("v", modbus::table::holding, 0, cfg::point_type::uint16)});
    tune(gone, [&](auto& s) { s.port = free_port(); });  // nothing listens
    rig r({d, gone});

    auto nope = r.write("x", "v", std::int64_t{1});
    CHECK_FALSE(nope.ok);
    CHECK_FALSE(nope.attempted);
    CHECK(nope.error == "no Modbus device 'x'");
    CHECK(r.write("d", "nope", std::int64_t{1}).error == "device 'd' has no point 'nope'");
    CHECK(r.write("d", "c", std::int64_t{1}).error == "value must be true or false");
    CHECK(r.write("d", "v", 70000.0).error == "70000 does not fit uint16");
    CHECK(r.poller->check_write("d", "v", std::int64_t{5}).empty());
    CHECK(r.poller->check_write("d", "v", std::string("5")) == "value must be a number");

    auto refused = r.write("d", "bad", std::int64_t{1});
    CHECK_FALSE(refused.ok);
    CHECK(refused.attempted);
    CHECK(refused.error == "the device answered with Modbus exception 2 (illegal_address)");

    auto unreachable = r.write("gone", "v", std::int64_t{1});
    CHECK_FALSE(unreachable.ok);
    CHECK_FALSE(unreachable.attempted);
    CHECK(unreachable.error.rfind("connect: cannot reach 127.0.0.1:", 0) == 0);
}

TEST_CASE("writes still queued at stop are answered: nothing was written") {
    // A silent device: each request waits its full timeout.
    modbus_sim sim(0, {"holding:0=u16:0"}, {}, {"--silent"});
    auto d = device("d", {pt("v", modbus::table::holding, 0, cfg::point_type::uint16)});
    tune(d, [&](auto& s) { s.port = sim.port(); });
    tune(d, [](auto& s) { s.timeout = std::chrono::milliseconds(300); });
    rig r({d});
    std::vector<std::future<modbus::write_result>> results;
    for (int i = 0; i < 5; ++i) {
        auto done = std::make_shared<std::promise<modbus::write_result>>();
        results.push_back(done->get_future());
        r.poller->write("d", "v", std::int64_t{i},
                        [done](modbus::write_result w) { done->set_value(w); });
    }
    r.poller->stop();
    int timed_out = 0, not_sent = 0;
    for (auto& f : results) {
        REQUIRE(f.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
        const auto w = f.get();
        CHECK_FALSE(w.ok);
        if (w.attempted) {
            ++timed_out;
            CHECK(w.error ==
                  "timeout: no answer within 300ms; the write may or may not have happened");
        } else {
            ++not_sent;
            CHECK(w.error == "ferry is stopping; nothing was written");
        }
    }
    CHECK(timed_out <= 1);  // at most the one in flight when stop() came
    CHECK(not_sent >= 4);
    // After stop, a write is answered at once.
    auto late = r.write("d", "v", std::int64_t{9});
    CHECK(late.error == "ferry is stopping; nothing was written");
}
