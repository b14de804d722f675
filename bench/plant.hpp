// What the end-to-end benchmarks (bench_e2e, bench_outage) share. Benchmarks only, never tests.
// - modbus_plant: one libmodbus simulator serving `registers` holding registers (register r
//   holds r * 3), over Modbus TCP on a free port, or Modbus RTU on one end of a socat pty pair
//   at a given baud rate, paced to that rate (`--pace`); and the `devices:` section of a
//   ferry config whose devices read all of them as uint16 every `poll_ms` (RTU: units 1..N
//   of one line).
// - pipeline_yaml: the benchmarks' one rule and their upstream.
// - seq_counter: a subscriber that keeps only the seq numbers and payload sizes it receives.
// - proc_io, context_switches, load_average: what /proc says about a process and the machine.
#pragma once

#include <mqtt/async_client.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

namespace ferry::bench {

struct modbus_plant {
    std::uint16_t port = 0;  // TCP
    int baud = 0;            // > 0: RTU at this rate on pty->a()
    std::unique_ptr<ferry::test::socat_pair> pty;
    std::unique_ptr<ferry::test::process> sim;

    // Starts the simulator (its log in `log_file`): Modbus TCP when rtu_baud is 0, else RTU at
    // rtu_baud, 8N1. sim is null when it did not start.
    modbus_plant(int registers, const std::string& log_file, int rtu_baud = 0) : baud(rtu_baud) {
        std::vector<std::string> args{FERRY_MODBUS_SIM};
        if (baud > 0) {
            pty = std::make_unique<ferry::test::socat_pair>();
            args.insert(args.end(), {"--rtu", pty->b(), "--baud", std::to_string(baud), "--pace"});
        } else {
            port = ferry::test::free_port();
            args.insert(args.end(), {"--port", std::to_string(port)});
        }
        for (int r = 0; r < registers; ++r) {
            args.push_back("--set");
            args.push_back("holding:" + std::to_string(r) + "=u16:" + std::to_string(r * 3));
        }
        sim = std::make_unique<ferry::test::process>(args, log_file);
        const bool up = baud > 0 ? ferry::test::wait_until(
                                       [&] {
                                           return ferry::test::read_file_if_exists(log_file).find(
                                                      "serving RTU") != std::string::npos;
                                       },
                                       std::chrono::seconds(10))
                                 : ferry::test::wait_for_port(port, std::chrono::seconds(10));
        if (!up) {
            std::fprintf(stderr, "simulator did not start\n");
            sim.reset();
        }
    }

    // "devices:\n  - id: dev0 ..." for ferry's config; over RTU device d is unit d + 1.
    // The gateway (data in `data_dir`, HTTP on `http_port` for the metrics) and devices_yaml:
    // what every benchmark's config starts with.
    std::string gateway_yaml(const std::string& data_dir, std::uint16_t http_port, int devices,
                             int registers, int poll_ms) const {
        return "gateway: { id: bench, data_dir: " + data_dir +
               " }\nhttp: { listen: \"127.0.0.1:" + std::to_string(http_port) + "\" }\n" +
               devices_yaml(devices, registers, poll_ms);
    }
    std::string devices_yaml(int devices, int registers, int poll_ms) const {
        std::string cfg = "devices:\n";
        for (int d = 0; d < devices; ++d) {
            cfg += "  - id: dev" + std::to_string(d);
            if (baud > 0)
                cfg += "\n    driver: modbus_rtu\n    serial: { port: " + pty->a() +
                       ", baud: " + std::to_string(baud) +
                       " }\n    unit_id: " + std::to_string(d + 1);
            else
                cfg += "\n    driver: modbus_tcp\n    host: 127.0.0.1\n    port: " +
                       std::to_string(port);
            cfg += "\n    poll_interval: " + std::to_string(poll_ms) + "ms\n    points:\n";
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

// Subscribes to bench/# (QoS 1, MQTT 5, a persistent session, so a broker restart with
// persistence loses nothing) and records the seq of every event that arrives and the payload
// bytes: only numbers are kept, so a long run does not hold every payload in memory.
// Thread-safe.
class seq_counter : public virtual mqtt::callback {
  public:
    seq_counter(const std::string& uri, const std::string& client_id)
        : client_(uri, client_id, mqtt::create_options(MQTTVERSION_5)) {
        client_.set_callback(*this);
        auto opts =
            mqtt::connect_options_builder()
                .mqtt_version(MQTTVERSION_5)
                .clean_start(false)
                .properties({{mqtt::property::SESSION_EXPIRY_INTERVAL, 3600}})
                .automatic_reconnect(std::chrono::milliseconds(100), std::chrono::milliseconds(500))
                .finalize();
        client_.connect(opts)->wait();
        client_.subscribe("bench/#", 1)->wait();
    }
    ~seq_counter() override {
        try {
            client_.disconnect()->wait_for(std::chrono::seconds(2));
        } catch (...) {
        }
    }
    seq_counter(const seq_counter&) = delete;
    seq_counter& operator=(const seq_counter&) = delete;

    void message_arrived(mqtt::const_message_ptr msg) override {
        const std::string& p = msg->get_payload_ref().str();
        std::vector<std::uint64_t> found;
        for (auto at = p.find("\"seq\":"); at != std::string::npos; at = p.find("\"seq\":", at)) {
            at += 6;
            found.push_back(std::strtoull(p.c_str() + at, nullptr, 10));
        }
        std::lock_guard lk(mu_);
        seqs_.insert(seqs_.end(), found.begin(), found.end());
        bytes_ += p.size();
    }
    std::size_t values() const {
        std::lock_guard lk(mu_);
        return seqs_.size();
    }
    // Values and payload bytes received so far, read together.
    std::pair<std::size_t, std::uint64_t> values_and_bytes() const {
        std::lock_guard lk(mu_);
        return {seqs_.size(), bytes_};
    }
    std::vector<std::uint64_t> seqs() const {
        std::lock_guard lk(mu_);
        return seqs_;
    }

  private:
    mutable std::mutex mu_;
    std::vector<std::uint64_t> seqs_;
    std::uint64_t bytes_ = 0;
    mqtt::async_client client_;
};

// /proc/PID/io: bytes the process caused to be written to storage, those it truncated away
// before they were written, and bytes passed to write() (page cache or not).
struct io_counts {
    std::uint64_t write_bytes = 0, cancelled = 0, wchar = 0;
};

inline io_counts proc_io(pid_t pid) {
    io_counts c;
    std::ifstream in("/proc/" + std::to_string(pid) + "/io");
    std::string key;
    std::uint64_t v = 0;
    while (in >> key >> v) {
        if (key == "write_bytes:") c.write_bytes = v;
        if (key == "cancelled_write_bytes:") c.cancelled = v;
        if (key == "wchar:") c.wchar = v;
    }
    return c;
}

// Voluntary + involuntary context switches of all of a process's threads alive now (a thread
// that ended takes its count with it).
inline std::uint64_t context_switches(pid_t pid) {
    std::uint64_t n = 0;
    std::error_code ec;
    for (const auto& t :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
        const auto tid = static_cast<pid_t>(std::atoi(t.path().filename().c_str()));
        n += ferry::test::status_field(tid, "voluntary_ctxt_switches").value_or(0) +
             ferry::test::status_field(tid, "nonvoluntary_ctxt_switches").value_or(0);
    }
    return n;
}

// The three load averages of /proc/loadavg, e.g. "0.52 0.61 0.70".
inline std::string load_average() {
    std::ifstream in("/proc/loadavg");
    std::string a, b, c;
    in >> a >> b >> c;
    return a + " " + b + " " + c;
}

}  // namespace ferry::bench
