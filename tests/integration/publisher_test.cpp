// Integration tests of the MQTT publisher against a real mosquitto on loopback.
//
// What a user would check: the messages that reached the broker, in spool order, with their
// exact payloads; the retained status; the spool emptied; nothing lost across a broker
// restart, duplicates only within the in-flight window; failover to the second uri.
//
// The recorder here is local on purpose: it uses a persistent session (clean_session=false,
// fixed client id) on a broker with persistence on, so that messages the broker accepted while
// the recorder was away (broker restart) are queued for it rather than lost. Without that, a
// test could not tell a publisher loss from a recorder that reconnected later than the
// publisher did.
#include <doctest/doctest.h>
#include <poll.h>
#include <prometheus/registry.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/config.hpp"
#include "core/log.hpp"
#include "core/topic.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/mqtt_proxy.hpp"
#include "upstream/mqtt_publisher.hpp"
#include "upstream/spool.hpp"

namespace {

using namespace std::chrono_literals;
using ferry::test::mosquitto;
using ferry::test::temp_dir;
using ferry::test::wait_until;
using ferry::upstream::mqtt_publisher;
using ferry::upstream::spool;

const std::string k_gateway = "gw1";
const std::string k_data_topic = "plant/gw1/boiler1";
const std::string k_status_topic = "ferry/gw1/status";

struct received {
    std::string topic;
    std::string payload;
    bool retained = false;
};

// mosquitto_sub in its own process, recording every message in arrival order to a file. Out of
// process on purpose: Paho C runs every client of a process on shared threads, and a second
// Paho client in the test process would slow the publisher's connects (see DELIVERY.md).
// With `persistent` it keeps a session (clean_session=false, fixed id), so on a broker with
// persistence on, messages the broker accepted while it was away (a broker restart) are
// queued for it: the test can then tell a publisher loss from a recorder that came back later
// than the publisher. libmosquitto reconnects on its own.
// Receive Maximum 1 keeps the broker-to-recorder leg lock-step: a broker restart then
// redelivers at most the one message in flight to the recorder, so the repeats the test sees
// are the publisher's (without it, mosquitto redelivered 40 messages to the recorder).
class sub_recorder {
  public:
    sub_recorder(std::uint16_t port, const std::string& id, std::vector<std::string> filters,
                 bool persistent = true)
        : port_(port), id_(id), out_(dir_.file("out.txt")) {
        std::vector<std::string> argv{"/usr/bin/mosquitto_sub",
                                      "-h",
                                      "127.0.0.1",
                                      "-p",
                                      std::to_string(port),
                                      "-i",
                                      id,
                                      "-q",
                                      "1",
                                      "-V",
                                      "mqttv5",
                                      "-D",
                                      "connect",
                                      "receive-maximum",
                                      "1",
                                      "-F",
                                      "%r %t %p"};
        if (persistent) argv.push_back("-c");
        filters.push_back("ferry-test/ready");
        for (const auto& f : filters) {
            argv.push_back("-t");
            argv.push_back(f);
        }
        proc_ = std::make_unique<ferry::test::process>(argv, out_);
        // Subscribed once a marker we publish comes back.
        const bool ready = wait_until(
            [&] {
                ferry::test::process pub({"/usr/bin/mosquitto_pub", "-h", "127.0.0.1", "-p",
                                          std::to_string(port_), "-t", "ferry-test/ready", "-m",
                                          id_});
                pub.wait(2s);
                return has("ferry-test/ready", id_);
            },
            10s);
        REQUIRE_MESSAGE(ready, "recorder " << id_ << " did not subscribe");
    }
    std::vector<received> messages() const {
        std::vector<received> out;
        std::string text;
        try {
            text = ferry::test::read_file(out_);
        } catch (const std::exception&) {
            return out;
        }
        std::size_t pos = 0;
        // Only complete lines: the last one may still be being written.
        for (auto nl = text.find('\n', pos); nl != std::string::npos; nl = text.find('\n', pos)) {
            const std::string line = text.substr(pos, nl - pos);
            pos = nl + 1;
            const auto sp1 = line.find(' ');
            const auto sp2 = sp1 == std::string::npos ? sp1 : line.find(' ', sp1 + 1);
            if (sp2 == std::string::npos) continue;  // not a message line
            out.push_back({line.substr(sp1 + 1, sp2 - sp1 - 1), line.substr(sp2 + 1),
                           line.substr(0, sp1) == "1"});
        }
        return out;
    }
    std::vector<std::string> payloads(const std::string& topic) const {
        std::vector<std::string> out;
        for (const auto& m : messages())
            if (m.topic == topic) out.push_back(m.payload);
        return out;
    }
    std::size_t count(const std::string& topic) const { return payloads(topic).size(); }
    bool has(const std::string& topic, const std::string& payload) const {
        for (const auto& p : payloads(topic))
            if (p == payload) return true;
        return false;
    }

  private:
    std::uint16_t port_;
    std::string id_;
    temp_dir dir_;
    std::string out_;
    std::unique_ptr<ferry::test::process> proc_;
};

// The retained message of `topic`, read by a fresh clean session.
std::optional<received> retained_of(std::uint16_t port, const std::string& topic) {
    temp_dir d;
    ferry::test::process sub(
        {"/usr/bin/mosquitto_sub", "-h", "127.0.0.1", "-p", std::to_string(port), "-t", topic, "-C",
         "1", "-W", "3", "--retained-only", "-F", "%r %p"},
        d.file("out.txt"));
    sub.wait(5s);
    std::string text;
    try {
        text = ferry::test::read_file(d.file("out.txt"));
    } catch (const std::exception&) {
        return std::nullopt;
    }
    const auto nl = text.find('\n');
    if (nl == std::string::npos || nl < 2) return std::nullopt;
    return received{topic, text.substr(2, nl - 2), text[0] == '1'};
}

// Most cases check the one-stream order (upstream.replay.order: strict); live first, where the
// spool's backlog at a connect is replayed beside newer messages, has cases of its own below.
const std::string k_dead_letter = "ferry/{gateway}/dead-letter";
const ferry::config::replay_settings k_strict{ferry::config::replay_order::strict};

// `payload` as it arrives when it is replayed (docs/DELIVERY.md, Live first).
std::string replayed(const std::string& payload) {
    return "{" + std::string(ferry::k_replay_mark) + payload.substr(1);
}

// A JSON object, as every spooled payload is (the publisher dead-letters anything else).
std::string payload_of(int i) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "{\"m\":\"%05d\"}", i);
    return buf;
}

int index_of(const std::string& payload) {
    return std::stoi(payload.substr(6, 5));
}

void append_range(spool& sp, int from, int to, const std::string& topic = k_data_topic) {
    for (int i = from; i < to; ++i) {
        auto r = sp.append(topic, 1, false, 1,
                           [&](std::uint64_t, std::string& out) { out = payload_of(i); });
        REQUIRE(r == ferry::upstream::append_result::ok);
    }
}

ferry::config::spool_settings spool_config(const temp_dir& dir) {
    ferry::config::spool_settings s;
    s.path = dir.file("spool.db");
    s.max_bytes = 64ull * 1024 * 1024;
    s.fsync = ferry::config::fsync_mode::never;
    return s;
}

ferry::config::mqtt_settings mqtt_config(std::vector<std::string> uris, int inflight = 16) {
    ferry::config::mqtt_settings m;
    m.uris = std::move(uris);
    m.client_id = "ferry-" + k_gateway;
    m.version = 5;
    m.keepalive = 5s;
    m.inflight = inflight;
    return m;
}

// A broker whose sessions and queued messages survive a restart. mosquitto started as root
// drops to the `mosquitto` user, so its persistence directory must be writable by anyone.
// FERRY_MOSQ_LOG=FILE adds the broker's full log there, for diagnosis.
std::string persistent_conf(const temp_dir& dir) {
    std::filesystem::permissions(dir.path(), std::filesystem::perms::all);
    std::string conf =
        "persistence true\npersistence_location " + dir.path() + "/\nmax_queued_messages 0\n";
    if (const char* log = std::getenv("FERRY_MOSQ_LOG"))
        conf += "log_type all\nlog_dest file " + std::string(log) + "\n";
    return conf;
}

double metric(prometheus::Registry& reg, const std::string& name,
              const std::map<std::string, std::string>& labels = {}) {
    for (const auto& fam : reg.Collect()) {
        if (fam.name != name) continue;
        for (const auto& m : fam.metric) {
            std::map<std::string, std::string> have;
            for (const auto& l : m.label)
                have[l.name] = l.value;
            bool match = true;
            for (const auto& [k, v] : labels)
                if (have[k] != v) match = false;
            if (!match) continue;
            if (fam.type == prometheus::MetricType::Counter) return m.counter.value;
            if (fam.type == prometheus::MetricType::Gauge) return m.gauge.value;
            if (fam.type == prometheus::MetricType::Histogram)
                return static_cast<double>(m.histogram.sample_count);
        }
    }
    return -1;
}

// After dropping repeats, the payloads must be exactly first..last-1 in order; each repeat
// must lie within `window` of the newest message seen before it. Returns the repeat count.
std::size_t check_ordered_with_window(const std::vector<std::string>& payloads, int first, int last,
                                      int window) {
    std::vector<int> unique;
    int newest = first - 1;
    std::size_t repeats = 0;
    for (const auto& p : payloads) {
        int i = index_of(p);
        if (i <= newest) {
            ++repeats;
            CHECK_MESSAGE(newest - i < window, "repeat of " << i << " after " << newest);
            continue;
        }
        unique.push_back(i);
        newest = i;
    }
    if (unique.size() != static_cast<std::size_t>(last - first)) {
        std::vector<bool> seen(static_cast<std::size_t>(last - first));
        for (int i : unique)
            seen[static_cast<std::size_t>(i - first)] = true;
        for (int i = first; i < last; ++i)
            if (!seen[static_cast<std::size_t>(i - first)]) MESSAGE("missing " << i);
    }
    REQUIRE(unique.size() == static_cast<std::size_t>(last - first));
    for (int k = 0; k < last - first; ++k)
        REQUIRE(unique[static_cast<std::size_t>(k)] == first + k);
    return repeats;
}

}  // namespace

TEST_CASE("delivers the spool in order, says online and offline, empties the spool") {
    temp_dir dir;
    mosquitto broker;
    prometheus::Registry reg;
    spool sp(spool_config(dir), reg);
    append_range(sp, 0, 200);

    sub_recorder rec(broker.port(), "rec-1", {"plant/#", "ferry/#"});
    mqtt_publisher pub(mqtt_config({broker.uri()}), k_gateway, sp, reg);
    const auto t0 = std::chrono::steady_clock::now();
    pub.start();

    REQUIRE(wait_until([&] { return rec.count(k_data_topic) >= 200 && sp.messages() == 0; }, 10s));
    const auto took = std::chrono::steady_clock::now() - t0;
    MESSAGE("200 messages delivered and acked in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
    auto got = rec.payloads(k_data_topic);
    REQUIRE(got.size() == 200);  // no broker trouble: no duplicates at all
    // All 200 were in the spool when the connection came up: the backlog, replayed and marked.
    for (int i = 0; i < 200; ++i)
        CHECK(got[static_cast<std::size_t>(i)] == replayed(payload_of(i)));
    CHECK(metric(reg, "ferry_upstream_replayed_total") == 200);
    CHECK(pub.connected());

    REQUIRE(wait_until([&] { return rec.has(k_status_topic, "online"); }, 2s));
    auto online = retained_of(broker.port(), k_status_topic);
    REQUIRE(online);
    CHECK(online->payload == "online");
    CHECK(online->retained);

    CHECK(metric(reg, "ferry_mqtt_connected") == 1);
    CHECK(metric(reg, "ferry_mqtt_sent_total") == 200);
    CHECK(metric(reg, "ferry_mqtt_received_total") == 200);
    CHECK(metric(reg, "ferry_mqtt_published_total", {{"result", "ok"}}) == 200);
    CHECK(metric(reg, "ferry_mqtt_published_total", {{"result", "error"}}) == 0);
    CHECK(metric(reg, "ferry_mqtt_connects_total", {{"result", "ok"}}) == 1);
    CHECK(metric(reg, "ferry_delivery_latency_seconds") == 200);
    CHECK(metric(reg, "ferry_events_delivered_total") == 200);  // one event per message here

    // Messages appended while running go out too: live, not marked.
    append_range(sp, 200, 210);
    REQUIRE(wait_until([&] { return rec.count(k_data_topic) >= 210; }, 5s));
    CHECK(rec.payloads(k_data_topic).back() == payload_of(209));
    CHECK(metric(reg, "ferry_upstream_replayed_total") == 200);

    pub.stop(2000ms);
    CHECK_FALSE(pub.connected());
    CHECK(metric(reg, "ferry_mqtt_connected") == 0);
    REQUIRE(wait_until([&] { return rec.has(k_status_topic, "offline"); }, 2s));
    auto offline = retained_of(broker.port(), k_status_topic);
    REQUIRE(offline);
    CHECK(offline->payload == "offline");
    CHECK(offline->retained);
}

TEST_CASE(
    "live first: newer messages go out at once, the backlog beside them, paced, marked, each "
    "stream in order") {
    temp_dir dir;
    mosquitto broker;
    prometheus::Registry reg;
    spool sp(spool_config(dir), reg);
    append_range(sp, 0, 300);  // what an outage left: the backlog at the connect
    sub_recorder rec(broker.port(), "rec-live", {"plant/#"});
    ferry::config::replay_settings paced;
    paced.rate = 50;  // 300 backlog messages: about 6 s
    mqtt_publisher pub(mqtt_config({broker.uri()}), k_gateway, sp, reg, k_dead_letter, paced);
    const auto t0 = std::chrono::steady_clock::now();
    pub.start();
    REQUIRE(wait_until([&] { return rec.count(k_data_topic) >= 10; }, 10s));
    append_range(sp, 300, 320);  // live data, while the backlog is being replayed
    REQUIRE(wait_until([&] { return rec.count(k_data_topic) >= 320 && sp.messages() == 0; }, 20s));
    const auto took = std::chrono::steady_clock::now() - t0;
    const auto got = rec.payloads(k_data_topic);
    REQUIRE(got.size() == 320);  // no broker trouble: no duplicates
    std::vector<int> backlog, live;
    std::size_t last_live_at = 0, last_backlog_at = 0;
    for (std::size_t k = 0; k < got.size(); ++k) {
        const bool marked = got[k].rfind("{" + std::string(ferry::k_replay_mark), 0) == 0;
        const int i = marked ? index_of("{" + got[k].substr(1 + ferry::k_replay_mark.size()))
                             : index_of(got[k]);
        (marked ? backlog : live).push_back(i);
        (marked ? last_backlog_at : last_live_at) = k;
    }
    std::vector<int> want_backlog(300), want_live(20);
    for (int i = 0; i < 300; ++i)
        want_backlog[static_cast<std::size_t>(i)] = i;
    for (int i = 0; i < 20; ++i)
        want_live[static_cast<std::size_t>(i)] = 300 + i;
    CHECK(backlog == want_backlog);  // the backlog marked, in order
    CHECK(live == want_live);        // live unmarked, in order
    // Live data did not wait for the backlog: all of it arrived while the replay went on.
    CHECK(last_live_at < last_backlog_at);
    MESSAGE("last live message arrived as message "
            << last_live_at + 1 << " of 320; the replay took "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
    // Paced: 300 messages at 50/s cannot take much under 6 s (5 of them in the first burst).
    CHECK(took >= 5500ms);
    CHECK(metric(reg, "ferry_upstream_replayed_total") == 300);
    CHECK(metric(reg, "ferry_events_delivered_total") == 320);
    pub.stop(2000ms);
}

TEST_CASE("MQTT 3.1.1 delivers too") {
    temp_dir dir;
    mosquitto broker;
    prometheus::Registry reg;
    spool sp(spool_config(dir), reg);
    append_range(sp, 0, 50);
    sub_recorder rec(broker.port(), "rec-311", {"plant/#"});
    auto cfg = mqtt_config({broker.uri()});
    cfg.version = 4;
    mqtt_publisher pub(cfg, k_gateway, sp, reg, k_dead_letter, k_strict);
    pub.start();
    REQUIRE(wait_until([&] { return rec.count(k_data_topic) >= 50 && sp.messages() == 0; }, 10s));
    check_ordered_with_window(rec.payloads(k_data_topic), 0, 50, 1);
    pub.stop(1000ms);
}

// A spool and a mosquitto behind a proxy that can play a broker's refusals.
struct proxied_rig {
    temp_dir dir;
    mosquitto broker;
    ferry::test::mqtt_proxy proxy{broker.port()};
    prometheus::Registry reg;
    spool sp{spool_config(dir), reg};
};

// A broker that speaks 3.1.1 only (the proxy meets an MQTT 5 CONNECT as RabbitMQ 3.10 does, or
// with CONNACK 0x84): with no `version` set, the publisher offers 3.1.1 at once on the same uri,
// delivers, and keeps 3.1.1 for that uri's reconnects; a negotiation is not a connect error.
TEST_CASE("no version set: a broker that refuses MQTT 5 gets 3.1.1, kept for its reconnects") {
    std::string answer;
    SUBCASE("closed without an answer") {
        answer = "close";
    }
    SUBCASE("CONNACK 0x84") {
        answer = "refuse";
    }
    CAPTURE(answer);
    proxied_rig rig;
    auto& [dir, broker, proxy, reg, sp] = rig;
    proxy.mqtt5(answer);
    append_range(sp, 0, 50);
    sub_recorder rec(broker.port(), "rec-negotiate", {"plant/#"});
    auto cfg = mqtt_config({proxy.uri()});
    cfg.version = 0;
    mqtt_publisher pub(cfg, k_gateway, sp, reg, k_dead_letter, k_strict);
    pub.start();
    REQUIRE(wait_until([&] { return rec.count(k_data_topic) >= 50 && sp.messages() == 0; }, 10s));
    check_ordered_with_window(rec.payloads(k_data_topic), 0, 50, 1);
    auto st = proxy.stats();
    CHECK(st.mqtt5_refused == 1);
    CHECK(st.connections == 2);  // the refused 5, the 3.1.1 that delivered
    CHECK(metric(reg, "ferry_mqtt_errors_total", {{"reason", "connect"}}) == 0);

    // A lost connection: the reconnect offers 3.1.1 straight away.
    proxy.cut();
    REQUIRE(wait_until([&] { return proxy.stats().open == 1 && pub.connected(); }, 10s));
    append_range(sp, 50, 100);
    REQUIRE(wait_until([&] { return rec.count(k_data_topic) >= 100 && sp.messages() == 0; }, 10s));
    check_ordered_with_window(rec.payloads(k_data_topic), 0, 100, 1);
    st = proxy.stats();
    CHECK(st.mqtt5_refused == 1);
    CHECK(st.connections == 3);
    pub.stop(1000ms);
}

// `version: 5` set: no fallback; the connect fails, is counted, and nothing is lost.
TEST_CASE("version 5 set: a broker that refuses MQTT 5 is not offered 3.1.1") {
    proxied_rig rig;
    auto& [dir, broker, proxy, reg, sp] = rig;
    proxy.mqtt5("refuse");
    append_range(sp, 0, 10);
    mqtt_publisher pub(mqtt_config({proxy.uri()}), k_gateway, sp, reg, k_dead_letter, k_strict);
    pub.start();
    REQUIRE(wait_until([&] { return proxy.stats().mqtt5_refused >= 2; }, 10s));
    CHECK(proxy.stats().to_broker.count("PUBLISH") == 0);
    CHECK(metric(reg, "ferry_mqtt_errors_total", {{"reason", "connect"}}) >= 2);
    CHECK(sp.messages() == 10);
    pub.stop(0ms);
}

// A broker that closes the connection over a SUBSCRIBE (RabbitMQ 3.x when the queue of a
// subscription is homed on a dead node): the next connects go without the subscription, so
// telemetry flows; the failure is counted once.
TEST_CASE("a broker that hangs up on the command subscription: telemetry goes on without it") {
    proxied_rig rig;
    auto& [dir, broker, proxy, reg, sp] = rig;
    proxy.on_subscribe("close");
    append_range(sp, 0, 50);
    sub_recorder rec(broker.port(), "rec-subscribe", {"plant/#"});
    mqtt_publisher pub(mqtt_config({proxy.uri()}), k_gateway, sp, reg, k_dead_letter, k_strict);
    pub.set_subscription(
        "ferry/" + k_gateway + "/cmd/+/+/set", [](const std::string&, const std::string&, bool) {},
        0);
    pub.start();
    REQUIRE(wait_until([&] { return rec.count(k_data_topic) >= 50 && sp.messages() == 0; }, 15s));
    check_ordered_with_window(rec.payloads(k_data_topic), 0, 50, 1);
    const auto st = proxy.stats();
    CHECK(st.subscribes_closed == 1);
    CHECK(st.connections == 2);
    CHECK(metric(reg, "ferry_mqtt_errors_total", {{"reason", "subscribe"}}) == 1);
    pub.stop(1000ms);
}

TEST_CASE("a broker restart mid-stream loses nothing; duplicates only within the window") {
    if (std::getenv("FERRY_DEBUG")) ferry::log::set_level(ferry::config::log_level::debug);
    constexpr int k_total = 3000;
    constexpr int k_inflight = 16;
    temp_dir dir;
    temp_dir broker_dir;
    mosquitto broker(0, persistent_conf(broker_dir));
    prometheus::Registry reg;
    spool sp(spool_config(dir), reg);
    sub_recorder rec(broker.port(), "rec-restart", {"plant/#"});

    mqtt_publisher pub(mqtt_config({broker.uri()}, k_inflight), k_gateway, sp, reg, k_dead_letter,
                       k_strict);
    pub.start();

    // A steady producer, so the outage lands mid-stream and the spool grows during it.
    std::atomic<bool> producing{true};
    std::thread producer([&] {
        for (int i = 0; i < k_total; ++i) {
            append_range(sp, i, i + 1);
            if (i % 10 == 9) std::this_thread::sleep_for(5ms);
        }
        producing = false;
    });

    REQUIRE(wait_until([&] { return rec.count(k_data_topic) >= 300; }, 10s));
    broker.stop();
    const auto held = sp.messages();
    std::this_thread::sleep_for(700ms);
    CHECK_FALSE(pub.connected());
    const auto grown = sp.messages();
    MESSAGE("spool held " << held << " at broker stop, " << grown << " after 700 ms outage");
    CHECK(grown > held);
    const auto t_restart = std::chrono::steady_clock::now();
    broker.start();
    REQUIRE(wait_until([&] { return pub.connected(); }, 10s));
    MESSAGE("reconnected " << std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::steady_clock::now() - t_restart)
                                  .count()
                           << " ms after the broker accepted connections again");

    producer.join();
    REQUIRE(wait_until([&] { return sp.messages() == 0; }, 30s));
    // Everything acked by the broker is queued for the persistent recorder session.
    REQUIRE(wait_until(
        [&] {
            auto p = rec.payloads(k_data_topic);
            return !p.empty() && p.back() == payload_of(k_total - 1);
        },
        15s));
    auto got = rec.payloads(k_data_topic);
    const auto repeats = check_ordered_with_window(got, 0, k_total, k_inflight);
    MESSAGE("received " << got.size() << " for " << k_total << " messages: " << repeats
                        << " duplicates");
    CHECK(repeats <= 2 * k_inflight);
    CHECK(metric(reg, "ferry_mqtt_sent_total") >= k_total);
    CHECK(metric(reg, "ferry_mqtt_received_total") == k_total);
    CHECK(metric(reg, "ferry_mqtt_connects_total", {{"result", "ok"}}) >= 2);
    CHECK(metric(reg, "ferry_mqtt_errors_total", {{"reason", "connection_lost"}}) >= 1);
    pub.stop(1000ms);
}

TEST_CASE("failover: the first uri stops, delivery continues on the second") {
    temp_dir dir;
    mosquitto b1;
    mosquitto b2;
    prometheus::Registry reg;
    spool sp(spool_config(dir), reg);
    sub_recorder rec1(b1.port(), "rec-b1", {"plant/#", "ferry/#"});
    sub_recorder rec2(b2.port(), "rec-b2", {"plant/#", "ferry/#"});

    mqtt_publisher pub(mqtt_config({b1.uri(), b2.uri()}), k_gateway, sp, reg, k_dead_letter,
                       k_strict);
    append_range(sp, 0, 100);
    pub.start();
    REQUIRE(wait_until([&] { return rec1.count(k_data_topic) >= 100 && sp.messages() == 0; }, 10s));
    CHECK(rec2.count(k_data_topic) == 0);  // the first uri is preferred

    b1.stop();
    append_range(sp, 100, 200);
    REQUIRE(wait_until([&] { return rec2.count(k_data_topic) >= 100 && sp.messages() == 0; }, 15s));
    check_ordered_with_window(rec2.payloads(k_data_topic), 100, 200, 1);
    REQUIRE(wait_until([&] { return rec2.has(k_status_topic, "online"); }, 2s));
    pub.stop(1000ms);
    REQUIRE(wait_until([&] { return rec2.has(k_status_topic, "offline"); }, 2s));
}

TEST_CASE("stop() returns promptly when no broker is reachable") {
    temp_dir dir;
    prometheus::Registry reg;
    spool sp(spool_config(dir), reg);
    append_range(sp, 0, 10);
    const auto port = ferry::test::free_port();  // nothing listens here
    mqtt_publisher pub(mqtt_config({"tcp://127.0.0.1:" + std::to_string(port)}), k_gateway, sp, reg,
                       k_dead_letter, k_strict);
    pub.start();
    auto drain = 500ms;
    SUBCASE("in a short backoff wait") {
        std::this_thread::sleep_for(1500ms);  // several failed attempts, backoff growing
        CHECK(metric(reg, "ferry_mqtt_connects_total", {{"result", "error"}}) >= 3);
    }
    SUBCASE("in a long wait, while the publisher probes the broker's port") {
        // Attempts at 0, 0.1, 0.3, 0.7 and 1.5 s: then a 1.6 s wait (1.3-1.9 s), probed.
        REQUIRE(wait_until(
            [&] {
                return metric(reg, "ferry_mqtt_connects_total", {{"result", "error"}}) >= 5;
            },
            5s));
        std::this_thread::sleep_for(500ms);
        drain = 300ms;
    }
    CHECK_FALSE(pub.connected());
    const auto t0 = std::chrono::steady_clock::now();
    pub.stop(drain);
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - t0);
    MESSAGE("stop(" << drain.count() << "ms) with the broker down took " << took.count() << " ms");
    CHECK(took < 1500ms);
    CHECK(sp.messages() == 10);  // nothing is dropped
}

namespace {

// A port that accepts TCP and closes every connection at once: a broker that is there but
// refuses us (as a full or misconfigured broker does, or a TLS port with the wrong certificate).
class refusing_port {
  public:
    explicit refusing_port(std::uint16_t port) : fd_(ferry::test::listen_loopback(port)) {
        thread_ = std::thread([this] {
            while (!stop_) {
                pollfd p{fd_, POLLIN, 0};
                if (::poll(&p, 1, 50) <= 0) continue;
                const int c = ::accept(fd_, nullptr, nullptr);
                if (c < 0) continue;
                ++accepted_;
                ::close(c);
            }
        });
    }
    ~refusing_port() { close(); }
    void close() {
        if (fd_ < 0) return;
        stop_ = true;
        thread_.join();
        ::close(fd_);
        fd_ = -1;
    }
    int accepted() const { return accepted_; }

  private:
    int fd_ = -1;
    std::atomic<bool> stop_{false};
    std::atomic<int> accepted_{0};
    std::thread thread_;
};

}  // namespace

// The reconnect backoff grows to 30 s (DELIVERY.md); while it waits, the publisher probes the
// broker's TCP port and connects as soon as a port it saw closed accepts again. Before the
// probe this test failed: the broker came back ~1 s into a 12.8 s wait (10.2-15.4 s with the
// jitter), and the spool emptied 11.9 s after it; with the probe 1.3-2.0 s, and 0.35 s once the
// wait also renewed the Paho client. Attempt k follows a wait of 0.1 s x 2^(k-2).
TEST_CASE(
    "a broker back after a long outage is reconnected within seconds; one that refuses "
    "us is not hammered") {
    temp_dir dir;
    temp_dir broker_dir;
    mosquitto broker(0, persistent_conf(broker_dir));
    prometheus::Registry reg;
    spool sp(spool_config(dir), reg);
    // The recorder's session (and subscription) is kept by the broker across its restart.
    sub_recorder rec(broker.port(), "rec-probe", {"plant/#"});
    broker.stop();

    // 1. A port that accepts and hangs up: the backoff doubles as it always did, the probe
    // sees the port open from the start of each wait and leaves it alone.
    auto refusing = std::make_unique<refusing_port>(broker.port());
    append_range(sp, 0, 100);
    mqtt_publisher pub(mqtt_config({broker.uri()}), k_gateway, sp, reg, k_dead_letter, k_strict);
    const auto t0 = std::chrono::steady_clock::now();
    pub.start();
    auto errors = [&] { return metric(reg, "ferry_mqtt_connects_total", {{"result", "error"}}); };
    REQUIRE(wait_until([&] { return errors() >= 7; }, 15s));
    const auto refused_for = std::chrono::steady_clock::now() - t0;
    // Seven attempts take at least 0.8 x (0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2) = 5.0 s of backoff;
    // cutting the 1.6 s and 3.2 s waits short on an open port would take 1.5 s.
    CHECK(refused_for >= 4000ms);
    MESSAGE("7 refused attempts in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(refused_for).count() << " ms, "
            << refusing->accepted() << " connections accepted");

    // 2. The port closes (the broker is down) in the 6.4 s wait, which saw it open and does
    // not probe it again; the next attempt fails and the wait after it is 12.8 s.
    refusing->close();
    REQUIRE(wait_until([&] { return errors() >= 8; }, 15s));
    append_range(sp, 100, 200);
    std::this_thread::sleep_for(1000ms);

    // 3. The broker is back.
    broker.start();
    const auto t_back = std::chrono::steady_clock::now();
    REQUIRE(wait_until([&] { return sp.messages() == 0; }, 20s));
    const auto drained = std::chrono::steady_clock::now() - t_back;
    MESSAGE("spool empty " << std::chrono::duration_cast<std::chrono::milliseconds>(drained).count()
                           << " ms after the broker accepted connections again");
    // Generous for a loaded machine; the old wait left at least 9 s.
    CHECK(drained < 5000ms);
    CHECK(errors() == 8);  // the connect after the probe succeeded
    CHECK(metric(reg, "ferry_mqtt_connects_total", {{"result", "ok"}}) == 1);

    REQUIRE(wait_until([&] { return rec.count(k_data_topic) >= 200; }, 15s));
    auto got = rec.payloads(k_data_topic);
    CHECK(got.size() == 200);
    check_ordered_with_window(got, 0, 200, 1);
    pub.stop(1000ms);
}

TEST_CASE("stop(drain) delivers what the spool holds, then says offline") {
    temp_dir dir;
    mosquitto broker;
    prometheus::Registry reg;
    spool sp(spool_config(dir), reg);
    sub_recorder rec(broker.port(), "rec-drain", {"plant/#", "ferry/#"});
    append_range(sp, 0, 500);
    mqtt_publisher pub(mqtt_config({broker.uri()}), k_gateway, sp, reg, k_dead_letter, k_strict);
    pub.start();
    pub.stop(5000ms);  // at once: everything must still go out within the drain
    CHECK(sp.messages() == 0);
    REQUIRE(wait_until([&] { return rec.count(k_data_topic) >= 500; }, 5s));
    check_ordered_with_window(rec.payloads(k_data_topic), 0, 500, 1);
    REQUIRE(wait_until([&] { return rec.has(k_status_topic, "offline"); }, 2s));
    const auto status = rec.payloads(k_status_topic);
    CHECK(status.back() == "offline");
}

namespace {

// A TLS listener on the broker's port with the harness's test PKI (a server certificate for
// 127.0.0.1, client certificates required), plus a plain listener on `plain_port` for the
// recorder.
std::string broker_conf(const ferry::test::test_pki& pki, std::uint16_t plain_port) {
    return "cafile " + pki.ca + "\ncertfile " + pki.server + "\nkeyfile " + pki.server_key +
           "\nrequire_certificate true\nlistener " + std::to_string(plain_port) + " 127.0.0.1\n";
}

}  // namespace

TEST_CASE("TLS: verified server, client certificate; a wrong CA never connects") {
    ferry::test::test_pki pki;
    const auto plain = ferry::test::free_port();
    mosquitto broker(0, broker_conf(pki, plain));
    REQUIRE(ferry::test::wait_for_port(plain, 5s));
    const std::string tls_uri = "ssl://127.0.0.1:" + std::to_string(broker.port());

    SUBCASE("good CA and client certificate: delivers") {
        temp_dir dir;
        prometheus::Registry reg;
        spool sp(spool_config(dir), reg);
        sub_recorder rec(plain, "rec-tls", {"plant/#"});
        append_range(sp, 0, 20);
        auto cfg = mqtt_config({tls_uri});
        cfg.tls = ferry::config::tls_settings{pki.ca, pki.client, pki.client_key, true};
        mqtt_publisher pub(cfg, k_gateway, sp, reg, k_dead_letter, k_strict);
        pub.start();
        REQUIRE(
            wait_until([&] { return rec.count(k_data_topic) >= 20 && sp.messages() == 0; }, 10s));
        check_ordered_with_window(rec.payloads(k_data_topic), 0, 20, 1);
        pub.stop(1000ms);
    }
    SUBCASE("server certificate from another CA: refused, nothing leaves the spool") {
        temp_dir dir;
        prometheus::Registry reg;
        spool sp(spool_config(dir), reg);
        append_range(sp, 0, 5);
        auto cfg = mqtt_config({tls_uri});
        cfg.tls = ferry::config::tls_settings{pki.other_ca, pki.client, pki.client_key, true};
        mqtt_publisher pub(cfg, k_gateway, sp, reg, k_dead_letter, k_strict);
        pub.start();
        REQUIRE(wait_until(
            [&] {
                return metric(reg, "ferry_mqtt_connects_total", {{"result", "error"}}) >= 2;
            },
            10s));
        CHECK_FALSE(pub.connected());
        CHECK(metric(reg, "ferry_mqtt_connects_total", {{"result", "ok"}}) == 0);
        pub.stop(200ms);
        CHECK(sp.messages() == 5);
    }
}

TEST_CASE("throughput (informational): 5000 QoS 1 messages") {
    using ferry::config::fsync_mode;
    struct run {
        fsync_mode mode;
        int inflight;
    };
    for (const auto [mode, inflight] :
         {run{fsync_mode::never, 16}, run{fsync_mode::always, 16}, run{fsync_mode::never, 256}}) {
        temp_dir dir;
        mosquitto broker;
        prometheus::Registry reg;
        auto scfg = spool_config(dir);
        scfg.fsync = mode;
        spool sp(scfg, reg);
        append_range(sp, 0, 5000);
        mqtt_publisher pub(mqtt_config({broker.uri()}, inflight), k_gateway, sp, reg, k_dead_letter,
                           k_strict);
        pub.start();
        REQUIRE(wait_until([&] { return pub.connected(); }, 10s));
        const auto t0 = std::chrono::steady_clock::now();
        REQUIRE(wait_until([&] { return sp.messages() == 0; }, 120s));
        const long ms = static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                              std::chrono::steady_clock::now() - t0)
                                              .count());
        const std::string name = mode == fsync_mode::never ? "never" : "always";
        CHECK(metric(reg, "ferry_mqtt_published_total", {{"result", "error"}}) == 0);
        MESSAGE("spool fsync " << name << ", inflight " << inflight << ": 5000 acked in " << ms
                               << " ms (" << 5000L * 1000 / std::max(ms, 1L) << " msg/s)");
        pub.stop(1000ms);
    }
}

// ---- Broker faults (issue 13): a PUBACK that never comes, a publish the broker refuses ------

TEST_CASE("a PUBACK that never comes: reconnect after ack_timeout, resend from the oldest") {
    temp_dir dir;
    mosquitto broker;
    ferry::test::mqtt_proxy proxy(broker.port());
    prometheus::Registry reg;
    spool sp(spool_config(dir), reg);
    append_range(sp, 0, 100);
    sub_recorder rec(broker.port(), "rec-ack-timeout", {"plant/#"});

    // The broker gets every publish; its PUBACKs never reach Ferry, pings still do.
    proxy.withhold_puback();
    auto cfg = mqtt_config({proxy.uri()});
    cfg.ack_timeout = 2s;
    mqtt_publisher pub(cfg, k_gateway, sp, reg, k_dead_letter, k_strict);
    CHECK(metric(reg, "ferry_mqtt_errors_total", {{"reason", "ack_timeout"}}) == 0);
    pub.start();

    // The window fills and stays full: 16 at the broker, none acked (the proxy also counts the
    // retained "online" status, whose ack it withholds too).
    REQUIRE(wait_until([&] { return metric(reg, "ferry_mqtt_inflight") == 16; }, 10s));
    std::this_thread::sleep_for(1000ms);
    CHECK(proxy.stats().inflight == 17);
    CHECK(sp.messages() == 100);
    CHECK(rec.count(k_data_topic) == 16);

    // The acks flow again, but the ones withheld never come: only a reconnect (and resend
    // from the oldest) unblocks the window. Without ack_timeout the spool stays at 100 and the
    // window full however long this waits.
    proxy.pass();
    const bool drained = wait_until([&] { return sp.messages() == 0; }, 20s);
    const auto st = proxy.stats();
    MESSAGE("spool " << sp.messages() << ", inflight metric " << metric(reg, "ferry_mqtt_inflight")
                     << ", proxy: " << st.json);
    REQUIRE(drained);
    CHECK(metric(reg, "ferry_mqtt_errors_total", {{"reason", "ack_timeout"}}) >= 1);
    CHECK(metric(reg, "ferry_mqtt_connects_total", {{"result", "ok"}}) >= 2);
    CHECK(st.connections >= 2);
    REQUIRE(wait_until(
        [&] {
            auto p = rec.payloads(k_data_topic);
            return !p.empty() && p.back() == payload_of(99);
        },
        10s));
    // The 16 the broker already had arrive twice: duplicates only within the window.
    const auto repeats = check_ordered_with_window(rec.payloads(k_data_topic), 0, 100, 16);
    MESSAGE(repeats << " repeats");
    CHECK(repeats <= 16);
    // Conservation: each message's events count as delivered once, however often it was
    // acked (a resent one the broker already had is acked again).
    CHECK(metric(reg, "ferry_events_delivered_total") == 100);
    pub.stop(1000ms);
}

namespace {

const std::string k_ok_topic = "plant/gw1/ok";
const std::string k_denied_topic = "plant/gw1/denied";

// A broker whose ACL lets anonymous clients write everything but k_denied_topic; it answers
// a QoS 1 publish there with PUBACK 0x87 (not authorized) under MQTT 5. allow() rewrites the
// ACL to allow it too and makes mosquitto reload it (SIGHUP).
struct acl_broker {
    temp_dir dir;
    std::string acl = dir.file("acl");
    std::unique_ptr<mosquitto> broker;
    acl_broker() {
        std::filesystem::permissions(dir.path(), std::filesystem::perms::all);
        write(false);
        broker = std::make_unique<mosquitto>(0, "acl_file " + acl + "\n");
    }
    void write(bool allow_denied) {
        ferry::test::write_file(acl, std::string("topic readwrite plant/gw1/ok\n") +
                                         (allow_denied ? "topic readwrite plant/gw1/denied\n"
                                                       : "topic read plant/gw1/denied\n") +
                                         "topic readwrite ferry/#\ntopic readwrite ferry-test/#\n");
        std::filesystem::permissions(acl, std::filesystem::perms::all);
    }
    void allow() {
        write(true);
        ::kill(broker->pid(), SIGHUP);
    }
};

// Payload indexes per topic in arrival order.
std::vector<int> indexes(const std::vector<std::string>& payloads) {
    std::vector<int> out;
    for (const auto& p : payloads)
        out.push_back(index_of(p));
    return out;
}

}  // namespace

TEST_CASE("refused publishes, policy drop: dropped after refused_attempts, order kept") {
    acl_broker b;
    temp_dir dir;
    prometheus::Registry reg;
    spool sp(spool_config(dir), reg);
    // 0..39, every 5th on the denied topic: refusals in the middle of full windows.
    std::vector<int> ok, denied;
    for (int i = 0; i < 40; ++i) {
        const bool deny = i % 5 == 2;
        append_range(sp, i, i + 1, deny ? k_denied_topic : k_ok_topic);
        (deny ? denied : ok).push_back(i);
    }
    sub_recorder rec(b.broker->port(), "rec-refused-drop", {"plant/#"});
    auto cfg = mqtt_config({b.broker->uri()});
    cfg.refused = ferry::config::refused_policy::drop;
    cfg.refused_attempts = 2;
    mqtt_publisher pub(cfg, k_gateway, sp, reg, k_dead_letter, k_strict);
    CHECK(metric(reg, "ferry_mqtt_errors_total", {{"reason", "refused"}}) == 0);
    CHECK(metric(reg, "ferry_events_dropped_total", {{"reason", "refused"}}) == 0);
    pub.start();

    const bool drained = wait_until([&] { return sp.messages() == 0; }, 30s);
    MESSAGE("spool " << sp.messages() << ", refused "
                     << metric(reg, "ferry_mqtt_errors_total", {{"reason", "refused"}}));
    REQUIRE(drained);
    REQUIRE(wait_until([&] { return rec.count(k_ok_topic) >= ok.size(); }, 10s));
    std::this_thread::sleep_for(300ms);
    // Every accepted message once, in order; nothing on the denied topic.
    CHECK(indexes(rec.payloads(k_ok_topic)) == ok);
    CHECK(rec.count(k_denied_topic) == 0);
    // Each denied message refused exactly refused_attempts times, then dropped.
    CHECK(metric(reg, "ferry_mqtt_errors_total", {{"reason", "refused"}}) ==
          static_cast<double>(2 * denied.size()));
    // Conservation (one event per message): delivered + dropped = everything spooled.
    CHECK(metric(reg, "ferry_events_dropped_total", {{"reason", "refused"}}) ==
          static_cast<double>(denied.size()));
    CHECK(metric(reg, "ferry_events_delivered_total") == static_cast<double>(ok.size()));
    // A refusal is an answer, not a broken connection: no reconnect.
    CHECK(metric(reg, "ferry_mqtt_connects_total", {{"result", "ok"}}) == 1);
    CHECK(metric(reg, "ferry_mqtt_errors_total", {{"reason", "connection_lost"}}) == 0);
    pub.stop(1000ms);
}

TEST_CASE(
    "refused publishes, policy block: the stream stops at the refusal, no creep, resumes "
    "in order once the broker accepts") {
    acl_broker b;
    temp_dir dir;
    prometheus::Registry reg;
    spool sp(spool_config(dir), reg);
    // 0..4 ok, 5 denied, 6..29 ok, 30 denied, 31..59 ok.
    for (int i = 0; i < 60; ++i)
        append_range(sp, i, i + 1, i == 5 || i == 30 ? k_denied_topic : k_ok_topic);
    sub_recorder rec(b.broker->port(), "rec-refused-block", {"plant/#"});
    auto cfg = mqtt_config({b.broker->uri()});  // refused: block (the default)
    REQUIRE(cfg.refused == ferry::config::refused_policy::block);
    mqtt_publisher pub(cfg, k_gateway, sp, reg, k_dead_letter, k_strict);
    pub.start();

    // The window that held 5 is answered: 5 refused, the others accepted (the window slides,
    // so up to 15 messages behind 5 may have gone out before its refusal came back).
    REQUIRE(wait_until(
        [&] {
            return metric(reg, "ferry_mqtt_errors_total", {{"reason", "refused"}}) >= 2;
        },
        10s));
    std::this_thread::sleep_for(200ms);
    const auto first = rec.count(k_ok_topic);
    // Then nothing newer goes out while 5 is refused again and again (a window per retry
    // would have sent everything by now).
    REQUIRE(wait_until(
        [&] {
            return metric(reg, "ferry_mqtt_errors_total", {{"reason", "refused"}}) >= 5;
        },
        15s));
    const auto held = rec.count(k_ok_topic);
    MESSAGE("ok messages through while blocked: " << first << " after the 2nd refusal, " << held
                                                  << " after the 5th; spool " << sp.messages());
    CHECK(held == first);
    CHECK(held >= 15);
    CHECK(held <= 20);  // 0..20 but 5
    CHECK(sp.messages() == 60 - held);

    // The operator fixes the ACL: 5 goes through, then the rest, in order.
    b.allow();
    const bool drained = wait_until([&] { return sp.messages() == 0; }, 30s);
    REQUIRE(drained);
    REQUIRE(wait_until(
        [&] { return rec.count(k_ok_topic) >= 58 && rec.count(k_denied_topic) >= 2; }, 10s));
    std::vector<int> ok_expected;
    for (int i = 0; i < 60; ++i)
        if (i != 5 && i != 30) ok_expected.push_back(i);
    CHECK(indexes(rec.payloads(k_ok_topic)) == ok_expected);
    CHECK(indexes(rec.payloads(k_denied_topic)) == std::vector<int>{5, 30});
    CHECK(metric(reg, "ferry_events_dropped_total", {{"reason", "refused"}}) == 0);
    CHECK(metric(reg, "ferry_events_delivered_total") == 60);
    // The waits between refusals (1.6 s after the 5th) are not reconnect waits: the connection
    // stays, no port probe, no fresh client (which had cut it, and the resend hid that).
    CHECK(metric(reg, "ferry_mqtt_connects_total", {{"result", "ok"}}) == 1);
    CHECK(metric(reg, "ferry_mqtt_errors_total", {{"reason", "connection_lost"}}) == 0);
    pub.stop(1000ms);
}

TEST_CASE(
    "a refused message that a later one on its topic overtook is dropped, never resent "
    "after it") {
    // mosquitto refuses a publish larger than message_size_limit (PUBACK 0x95) and takes the
    // smaller ones behind it on the same topic: the refused one can never follow them in order.
    temp_dir dir;
    mosquitto broker(0, "message_size_limit 1000\n");
    prometheus::Registry reg;
    spool sp(spool_config(dir), reg);
    append_range(sp, 0, 3);
    REQUIRE(sp.append(k_data_topic, 1, false, 1, [](std::uint64_t, std::string& out) {
        out = payload_of(3);
        out.insert(out.size() - 1, ",\"pad\":\"" + std::string(2000, 'x') + "\"");
    }) == ferry::upstream::append_result::ok);
    append_range(sp, 4, 10);
    sub_recorder rec(broker.port(), "rec-overtaken", {"plant/#"});
    mqtt_publisher pub(mqtt_config({broker.uri()}), k_gateway, sp, reg, k_dead_letter,
                       k_strict);  // block
    pub.start();
    const bool drained = wait_until([&] { return sp.messages() == 0; }, 15s);
    MESSAGE("spool " << sp.messages() << ", refused "
                     << metric(reg, "ferry_mqtt_errors_total", {{"reason", "refused"}}));
    REQUIRE(drained);
    REQUIRE(wait_until([&] { return rec.count(k_data_topic) >= 9; }, 10s));
    std::this_thread::sleep_for(300ms);
    CHECK(indexes(rec.payloads(k_data_topic)) == std::vector<int>{0, 1, 2, 4, 5, 6, 7, 8, 9});
    CHECK(metric(reg, "ferry_mqtt_errors_total", {{"reason", "refused"}}) == 1);
    CHECK(metric(reg, "ferry_events_dropped_total", {{"reason", "refused"}}) == 1);
    CHECK(metric(reg, "ferry_events_delivered_total") == 9);
    pub.stop(1000ms);
}
