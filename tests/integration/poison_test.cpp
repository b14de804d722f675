// Issue 14, item 3 (no poison message) and item 8 (the spool's `bytes` column), through
// `ferry run` and a real mosquitto: a spooled message the broker cannot take (larger than its
// max_packet_size) or a spooled row that fails validation (a flipped topic or QoS bit, a
// payload that is not a JSON object, a `bytes` column that lies) is dead-lettered: moved out of
// the stream into the spool's dead_letters table, announced on the dead-letter topic, counted,
// and the messages after it arrive in order. Before the fix each of these was resent forever
// and nothing behind it arrived.
#include <doctest/doctest.h>

#include <algorithm>
#include <set>

#include "core/topic.hpp"
#include "tests/chaos/chaos_support.hpp"

using namespace ferry::test;

namespace {

const std::string k_topic = "plant/chaos-gw/d1";
const std::string k_dead_topic = "ferry/chaos-gw/dead-letter";

struct row {
    std::int64_t id = 0;
    std::string topic;
    std::string payload;
    std::int64_t events = 0;
};

// Runs a statement on the spool file (ferry stopped); REQUIREs success.
void sql(const std::string& path, const std::string& statement) {
    sqlite3* h = nullptr;
    REQUIRE(sqlite3_open_v2(path.c_str(), &h, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK);
    char* err = nullptr;
    const int rc = sqlite3_exec(h, statement.c_str(), nullptr, nullptr, &err);
    const std::string why = err != nullptr ? err : "";
    sqlite3_free(err);
    sqlite3_close(h);
    REQUIRE_MESSAGE(rc == SQLITE_OK, statement << ": " << why);
}

std::vector<row> rows_of(const std::string& path, const std::string& table = "messages") {
    std::vector<row> out;
    sqlite3* h = nullptr;
    REQUIRE(sqlite3_open_v2(path.c_str(), &h, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    const std::string q =
        "SELECT id, CAST(topic AS BLOB), payload, events FROM " + table + " ORDER BY id";
    REQUIRE(sqlite3_prepare_v2(h, q.c_str(), -1, &st, nullptr) == SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        row r;
        r.id = sqlite3_column_int64(st, 0);
        r.topic.assign(static_cast<const char*>(sqlite3_column_blob(st, 1)),
                       static_cast<std::size_t>(sqlite3_column_bytes(st, 1)));
        r.payload.assign(static_cast<const char*>(sqlite3_column_blob(st, 2)),
                         static_cast<std::size_t>(sqlite3_column_bytes(st, 2)));
        r.events = sqlite3_column_int64(st, 3);
        out.push_back(std::move(r));
    }
    sqlite3_finalize(st);
    sqlite3_close(h);
    return out;
}

std::string quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\'') out += '\'';
        out += c;
    }
    return out + "'";
}

// The parsed contract message of a spool row (its batch and the seqs it carries).
upstream_message parsed(const row& r) {
    return parse_upstream({mqtt_message{k_topic, r.payload, false, 1}}).at(0);
}

std::string tail(const std::string& log) {
    auto text = read_file(log);
    return text.size() > 4000 ? text.substr(text.size() - 4000) : text;
}

// One device of 10 registers polled every 100 ms (100 events/s), the spool in `dir`.
ferry_options options(const modbus_sim& sim, const temp_dir& dir) {
    ferry_options o;
    o.data_dir = dir.path();
    o.http_port = free_port();
    o.modbus_port = sim.port();
    o.registers = 10;
    o.poll = "100ms";
    // These cases edit spooled rows in place as the contract's JSON (a flipped bit, a payload
    // made too large); compressed rows and their damage have their own cases in unit_spool.
    o.compress = "false";
    return o;
}

// Waits (30 s at most) until batch `until` on k_topic arrived; REQUIREs it, with the log's
// tail when the stream stopped. Returns what arrived.
std::vector<upstream_message> delivered_until(const mqtt_recorder& rec, std::uint64_t until,
                                              const std::string& log) {
    const bool arrived = wait_until(
        [&] { return check_delivery(parse_upstream(rec.messages())).last_batch[k_topic] >= until; },
        30s);
    auto msgs = parse_upstream(rec.messages());
    MESSAGE("waiting for batch " << until << ": " << check_delivery(msgs).summary());
    REQUIRE_MESSAGE(arrived, "the stream stopped; ferry log tail:\n" << tail(log));
    return msgs;
}

// Ferry with no broker reachable until the spool holds at least `n` messages of 10 events
// each; then SIGTERM. Returns the rows.
std::vector<row> spool_offline(ferry_options o, std::size_t n, const temp_dir& dir) {
    o.uris = {"tcp://127.0.0.1:" + std::to_string(free_port())};  // nothing listens
    o.max_events = 10;
    o.max_age = "10s";
    auto ferry = start_ferry(o, dir.file("offline.yaml"), dir.file("offline.log"));
    REQUIRE(wait_until(
        [&] { return metric_value(o.http_port, "ferry_spool_messages") >= static_cast<double>(n); },
        20s));
    REQUIRE(ferry->stop(15, 10s) == 0);
    auto rows = rows_of(dir.file("spool.db"));
    REQUIRE(rows.size() >= n);
    return rows;
}

// The dead-letter notices that arrived, as payloads.
std::vector<std::string> notices(const mqtt_recorder& rec) {
    std::vector<std::string> out;
    for (const auto& m : rec.messages_on(k_dead_topic))
        out.push_back(m.payload);
    return out;
}

double dead_letters(std::uint16_t port, const std::string& reason) {
    return metric_value(port, "ferry_upstream_dead_letters_total{reason=\"" + reason + "\"}", 0);
}

}  // namespace

TEST_CASE(
    "an oversized spooled batch is dead-lettered; the batches after it arrive in order, and "
    "new batches are cut below the broker's max_packet_size") {
    modbus_sim sim(0, holding_registers(10));
    temp_dir dir;
    auto o = options(sim, dir);
    SUBCASE("MQTT 5: the limit from the broker's CONNACK") {}
    SUBCASE("MQTT 3.1.1: the limit from upstream.mqtt.max_packet_size") {
        // mosquitto closes a 3.1.1 connection that sends a packet over max_packet_size.
        o.mqtt_keys = {"version: 3.1.1", "max_packet_size: 4096"};
    }

    // Batches spooled while the uplink was down, one of them (the third) too large for the
    // broker: a batch cut before its limit was known (or by an older config).
    auto rows = spool_offline(o, 8, dir);
    auto& big = rows[2];
    const std::size_t limit = 4096;
    std::string padded = big.payload;
    padded.insert(padded.size() - 1, ",\"pad\":\"" + std::string(6000, 'x') + "\"");
    sql(dir.file("spool.db"),
        "UPDATE messages SET payload = CAST(" + quote(padded) +
            " AS BLOB), bytes = " + std::to_string(big.topic.size() + padded.size()) +
            " WHERE id = " + std::to_string(big.id));
    const auto big_batch = parsed(big).batch;

    mosquitto broker(0, "max_packet_size " + std::to_string(limit) + "\n");
    mqtt_recorder rec(broker.uri(), {"plant/#", k_dead_topic});
    o.uris = {broker.uri()};
    // Without the cut, a second of readings (100 events, about 9 KB) would not fit either.
    o.max_events = 500;
    o.max_age = "1s";
    auto ferry = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry.log"));

    const auto last_old = parsed(rows.back()).batch;
    MESSAGE("the big batch is " << big_batch);
    auto msgs = delivered_until(rec, last_old + 3, dir.file("ferry.log"));
    auto c = check_delivery(msgs);

    // Every old batch but the big one, then the new ones, in order.
    std::vector<std::uint64_t> batches;
    std::set<std::uint64_t> seqs;
    for (const auto& m : msgs) {
        batches.push_back(m.batch);
        CHECK(m.payload.size() + ferry::publish_overhead(m.topic.size()) <= limit);
        for (const auto& e : m.events)
            seqs.insert(e.seq);
    }
    CHECK(c.reordered == 0);
    CHECK(std::find(batches.begin(), batches.end(), big_batch) == batches.end());
    for (std::size_t i = 0; i < rows.size(); ++i) {
        if (i == 2) continue;
        CHECK(std::find(batches.begin(), batches.end(), parsed(rows[i]).batch) != batches.end());
        for (const auto& e : parsed(rows[i]).events)
            CHECK(seqs.count(e.seq) == 1);
    }

    CHECK(wait_until([&] { return !notices(rec).empty(); }, 5s));
    auto n = notices(rec);
    REQUIRE(n.size() >= 1);
    CHECK(n[0].find("\"reason\":\"too_large\"") != std::string::npos);
    CHECK(n[0].find("\"batch\":" + std::to_string(big_batch) + ",") != std::string::npos);
    CHECK(n[0].find("\"topic\":\"" + k_topic + "\"") != std::string::npos);
    CHECK(n[0].find("xxxx") == std::string::npos);  // never the payload
    // A live batch that grew past the limit before the CONNACK announced it (a slow connect)
    // is dead-lettered too; none is expected, and none may be an old one.
    for (std::size_t i = 1; i < n.size(); ++i) {
        MESSAGE("also dead-lettered: " << n[i]);
        CHECK(n[i].find("\"batch\":" + std::to_string(last_old + 1) + ",") != std::string::npos);
    }
    CHECK(dead_letters(o.http_port, "too_large") == static_cast<double>(n.size()));
    if (n.size() == 1)
        CHECK(metric_value(o.http_port, "ferry_events_dropped_total{reason=\"too_large\"}") ==
              static_cast<double>(big.events));
    CHECK(read_file(dir.file("ferry.log")).find("msg=\"message dead-lettered\"") !=
          std::string::npos);
    REQUIRE(ferry->stop(15, 10s) == 0);

    // Kept for inspection in the spool file, with its payload.
    auto kept = rows_of(dir.file("spool.db"), "dead_letters");
    REQUIRE(kept.size() == 1);
    CHECK(kept[0].payload == padded);
}

TEST_CASE(
    "spooled rows with a flipped topic, QoS, payload or bytes bit are dead-lettered; the "
    "rest arrives in order") {
    modbus_sim sim(0, holding_registers(10));
    temp_dir dir;
    auto o = options(sim, dir);
    auto rows = spool_offline(o, 9, dir);
    const auto db = dir.file("spool.db");
    auto id = [&](std::size_t i) { return std::to_string(rows[i].id); };
    // One flipped bit each: QoS 1 -> 3; '/' (0x2f) -> '+' (0x2b) in the topic; 'd' (0x64) ->
    // 0xe4 in the topic (not UTF-8); '{' (0x7b) -> 'z' (0x7a) at the payload's start; the
    // lowest bit of the `bytes` column.
    sql(db, "UPDATE messages SET qos = 3 WHERE id = " + id(2));
    sql(db, "UPDATE messages SET topic = 'plant/chaos-gw+d1' WHERE id = " + id(3));
    sql(
        db, "UPDATE messages SET topic = CAST(X'" +
                [] {
                    std::string hex;
                    for (unsigned char ch : std::string("plant/chaos-gw/\xe4"
                                                        "1")) {
                        static const char* d = "0123456789ABCDEF";
                        hex += d[ch >> 4];
                        hex += d[ch & 15];
                    }
                    return hex;
                }() +
                "' AS TEXT) WHERE id = " + id(4));
    sql(db,
        "UPDATE messages SET payload = CAST('z' || substr(CAST(payload AS TEXT), 2) AS BLOB)"
        " WHERE id = " +
            id(5));
    sql(db, "UPDATE messages SET bytes = (bytes | 1) - (bytes & 1) WHERE id = " + id(6));
    const std::set<std::size_t> bad{2, 3, 4, 5, 6};

    mosquitto broker;
    mqtt_recorder rec(broker.uri(), {"plant/#", k_dead_topic});
    o.uris = {broker.uri()};
    o.max_events = 10;
    o.max_age = "500ms";
    auto ferry = start_ferry(o, dir.file("ferry.yaml"), dir.file("ferry.log"));
    auto msgs = delivered_until(rec, parsed(rows.back()).batch + 5, dir.file("ferry.log"));
    auto c = check_delivery(msgs);
    std::vector<std::uint64_t> batches;
    for (const auto& m : msgs)
        batches.push_back(m.batch);
    CHECK(c.reordered == 0);
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const bool came =
            std::find(batches.begin(), batches.end(), parsed(rows[i]).batch) != batches.end();
        CHECK_MESSAGE(came == (bad.count(i) == 0), "row " << i);
    }
    CHECK(wait_until([&] { return notices(rec).size() >= bad.size(); }, 5s));
    CHECK(notices(rec).size() == bad.size());
    for (const auto& n : notices(rec))
        MESSAGE("notice: " << n);
    CHECK(dead_letters(o.http_port, "bad_qos") == 1.0);
    CHECK(dead_letters(o.http_port, "bad_topic") == 2.0);
    CHECK(dead_letters(o.http_port, "bad_payload") == 1.0);
    CHECK(dead_letters(o.http_port, "bad_bytes") == 1.0);
    CHECK(metric_value(o.http_port, "ferry_events_dropped_total{reason=\"corrupt\"}") ==
          static_cast<double>(10 * bad.size()));
    REQUIRE(ferry->stop(15, 10s) == 0);
    CHECK(rows_of(db, "dead_letters").size() == bad.size());
}

// Item 8: before the fix the running total at open was sum(bytes): a row claiming a terabyte
// made the next drop_oldest append delete the oldest messages until it was gone (3 of 6 in a
// 64 MiB spool holding 6 KB).
TEST_CASE("a bytes column that lies does not corrupt the spool's accounting") {
    modbus_sim sim(0, holding_registers(10));
    temp_dir dir;
    auto o = options(sim, dir);
    auto rows = spool_offline(o, 6, dir);
    sql(dir.file("spool.db"),
        "UPDATE messages SET bytes = 1000000000000 WHERE id = " + std::to_string(rows[2].id));
    o.uris = {"tcp://127.0.0.1:" + std::to_string(free_port())};  // still down
    o.max_events = 10;
    auto ferry = start_ferry(o, dir.file("down.yaml"), dir.file("down.log"));
    const double at_open = metric_value(o.http_port, "ferry_spool_bytes");
    CHECK(wait_until(
        [&] {
            return metric_value(o.http_port, "ferry_spool_messages") >=
                   static_cast<double>(rows.size() + 3);
        },
        20s));
    const double dropped =
        metric_value(o.http_port, "ferry_spool_dropped_total{reason=\"drop_oldest\"}");
    MESSAGE("ferry_spool_bytes at open " << at_open << ", drop_oldest " << dropped);
    CHECK(at_open < 1e6);
    CHECK(dropped == 0.0);
    REQUIRE(ferry->stop(15, 10s) == 0);
    // Every old row is still there.
    const auto after = rows_of(dir.file("spool.db"));
    REQUIRE(after.size() >= rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i)
        CHECK(after[i].id == rows[i].id);
}
