// Live first (issue 18): after a broker outage, how soon live data flows again and how late it
// is while the backlog is replayed at a set pace. Modbus TCP devices -> ferry (one rule, batches
// of up to 500 events or 1 s per device, QoS 1, the spool, `upstream.replay: { rate: R }`) ->
// mosquitto -> a subscriber that records, per message, its arrival time, whether it is marked
// "replay", and the sampling time (ts) of each of its events. Ferry reaches the broker through
// tests/tools/mqtt_proxy.py; the subscriber connects directly and stays connected, so arrival
// times are the broker's, not a subscriber's reconnect. After a warm-up (the baseline) the
// proxy cuts Ferry's connection and refuses new ones for the outage, then passes again. Printed:
//   - the reconnect: from the end of the outage until ferry_mqtt_connected is 1 (polled every
//     20 ms), and from then until the first live batch (not marked) arrives at the subscriber;
//   - live latency (arrival - ts, per event, p50 / p99 / max) in the baseline and during the
//     drain (from the reconnect until the last replayed batch arrived);
//   - the replay: batches, how long, the rate achieved;
//   - completeness: every seq between the first and the last seen arrived, and how many
//     arrived more than once.
//
// usage: bench_replay [devices=20] [registers=100] [poll_ms=1000] [outage_s=600] [rate=200]
//                     [warmup_s=30]
// The issue's form (2,000 values/s, a 10-minute outage, replay.rate 200): the defaults.
// env FERRY_BENCH_BINARY: the ferry to run (default: this build's). Not a test:
// ./scripts/bench replay runs it.

#include <mqtt/async_client.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "bench/plant.hpp"
#include "core/topic.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/mqtt_proxy.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;

namespace {

struct arrival {
    std::int64_t at_ms = 0;  // Unix ms at arrival
    bool replay = false;
    std::uint64_t batch = 0;
    std::vector<std::int64_t> ts;  // the events' sampling times
    std::vector<std::uint64_t> seqs;
};

// Numbers after each occurrence of `key` in `p`.
template <class T>
void numbers_after(const std::string& p, const char* key, std::vector<T>& out) {
    const std::size_t n = std::strlen(key);
    for (auto at = p.find(key); at != std::string::npos; at = p.find(key, at)) {
        at += n;
        out.push_back(static_cast<T>(std::strtoull(p.c_str() + at, nullptr, 10)));
    }
}

// Connected to the broker itself for the whole run.
class recorder : public virtual mqtt::callback {
  public:
    explicit recorder(const std::string& uri)
        : client_(uri, "bench-replay-sub", mqtt::create_options(MQTTVERSION_5)) {
        client_.set_callback(*this);
        client_.connect(mqtt::connect_options_builder().mqtt_version(MQTTVERSION_5).finalize())
            ->wait();
        client_.subscribe("bench/#", 1)->wait();
    }
    ~recorder() override {
        try {
            client_.disconnect()->wait_for(std::chrono::seconds(2));
        } catch (...) {
        }
    }
    void message_arrived(mqtt::const_message_ptr msg) override {
        const std::string& p = msg->get_payload_ref().str();
        arrival a;
        a.at_ms = unix_ms();
        a.replay = p.compare(1, ferry::k_replay_mark.size(), ferry::k_replay_mark) == 0;
        std::vector<std::uint64_t> batch;
        numbers_after(p, "\"batch\":", batch);
        a.batch = batch.empty() ? 0 : batch.front();
        numbers_after(p, "\"ts\":", a.ts);
        numbers_after(p, "\"seq\":", a.seqs);
        std::lock_guard lk(mu_);
        got_.push_back(std::move(a));
    }
    std::vector<arrival> all() const {
        std::lock_guard lk(mu_);
        return got_;
    }
    std::size_t size() const {
        std::lock_guard lk(mu_);
        return got_.size();
    }

  private:
    mutable std::mutex mu_;
    std::vector<arrival> got_;
    mqtt::async_client client_;
};

struct spread {
    double p50 = 0, p99 = 0, max = 0;
    std::size_t n = 0;
};

spread spread_of(std::vector<std::int64_t> v) {
    spread s;
    s.n = v.size();
    if (v.empty()) return s;
    std::sort(v.begin(), v.end());
    s.p50 = static_cast<double>(v[v.size() / 2]);
    s.p99 = static_cast<double>(v[std::min(v.size() - 1, v.size() * 99 / 100)]);
    s.max = static_cast<double>(v.back());
    return s;
}

}  // namespace

int main(int argc, char** argv) {
    const int devices = argc > 1 ? std::atoi(argv[1]) : 20;
    const int registers = argc > 2 ? std::atoi(argv[2]) : 100;
    const int poll_ms = argc > 3 ? std::atoi(argv[3]) : 1000;
    const int outage_s = argc > 4 ? std::atoi(argv[4]) : 600;
    const int rate = argc > 5 ? std::atoi(argv[5]) : 200;
    const int warmup_s = argc > 6 ? std::atoi(argv[6]) : 30;
    const char* bin_env = std::getenv("FERRY_BENCH_BINARY");
    const std::string binary = bin_env != nullptr ? bin_env : FERRY_BINARY;

    temp_dir dir;
    mosquitto broker(0, "max_queued_messages 0\n");
    mqtt_proxy proxy(broker.port());
    ferry::bench::modbus_plant plant(registers, dir.file("sim.log"));
    if (!plant.sim) return 3;
    const auto http_port = free_port();
    std::string cfg = plant.gateway_yaml(dir.path(), http_port, devices, registers, poll_ms);
    cfg += ferry::bench::pipeline_yaml(proxy.uri(), 16, "batch");
    cfg += "  replay: { rate: " + std::to_string(rate) + " }\n";
    write_file(dir.file("ferry.yaml"), cfg);

    recorder sub(broker.uri());
    process ferry({binary, "run", "-c", dir.file("ferry.yaml")}, dir.file("ferry.log"));
    if (!wait_until([&] { return sub.size() > 0; }, 20s)) {
        std::fprintf(stderr, "nothing arrived; see %s\n", dir.file("ferry.log").c_str());
        return 3;
    }
    auto metric_of = [&](const char* name) { return metric_value(http_port, name, -1); };
    const std::int64_t baseline_from = unix_ms() + 5000;  // past the start-up
    std::this_thread::sleep_for(std::chrono::seconds(warmup_s));
    const std::int64_t baseline_to = unix_ms();

    proxy.refuse();
    proxy.cut();
    const double cpu0 = cpu_seconds(ferry.pid());
    std::this_thread::sleep_for(std::chrono::seconds(outage_s));
    const double backlog = metric_of("ferry_spool_messages");
    const double cpu1 = cpu_seconds(ferry.pid());
    proxy.pass();
    const std::int64_t restarted = unix_ms();
    std::int64_t reconnected = -1;
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(outage_s * 2 + 120);
    while (std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(20ms);
        if (reconnected < 0 && metric_of("ferry_mqtt_connected") == 1) reconnected = unix_ms();
        if (reconnected >= 0 && metric_of("ferry_upstream_replayed_total") >= backlog &&
            metric_of("ferry_spool_messages") <= 2.0 * devices)
            break;
    }
    const double cpu2 = cpu_seconds(ferry.pid());
    const std::int64_t drained = unix_ms();
    std::this_thread::sleep_for(3s);
    ferry.stop();
    std::this_thread::sleep_for(2s);

    const auto all = sub.all();
    // The drain: from the reconnect until the last replayed batch arrived.
    std::int64_t last_replay_ms = -1;
    std::size_t replayed = 0;
    std::int64_t first_replay_ms = -1;
    for (const auto& a : all) {
        if (!a.replay) continue;
        ++replayed;
        last_replay_ms = std::max(last_replay_ms, a.at_ms);
        if (first_replay_ms < 0) first_replay_ms = a.at_ms;
    }
    // Live after the reconnect: not marked (the backlog, and what was in flight when the
    // broker went away, arrive marked).
    std::int64_t first_live_ms = -1;
    std::vector<std::int64_t> base_lat, drain_lat;
    for (const auto& a : all) {
        if (a.replay) continue;
        const bool in_base = a.at_ms >= baseline_from && a.at_ms <= baseline_to;
        const bool in_drain = reconnected >= 0 && a.at_ms >= reconnected &&
                              a.at_ms <= std::max(last_replay_ms, reconnected);
        if (reconnected >= 0 && a.at_ms >= reconnected && first_live_ms < 0)
            first_live_ms = a.at_ms;
        for (auto ts : a.ts) {
            if (in_base) base_lat.push_back(a.at_ms - ts);
            if (in_drain) drain_lat.push_back(a.at_ms - ts);
        }
    }
    std::vector<std::uint64_t> seqs;
    for (const auto& a : all)
        seqs.insert(seqs.end(), a.seqs.begin(), a.seqs.end());
    std::sort(seqs.begin(), seqs.end());
    const std::size_t arrived = seqs.size();
    seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());
    const std::size_t distinct = seqs.size();
    const std::uint64_t span = seqs.empty() ? 0 : seqs.back() - seqs.front() + 1;

    const auto base = spread_of(base_lat);
    const auto drain = spread_of(drain_lat);
    const double replay_s = last_replay_ms >= 0 && first_replay_ms >= 0
                                ? static_cast<double>(last_replay_ms - first_replay_ms) / 1000.0
                                : -1;
    std::printf("replay: %d devices x %d registers every %d ms, outage %d s, replay.rate %d, %s\n",
                devices, registers, poll_ms, outage_s, rate, binary.c_str());
    std::printf("  load average      %s\n", ferry::bench::load_average().c_str());
    std::printf("  backlog           %.0f batches at the end of the outage\n", backlog);
    std::printf("  reconnect         %lld ms after the outage ended\n",
                static_cast<long long>(reconnected - restarted));
    std::printf("  first live batch  %lld ms after the reconnect (%lld ms after the outage)\n",
                static_cast<long long>(first_live_ms - reconnected),
                static_cast<long long>(first_live_ms - restarted));
    std::printf("  live latency      baseline p50 %.0f ms, p99 %.0f ms, max %.0f ms (%zu events)\n",
                base.p50, base.p99, base.max, base.n);
    std::printf(
        "                    drain    p50 %.0f ms, p99 %.0f ms, max %.0f ms (%zu events): "
        "p99 %.2fx the baseline\n",
        drain.p50, drain.p99, drain.max, drain.n, base.p99 > 0 ? drain.p99 / base.p99 : 0);
    std::printf(
        "  replay            %zu batches in %.1f s (%.0f/s); spool back to live %.1f s "
        "after the reconnect\n",
        replayed, replay_s, replay_s > 0 ? static_cast<double>(replayed) / replay_s : 0,
        static_cast<double>(drained - reconnected) / 1000.0);
    std::printf("  ferry CPU         outage %.2f s, drain %.2f s\n", cpu1 - cpu0, cpu2 - cpu1);
    std::printf("  complete          %zu of %llu seq, %zu duplicates, %llu missing\n", distinct,
                static_cast<unsigned long long>(span), arrived - distinct,
                static_cast<unsigned long long>(span - distinct));
    return span == distinct && first_live_ms >= 0 ? 0 : 1;
}
