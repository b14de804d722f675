// Modbus driver benchmark (issue 4, acceptance 6): registers polled per second and CPU seconds
// per million registers, Ferry's poller against a bare libmodbus read loop, on the same
// simulator in the same run. Not a test.
//
//   bench_modbus [SECONDS_PER_PHASE=3] [CONNECTIONS=4] [DEVICES=64]
//
// One ferry_modbus_sim (single-threaded, no --stats: no file I/O per request) holds 125
// registers. Phases, one after the other so that the process CPU time is the phase's alone:
//   bare    CONNECTIONS threads, each its own libmodbus connection, reading 125 registers in
//           a tight loop (modbus_read_registers): what a hand-written client gets.
//   ferry   the driver's poller (4 workers) with DEVICES modbus_tcp devices of 125 uint16
//           points each, polled every 1 ms (more than the simulator can serve, so the poller
//           runs flat out and counts overruns): reads, decodes and publishes 125 named,
//           timestamped events per request on a bus (one subscriber that drops: no consumer
//           cost is measured).
//   bare    again, to show the simulator did not drift.
// CPU is the client's (getrusage of this process), never the simulator's.
#include <modbus.h>
#include <prometheus/registry.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "core/bus.hpp"
#include "core/topic.hpp"
#include "drivers/modbus/config.hpp"
#include "drivers/modbus/poller.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

constexpr int k_registers = 125;

double cpu_seconds() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

struct result {
    double registers_per_s = 0;
    double cpu_s_per_million = 0;
};

void print(const char* name, const result& r) {
    std::printf("%-6s %12.0f registers/s  %8.3f CPU s per million registers\n", name,
                r.registers_per_s, r.cpu_s_per_million);
    std::fflush(stdout);
}

result bare(std::uint16_t port, int connections, double seconds) {
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> reads{0};
    std::vector<std::thread> threads;
    const double cpu0 = cpu_seconds();
    const auto t0 = steady::now();
    for (int c = 0; c < connections; ++c) {
        threads.emplace_back([&] {
            modbus_t* ctx = modbus_new_tcp("127.0.0.1", port);
            if (!ctx || modbus_connect(ctx) == -1) {
                std::fprintf(stderr, "bare: connect failed\n");
                return;
            }
            std::uint16_t regs[k_registers];
            std::uint64_t n = 0;
            while (!stop.load(std::memory_order_relaxed)) {
                if (modbus_read_registers(ctx, 0, k_registers, regs) == k_registers) ++n;
            }
            reads += n;
            modbus_close(ctx);
            modbus_free(ctx);
        });
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop = true;
    for (auto& t : threads)
        t.join();
    const double wall = std::chrono::duration<double>(steady::now() - t0).count();
    const double regs = static_cast<double>(reads.load()) * k_registers;
    return {regs / wall, (cpu_seconds() - cpu0) / regs * 1e6};
}

result ferry_poller(std::uint16_t port, int devices, double seconds) {
    std::vector<ferry::config::device> devs;
    ferry::point_table points;
    for (int d = 0; d < devices; ++d) {
        namespace mb = ferry::drivers::modbus;
        auto dev = mb::make_tcp_device("d" + std::to_string(d), "127.0.0.1", port, {});
        dev.poll_interval = 1ms;
        dev.settings.change<mb::device_settings>([](auto& s) { s.timeout = 1000ms; });
        for (int r = 0; r < k_registers; ++r) {
            dev.points.push_back(mb::make_point("r" + std::to_string(r), mb::table::holding,
                                                static_cast<std::uint32_t>(r),
                                                ferry::config::point_type::uint16));
            points.intern(dev.id, dev.points.back().name, "");
        }
        devs.push_back(std::move(dev));
    }
    ferry::bus bus(points);
    auto sub = bus.subscribe("drop", {*ferry::topic_pattern::compile("#")}, 1,
                             ferry::overflow_policy::drop_newest);
    ferry::seq_source seq(0, nullptr);
    prometheus::Registry registry;
    ferry::drivers::modbus::poller poller(
        std::move(devs), ferry::drivers::modbus::driver_context{bus, seq, points, registry});
    const double cpu0 = cpu_seconds();
    const auto t0 = steady::now();
    poller.start();
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    poller.stop();
    const double wall = std::chrono::duration<double>(steady::now() - t0).count();
    double good = 0;
    double overruns = 0;
    for (const auto& s : poller.status()) {
        good += static_cast<double>(s.polls_ok);
        overruns += static_cast<double>(s.overruns);
    }
    std::printf("ferry: %.0f polls, %.0f slots skipped (overruns)\n", good, overruns);
    const double regs = good * k_registers;
    return {regs / wall, (cpu_seconds() - cpu0) / regs * 1e6};
}

}  // namespace

int main(int argc, char** argv) {
    const double seconds = argc > 1 ? std::stod(argv[1]) : 3.0;
    const int connections = argc > 2 ? std::stoi(argv[2]) : 4;
    const int devices = argc > 3 ? std::stoi(argv[3]) : 64;

    ferry::test::temp_dir dir;
    const auto port = ferry::test::free_port();
    std::vector<std::string> argv_sim{FERRY_MODBUS_SIM, "--port", std::to_string(port)};
    for (int r = 0; r < k_registers; ++r) {
        argv_sim.push_back("--set");
        argv_sim.push_back("holding:" + std::to_string(r) + "=u16:" + std::to_string(r));
    }
    ferry::test::process sim(argv_sim, dir.file("sim.log"));
    if (!ferry::test::wait_for_port(port, 5000ms)) {
        std::fprintf(stderr, "simulator did not start\n");
        return 1;
    }
    std::printf(
        "ferry_modbus_sim (single-threaded), 125 registers per request, %.0f s per "
        "phase; bare: %d libmodbus connections; ferry: %d devices, 4 workers\n",
        seconds, connections, devices);
    const auto b1 = bare(port, connections, seconds);
    print("bare", b1);
    const auto f = ferry_poller(port, devices, seconds);
    print("ferry", f);
    const auto b2 = bare(port, connections, seconds);
    print("bare", b2);
    const double rate = (b1.registers_per_s + b2.registers_per_s) / 2;
    const double cpu = (b1.cpu_s_per_million + b2.cpu_s_per_million) / 2;
    std::printf("ratio ferry/bare: rate %.2f, CPU per register %.2f\n", f.registers_per_s / rate,
                f.cpu_s_per_million / cpu);
    return 0;
}
