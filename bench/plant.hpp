// The plant the end-to-end benchmarks poll (bench_e2e, bench_outage): one libmodbus
// simulator serving `registers` holding registers (register r holds r * 3), and the `devices:`
// section of a ferry config with `devices` Modbus TCP devices reading all of them as uint16
// every `poll_ms`. Not a test helper: benchmarks only.
#pragma once

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

namespace ferry::bench {

struct modbus_plant {
    std::uint16_t port = 0;
    std::unique_ptr<ferry::test::process> sim;

    // Starts the simulator (its log in `log_file`); sim is null when it did not start.
    modbus_plant(int registers, const std::string& log_file) : port(ferry::test::free_port()) {
        std::vector<std::string> args{FERRY_MODBUS_SIM, "--port", std::to_string(port)};
        for (int r = 0; r < registers; ++r) {
            args.push_back("--set");
            args.push_back("holding:" + std::to_string(r) + "=u16:" + std::to_string(r * 3));
        }
        sim = std::make_unique<ferry::test::process>(args, log_file);
        if (!ferry::test::wait_for_port(port, std::chrono::seconds(10))) {
            std::fprintf(stderr, "simulator did not start\n");
            sim.reset();
        }
    }

    // "devices:\n  - id: dev0 ..." for ferry's config.
    std::string devices_yaml(int devices, int registers, int poll_ms) const {
        std::string cfg = "devices:\n";
        for (int d = 0; d < devices; ++d) {
            cfg +=
                "  - id: dev" + std::to_string(d) +
                "\n    driver: modbus_tcp\n    host: 127.0.0.1\n    port: " + std::to_string(port) +
                "\n    poll_interval: " + std::to_string(poll_ms) + "ms\n    points:\n";
            for (int r = 0; r < registers; ++r)
                cfg += "      - { name: r" + std::to_string(r) + ", address: " + std::to_string(r) +
                       ", type: uint16, unit: u }\n";
        }
        return cfg;
    }
};

// The benchmarks' one rule (every point, batches of up to 500 events or 1 s per device topic,
// QoS 1) and their upstream: the broker at `uri`, `inflight` messages in flight, the spool's
// fsync mode.
inline std::string pipeline_yaml(const std::string& uri, int inflight, const std::string& fsync) {
    return "rules: [ { name: all, match: \"#\", batch: { max_events: 500, max_age: 1s },\n"
           "          publish: { topic: \"bench/{gateway}/{device}\", qos: 1 } } ]\n"
           "upstream:\n"
           "  mqtt: { uris: [\"" +
           uri + "\"], inflight: " + std::to_string(inflight) + " }\n  spool: { fsync: " + fsync +
           " }\n";
}

}  // namespace ferry::bench
