// Acceptance 3 of issue 3, through the real daemon: a 1 MiB spool with the broker down.
// drop_oldest: the files stay within the bound of docs/SPOOL.md, drops are counted, and what
// arrives after the broker returns is the newest data, with a batch gap at the start.
// block: polling stops, RSS stays flat, nothing is lost.
#include <doctest/doctest.h>

#include <algorithm>
#include <thread>

#include "tests/chaos/chaos_support.hpp"

using namespace ferry::test;

namespace {

constexpr std::uint64_t k_max_bytes = 1 << 20;
const std::string k_topic = "plant/chaos-gw/d1";

struct setup {
    modbus_sim sim{0, holding_registers(200)};
    temp_dir broker_db;
    // Sessions survive the restart: the recorder, subscribed before the broker went down,
    // gets everything ferry publishes to the restarted broker.
    mosquitto broker{0, persistence_conf(broker_db)};
    std::unique_ptr<mqtt_recorder> rec =
        std::make_unique<mqtt_recorder>(broker.uri(), std::vector<std::string>{"plant/#"});
    temp_dir dir;
    ferry_options o;
    std::unique_ptr<process> ferry;

    explicit setup(const std::string& when_full, const std::string& poll) {
        broker.stop();  // down before ferry starts
        o.data_dir = dir.path();
        o.http_port = free_port();
        o.modbus_port = sim.port();
        o.uris = {broker.uri()};
        o.poll = poll;
        o.max_events = 200;  // batches of about 20 KB
        o.max_age = "1s";
        o.max_bytes = "1MiB";
        o.when_full = when_full;
        // Rates and bounds here are for plain rows (batches of about 20 KB); compressed, the
        // spool would take about 30 times longer to fill.
        o.compress = "false";
        ferry = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry.log"));
    }
    double metric(const std::string& sample) { return metric_value(o.http_port, sample); }
    std::uint64_t on_disk() {
        return file_size_or_zero(dir.file("spool.db")) +
               file_size_or_zero(dir.file("spool.db-wal"));
    }
};

}  // namespace

TEST_CASE("drop_oldest: a 1 MiB spool stays bounded, counts drops, and keeps the newest") {
    setup s("drop_oldest", "100ms");  // 2,000 events/s, about 200 KB/s into the spool
    std::uint64_t peak = 0;
    const auto until = std::chrono::steady_clock::now() + 15s;  // about 3 MB offered
    while (std::chrono::steady_clock::now() < until) {
        peak = std::max(peak, s.on_disk());
        std::this_thread::sleep_for(50ms);
    }
    const double dropped_down = s.metric("ferry_spool_dropped_total{reason=\"drop_oldest\"}");
    const double held = s.metric("ferry_spool_bytes");
    CHECK(dropped_down > 0);
    CHECK(held <= static_cast<double>(k_max_bytes));
    CHECK(s.metric("ferry_spool_dropped_total{reason=\"drop_newest\"}") == 0.0);

    s.broker.start();
    REQUIRE(wait_until(
        [&] {
            return s.metric("ferry_mqtt_connected") == 1.0 && s.metric("ferry_spool_messages") < 3;
        },
        40s));
    std::this_thread::sleep_for(1s);
    const double dropped = s.metric("ferry_spool_dropped_total{reason=\"drop_oldest\"}");
    CHECK(s.ferry->stop(15, 10s) == 0);
    const auto st = read_spool_file(s.dir.file("spool.db"));
    REQUIRE(st.last_batch.count(k_topic) == 1);
    const auto last = st.last_batch.at(k_topic);
    CHECK(wait_until(
        [&] {
            return check_delivery(parse_upstream(s.rec->messages())).last_batch[k_topic] >= last;
        },
        20s));
    const auto msgs = parse_upstream(s.rec->messages());
    auto c = check_delivery(msgs);
    std::uint64_t batch_bytes = 0;
    for (const auto& m : msgs)
        batch_bytes = std::max<std::uint64_t>(batch_bytes, m.topic.size() + m.payload.size());
    // docs/SPOOL.md, for batches of 16 KiB and more:
    //   db + wal <= max_bytes * 1.10 + one batch + min(max_bytes/16, 4 MiB) + 256 KiB
    const auto bound = static_cast<std::uint64_t>(static_cast<double>(k_max_bytes) * 1.10) +
                       batch_bytes + k_max_bytes / 16 + 256 * 1024;
    MESSAGE("peak db+wal " << peak << " bytes, bound " << bound << " (max_bytes " << k_max_bytes
                           << ", largest batch " << batch_bytes << "); dropped while down "
                           << dropped_down << ", in total " << dropped << "; " << c.summary());
    CHECK(peak <= bound);
    // The oldest were dropped: what arrives starts right after them, then has no hole.
    CHECK(c.first_batch[k_topic] == first_batch_logged(s.dir.file("ferry.log"), k_topic) +
                                        static_cast<std::uint64_t>(dropped));
    CHECK(c.last_batch[k_topic] == last);
    CHECK(c.batch_gaps.empty());
    CHECK(c.reordered == 0);
    CHECK(c.conflicting == 0);
    // ...and the newest were kept: the seqs that arrived form one run up to the last.
    CHECK(c.seq_gaps.empty());
    CHECK(c.first_seq > 1);
}

// Faster polling (200 registers every 25 ms, 8,000 events/s) only to fill the spool and the
// bus queue between the drivers and the rules (65,536 events) sooner; the property is the same.
TEST_CASE("block: a full spool stops polling, RSS stays flat, nothing is lost") {
    setup s("block", "25ms");
    // Full: the spool holds (nearly) max_bytes and the driver no longer asks the device.
    std::uint64_t last_requests = 0;
    const bool stalled = wait_until(
        [&] {
            if (s.metric("ferry_spool_bytes") < static_cast<double>(k_max_bytes) - 64 * 1024)
                return false;
            const auto r = s.sim.requests();
            const bool same = r == last_requests;
            last_requests = r;
            std::this_thread::sleep_for(500ms);
            return same && s.sim.requests() == r;
        },
        60s);
    REQUIRE(stalled);
    // Hold it there and watch memory and the device.
    const auto requests_before = s.sim.requests();
    const auto overruns_before = s.metric("ferry_driver_overruns_total{device=\"d1\"}");
    std::vector<std::uint64_t> rss;
    for (int i = 0; i < 40; ++i) {  // 10 s
        rss.push_back(rss_kib(s.ferry->pid()));
        std::this_thread::sleep_for(250ms);
    }
    const auto requests_after = s.sim.requests();
    const auto [lo, hi] = std::minmax_element(rss.begin(), rss.end());
    MESSAGE("blocked for 10 s: RSS " << rss.front() << " -> " << rss.back() << " KiB (min " << *lo
                                     << ", max " << *hi << "); device requests " << requests_before
                                     << " -> " << requests_after << "; ferry_driver_overruns_total "
                                     << overruns_before << "; spool bytes "
                                     << s.metric("ferry_spool_bytes"));
    CHECK(requests_after == requests_before);
    CHECK(*hi - *lo <= 1024);  // flat: within 1 MiB over 10 s
    CHECK(s.metric("ferry_spool_dropped_total{reason=\"drop_oldest\"}") == 0.0);
    CHECK(s.metric("ferry_spool_dropped_total{reason=\"drop_newest\"}") == 0.0);
    // Backpressure, not loss: the bus between the drivers and the rules blocked and dropped
    // nothing (every reason is exported, at 0).
    for (const char* reason : {"drop_oldest", "drop_newest", "closed"})
        CHECK(s.metric(std::string("ferry_bus_dropped_total{reason=\"") + reason + "\"}") == 0.0);

    // The broker returns: the spool drains, polling resumes, the skipped polls are counted.
    s.broker.start();
    REQUIRE(wait_until([&] { return s.sim.requests() > requests_after + 20; }, 40s));
    REQUIRE(wait_until(
        [&] { return s.metric("ferry_driver_overruns_total{device=\"d1\"}") > overruns_before; },
        10s));
    const auto overruns = s.metric("ferry_driver_overruns_total{device=\"d1\"}");
    MESSAGE("after the broker returned: ferry_driver_overruns_total " << overruns);
    CHECK(overruns >= overruns_before + 10 * 1000 / 25 / 2);  // at least half the skipped polls
    CHECK(s.ferry->stop(15, 10s) == 0);
    const auto st = read_spool_file(s.dir.file("spool.db"));
    REQUIRE(st.last_batch.count(k_topic) == 1);
    const auto last = st.last_batch.at(k_topic);
    CHECK(wait_until(
        [&] {
            return check_delivery(parse_upstream(s.rec->messages())).last_batch[k_topic] >= last;
        },
        30s));
    auto c = check_delivery(parse_upstream(s.rec->messages()));
    MESSAGE(c.summary());
    CHECK(c.first_batch[k_topic] == first_batch_logged(s.dir.file("ferry.log"), k_topic));
    CHECK(c.last_batch[k_topic] == last);
    CHECK(c.batch_gaps.empty());
    CHECK(c.first_seq == seq_start_logged(s.dir.file("ferry.log")) + 1);
    CHECK(c.seq_gaps.empty());  // block loses nothing
    CHECK(c.reordered == 0);
}
