// Outage: what a broker outage costs on disk, and how fast the backlog drains (issue 16).
// Modbus TCP devices -> ferry (one rule, batches of 500, QoS 1, the spool) -> mosquitto -> a
// subscriber that records every seq. After a warm-up the broker is stopped (SIGTERM by pid;
// it keeps its sessions on disk, so the subscriber misses nothing at the restart) for the
// outage, then started again on the same port. Printed:
//   - disk bytes per value spooled: ferry's /proc/PID/io write_bytes over the outage divided
//     by the values produced in it (ferry_events_produced_total), and the spool file size
//     (db + wal) at the end of the outage;
//   - the drain: time from the restart until ferry_spool_messages is back to what it held
//     before the outage, and the drain rate as a multiple of the ingest rate
//     (backlog values / drain seconds) / (values produced per second), and the part of it
//     spent waiting for ferry to reconnect (ferry_mqtt_connected; its backoff reaches 30 s,
//     but a long wait ends when ferry's probe sees the broker's port open again);
//   - ferry's CPU (utime + stime) during the outage and during the drain;
//   - completeness: every seq between the first and the last seen arrived, and how many
//     arrived more than once.
//
// usage: bench_outage [devices=20] [registers=100] [poll_ms=100] [outage_s=30] [warmup_s=10]
//                     [fsync=batch] [inflight=16]
// env FERRY_BENCH_BINARY: the ferry to run (default: this build's), to compare builds.
// Not a test: ./scripts/bench outage runs it. The form: bench_outage 20 100 100 300.

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "bench/plant.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;

using ferry::bench::load_average;
using ferry::bench::proc_io;

int main(int argc, char** argv) {
    const int devices = argc > 1 ? std::atoi(argv[1]) : 20;
    const int registers = argc > 2 ? std::atoi(argv[2]) : 100;
    const int poll_ms = argc > 3 ? std::atoi(argv[3]) : 100;
    const int outage_s = argc > 4 ? std::atoi(argv[4]) : 30;
    const int warmup_s = argc > 5 ? std::atoi(argv[5]) : 10;
    const std::string fsync = argc > 6 ? argv[6] : "batch";
    const int inflight = argc > 7 ? std::atoi(argv[7]) : 16;
    const char* bin_env = std::getenv("FERRY_BENCH_BINARY");
    const std::string binary = bin_env != nullptr ? bin_env : FERRY_BINARY;

    temp_dir dir;
    temp_dir broker_dir;
    mosquitto broker(0, persistence_conf(broker_dir) + "max_queued_messages 0\n");
    ferry::bench::modbus_plant plant(registers, dir.file("sim.log"));
    if (!plant.sim) return 3;
    const auto http_port = free_port();
    std::string cfg = plant.gateway_yaml(dir.path(), http_port, devices, registers, poll_ms);
    cfg += ferry::bench::pipeline_yaml(broker.uri(), inflight, fsync);
    write_file(dir.file("ferry.yaml"), cfg);

    ferry::bench::seq_counter sub(broker.uri(), "bench-outage-sub");
    process ferry({binary, "run", "-c", dir.file("ferry.yaml")}, dir.file("ferry.log"));
    if (!wait_until([&] { return sub.values() > 0; }, 20s)) {
        std::fprintf(stderr, "nothing arrived; see %s\n", dir.file("ferry.log").c_str());
        return 3;
    }
    auto metric_of = [&](const char* name) { return metric_value(http_port, name, -1); };
    // What the spool holds while the broker is up: the drain is over when it is back to it.
    double live_messages = 0;
    for (int s = 0; s < warmup_s * 10; ++s) {
        std::this_thread::sleep_for(100ms);
        live_messages = std::max(live_messages, metric_of("ferry_spool_messages"));
    }
    const auto spool_path = dir.file("spool.db");

    // The outage.
    const auto io0 = proc_io(ferry.pid());
    const double cpu0 = cpu_seconds(ferry.pid());
    const double produced0 = metric_of("ferry_events_produced_total");
    const auto load0 = load_average();
    broker.stop();
    const auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(outage_s));
    const auto io1 = proc_io(ferry.pid());
    const double cpu1 = cpu_seconds(ferry.pid());
    const double produced1 = metric_of("ferry_events_produced_total");
    const double outage_wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto db_bytes = file_size_or_zero(spool_path);
    const auto wal_bytes = file_size_or_zero(spool_path + "-wal");
    const double spool_bytes = metric_of("ferry_spool_bytes");
    const double spool_messages = metric_of("ferry_spool_messages");

    // The drain.
    broker.start();
    const auto t1 = std::chrono::steady_clock::now();
    const double broker_cpu0 = cpu_seconds(broker.pid());
    const double self_cpu0 = cpu_seconds(::getpid());
    double drain_s = -1;
    double reconnect_s =
        -1;  // the reconnect wait (backoff, cut short by the probe) is part of the drain
    while (std::chrono::steady_clock::now() - t1 < std::chrono::seconds(outage_s * 4 + 60)) {
        std::this_thread::sleep_for(100ms);
        if (reconnect_s < 0 && metric_of("ferry_mqtt_connected") == 1)
            reconnect_s =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
        const double held = metric_of("ferry_spool_messages");
        if (held >= 0 && held <= std::max(live_messages, 2.0 * devices)) {
            drain_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
            break;
        }
    }
    const double cpu2 = cpu_seconds(ferry.pid());
    const double broker_cpu = cpu_seconds(broker.pid()) - broker_cpu0;
    const double self_cpu = cpu_seconds(::getpid()) - self_cpu0;
    const auto io2 = proc_io(ferry.pid());
    const auto load1 = load_average();

    // Every seq delivered? Run a few seconds live, stop ferry (it flushes its batches).
    std::this_thread::sleep_for(3s);
    ferry.stop();
    std::this_thread::sleep_for(2s);
    auto seqs = sub.seqs();
    std::sort(seqs.begin(), seqs.end());
    const std::size_t arrived = seqs.size();
    seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());
    const std::size_t distinct = seqs.size();
    const std::uint64_t span = seqs.empty() ? 0 : seqs.back() - seqs.front() + 1;

    const double produced = produced1 - produced0;
    const double rate = produced / outage_wall;
    const double written = static_cast<double>(io1.write_bytes - io0.write_bytes);
    std::printf("outage: %d devices x %d registers every %d ms, fsync %s, inflight %d, %s\n",
                devices, registers, poll_ms, fsync.c_str(), inflight, binary.c_str());
    std::printf("  load average      %s (before) / %s (after the drain)\n", load0.c_str(),
                load1.c_str());
    std::printf("  outage            %10.1f s, %.0f values produced (%.0f values/s)\n", outage_wall,
                produced, rate);
    std::printf(
        "  disk written      %10.0f bytes = %.1f bytes/value (write_bytes; cancelled "
        "%llu; wchar %.1f bytes/value)\n",
        written, written / produced, static_cast<unsigned long long>(io1.cancelled - io0.cancelled),
        static_cast<double>(io1.wchar - io0.wchar) / produced);
    std::printf(
        "  spool at the end  %10.1f MB on disk (db %.1f + wal %.1f), "
        "ferry_spool_bytes %.1f MB, %.0f messages\n",
        static_cast<double>(db_bytes + wal_bytes) / 1e6, static_cast<double>(db_bytes) / 1e6,
        static_cast<double>(wal_bytes) / 1e6, spool_bytes / 1e6, spool_messages);
    std::printf("  CPU in the outage %10.3f s = %.2f us/value spooled\n", cpu1 - cpu0,
                1e6 * (cpu1 - cpu0) / produced);
    if (drain_s < 0) {
        std::printf("  drain             did not finish\n");
    } else {
        std::printf(
            "  drain             %10.1f s for %.1f s of backlog: %.1fx the ingest rate "
            "(%.0f backlog values/s; with live values %.1fx)\n",
            drain_s, outage_wall, outage_wall / drain_s, produced / drain_s,
            outage_wall / drain_s + 1);
        std::printf(
            "  CPU in the drain  %10.3f s (%.0f %% of one core), disk written %.1f "
            "bytes/value\n",
            cpu2 - cpu1, 100.0 * (cpu2 - cpu1) / drain_s,
            static_cast<double>(io2.write_bytes - io1.write_bytes) / produced);
        const double moving = drain_s - reconnect_s;
        std::printf(
            "  of which          %10.1f s until ferry reconnected (backoff or probe), then %.1f s "
            "moving the backlog: %.1fx the ingest rate\n",
            reconnect_s, moving, outage_wall / moving);
        std::printf(
            "  others' CPU       mosquitto %.0f %%, this subscriber %.0f %% of one core in "
            "the drain\n",
            100.0 * broker_cpu / drain_s, 100.0 * self_cpu / drain_s);
    }
    std::printf("  complete          %10zu of %llu seq, %zu duplicates, %llu missing\n", distinct,
                static_cast<unsigned long long>(span), arrived - distinct,
                static_cast<unsigned long long>(span - distinct));
    return span == distinct && drain_s >= 0 ? 0 : 1;
}
