// Ferry as a Sparkplug B edge node (issue 18, item 2) through `ferry run`, a real mosquitto and
// our Modbus simulator. Every message is decoded by Eclipse Tahu's JavaScript implementation
// (npm sparkplug-payload, tests/tools/spb_decode.js), not by our own code, and checked as a
// SCADA host would: NBIRTH (bdSeq, Node Control/Rebirth, seq 0), DBIRTH per device (names,
// aliases, datatypes, engineering units, current values), DDATA by alias with the simulator's
// values, seq rising by one per message mod 256, DDEATH for a device that does not answer,
// rebirth on NCMD, a DCMD write round trip through the command path, data spooled during a
// broker outage replayed after the new NBIRTH flagged is_historical, NDEATH (the will) after
// `kill -9` with the bdSeq of the NBIRTH before it, bdSeq rising across reconnects and restarts,
// and NDEATH at a clean stop.
#include <doctest/doctest.h>
#include <signal.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "tests/support/ferry_run.hpp"
#include "tests/support/files.hpp"
#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;
using nlohmann::json;

namespace {

const std::string k_ns = "spBv1.0/plant-a/";
const std::string k_nbirth = k_ns + "NBIRTH/spb-gw";
const std::string k_ndeath = k_ns + "NDEATH/spb-gw";
const std::string k_dbirth_live = k_ns + "DBIRTH/spb-gw/live";
const std::string k_dbirth_dead = k_ns + "DBIRTH/spb-gw/dead";
const std::string k_ddata_live = k_ns + "DDATA/spb-gw/live";
const std::string k_ddeath_dead = k_ns + "DDEATH/spb-gw/dead";
const std::string k_ddata_dead = k_ns + "DDATA/spb-gw/dead";

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string hex(const std::string& bytes) {
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned char c : bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

std::string unhex(const std::string& h) {
    std::string out;
    for (std::size_t i = 0; i + 1 < h.size(); i += 2)
        out += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
    return out;
}

std::string tool() {
    return std::string(FERRY_SOURCE_DIR) + "/tests/tools/spb_decode.js";
}

// Runs `node spb_decode.js ARG` with `input` on stdin; its stdout.
std::string run_tool(const temp_dir& dir, const std::string& arg, const std::string& input) {
    const auto in = dir.file("tool.in");
    const auto out = dir.file("tool.out");
    write_file(in, input);
    const auto cmd = "node " + tool() + " " + arg + " < " + in + " > " + out + " 2>&1";
    const int rc = std::system(cmd.c_str());
    const auto text = read_file(out);
    INFO("node said: " << text);
    REQUIRE(rc == 0);
    return text;
}

// Every message decoded by Tahu, in arrival order.
struct decoded {
    std::string topic;
    json payload;
};

std::vector<decoded> decode_all(const temp_dir& dir, const std::vector<mqtt_message>& msgs) {
    std::string lines;
    for (const auto& m : msgs)
        lines += hex(m.payload) + "\n";
    std::vector<decoded> out;
    if (msgs.empty()) return out;
    std::istringstream text(run_tool(dir, "--hex-lines", lines));
    std::string line;
    for (const auto& m : msgs) {
        REQUIRE(std::getline(text, line));
        auto doc = json::parse(line);
        INFO(m.topic << ": " << line);
        REQUIRE_FALSE(doc.contains("error"));
        out.push_back({m.topic, std::move(doc)});
    }
    return out;
}

// A payload as a host writes it (Tahu's encoder), published at QoS 1.
void host_publishes(const temp_dir& dir, std::uint16_t port, const std::string& topic,
                    const json& payload) {
    const auto bytes = unhex(run_tool(dir, "--encode", payload.dump()));
    const auto file = dir.file("host.bin");
    write_file(file, bytes);
    const auto cmd = "mosquitto_pub -h 127.0.0.1 -p " + std::to_string(port) + " -q 1 -t '" +
                     topic + "' -f " + file;
    REQUIRE(std::system(cmd.c_str()) == 0);
}

const json* metric(const json& payload, const std::string& name) {
    for (const auto& m : payload["metrics"])
        if (m.value("name", "") == name) return &m;
    return nullptr;
}

std::vector<decoded> on(const std::vector<decoded>& all, const std::string& topic) {
    std::vector<decoded> out;
    for (const auto& d : all)
        if (d.topic == topic) out.push_back(d);
    return out;
}

// seq rises by one per message of the edge node (NDEATH has none), wrapping at 256; each
// NBIRTH starts again at 0.
void check_seq(const std::vector<decoded>& all) {
    std::optional<std::uint64_t> last;
    for (const auto& d : all) {
        // NDEATH has none; NCMD and DCMD are the host's (the recorder sees them too).
        if (d.topic == k_ndeath || d.topic.find("CMD/") != std::string::npos) continue;
        INFO(d.topic << " " << d.payload.dump());
        REQUIRE(d.payload.contains("seq"));
        const auto seq = d.payload["seq"].get<std::uint64_t>();
        CHECK(seq < 256);
        if (d.topic == k_nbirth)
            CHECK(seq == 0);
        else if (last)
            CHECK(seq == (*last + 1) % 256);
        last = seq;
    }
}

}  // namespace

TEST_CASE(
    "sparkplug: births, DDATA by alias, DDEATH, rebirth, DCMD, historical replay, NDEATH "
    "and bdSeq, decoded by Eclipse Tahu") {
    modbus_sim sim(
        0, {"holding:0=u16:7", "holding:1=i16:-5", "holding:2=f32:abcd:21.5", "coil:5=bool:1"});
    // Sessions kept across the broker restart of step 4, with QoS 0 messages queued (births
    // and deaths go at QoS 0, as the specification says): the recorder misses nothing Ferry
    // sends before it has reconnected.
    temp_dir broker_db;
    mosquitto broker{0, persistence_conf(broker_db) + "queue_qos0_messages true\n"};
    temp_dir dir;
    const auto http_port = free_port();
    copy_config(dir, "sparkplug");
    mqtt_recorder rec(broker.uri(), {"spBv1.0/#", "ferry/spb-gw/cmd/#"});
    mqtt_recorder status(broker.uri(), {"ferry/spb-gw/status"});
    auto env = ferry_vars(dir.path(), http_port, sim.port(), broker.uri());
    env["DEAD_PORT"] = std::to_string(free_port());
    const auto started_ms = now_ms();
    auto ferry_p = ferry_process(dir.file("ferry.yaml"), dir.file("ferry.log"), env);
    wait_ready(*ferry_p, http_port);
    INFO("ferry log: " << dir.file("ferry.log"));

    // ---- 1. NBIRTH, DBIRTH per device, DDATA with the simulator's values, DDEATH ----
    REQUIRE(wait_until(
        [&] {
            return !rec.messages_on(k_ddata_live).empty() &&
                   !rec.messages_on(k_ddeath_dead).empty();
        },
        15s));
    auto all = decode_all(dir, rec.messages());
    REQUIRE(!all.empty());
    CHECK(all[0].topic == k_nbirth);  // nothing before the NBIRTH
    const auto nbirth = all[0].payload;
    CHECK(nbirth["seq"] == 0);
    const auto* bd = metric(nbirth, "bdSeq");
    REQUIRE(bd != nullptr);
    CHECK((*bd)["type"] == "Int64");
    const auto bd0 = (*bd)["value"].get<std::int64_t>();
    const auto* rebirth = metric(nbirth, "Node Control/Rebirth");
    REQUIRE(rebirth != nullptr);
    CHECK((*rebirth)["type"] == "Boolean");
    CHECK((*rebirth)["value"] == false);

    const auto dbirths = on(all, k_dbirth_live);
    REQUIRE(dbirths.size() == 1);
    const auto& dbirth = dbirths[0].payload;
    REQUIRE(dbirth["metrics"].size() == 4);
    std::map<std::string, json> by_alias;  // alias -> DBIRTH metric
    for (const auto& m : dbirth["metrics"]) {
        REQUIRE(m.contains("alias"));
        by_alias[m["alias"].dump()] = m;
    }
    CHECK(by_alias.size() == 4);  // distinct aliases
    const auto* setpoint = metric(dbirth, "setpoint");
    REQUIRE(setpoint != nullptr);
    CHECK((*setpoint)["type"] == "UInt16");
    CHECK((*setpoint)["properties"]["engUnit"]["value"] == "rpm");
    CHECK((*setpoint)["properties"]["engLow"]["value"] == 0);
    CHECK((*setpoint)["properties"]["engHigh"]["value"] == 1000);
    CHECK((*metric(dbirth, "level"))["type"] == "Int16");
    CHECK((*metric(dbirth, "level"))["properties"]["engUnit"]["value"] == "cm");
    CHECK((*metric(dbirth, "temperature"))["type"] == "Float");
    CHECK((*metric(dbirth, "pump"))["type"] == "Boolean");
    REQUIRE(on(all, k_dbirth_dead).size() == 1);

    // DDATA: by alias only, each alias one the DBIRTH declared, the simulator's values, each
    // metric with its own sampling time.
    std::map<std::string, json> latest;  // metric name -> value
    for (const auto& d : on(all, k_ddata_live)) {
        for (const auto& m : d.payload["metrics"]) {
            INFO(m.dump());
            CHECK_FALSE(m.contains("name"));
            const auto it = by_alias.find(m["alias"].dump());
            REQUIRE(it != by_alias.end());
            CHECK(m["type"] == it->second["type"]);
            CHECK(m["timestamp"].get<std::int64_t>() >= started_ms);
            CHECK(m["timestamp"].get<std::int64_t>() <= now_ms());
            CHECK_FALSE(m.value("isHistorical", false));
            latest[it->second["name"]] = m["value"];
        }
    }
    CHECK(latest["setpoint"] == 7);
    CHECK(latest["level"] == -5);
    CHECK(latest["temperature"] == 21.5);
    CHECK(latest["pump"] == true);
    check_seq(all);

    // ---- 2. Rebirth on NCMD: NBIRTH (same bdSeq, seq 0) and every DBIRTH again ----
    rec.clear();
    host_publishes(
        dir, broker.port(), k_ns + "NCMD/spb-gw",
        {{"timestamp", now_ms()},
         {"metrics", {{{"name", "Node Control/Rebirth"}, {"type", "Boolean"}, {"value", true}}}}});
    // The births go out in order: NBIRTH, a DBIRTH per device, then DDEATH for the dead one.
    REQUIRE(rec.wait_for_count(k_ddeath_dead, 1, 10s));
    all = decode_all(dir, rec.messages());
    const auto reborn = on(all, k_nbirth);
    REQUIRE(reborn.size() == 1);
    CHECK(reborn[0].payload["seq"] == 0);
    CHECK((*metric(reborn[0].payload, "bdSeq"))["value"] == bd0);
    REQUIRE(on(all, k_dbirth_live).size() == 1);
    check_seq(all);
    // The same in the metrics.
    CHECK(metric_value(http_port, "ferry_sparkplug_sent_total{type=\"NBIRTH\"}") == 2);
    CHECK(metric_value(http_port, "ferry_sparkplug_received_total{type=\"NCMD\"}") == 1);
    CHECK(metric_value(http_port, "ferry_sparkplug_bdseq") == static_cast<double>(bd0));
    CHECK(metric_value(http_port, "ferry_sparkplug_sent_total{type=\"DDATA\"}") >= 1);

    // ---- 3. DCMD: a write through the command path; the new value comes back in DDATA ----
    rec.clear();
    host_publishes(dir, broker.port(), k_ns + "DCMD/spb-gw/live",
                   {{"timestamp", now_ms()},
                    {"metrics", {{{"name", "setpoint"}, {"type", "UInt16"}, {"value", 55}}}}});
    const std::string result_topic = "ferry/spb-gw/cmd/live/setpoint/result";
    REQUIRE(rec.wait_for_count(result_topic, 1, 10s));
    CHECK(json::parse(rec.messages_on(result_topic)[0].payload)["ok"] == true);
    const auto setpoint_alias = (*setpoint)["alias"].dump();
    REQUIRE(wait_until(
        [&] {
            for (const auto& d : decode_all(dir, rec.messages_on(k_ddata_live)))
                for (const auto& m : d.payload["metrics"])
                    if (m["alias"].dump() == setpoint_alias && m["value"] == 55) return true;
            return false;
        },
        10s));
    // Out of range: refused by the command path's checks, nothing written.
    host_publishes(dir, broker.port(), k_ns + "DCMD/spb-gw/live",
                   {{"timestamp", now_ms() + 1},
                    {"metrics", {{{"name", "setpoint"}, {"type", "UInt16"}, {"value", 5000}}}}});
    REQUIRE(rec.wait_for_count(result_topic, 2, 10s));
    CHECK(json::parse(rec.messages_on(result_topic)[1].payload)["ok"] == false);
    CHECK(metric_value(http_port, "ferry_sparkplug_received_total{type=\"DCMD\"}") == 2);
    // The dead device, after its DDEATH: no DDATA, although its heartbeat (2 s, a bad reading
    // per retry_every) passed at least once since the clear.
    std::this_thread::sleep_for(2500ms);
    CHECK(rec.messages_on(k_ddata_dead).empty());
    CHECK(!rec.messages_on(k_ddata_live).empty());  // the live one's heartbeats did go out
    CHECK(metric_value(http_port, "ferry_sparkplug_errors_total{reason=\"command\"}") == 0);

    // ---- 3b. A reload that adds a point: a rebirth declares it, DDATA then carries it ----
    rec.clear();
    {
        auto text = read_file(dir.file("ferry.yaml"));
        const std::string pump = "      - { name: pump, table: coil, address: 5, type: bool }\n";
        const auto at = text.find(pump);
        REQUIRE(at != std::string::npos);
        text.insert(at + pump.size(),
                    "      - { name: flow, table: holding, address: 10, type: int32, unit: "
                    "l/h }\n");
        write_file(dir.file("ferry.yaml"), text);
    }
    REQUIRE(::kill(ferry_p->pid(), SIGHUP) == 0);
    REQUIRE(rec.wait_for_count(k_ddeath_dead, 1, 10s));
    all = decode_all(dir, rec.messages());
    const auto reload_births = on(all, k_nbirth);  // DDATA sent before the SIGHUP may precede
    REQUIRE(reload_births.size() == 1);
    CHECK(reload_births[0].payload["seq"] == 0);
    CHECK((*metric(reload_births[0].payload, "bdSeq"))["value"] == bd0);  // the same connection
    const auto reborn_live = on(all, k_dbirth_live);
    REQUIRE(reborn_live.size() == 1);
    REQUIRE(reborn_live[0].payload["metrics"].size() == 5);
    const auto* flow = metric(reborn_live[0].payload, "flow");
    REQUIRE(flow != nullptr);
    CHECK((*flow)["type"] == "Int32");
    CHECK((*flow)["properties"]["engUnit"]["value"] == "l/h");
    // Aliases survive the reload: the old points keep theirs.
    CHECK((*metric(reborn_live[0].payload, "setpoint"))["alias"] == (*setpoint)["alias"]);
    REQUIRE(wait_until(
        [&] {
            for (const auto& d : decode_all(dir, rec.messages_on(k_ddata_live)))
                for (const auto& m : d.payload["metrics"])
                    if (m["alias"] == (*flow)["alias"]) return m["value"] == 0;
            return false;
        },
        10s));

    // ---- 4. Broker outage: DDATA spooled meanwhile comes after the new NBIRTH, historical ----
    rec.clear();
    broker.stop();
    const auto outage_ms = now_ms();
    std::this_thread::sleep_for(2500ms);  // heartbeat 2s: every point passes at least once
    broker.start();
    REQUIRE(wait_until([&] { return !rec.messages_on(k_nbirth).empty(); }, 20s));
    REQUIRE(wait_until([&] { return rec.messages_on(k_ddata_live).size() >= 3; }, 10s));
    all = decode_all(dir, rec.messages());
    std::size_t at = 0;
    while (at < all.size() && all[at].topic != k_nbirth)
        ++at;
    REQUIRE(at < all.size());
    const auto bd1 = (*metric(all[at].payload, "bdSeq"))["value"].get<std::int64_t>();
    // bdSeq rises by one per CONNECT (specification 3.0: each CONNECT's will carries the
    // next); the attempts refused while the broker was down took some.
    const auto rise = (bd1 - bd0 + 256) % 256;
    CHECK(rise >= 1);
    CHECK(rise <= 30);
    std::size_t historical = 0, live_after = 0;
    for (std::size_t i = at; i < all.size(); ++i) {
        if (all[i].topic != k_ddata_live) continue;
        for (const auto& m : all[i].payload["metrics"]) {
            if (m.value("isHistorical", false)) {
                ++historical;
                CHECK(m["timestamp"].get<std::int64_t>() >= outage_ms - 1000);
            } else {
                ++live_after;
            }
        }
    }
    CHECK(historical > 0);
    CHECK(live_after > 0);
    check_seq(std::vector<decoded>(all.begin() + static_cast<std::ptrdiff_t>(at), all.end()));

    // ---- 5. kill -9: the broker publishes the will, NDEATH with the NBIRTH's bdSeq, and
    //         the status topic's "offline" (its will rides on a second connection) ----
    REQUIRE(wait_until(
        [&] {
            const auto s = status.messages();
            return !s.empty() && s.back().payload == "online";
        },
        10s));
    rec.clear();
    status.clear();
    ferry_p->kill9();
    REQUIRE(rec.wait_for_count(k_ndeath, 1, 10s));
    all = decode_all(dir, rec.messages_on(k_ndeath));
    CHECK((*metric(all[0].payload, "bdSeq"))["value"] == bd1);
    CHECK_FALSE(all[0].payload.contains("seq"));
    REQUIRE(status.wait_for_count(1, 10s));
    CHECK(status.messages().back().payload == "offline");
    CHECK(status.messages().back().retained);

    // ---- 6. A restart on the same data_dir: bdSeq goes on rising ----
    rec.clear();
    ferry_p = ferry_process(dir.file("ferry.yaml"), dir.file("ferry2.log"), env);
    wait_ready(*ferry_p, http_port);
    REQUIRE(rec.wait_for_count(k_nbirth, 1, 15s));
    all = decode_all(dir, rec.messages_on(k_nbirth));
    const auto bd2 = (*metric(all[0].payload, "bdSeq"))["value"].get<std::int64_t>();
    CHECK(bd2 == (bd1 + 1) % 256);

    // ---- 7. A clean stop says NDEATH itself (a DISCONNECT does not fire the will) ----
    rec.clear();
    status.clear();
    CHECK(ferry_p->stop() == 0);
    REQUIRE(rec.wait_for_count(k_ndeath, 1, 5s));
    all = decode_all(dir, rec.messages_on(k_ndeath));
    CHECK((*metric(all[0].payload, "bdSeq"))["value"] == bd2);
    // "offline" once, from the stop itself, not also from the status sentinel's will.
    std::this_thread::sleep_for(500ms);
    std::size_t offline = 0;
    for (const auto& m : status.messages())
        offline += m.payload == "offline" ? 1 : 0;
    CHECK(offline == 1);
}

TEST_CASE(
    "sparkplug: store-and-forward on the primary host's STATE: held while offline, births "
    "then historical replay when online") {
    modbus_sim sim(
        0, {"holding:0=u16:7", "holding:1=i16:-5", "holding:2=f32:abcd:21.5", "coil:5=bool:1"});
    mosquitto broker;
    temp_dir dir;
    const auto http_port = free_port();
    copy_config(dir, "sparkplug", "    primary_host_id: scada\n");
    const std::string state = "spBv1.0/STATE/scada";
    auto host_state = [&](bool online, std::int64_t ts) {
        const auto cmd = "mosquitto_pub -h 127.0.0.1 -p " + std::to_string(broker.port()) +
                         " -q 1 -r -t " + state + " -m '" +
                         json{{"online", online}, {"timestamp", ts}}.dump() + "'";
        REQUIRE(std::system(cmd.c_str()) == 0);
    };
    const auto t0 = now_ms();
    host_state(false, t0);  // the host's retained STATE: offline
    mqtt_recorder rec(broker.uri(), {"spBv1.0/plant-a/#"});
    auto env = ferry_vars(dir.path(), http_port, sim.port(), broker.uri());
    env["DEAD_PORT"] = std::to_string(free_port());
    auto ferry_p = ferry_process(dir.file("ferry.yaml"), dir.file("ferry.log"), env);
    wait_ready(*ferry_p, http_port);
    INFO("ferry log: " << dir.file("ferry.log"));

    // ---- 1. Host offline: no birth, no data; the spool holds the DDATA ----
    REQUIRE(wait_until([&] { return metric_value(http_port, "ferry_spool_messages") >= 3; }, 10s));
    CHECK(rec.count() == 0);
    CHECK(metric_value(http_port, "ferry_sparkplug_primary_host_online") == 0);

    // ---- 2. Host online: NBIRTH first, DBIRTHs, then the held DDATA flagged historical ----
    const auto online_ms = now_ms();
    host_state(true, t0 + 1);
    REQUIRE(wait_until(
        [&] {
            for (const auto& d : decode_all(dir, rec.messages_on(k_ddata_live)))
                for (const auto& m : d.payload["metrics"])
                    if (!m.value("isHistorical", false)) return true;
            return false;
        },
        10s));
    auto all = decode_all(dir, rec.messages());
    REQUIRE(!all.empty());
    CHECK(all[0].topic == k_nbirth);
    const auto bd = (*metric(all[0].payload, "bdSeq"))["value"];
    std::size_t historical = 0;
    bool live_seen = false;
    for (const auto& d : on(all, k_ddata_live)) {
        for (const auto& m : d.payload["metrics"]) {
            if (m.value("isHistorical", false)) {
                CHECK_FALSE(live_seen);  // the held data first, in spool order
                CHECK(m["timestamp"].get<std::int64_t>() <= online_ms + 500);
                ++historical;
            } else {
                live_seen = true;
            }
        }
    }
    CHECK(historical >= 3);
    check_seq(all);
    CHECK(metric_value(http_port, "ferry_sparkplug_primary_host_online") == 1);

    // ---- 3. Offline again: DDATA stops (what was in flight may still land) ----
    host_state(false, t0 + 2);
    std::this_thread::sleep_for(500ms);
    const auto before = rec.messages_on(k_ddata_live).size();
    // Heartbeats (2 s) keep producing DDATA: it stays in the spool.
    REQUIRE(wait_until([&] { return metric_value(http_port, "ferry_spool_messages") >= 2; }, 10s));
    CHECK(rec.messages_on(k_ddata_live).size() <= before + 1);

    // ---- 4. Online again: rebirth on the same connection (same bdSeq), then the held data ----
    rec.clear();
    host_state(true, t0 + 3);
    REQUIRE(wait_until([&] { return rec.messages_on(k_ddata_live).size() >= 2; }, 10s));
    all = decode_all(dir, rec.messages());
    CHECK(all[0].topic == k_nbirth);
    CHECK(all[0].payload["seq"] == 0);
    CHECK((*metric(all[0].payload, "bdSeq"))["value"] == bd);
    const auto replay = on(all, k_ddata_live);
    REQUIRE(!replay.empty());
    CHECK(replay[0].payload["metrics"][0].value("isHistorical", false));
    check_seq(all);
    CHECK(ferry_p->stop() == 0);
}
