// The test harness itself, against the real things: child processes, mosquitto with the MQTT
// recorder (including a broker restart), and both Modbus simulators read back by a plain
// libmodbus client. The two simulators encode independently (C++ and Python), so agreeing
// with each other and with hand-computed registers checks the --set encodings.
#include <doctest/doctest.h>
#include <modbus/modbus.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>

#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;

namespace {

// A connected libmodbus TCP client, freed on destruction.
struct client {
    modbus_t* ctx;
    explicit client(std::uint16_t port, int unit = 1) : ctx(modbus_new_tcp("127.0.0.1", port)) {
        REQUIRE(ctx != nullptr);
        modbus_set_slave(ctx, unit);
        modbus_set_response_timeout(ctx, 2, 0);
        REQUIRE(modbus_connect(ctx) == 0);
    }
    ~client() {
        modbus_close(ctx);
        modbus_free(ctx);
    }
    std::vector<std::uint16_t> holding(int addr, int n) {
        std::vector<std::uint16_t> r(static_cast<std::size_t>(n));
        REQUIRE(modbus_read_registers(ctx, addr, n, r.data()) == n);
        return r;
    }
    std::vector<std::uint16_t> input(int addr, int n) {
        std::vector<std::uint16_t> r(static_cast<std::size_t>(n));
        REQUIRE(modbus_read_input_registers(ctx, addr, n, r.data()) == n);
        return r;
    }
    std::vector<std::uint8_t> coils(int addr, int n) {
        std::vector<std::uint8_t> r(static_cast<std::size_t>(n));
        REQUIRE(modbus_read_bits(ctx, addr, n, r.data()) == n);
        return r;
    }
    std::vector<std::uint8_t> discrete(int addr, int n) {
        std::vector<std::uint8_t> r(static_cast<std::size_t>(n));
        REQUIRE(modbus_read_input_bits(ctx, addr, n, r.data()) == n);
        return r;
    }
};

using regs = std::vector<std::uint16_t>;

// --set specs and the registers they must produce, computed by hand.
struct golden {
    const char* spec;
    bool input;
    int address;
    regs expected;
};
const std::vector<golden> goldens = {
    {"holding:0=u16:7", false, 0, {0x0007}},
    {"holding:1=i16:-2", false, 1, {0xfffe}},
    {"holding:2=u16:badc:0x1234", false, 2, {0x3412}},
    // 3.14159f = 0x40490FD0
    {"holding:10=f32:abcd:3.14159", false, 10, {0x4049, 0x0fd0}},
    {"holding:12=f32:cdab:3.14159", false, 12, {0x0fd0, 0x4049}},
    {"holding:14=f32:badc:3.14159", false, 14, {0x4940, 0xd00f}},
    {"holding:16=f32:dcba:3.14159", false, 16, {0xd00f, 0x4940}},
    {"holding:20=u32:cdab:305419896", false, 20, {0x5678, 0x1234}},  // 0x12345678
    {"holding:22=i32:-1000000", false, 22, {0xfff0, 0xbdc0}},
    // 0x0102030405060708
    {"holding:30=u64:abcd:72623859790382856", false, 30, {0x0102, 0x0304, 0x0506, 0x0708}},
    {"holding:34=u64:cdab:72623859790382856", false, 34, {0x0708, 0x0506, 0x0304, 0x0102}},
    {"holding:38=u64:badc:72623859790382856", false, 38, {0x0201, 0x0403, 0x0605, 0x0807}},
    {"holding:42=u64:dcba:72623859790382856", false, 42, {0x0807, 0x0605, 0x0403, 0x0201}},
    {"holding:46=i64:-2", false, 46, {0xffff, 0xffff, 0xffff, 0xfffe}},
    // 1.5 = 0x3FF8000000000000
    {"holding:50=f64:cdab:1.5", false, 50, {0x0000, 0x0000, 0x0000, 0x3ff8}},
    {"holding:54=f64:1.5", false, 54, {0x3ff8, 0x0000, 0x0000, 0x0000}},
    {"holding:60=str:PUMP-1", false, 60, {0x5055, 0x4d50, 0x2d31}},
    {"holding:64=str:badc:ABC", false, 64, {0x4241, 0x0043}},
    {"holding:70=str:a:b", false, 70, {0x613a, 0x6200}},  // a value may contain ':'
    {"input:0=u16:65535", true, 0, {0xffff}},
    {"input:5=i64:dcba:-2", true, 5, {0xfeff, 0xffff, 0xffff, 0xffff}},
    {"input:65535=u16:9", true, 65535, {0x0009}},  // the last address
};

std::vector<std::string> golden_specs() {
    std::vector<std::string> out;
    for (const auto& g : goldens)
        out.emplace_back(g.spec);
    out.emplace_back("coil:3=bool:1");
    out.emplace_back("coil:5=bool:true");
    out.emplace_back("discrete:1=bool:1");
    return out;
}

void check_goldens(std::uint16_t port) {
    client c(port);
    for (const auto& g : goldens) {
        CAPTURE(g.spec);
        const auto got = g.input ? c.input(g.address, static_cast<int>(g.expected.size()))
                                 : c.holding(g.address, static_cast<int>(g.expected.size()));
        CHECK(got == g.expected);
    }
    CHECK(c.holding(100, 3) == regs{0, 0, 0});  // unset registers are zero
    CHECK(c.coils(0, 8) == std::vector<std::uint8_t>{0, 0, 0, 1, 0, 1, 0, 0});
    CHECK(c.discrete(0, 3) == std::vector<std::uint8_t>{0, 1, 0});
}

}  // namespace

TEST_CASE("process: exit code, log file, environment, stop") {
    temp_dir dir;
    {
        process p({"/bin/sh", "-c", "echo out-$FOO; echo err >&2; exit 3"}, dir.file("log"),
                  {{"FOO", "bar"}});
        CHECK(p.wait(5000ms) == 3);
        CHECK_FALSE(p.running());
        CHECK(read_file(dir.file("log")) == "out-bar\nerr\n");
        CHECK(p.stop() == 3);  // already exited: reports how
    }
    {
        process p({"sleep", "100"});
        CHECK(p.running());
        CHECK_FALSE(p.wait(100ms).has_value());
        CHECK(rss_kib(p.pid()) > 0);
        CHECK(thread_count(p.pid()) == 1);
        CHECK(p.stop() == 128 + SIGTERM);
        CHECK_FALSE(p.running());
    }
    {
        // Ignores SIGTERM: stop() escalates to SIGKILL after the grace period.
        process p({"/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"},
                  dir.file("log2"));
        REQUIRE(wait_until(
            [&] {
                try {
                    return read_file(dir.file("log2")) == "ready\n";
                } catch (const std::exception&) {
                    return false;  // not created yet
                }
            },
            5000ms));
        CHECK(p.stop(SIGTERM, 300ms) == 128 + SIGKILL);
    }
    {
        // stop() right after start: the child must die of SIGTERM, not run our handlers.
        for (int i = 0; i < 20; ++i) {
            process p({"sleep", "100"});
            CHECK(p.stop() == 128 + SIGTERM);
        }
    }
    {
        process p({"/nonexistent/binary"});
        CHECK(p.wait(5000ms) == 127);
    }
    CHECK(thread_count(::getpid()) >= 1);
    CHECK(rss_kib(::getpid()) > 0);
}

TEST_CASE("free_port and wait_for_port") {
    const auto port = free_port();
    CHECK(port > 0);
    CHECK_FALSE(wait_for_port(port, 100ms));
}

TEST_CASE("mosquitto and mqtt_recorder, across a broker restart") {
    mosquitto broker;
    CHECK(broker.running());
    CHECK(broker.uri() == "tcp://127.0.0.1:" + std::to_string(broker.port()));

    auto pub = [&](const std::string& topic, const std::string& payload, bool retain = false) {
        std::vector<std::string> argv{"mosquitto_pub",
                                      "-h",
                                      "127.0.0.1",
                                      "-p",
                                      std::to_string(broker.port()),
                                      "-q",
                                      "1",
                                      "-t",
                                      topic,
                                      "-m",
                                      payload};
        if (retain) argv.emplace_back("-r");
        process p(argv);
        REQUIRE(p.wait(5000ms) == 0);
    };

    pub("t/status", "online", true);
    mqtt_recorder rec(broker.uri(), {"t/#"});
    CHECK(rec.connected());
    REQUIRE(rec.wait_for_count(1, 5000ms));
    pub("t/a", "1");
    pub("t/b", "2");
    pub("t/a", "3");
    REQUIRE(rec.wait_for_count("t/a", 2, 5000ms));
    REQUIRE(rec.wait_for_count(4, 5000ms));
    auto msgs = rec.messages();
    REQUIRE(msgs.size() == 4);
    CHECK(msgs[0].topic == "t/status");
    CHECK(msgs[0].payload == "online");
    CHECK(msgs[0].retained);
    CHECK(msgs[1].topic == "t/a");
    CHECK(msgs[1].payload == "1");
    CHECK_FALSE(msgs[1].retained);
    CHECK(msgs[1].qos == 1);
    CHECK(msgs[2].payload == "2");
    CHECK(msgs[3].payload == "3");
    CHECK(rec.messages_on("t/a").size() == 2);

    // The broker restarts (and forgets everything): the recorder reconnects and subscribes again.
    broker.stop();
    CHECK_FALSE(broker.running());
    REQUIRE(wait_until([&] { return !rec.connected(); }, 10000ms));
    broker.start();
    REQUIRE(wait_until([&] { return rec.connected(); }, 10000ms));
    rec.clear();
    // The re-subscription follows the connect shortly; publish until it is in place.
    REQUIRE(wait_until(
        [&] {
            pub("t/after", "x");
            return rec.wait_for_count(1, 200ms);
        },
        10000ms));
    CHECK(rec.messages()[0].topic == "t/after");

    broker.kill9();
    CHECK_FALSE(broker.running());
}

TEST_CASE("ferry_modbus_sim serves the hand-computed registers") {
    modbus_sim sim(0, golden_specs());
    check_goldens(sim.port());
    CHECK(sim.requests() == goldens.size() + 3);
    const auto st = sim.stats();
    CHECK(st.at("fc3") >= 1);
    CHECK(st.at("fc1") == 1);
    CHECK(st.at("accepted") >= 1);  // wait_for_port's probe connects too

    // Writes are stored and read back.
    client c(sim.port());
    REQUIRE(modbus_write_register(c.ctx, 200, 0xbeef) == 1);
    CHECK(c.holding(200, 1) == regs{0xbeef});
}

TEST_CASE("pymodbus_server serves the same registers (address N is protocol address N)") {
    pymodbus_sim sim(0, golden_specs());
    check_goldens(sim.port());
}

TEST_CASE("both simulators agree on every type and order") {
    std::vector<std::string> specs;
    const char* orders[] = {"abcd", "cdab", "badc", "dcba"};
    const char* values[][2] = {{"u16", "4660"},
                               {"i16", "-12345"},
                               {"u32", "4000000000"},
                               {"i32", "-123456789"},
                               {"u64", "18446744073709551615"},
                               {"i64", "-1234567890123456789"},
                               {"f32", "-21.25"},
                               {"f64", "2.718281828459045"},
                               {"str", "Ferry gateway!"}};
    int addr = 0;
    for (const auto& [type, value] : values) {
        for (const char* order : orders) {
            specs.push_back("holding:" + std::to_string(addr) + "=" + type + ":" + order + ":" +
                            value);
            addr += 8;
        }
    }
    modbus_sim ours(0, specs);
    pymodbus_sim theirs(0, specs);
    client a(ours.port());
    client b(theirs.port());
    for (int at = 0; at < addr; at += 100) {
        const int n = std::min(100, addr - at);
        CAPTURE(at);
        CHECK(a.holding(at, n) == b.holding(at, n));
    }
}

TEST_CASE("ferry_modbus_sim --fail, --unit, --silent") {
    SUBCASE("--fail answers ILLEGAL_DATA_ADDRESS for requests touching the range") {
        modbus_sim sim(0, {"holding:5=u16:1"}, {}, {"--fail", "10-19"});
        client c(sim.port());
        CHECK(c.holding(0, 10).size() == 10);
        std::uint16_t r[4];
        CHECK(modbus_read_registers(c.ctx, 8, 4, r) == -1);
        CHECK(errno == EMBXILADD);
        CHECK(modbus_read_registers(c.ctx, 19, 1, r) == -1);
        CHECK(modbus_write_register(c.ctx, 15, 1) == -1);
        CHECK(c.holding(20, 1) == regs{0});
    }
    SUBCASE("--unit answers other unit ids with exception 0x0B") {
        modbus_sim sim(0, {"holding:0=u16:42"}, {}, {"--unit", "3"});
        client good(sim.port(), 3);
        CHECK(good.holding(0, 1) == regs{42});
        client bad(sim.port(), 4);
        std::uint16_t r[1];
        CHECK(modbus_read_registers(bad.ctx, 0, 1, r) == -1);
        CHECK(errno == EMBXGTAR);
    }
    SUBCASE("--silent never answers") {
        modbus_sim sim(0, {}, {}, {"--silent"});
        client c(sim.port());
        modbus_set_response_timeout(c.ctx, 0, 200000);
        std::uint16_t r[1];
        CHECK(modbus_read_registers(c.ctx, 0, 1, r) == -1);
        CHECK(errno == ETIMEDOUT);
        CHECK(wait_until([&] { return sim.requests() == 1; }, 2000ms));
    }
}

TEST_CASE("ferry_modbus_sim --wave changes over time and stops cleanly") {
    temp_dir dir;
    const auto port = free_port();
    process p({FERRY_MODBUS_SIM, "--port", std::to_string(port), "--wave"}, dir.file("log"));
    REQUIRE(wait_for_port(port, 5000ms));
    client c(port);
    const auto first = c.holding(0, 5);
    REQUIRE(wait_until([&] { return c.holding(0, 1)[0] != first[0]; }, 3000ms));
    float temp = modbus_get_float_abcd(c.holding(2, 2).data());
    CHECK(temp > 18.9f);
    CHECK(temp < 24.1f);
    CHECK(p.stop() == 0);  // SIGTERM: clean exit
}
