// End to end: Modbus devices → ferry (bus, rules, JSON, spool, MQTT QoS 1) → mosquitto → a
// subscriber that keeps the seq of every event (bench/plant.hpp). The figures of merit of
// ARCHITECTURE.md and issue 16, over a measured window after a warm-up:
//   - offered values/s (devices × registers / poll interval) and delivered values/s (arrived
//     in the window), and delivered as % of offered;
//   - completeness: after the window ferry is stopped (it flushes its batches) and every seq
//     between the first and the last that arrived is looked for: gaps and duplicates;
//   - ferry's CPU (utime + stime of /proc/PID/stat over the window) per delivered value;
//   - memory: VmHWM of /proc/PID/status at the end of the window (start-up included; or the
//     largest sample, the kernel updates VmHWM lazily) and the largest VmRSS sampled once a
//     second in the window (steady);
//   - bytes per value on the wire (MQTT payload bytes / values received in the window) and on
//     disk (write_bytes of /proc/PID/io over the window / values delivered in it);
//   - context switches/s of all ferry threads (voluntary + involuntary, /proc/PID/task/*/status):
//     how often it wakes up.
//
// usage: bench_e2e [--rtu BAUD] [devices] [registers=100] [poll_ms] [seconds=20] [fsync=batch]
//                  [warmup_s=2]
//   Modbus TCP (default): devices=50, poll_ms=100; every device is its own TCP connection to
//   one simulator.
//   --rtu BAUD: the devices are units 1..N of one Modbus RTU line at BAUD (8N1) over a socat pty
//   pair, served by the simulator with --pace (it answers only after the time the request and
//   answer take on a real line, since a pty has no baud rate); poll_ms=250; devices=0 (the
//   default) takes as many as keep the line at most 80 % busy, printed with the line's capacity.
// The three loads (./scripts/bench e2e runs them): bench_e2e 50 100 100 20 batch;
// bench_e2e 500 100 1000 20 batch; bench_e2e --rtu 115200.
// Not a test: ./scripts/bench runs it and prints the numbers.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "bench/plant.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;

namespace {

// Milliseconds one read of `registers` holding registers keeps an 8N1 line at `baud` busy:
// the 8-byte request and the 5 + 2R-byte answer at 10 bits a byte, and the 3.5-character
// silence after each frame (1.75 ms above 19200 baud). The simulator's --pace waits as long.
double rtu_read_ms(int baud, int registers) {
    const double char_ms = 10.0 * 1000.0 / baud;
    const double silence_ms = baud > 19200 ? 1.75 : 3.5 * char_ms;
    return (8 + 5 + 2.0 * registers) * char_ms + 2 * silence_ms;
}

double mib(std::uint64_t kib) {
    return static_cast<double>(kib) / 1024.0;
}

}  // namespace

int main(int argc, char** argv) {
    int first = 1;
    int baud = 0;  // > 0: one RTU line
    if (argc > 2 && std::string(argv[1]) == "--rtu") {
        baud = std::atoi(argv[2]);
        first = 3;
    }
    auto arg = [&](int i, const char* fallback) {
        return std::string(argc > first + i ? argv[first + i] : fallback);
    };
    int devices = std::atoi(arg(0, baud > 0 ? "0" : "50").c_str());
    const int registers = std::atoi(arg(1, "100").c_str());
    const int poll_ms = std::atoi(arg(2, baud > 0 ? "250" : "100").c_str());
    const int seconds = std::atoi(arg(3, "20").c_str());
    const std::string fsync = arg(4, "batch");
    const int warmup_s = std::atoi(arg(5, "2").c_str());
    const double read_ms = baud > 0 ? rtu_read_ms(baud, registers) : 0;
    if (baud > 0 && devices <= 0)
        devices = std::clamp(static_cast<int>(0.8 * poll_ms / read_ms), 1, 247);

    const auto load0 = ferry::bench::load_average();
    temp_dir dir;
    mosquitto broker;
    ferry::bench::modbus_plant plant(registers, dir.file("sim.log"), baud);
    if (!plant.sim) return 3;

    std::string cfg = "gateway: { id: bench, data_dir: " + dir.path() + " }\n" +
                      plant.devices_yaml(devices, registers, poll_ms);
    cfg += ferry::bench::pipeline_yaml(broker.uri(), 64, fsync);
    write_file(dir.file("ferry.yaml"), cfg);

    ferry::bench::seq_counter rec(broker.uri(), "bench-e2e-sub");
    const auto started = std::chrono::steady_clock::now();
    process ferry({FERRY_BINARY, "run", "-c", dir.file("ferry.yaml")}, dir.file("ferry.log"));
    // Warm-up: let connections open and the first batches flow.
    if (!wait_until([&] { return rec.values() > 0; }, 60s)) {
        std::fprintf(stderr, "nothing arrived; see %s\n", dir.file("ferry.log").c_str());
        return 3;
    }
    const double first_value_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::this_thread::sleep_for(std::chrono::seconds(warmup_s));

    const pid_t pid = ferry.pid();
    const double cpu0 = cpu_seconds(pid);
    const auto io0 = ferry::bench::proc_io(pid);
    const auto switches0 = ferry::bench::context_switches(pid);
    const auto [values0, bytes0] = rec.values_and_bytes();
    const auto t0 = std::chrono::steady_clock::now();
    std::uint64_t rss_max = 0;
    for (int s = 0; s < seconds; ++s) {
        std::this_thread::sleep_for(1s);
        rss_max = std::max(rss_max, rss_kib(pid));
    }
    const double cpu1 = cpu_seconds(pid);
    const auto io1 = ferry::bench::proc_io(pid);
    const auto switches1 = ferry::bench::context_switches(pid);
    const auto [values1, bytes1] = rec.values_and_bytes();
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // The kernel folds its per-thread RSS counts into VmHWM lazily: a sample may exceed it.
    const auto hwm = std::max(status_field(pid, "VmHWM").value_or(0), rss_max);

    // Every value delivered? Stop ferry (it flushes what it batched), let the last messages
    // land, then look for gaps in seq over everything that arrived.
    ferry.stop();
    std::this_thread::sleep_for(2s);
    auto seqs = rec.seqs();
    std::sort(seqs.begin(), seqs.end());
    const std::size_t arrived = seqs.size();
    seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());
    const std::uint64_t span = seqs.empty() ? 0 : seqs.back() - seqs.front() + 1;

    const double delivered = static_cast<double>(values1 - values0);
    const double offered_rate = devices * registers * (1000.0 / poll_ms);
    const double cpu = cpu1 - cpu0;
    std::printf("e2e: %d Modbus %s devices x %d registers every %d ms, fsync %s, %.1f s measured\n",
                devices, baud > 0 ? "RTU" : "TCP", registers, poll_ms, fsync.c_str(), wall);
    std::printf("  machine           load average %s (before) / %s (after), %u cores\n",
                load0.c_str(), ferry::bench::load_average().c_str(),
                std::thread::hardware_concurrency());
    if (baud > 0) {
        const double reads = devices * 1000.0 / poll_ms;
        std::printf(
            "  line              %d baud 8N1, paced simulator on a socat pty: a read of %d "
            "registers takes %.1f ms, so the line carries %.1f reads/s = %.0f values/s; %d "
            "units offer %.1f reads/s = %.0f %% of it\n",
            baud, registers, read_ms, 1000.0 / read_ms, 1000.0 / read_ms * registers, devices,
            reads, 100.0 * reads * read_ms / 1000.0);
    }
    std::printf("  start-up          first value after %.1f s; ferry CPU %.3f s until the window\n",
                first_value_s, cpu0);
    std::printf("  offered           %10.0f values/s\n", offered_rate);
    std::printf("  delivered         %10.0f values/s in the window = %.1f %% of offered\n",
                delivered / wall, 100.0 * delivered / wall / offered_rate);
    std::printf("  complete          %10zu of %llu seq delivered, %zu duplicates\n", seqs.size(),
                static_cast<unsigned long long>(span), arrived - seqs.size());
    std::printf("  ferry CPU         %10.3f s (%.1f %% of one core)\n", cpu, 100.0 * cpu / wall);
    std::printf("  CPU per value     %10.3f us\n", 1e6 * cpu / delivered);
    std::printf("  VmHWM             %10.1f MiB (peak, start-up included)\n", mib(hwm));
    std::printf("  VmRSS steady      %10.1f MiB (max of one sample a second in the window)\n",
                mib(rss_max));
    std::printf("  wire              %10.1f bytes/value (MQTT payload bytes / values received)\n",
                static_cast<double>(bytes1 - bytes0) / delivered);
    std::printf(
        "  disk              %10.1f bytes/value (write_bytes of /proc/PID/io; wchar %.1f)\n",
        static_cast<double>(io1.write_bytes - io0.write_bytes) / delivered,
        static_cast<double>(io1.wchar - io0.wchar) / delivered);
    std::printf("  context switches  %10.0f /s (all ferry threads, voluntary + involuntary)\n",
                static_cast<double>(switches1 - switches0) / wall);
    return 0;
}
