// MQTT 5 properties through `ferry run` and a real mosquitto (issue 18, item 3; docs/DELIVERY.md
// "MQTT 5 properties"): what `mosquitto_sub -V 5 -F '%t|%E|%P|%p'` shows of each batch (the
// expiry left, the user properties gateway, batch, first_seq, last_seq against the JSON), a
// spooled batch past its expiry dropped and counted (conservation holds), the broker's Receive
// Maximum (mosquitto max_inflight_messages) holding Ferry's window of 16, retain_last seen by a
// late subscriber and again after a broker restart, and MQTT 3.1.1 leaving properties out.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "tests/support/ferry_run.hpp"
#include "tests/support/mqtt_proxy.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;
using nlohmann::json;

namespace {

const std::string k_config = std::string(FERRY_SOURCE_DIR) + "/tests/testcases/mqtt5/ferry.yaml";

// One line of mosquitto_sub -F '%t|%E|%P|%p': topic, expiry interval ("" when absent), user
// properties by name, payload.
struct sub_line {
    std::string topic, expiry;
    std::map<std::string, std::string> props;
    std::string payload;
};

std::vector<sub_line> sub_lines(const std::string& file) {
    std::vector<sub_line> out;
    std::istringstream in(read_file_if_exists(file));
    std::string line;
    while (std::getline(in, line)) {
        sub_line l;
        std::size_t a = line.find('|'), b = line.find('|', a + 1), c = line.find('|', b + 1);
        if (a == std::string::npos || b == std::string::npos || c == std::string::npos) continue;
        l.topic = line.substr(0, a);
        l.expiry = line.substr(a + 1, b - a - 1);
        std::istringstream props(line.substr(b + 1, c - b - 1));
        std::string p;
        while (props >> p)
            if (auto colon = p.find(':'); colon != std::string::npos)
                l.props[p.substr(0, colon)] = p.substr(colon + 1);
        l.payload = line.substr(c + 1);
        out.push_back(std::move(l));
    }
    return out;
}

// mosquitto_sub -V 5 on `port`, each message one line of `file`.
std::unique_ptr<process> mosquitto_sub(std::uint16_t port, const std::string& filter,
                                       const std::string& file) {
    return std::make_unique<process>(
        std::vector<std::string>{"mosquitto_sub", "-V", "5", "-h", "127.0.0.1", "-p",
                                 std::to_string(port), "-q", "1", "-t", filter, "-F",
                                 "%t|%E|%P|%p"},
        file);
}

ferry_env vars(const temp_dir& dir, std::uint16_t http_port, const std::string& uri,
               const std::string& version, const std::string& expiry, bool retain_last = true) {
    auto env = ferry_vars(dir.path(), http_port, 0, uri);
    env["VERSION"] = version;
    env["EXPIRY"] = expiry;
    env["RETAIN_LAST"] = retain_last ? "true" : "false";
    return env;
}

std::string dropped(const std::string& reason) {
    return "ferry_events_dropped_total{reason=\"" + reason + "\"}";
}

}  // namespace

TEST_CASE("MQTT 5: each batch shows its expiry and gateway, batch, first_seq, last_seq") {
    mosquitto broker;
    temp_dir dir;
    const auto http_port = free_port();
    auto sub = mosquitto_sub(broker.port(), "site/#", dir.file("sub.txt"));
    std::this_thread::sleep_for(300ms);  // subscribed before the first batch
    auto ferry = ferry_process(k_config, dir.file("ferry.log"),
                               vars(dir, http_port, broker.uri(), "5", "60s"));
    wait_ready(*ferry, http_port);
    REQUIRE(wait_until([&] { return sub_lines(dir.file("sub.txt")).size() >= 10; }, 15s));

    std::map<std::string, std::uint64_t> newest_seq;  // per tag
    for (auto& l : sub_lines(dir.file("sub.txt"))) {
        INFO(l.payload);
        CHECK(l.topic == "site/m5-gw/box");
        // Sent at once: the whole 60 s are left (the broker takes off what it held it, in
        // whole seconds).
        CHECK((l.expiry == "60" || l.expiry == "59"));
        const auto doc = json::parse(l.payload);
        CHECK(l.props["gateway"] == "m5-gw");
        CHECK(l.props["batch"] == std::to_string(doc["batch"].get<std::uint64_t>()));
        REQUIRE(!doc["events"].empty());
        CHECK(l.props["first_seq"] ==
              std::to_string(doc["events"].front()["seq"].get<std::uint64_t>()));
        CHECK(l.props["last_seq"] ==
              std::to_string(doc["events"].back()["seq"].get<std::uint64_t>()));
        for (const auto& e : doc["events"])
            newest_seq[e["tag"].get<std::string>()] = e["seq"].get<std::uint64_t>();
    }

    // retain_last: a subscriber that comes late gets each point's newest value at once.
    mqtt_recorder late(broker.uri(), {"ferry/m5-gw/last/#"});
    REQUIRE(late.wait_for_count(2, 5s));
    std::set<std::string> topics;
    for (const auto& m : late.messages()) {
        INFO(m.topic << " " << m.payload);
        CHECK(m.retained);
        topics.insert(m.topic);
        const auto v = json::parse(m.payload);
        CHECK(v["quality"] == "good");
        CHECK(v["value"].is_number());
        CHECK(v["ts"].get<std::int64_t>() > 1700000000000);
        const auto tag = m.topic.substr(m.topic.rfind('/') + 1);
        CHECK(v["seq"].get<std::uint64_t>() >= newest_seq[tag]);
        CHECK(v.size() == 4);
    }
    CHECK(topics ==
          std::set<std::string>{"ferry/m5-gw/last/box/load1", "ferry/m5-gw/last/box/uptime"});

    // A broker restarted without persistence has forgotten them: Ferry publishes them again.
    broker.stop();
    broker.start();
    mqtt_recorder after(broker.uri(), {"ferry/m5-gw/last/#"});
    CHECK(after.wait_for_count(2, 10s));
    for (const auto& m : after.messages())
        CHECK(m.retained);
    REQUIRE(ferry->stop(15, 10s) == 0);
}

TEST_CASE(
    "MQTT 5: a batch spooled past its message_expiry is dropped, counted; the rest go late "
    "with what is left") {
    mosquitto broker;
    mqtt_proxy proxy(broker.port());
    temp_dir dir;
    const auto http_port = free_port();
    auto sub = mosquitto_sub(broker.port(), "site/#", dir.file("sub.txt"));
    mqtt_recorder rec(broker.uri(), {"site/#"});
    auto ferry = ferry_process(k_config, dir.file("ferry.log"),
                               vars(dir, http_port, proxy.uri(), "5", "5s"));
    wait_ready(*ferry, http_port);
    REQUIRE(rec.wait_for_count(3, 10s));

    // An outage of 7 s: what was spooled early in it has expired when the streams start again
    // (a reconnect and its subscription take 2-4 s more); the last of it goes late.
    proxy.refuse();
    proxy.cut();
    std::this_thread::sleep_for(7s);
    CHECK(metric_value(http_port, "ferry_spool_messages") > 10);
    proxy.pass();
    REQUIRE(wait_until(
        [&] {
            return metric_value(http_port, dropped("expired")) > 0 &&
                   metric_value(http_port, "ferry_spool_messages") <= 2;
        },
        15s));
    std::this_thread::sleep_for(1s);
    REQUIRE(ferry->stop(15, 10s) == 0);

    // Sent late, a batch carries what is left of its 5 s, never more.
    std::size_t lines = 0, late = 0;
    for (const auto& l : sub_lines(dir.file("sub.txt"))) {
        INFO(l.payload);
        const int left = std::stoi(l.expiry);
        CHECK(left >= 1);
        CHECK(left <= 5);
        ++lines;
        if (left <= 3) ++late;  // sent 2 s or more after it was spooled
    }
    MESSAGE(lines << " batches seen, " << late << " with 3 s or less of their 5 s left");
    CHECK(late > 0);

    // Conservation: every event produced is delivered (a distinct seq) or dropped with a reason,
    // the expired ones under "expired".
    const auto counts = stop_counts(dir.file("ferry.log"));
    REQUIRE(counts.count("expired") == 1);
    std::set<std::uint64_t> seqs;
    std::size_t stable = 0, last = 0;
    wait_until(
        [&] {
            seqs.clear();
            for (const auto& m : rec.messages()) {
                const auto doc = json::parse(m.payload);
                for (const auto& e : doc["events"])
                    seqs.insert(e["seq"].get<std::uint64_t>());
            }
            stable = seqs.size() == last ? stable + 1 : 0;
            last = seqs.size();
            return stable >= 25;
        },
        10s);
    MESSAGE("produced " << counts.at("produced") << ", delivered " << seqs.size() << ", expired "
                        << counts.at("expired") << ", dropped " << counts.at("dropped"));
    CHECK(counts.at("expired") > 0);
    // Nothing lost uncounted. A batch in flight when the link was cut may have reached the
    // broker without its PUBACK reaching Ferry; expired before the resend, it is counted as
    // dropped though the consumer has it: at most the window (16 batches of 2 events).
    CHECK(seqs.size() + counts.at("dropped") >= counts.at("produced"));
    CHECK(seqs.size() + counts.at("dropped") <= counts.at("produced") + 16 * 2);
}

namespace {

// The most publishes in flight the proxy saw while Ferry drained a 3 s backlog to a mosquitto
// with `broker_conf`, every packet held 10 ms on its way (on loopback without it each is
// acked before the next is sent). With retain_last, its retained values are QoS 1 publishes
// beside the window on the same broker budget (Paho would queue what is over the Receive
// Maximum, behind its timer tick), counted too.
std::uint64_t inflight_max_draining(const std::string& broker_conf, std::string& log,
                                    bool retain_last = false) {
    mosquitto broker(0, broker_conf);
    mqtt_proxy proxy(broker.port());
    temp_dir dir;
    const auto http_port = free_port();
    mqtt_recorder rec(broker.uri(), {"site/#"});
    auto ferry = ferry_process(k_config, dir.file("ferry.log"),
                               vars(dir, http_port, proxy.uri(), "5", "1h", retain_last));
    wait_ready(*ferry, http_port);
    REQUIRE(rec.wait_for_count(3, 10s));
    proxy.refuse();
    proxy.cut();
    std::this_thread::sleep_for(3s);
    const auto backlog = metric_value(http_port, "ferry_spool_messages");
    CHECK(backlog > 20);
    proxy.delay(10ms);
    const bool drained =
        wait_until([&] { return metric_value(http_port, "ferry_spool_messages") <= 2; }, 30s);
    log = read_file(dir.file("ferry.log"));
    if (!drained) MESSAGE(log);
    REQUIRE(drained);
    const auto stats = proxy.stats();
    MESSAGE("broker conf '" << broker_conf << "': backlog " << backlog << ", proxy inflight_max "
                            << stats.inflight_max);
    REQUIRE(ferry->stop(15, 10s) == 0);
    return stats.inflight_max;
}

}  // namespace

TEST_CASE("MQTT 5: a broker's Receive Maximum of 2 holds Ferry's inflight 16 at 2") {
    std::string log;
    // The measure sees a wider window when the broker allows it...
    CHECK(inflight_max_draining("", log) > 2);
    CHECK(log.find("window=16") != std::string::npos);
    // ...and never more than the broker's Receive Maximum (mosquitto max_inflight_messages),
    // which retained states share: one slot for them, one for the window.
    const auto capped = inflight_max_draining("max_inflight_messages 2\n", log);
    CHECK(capped >= 1);
    CHECK(capped <= 2);
    CHECK(log.find("window=1 states_in_flight=1") != std::string::npos);
    CHECK(log.find("window=16") == std::string::npos);
    // retain_last: a retained value per point beside every batch, in the same two slots; the
    // backlog still drains (within the helper's 30 s).
    const auto shared = inflight_max_draining("max_inflight_messages 2\n", log, true);
    CHECK(shared >= 1);
    CHECK(shared <= 2);
}

TEST_CASE("MQTT 3.1.1: no properties, batches and retain_last as usual") {
    mosquitto broker;
    temp_dir dir;
    const auto http_port = free_port();
    auto sub = mosquitto_sub(broker.port(), "site/#", dir.file("sub.txt"));
    std::this_thread::sleep_for(300ms);
    auto ferry = ferry_process(k_config, dir.file("ferry.log"),
                               vars(dir, http_port, broker.uri(), "3.1.1", "60s"));
    wait_ready(*ferry, http_port);
    REQUIRE(wait_until([&] { return sub_lines(dir.file("sub.txt")).size() >= 5; }, 15s));
    for (auto& l : sub_lines(dir.file("sub.txt"))) {
        INFO(l.payload);
        CHECK(l.expiry.empty());
        CHECK(l.props.empty());
        CHECK(json::parse(l.payload)["events"].size() >= 1);
    }
    mqtt_recorder late(broker.uri(), {"ferry/m5-gw/last/#"});
    CHECK(late.wait_for_count(2, 5s));
    CHECK(metric_value(http_port, dropped("expired")) == 0);
    REQUIRE(ferry->stop(15, 10s) == 0);
}
