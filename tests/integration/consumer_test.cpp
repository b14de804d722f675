// The reference consumer (tools/ferry_consumer.py, issue 19), run as a user runs it: the real
// script under /usr/bin/python3 against a real mosquitto.
// 1. `ferry run` publishes while two instances share one subscription and one SQLite file:
//    the file ends with every seq Ferry delivered exactly once (an independent recorder is
//    the witness), both instances took part, and `report` counts the readings two rules
//    published twice as duplicates.
// 2. Hand-made batches (mosquitto_pub): a skipped batch number is a gap, a repeated one a
//    repeat with its readings dropped, a batch below the newest is reordered, but a replay
//    stream below the live one is not (CONTRACT.md: order holds within each stream).
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "tests/support/ferry_run.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;
using json = nlohmann::json;

namespace {

const std::string k_consumer = std::string(FERRY_SOURCE_DIR) + "/tools/ferry_consumer.py";

// `ferry_consumer.py run` with the usual arguments and `extra`; its log (stderr, and the
// report at exit on stdout) in `log`. Returns once it has subscribed.
std::unique_ptr<process> consumer(const std::string& uri, const std::string& log,
                                  std::vector<std::string> extra) {
    std::vector<std::string> argv{"/usr/bin/python3", k_consumer, "run", "--broker", uri};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto p = std::make_unique<process>(argv, log);
    const bool up = wait_until(
        [&] { return read_file_if_exists(log).find("subscribed to") != std::string::npos; },
        10000ms);
    if (!up) FAIL("consumer did not subscribe; log:\n" << read_file_if_exists(log));
    return p;
}

// `ferry_consumer.py report --db DB --json`, parsed (what it logs is shown, not parsed).
json report(const temp_dir& dir, const std::string& db) {
    const auto out = dir.file("report.json");
    process p({"/bin/sh", "-c", "exec /usr/bin/python3 \"$0\" report --db \"$1\" --json > \"$2\"",
               k_consumer, db, out},
              dir.file("report.log"));
    REQUIRE(p.wait(30000ms) == 0);
    if (const auto said = read_file_if_exists(dir.file("report.log")); !said.empty())
        MESSAGE("report said: " << said);
    return json::parse(read_file(out));
}

// The first column of every row `sql` gives, as text (NULL as "").
std::vector<std::string> column(const std::string& db, const std::string& sql) {
    sqlite3* h = nullptr;
    REQUIRE(sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(h, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
    std::vector<std::string> out;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const auto* t = sqlite3_column_text(st, 0);
        out.emplace_back(t ? reinterpret_cast<const char*>(t) : "");
    }
    sqlite3_finalize(st);
    sqlite3_close(h);
    return out;
}

void publish(std::uint16_t port, const std::string& topic, const std::string& payload) {
    process p({"mosquitto_pub", "-p", std::to_string(port), "-q", "1", "-t", topic, "-m", payload});
    REQUIRE(p.wait(10000ms) == 0);
}

// A batch of the contract with one reading per seq in `seqs`.
std::string batch(const std::string& gw, std::uint64_t number, std::vector<std::uint64_t> seqs,
                  bool replay = false) {
    json events = json::array();
    for (auto s : seqs)
        events.push_back({{"seq", s},
                          {"device", "d"},
                          {"tag", "t"},
                          {"ts", 1764236400000 + static_cast<std::int64_t>(s)},
                          {"value", 1.5},
                          {"quality", "good"}});
    json b = {{"gateway", gw}, {"batch", number}, {"events", events}};
    if (replay) b["replay"] = true;
    return b.dump();
}

}  // namespace

TEST_CASE("two consumers sharing a subscription store every delivered reading once") {
    modbus_sim sim(0, holding_registers(10));
    mosquitto broker;
    mqtt_recorder witness(broker.uri(), {"plant/#"});
    temp_dir dir;
    const auto db = dir.file("readings.db");
    auto a = consumer(broker.uri(), dir.file("a.log"),
                      {"--share", "cloud", "--client-id", "cloud-a", "--persistent", "--db", db});
    auto b = consumer(broker.uri(), dir.file("b.log"),
                      {"--share", "cloud", "--client-id", "cloud-b", "--persistent", "--db", db});

    const auto http_port = free_port();
    auto ferry = ferry_process(config_path("consumer"), dir.file("ferry.log"),
                               ferry_vars(dir.path(), http_port, sim.port(), broker.uri()));
    wait_ready(*ferry, http_port);
    REQUIRE(wait_until([&] { return witness.count() >= 60; }, 20000ms));
    // A draining stop: the batches in memory are spooled and sent before ferry exits.
    REQUIRE(ferry->stop(15, 10000ms) == 0);
    REQUIRE(read_file(dir.file("ferry.log")).find("spooled_messages=0") != std::string::npos);

    // The witness: every message ferry's broker passed on, and the distinct seqs in them.
    std::vector<upstream_message> msgs;
    REQUIRE(wait_until(
        [&] {
            const auto n = witness.count();
            std::this_thread::sleep_for(300ms);
            return n == witness.count();
        },
        10000ms));
    msgs = parse_upstream(witness.messages());
    std::set<std::string> seqs;
    std::size_t events = 0;
    for (const auto& m : msgs)
        for (const auto& e : m.events) {
            seqs.insert(std::to_string(e.seq));
            ++events;
        }
    const auto check = check_delivery(msgs);
    MESSAGE("witness: " << check.summary());
    REQUIRE(events > seqs.size());  // the mirror rule's readings came twice

    // Both instances have stored everything the broker gave them.
    const auto stored_query = "SELECT count(*) FROM messages";
    REQUIRE(wait_until(
        [&] { return column(db, stored_query).at(0) == std::to_string(msgs.size()); }, 10000ms));
    // ... and the gateway's last word, its retained "offline" (each instance subscribes to
    // the status topic unshared; it comes after the last batch).
    const auto status_query = "SELECT status FROM gateway_status WHERE gateway = 'consumer-gw'";
    CHECK(wait_until(
        [&] { return column(db, status_query) == std::vector<std::string>{"offline"}; }, 10000ms));
    CHECK(a->stop(15, 10000ms) == 0);
    CHECK(b->stop(15, 10000ms) == 0);

    // Every seq exactly once (the primary key forbids twice; the set says none is missing).
    const auto stored = column(db, "SELECT seq FROM readings WHERE gateway = 'consumer-gw'");
    CHECK(stored.size() == seqs.size());
    CHECK(std::set<std::string>(stored.begin(), stored.end()) == seqs);
    // The shared subscription split the stream: each message went to one instance, both had
    // some.
    const auto per_consumer =
        column(db, "SELECT count(*) FROM messages GROUP BY consumer ORDER BY consumer");
    REQUIRE(per_consumer.size() == 2);
    MESSAGE("messages per instance: " << per_consumer[0] << ", " << per_consumer[1]);
    CHECK(std::stoul(per_consumer[0]) > 0);
    CHECK(std::stoul(per_consumer[1]) > 0);

    const auto r = report(dir, db);
    const auto& g = r["gateways"]["consumer-gw"];
    MESSAGE("report: " << g.dump());
    CHECK(g["readings"] == seqs.size());
    CHECK(g["duplicates_dropped"] == events - seqs.size());
    CHECK(g["messages"] == msgs.size());
    CHECK(g["repeated_messages"] == check.repeats);
    CHECK(g["missing_batches"] == 0);
    CHECK(g["out_of_order"] == 0);
    CHECK(g["topics"].size() == 2);  // plant/consumer-gw/d1 and plant/consumer-gw/mirror
    CHECK(r["status"]["consumer-gw"] == "offline");
}

TEST_CASE("a skipped batch is a gap, a repeated one a duplicate, a replay is no reorder") {
    mosquitto broker;
    temp_dir dir;
    const auto db = dir.file("readings.db");
    auto c = consumer(broker.uri(), dir.file("c.log"),
                      {"--client-id", "crafted", "--mqtt", "3.1.1", "--db", db});
    auto j = consumer(broker.uri(), dir.file("j.log"), {"--jsonl", dir.file("readings.jsonl")});

    // plant/gw/a: 1 2 4 4 5 — batch 3 lost, batch 4 sent twice (its PUBACK lost).
    for (std::uint64_t n : {1, 2, 4, 4, 5})
        publish(broker.port(), "plant/gw/a", batch("gw", n, {n * 10, n * 10 + 1}));
    // plant/gw/b: 1 3 2 — 2 arrives after 3 in one stream.
    for (std::uint64_t n : {1, 3, 2})
        publish(broker.port(), "plant/gw/b", batch("gw", n, {100 + n}));
    // plant/gw/c: live 10 11 first, then the backlog 7 8 9 replayed: no gap, no reorder.
    for (std::uint64_t n : {10, 11})
        publish(broker.port(), "plant/gw/c", batch("gw", n, {200 + n}));
    for (std::uint64_t n : {7, 8, 9})
        publish(broker.port(), "plant/gw/c", batch("gw", n, {200 + n}, true));
    publish(broker.port(), "plant/gw/d", "not ferry's json");  // skipped, counted

    const auto total = 5 + 3 + 5;
    REQUIRE(wait_until([&] { return column(db, "SELECT count(*) FROM messages").at(0) == "13"; },
                       10000ms));
    CHECK(c->stop(15, 10000ms) == 0);
    CHECK(j->stop(15, 10000ms) == 0);

    const auto r = report(dir, db);
    const auto& g = r["gateways"]["gw"];
    MESSAGE("report: " << g.dump());
    CHECK(g["messages"] == total);
    CHECK(g["repeated_messages"] == 1);
    CHECK(g["duplicates_dropped"] == 2);  // batch 4's two readings, the second time
    CHECK(g["readings"] == 5 * 2 - 2 + 3 + 5);
    CHECK(g["replayed_messages"] == 3);
    CHECK(g["missing_batches"] == 1);
    CHECK(g["topics"]["plant/gw/a"]["gaps"] == json::parse("[[3, 3]]"));
    CHECK(g["topics"]["plant/gw/b"]["gaps"] == json::array());
    CHECK(g["topics"]["plant/gw/c"]["gaps"] == json::array());
    CHECK(g["topics"]["plant/gw/c"]["first_batch"] == 7);
    CHECK(g["out_of_order"] == 1);  // plant/gw/b's batch 2, not plant/gw/c's replay

    // The same as the instance saw it live (its report at exit), and the JSON-lines file:
    // each new reading once.
    const auto log = read_file(dir.file("c.log"));
    CHECK(log.find("gap: gw plant/gw/a: batch 3..3 missing (1 message)") != std::string::npos);
    CHECK(log.find("ignored 1 payload(s)") != std::string::npos);
    std::size_t lines = 0;
    for (char ch : read_file(dir.file("readings.jsonl")))
        lines += ch == '\n';
    CHECK(lines == 16);
}
