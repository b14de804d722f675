// End to end: Modbus TCP devices → ferry (bus, rules, JSON, spool, MQTT QoS 1) → mosquitto →
// a subscriber. The figure of merit from ARCHITECTURE.md: ferry's CPU time per delivered
// value (user + system, from /proc/PID/stat), whether every value is delivered, and RSS.
//
// usage: bench_e2e [devices=50] [registers=100] [poll_ms=100] [seconds=20] [fsync=batch]
// Not a test: ./scripts/bench runs it and prints the numbers.

#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "bench/plant.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;

int main(int argc, char** argv) {
    int devices = argc > 1 ? std::atoi(argv[1]) : 50;
    int registers = argc > 2 ? std::atoi(argv[2]) : 100;
    int poll_ms = argc > 3 ? std::atoi(argv[3]) : 100;
    int seconds = argc > 4 ? std::atoi(argv[4]) : 20;
    std::string fsync = argc > 5 ? argv[5] : "batch";

    temp_dir dir;
    mosquitto broker;
    ferry::bench::modbus_plant plant(registers, dir.file("sim.log"));
    if (!plant.sim) return 3;

    std::string cfg = "gateway: { id: bench, data_dir: " + dir.path() + " }\n" +
                      plant.devices_yaml(devices, registers, poll_ms);
    cfg += ferry::bench::pipeline_yaml(broker.uri(), 64, fsync);
    write_file(dir.file("ferry.yaml"), cfg);

    mqtt_recorder rec(broker.uri(), {"bench/#"});
    process ferry({FERRY_BINARY, "run", "-c", dir.file("ferry.yaml")}, dir.file("ferry.log"));
    // Warm-up: let connections open and the first batches flow.
    if (!wait_until([&] { return rec.count() > 0; }, 20s)) {
        std::fprintf(stderr, "nothing arrived; see %s\n", dir.file("ferry.log").c_str());
        return 3;
    }
    std::this_thread::sleep_for(2s);
    auto count_events = [&] {
        std::size_t n = 0;
        for (const auto& m : rec.messages()) {
            auto j = nlohmann::json::parse(m.payload, nullptr, false);
            if (!j.is_discarded()) n += j["events"].size();
        }
        return n;
    };
    auto cpu0 = cpu_seconds(ferry.pid());
    auto events0 = count_events();
    auto t0 = std::chrono::steady_clock::now();
    std::uint64_t rss_max = 0;
    for (int s = 0; s < seconds; ++s) {
        std::this_thread::sleep_for(1s);
        rss_max = std::max(rss_max, rss_kib(ferry.pid()));
    }
    auto cpu1 = cpu_seconds(ferry.pid());
    auto wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    auto events1 = count_events();
    // Every value delivered? Stop ferry (it flushes what it batched), let the last messages
    // land, then look for gaps in seq over everything that arrived.
    ferry.stop();
    std::this_thread::sleep_for(2s);
    std::set<std::uint64_t> seqs;
    std::size_t duplicates = 0;
    for (const auto& m : rec.messages()) {
        auto j = nlohmann::json::parse(m.payload, nullptr, false);
        if (j.is_discarded()) continue;
        for (const auto& e : j["events"]) {
            if (!seqs.insert(e["seq"].get<std::uint64_t>()).second) ++duplicates;
        }
    }
    auto span = seqs.empty() ? 0 : *seqs.rbegin() - *seqs.begin() + 1;
    auto delivered = static_cast<double>(events1 - events0);
    double offered = devices * registers * (1000.0 / poll_ms) * wall;
    std::printf("e2e: %d devices x %d registers every %d ms, fsync %s, %.1f s measured\n", devices,
                registers, poll_ms, fsync.c_str(), wall);
    std::printf("  offered           %10.0f values/s\n", offered / wall);
    std::printf("  delivered         %10.0f values/s in the measured window\n", delivered / wall);
    std::printf("  complete          %10zu of %llu seq delivered, %zu duplicates\n", seqs.size(),
                static_cast<unsigned long long>(span), duplicates);
    std::printf("  ferry CPU         %10.3f s (%.1f %% of one core)\n", cpu1 - cpu0,
                100.0 * (cpu1 - cpu0) / wall);
    std::printf("  CPU per value     %10.3f us\n", 1e6 * (cpu1 - cpu0) / delivered);
    std::printf("  RSS (max)         %10.1f MiB\n", static_cast<double>(rss_max) / 1024.0);
    return 0;
}
