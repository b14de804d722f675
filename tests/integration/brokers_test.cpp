// Ferry against MQTT brokers other than one mosquitto: with the default MQTT settings (no
// `version`), one config delivers to RabbitMQ's MQTT plugin (3.10: MQTT 3.1.1 only; it hangs up
// on an MQTT 5 CONNECT) and to mosquitto (MQTT 5), each uri keeping the version it agreed to
// (docs/DELIVERY.md, MQTT version and session). The cluster test (tests/cluster/) runs a
// fleet over a 3-node RabbitMQ cluster that loses a node.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <regex>

#include "tests/support/ferry_run.hpp"
#include "tests/support/mqtt_proxy.hpp"
#include "tests/support/rabbitmq.hpp"

using namespace ferry::test;

namespace {

// The log lines of `msg` (e.g. "MQTT version agreed") whose uri is `uri`.
std::vector<std::string> log_lines(const std::string& log, const std::string& msg,
                                   const std::string& uri) {
    // The log quotes a value only when it has a space (core/log.hpp).
    const auto key =
        msg.find(' ') != std::string::npos ? "msg=\"" + msg + "\"" : "msg=" + msg + " ";
    std::vector<std::string> out;
    std::istringstream in(log);
    for (std::string line; std::getline(in, line);)
        if (line.find(key) != std::string::npos &&
            line.find("uri=" + uri + " ") != std::string::npos)
            out.push_back(line);
    return out;
}

}  // namespace

// uris: [RabbitMQ (through a proxy that can turn it away), mosquitto]. Ferry starts on RabbitMQ
// (negotiated down to 3.1.1), is turned away from it mid-stream, fails over to mosquitto
// (negotiated 5), and every reading arrives once across the two, in order, values intact.
TEST_CASE("the default config delivers to RabbitMQ over MQTT 3.1.1 and to mosquitto over 5") {
    rabbitmq_cluster rabbit(1);
    MESSAGE("RabbitMQ node up in " << rabbit.start_seconds() << " s");
    mqtt_proxy to_rabbit(rabbit.mqtt_port(0));
    mosquitto broker;
    modbus_sim sim(0, {"holding:0=u16:7", "holding:1=u16:42", "holding:2=f32:abcd:21.5"});
    mqtt_recorder on_rabbit(rabbit.uri(0), {"plant/#"}, 4);
    mqtt_recorder on_mosquitto(broker.uri(), {"plant/#"});
    temp_dir dir;
    const auto http_port = free_port();
    auto env = ferry_vars(dir.path(), http_port, sim.port(), to_rabbit.uri());
    env["MQTT_URI_2"] = broker.uri();
    auto ferry_p = ferry_process(config_path("brokers"), dir.file("ferry.log"), env);
    auto& ferry = *ferry_p;
    wait_ready(ferry, http_port);

    const bool on_r = on_rabbit.wait_for_count(10, 20s);
    if (!on_r) MESSAGE(read_file(dir.file("ferry.log")));
    REQUIRE(on_r);
    CHECK(on_mosquitto.count() == 0);
    // RabbitMQ turned MQTT 5 down by hanging up: said in words, 3.1.1 agreed, not an error.
    auto log = read_file(dir.file("ferry.log"));
    const auto agreed_r = log_lines(log, "MQTT version agreed", to_rabbit.uri());
    REQUIRE(agreed_r.size() == 1);
    CHECK(agreed_r[0].find("version=3.1.1") != std::string::npos);
    CHECK(agreed_r[0].find("refused_5=\"the broker closed the connection after the CONNECT "
                           "without answering it\"") != std::string::npos);
    CHECK(metric_value(http_port, "ferry_mqtt_errors_total{reason=\"connect\"}") == 0);
    CHECK(to_rabbit.stats().to_broker.at("CONNECT") == 2);  // the refused 5, then 3.1.1

    // Turned away from RabbitMQ: the next uri, mosquitto, is offered MQTT 5 and takes it.
    to_rabbit.refuse();
    to_rabbit.cut();
    const bool on_m = on_mosquitto.wait_for_count(10, 20s);
    if (!on_m) MESSAGE(read_file(dir.file("ferry.log")));
    REQUIRE(on_m);
    REQUIRE(ferry.stop(15, 10s) == 0);
    log = read_file(dir.file("ferry.log"));
    const auto agreed_m = log_lines(log, "MQTT version agreed", broker.uri());
    REQUIRE(agreed_m.size() == 1);
    CHECK(agreed_m[0].find("version=5") != std::string::npos);
    CHECK(agreed_m[0].find("refused_5") == std::string::npos);
    CHECK(log_lines(log, "connected", broker.uri()).at(0).find("version=5") != std::string::npos);

    // What a consumer of both brokers has: every reading once (repeats only from the window
    // lost with the cut), in order within each stream, values as the device holds them.
    auto msgs = on_rabbit.messages();
    for (const auto& m : on_mosquitto.messages())
        msgs.push_back(m);
    const auto parsed = parse_upstream(msgs);
    for (const auto& m : parsed)
        for (const auto& e : m.events)
            CHECK(e.quality == "good");
    for (const auto& m : msgs) {
        const auto j = nlohmann::json::parse(m.payload);
        for (const auto& e : j["events"]) {
            const auto tag = e["tag"].get<std::string>();
            CHECK(e["value"] == (tag == "r0"   ? nlohmann::json(7)
                                 : tag == "r1" ? nlohmann::json(42)
                                               : nlohmann::json(21.5)));
        }
    }
    const auto d = check_delivery(parsed);
    MESSAGE(d.summary());
    CHECK(d.batch_gaps.empty());
    CHECK(d.seq_gaps.empty());
    CHECK(d.reordered == 0);
    CHECK(d.conflicting == 0);
    CHECK(d.max_repeat_distance <= 16);
    const auto counts = stop_counts(dir.file("ferry.log"));
    REQUIRE(counts.count("produced") == 1);
    // Every reading produced arrived (nothing dropped: the rule takes every point, the drain
    // finished); the distinct seqs are the events.
    CHECK(counts.at("dropped") == 0);
    const bool all = wait_until(
        [&] {
            auto all_msgs = on_rabbit.messages();
            for (const auto& m : on_mosquitto.messages())
                all_msgs.push_back(m);
            return check_delivery(parse_upstream(all_msgs)).events == counts.at("produced");
        },
        10s);
    CHECK(all);
}
