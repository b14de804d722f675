#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "rules/engine.hpp"

using namespace ferry;
using namespace std::chrono_literals;
using rules::steady_time;

namespace {

config::rule make_rule(std::string name, std::vector<std::string> match, std::string topic,
                       std::size_t max_events = 3, std::chrono::milliseconds max_age = 1000ms,
                       std::size_t max_bytes = 256 * 1024) {
    config::rule r;
    r.name = std::move(name);
    r.match = std::move(match);
    r.publish.topic = std::move(topic);
    r.batch.max_events = max_events;
    r.batch.max_age = max_age;
    r.batch.max_bytes = max_bytes;
    return r;
}

struct plant {
    point_table points;
    point_id t1, p1, t2;
    plant() {
        t1 = points.intern("boiler1", "temperature", "degC");
        p1 = points.intern("boiler1", "pressure", "bar");
        t2 = points.intern("boiler2", "temperature", "degC");
    }
};

event ev(point_id p, std::uint64_t seq, double v, std::int64_t ts_ms = 1764236400000) {
    event e;
    e.point = p;
    e.seq = seq;
    e.value = v;
    e.ts = wall_clock::time_point(std::chrono::milliseconds(ts_ms));
    return e;
}

nlohmann::json payload(const rules::engine& eng, const rules::batch& b, std::uint64_t no) {
    std::string out;
    eng.wrap(b, no, out);
    return nlohmann::json::parse(out);
}

std::vector<std::uint64_t> seqs(const rules::engine& eng, const rules::batch& b) {
    std::vector<std::uint64_t> out;
    auto j = payload(eng, b, 1);
    for (auto& e : j["events"])
        out.push_back(e["seq"].get<std::uint64_t>());
    return out;
}

const steady_time t0{};

}  // namespace

TEST_CASE("a batch leaves at max_events with the exact payload of CONTRACT.md") {
    plant p;
    rules::engine eng({make_rule("temps", {"+/temperature"}, "plant/{gateway}/{device}", 2)},
                      p.points, "gw1");
    std::vector<rules::batch> out;
    eng.on_event(ev(p.t1, 1001, 21.5, 1764236400123), t0, out);
    CHECK(out.empty());
    eng.on_event(ev(p.t1, 1002, 21.75, 1764236400124), t0, out);
    REQUIRE(out.size() == 1);
    CHECK(out[0].topic == "plant/gw1/boiler1");
    CHECK(out[0].events == 2);
    std::string text;
    eng.wrap(out[0], 42, text);
    CHECK(
        text ==
        R"({"gateway":"gw1","batch":42,"events":[)"
        R"({"seq":1001,"device":"boiler1","tag":"temperature","ts":1764236400123,"value":21.5,"quality":"good","unit":"degC"},)"
        R"({"seq":1002,"device":"boiler1","tag":"temperature","ts":1764236400124,"value":21.75,"quality":"good","unit":"degC"}]})");
}

TEST_CASE("events not matched by any rule are not batched") {
    plant p;
    rules::engine eng({make_rule("temps", {"boiler1/temperature"}, "t/{device}", 1)}, p.points,
                      "gw1");
    std::vector<rules::batch> out;
    eng.on_event(ev(p.p1, 1, 2.0), t0, out);
    eng.on_event(ev(p.t2, 2, 2.0), t0, out);
    CHECK(out.empty());
    eng.on_event(ev(p.t1, 3, 2.0), t0, out);
    CHECK(out.size() == 1);
    CHECK(eng.counters(0).passed == 1);
}

TEST_CASE("topic templates group events into one batch per resulting topic") {
    plant p;
    rules::engine eng({make_rule("all", {"#"}, "plant/{device}", 2)}, p.points, "gw1");
    std::vector<rules::batch> out;
    eng.on_event(ev(p.t1, 1, 1.0), t0, out);
    eng.on_event(ev(p.t2, 2, 2.0), t0, out);
    eng.on_event(ev(p.p1, 3, 3.0), t0, out);  // boiler1 again: its batch is full now
    REQUIRE(out.size() == 1);
    CHECK(out[0].topic == "plant/boiler1");
    CHECK(seqs(eng, out[0]) == std::vector<std::uint64_t>{1, 3});
    out.clear();
    eng.flush_all(out);
    REQUIRE(out.size() == 1);
    CHECK(out[0].topic == "plant/boiler2");
    CHECK(seqs(eng, out[0]) == std::vector<std::uint64_t>{2});
}

TEST_CASE("a partial batch leaves once max_age has passed since its first event (fake clock)") {
    plant p;
    rules::engine eng({make_rule("temps", {"#"}, "t", 100, 1000ms)}, p.points, "gw1");
    std::vector<rules::batch> out;
    CHECK(eng.next_deadline() == steady_time::max());
    eng.on_event(ev(p.t1, 1, 1.0), t0 + 100ms, out);
    eng.on_event(ev(p.t1, 2, 1.0), t0 + 900ms, out);
    CHECK(eng.next_deadline() == t0 + 1100ms);
    eng.on_tick(t0 + 1099ms, out);
    CHECK(out.empty());
    eng.on_tick(t0 + 1100ms, out);
    REQUIRE(out.size() == 1);
    CHECK(seqs(eng, out[0]) == std::vector<std::uint64_t>{1, 2});
    // The next batch's age counts from its own first event.
    out.clear();
    eng.on_event(ev(p.t1, 3, 1.0), t0 + 1500ms, out);
    eng.on_tick(t0 + 2100ms, out);
    CHECK(out.empty());
    eng.on_tick(t0 + 2500ms, out);
    CHECK(out.size() == 1);
}

TEST_CASE("a batch never exceeds max_bytes") {
    plant p;
    const std::size_t max_bytes = 600;
    rules::engine eng({make_rule("r", {"#"}, "t", 1000, 1000ms, max_bytes)}, p.points,
                      "a-long-gateway-id");
    std::vector<rules::batch> out;
    for (std::uint64_t i = 1; i <= 200; ++i)
        eng.on_event(ev(p.t1, i, 1.0 / 3.0 * static_cast<double>(i)), t0, out);
    eng.flush_all(out);
    std::uint64_t expect = 1;
    for (auto& b : out) {
        std::string text;
        eng.wrap(b, 18446744073709551615ull, text);  // the widest batch number
        CHECK(text.size() <= max_bytes);
        CHECK(b.events >= 2);  // and batches are not needlessly small
        for (auto s : seqs(eng, b))
            CHECK(s == expect++);
    }
    CHECK(expect == 201);
}

TEST_CASE("a known broker packet limit cuts batches so each fits one packet (issue 14)") {
    plant p;
    rules::engine eng({make_rule("r", {"#"}, "plant/{device}", 1000, 1000ms)}, p.points, "gw");
    std::vector<rules::batch> out;
    for (std::uint64_t i = 1; i <= 50; ++i)
        eng.on_event(ev(p.t1, i, 1.5), t0, out);
    const std::uint64_t limit = 1024;
    eng.set_packet_limit(limit);  // learned from a CONNACK while a batch was open
    for (std::uint64_t i = 51; i <= 300; ++i)
        eng.on_event(ev(p.t1, i, 1.5), t0, out);
    eng.flush_all(out);
    REQUIRE(out.size() >= 3);
    std::uint64_t expect = 1;
    for (std::size_t k = 0; k < out.size(); ++k) {
        std::string text;
        eng.wrap(out[k], 18446744073709551615ull, text);
        // The batch open when the limit came may be over it; every later one fits.
        if (k > 0) CHECK(text.size() + ferry::publish_overhead(out[k].topic.size()) <= limit);
        for (auto s : seqs(eng, out[k]))
            CHECK(s == expect++);
    }
    CHECK(expect == 301);
}

TEST_CASE("fan-out: an event matching two rules goes to both, keeping its seq") {
    plant p;
    rules::engine eng({make_rule("a", {"boiler1/#"}, "a/{device}", 1),
                       make_rule("b", {"+/temperature"}, "b/{tag}", 1)},
                      p.points, "gw1");
    std::vector<rules::batch> out;
    eng.on_event(ev(p.t1, 7, 1.0), t0, out);
    REQUIRE(out.size() == 2);
    CHECK(out[0].topic == "a/boiler1");
    CHECK(out[1].topic == "b/temperature");
    CHECK(seqs(eng, out[0]) == std::vector<std::uint64_t>{7});
    CHECK(seqs(eng, out[1]) == std::vector<std::uint64_t>{7});
    CHECK(eng.counters(0).passed == 1);
    CHECK(eng.counters(1).passed == 1);
}

TEST_CASE("bad quality events carry a null value; values of every kind encode as JSON") {
    plant p;
    rules::engine eng({make_rule("r", {"#"}, "t", 5)}, p.points, "gw\"1");
    std::vector<rules::batch> out;
    auto bad = ev(p.t1, 1, 0.0);
    bad.quality = quality::bad;
    bad.value = std::monostate{};
    eng.on_event(bad, t0, out);
    auto i = ev(p.t1, 2, 0.0);
    i.value = std::int64_t{-5};
    eng.on_event(i, t0, out);
    auto u = ev(p.t1, 3, 0.0);
    u.value = std::uint64_t{18446744073709551615ull};
    eng.on_event(u, t0, out);
    auto s = ev(p.t1, 4, 0.0);
    s.value = std::string("a\"b\n");
    eng.on_event(s, t0, out);
    auto b = ev(p.t1, 5, 0.0);
    b.value = true;
    eng.on_event(b, t0, out);
    REQUIRE(out.size() == 1);
    auto j = payload(eng, out[0], 1);
    CHECK(j["gateway"] == "gw\"1");
    CHECK(j["events"][0]["value"].is_null());
    CHECK(j["events"][0]["quality"] == "bad");
    CHECK(j["events"][1]["value"] == -5);
    CHECK(j["events"][2]["value"].get<std::uint64_t>() == 18446744073709551615ull);
    CHECK(j["events"][3]["value"] == "a\"b\n");
    CHECK(j["events"][4]["value"] == true);
}

TEST_CASE("message_expiry goes with each batch of the rule; retain_last gives each value once") {
    plant p;
    auto r = make_rule("temps", {"+/temperature"}, "plant/{gateway}/{device}", 2);
    r.publish.message_expiry_s = 90;
    r.publish.retain_last = true;
    auto plain = make_rule("all", {"boiler1/#"}, "all/{device}", 2);
    rules::engine eng({r, plain}, p.points, "gw1");
    std::vector<rules::batch> out;
    eng.on_event(ev(p.t1, 1001, 21.5, 1764236400123), t0, out);
    eng.on_event(ev(p.t1, 1002, 21.75, 1764236400124), t0, out);
    eng.on_event(ev(p.p1, 1003, 1.5), t0, out);
    REQUIRE(out.size() == 2);
    CHECK(out[0].topic == "plant/gw1/boiler1");
    CHECK(out[0].expiry_s == 90);
    CHECK(out[1].topic == "all/boiler1");
    CHECK(out[1].expiry_s == 0);
    // Only the rule with retain_last, one value per event it passed, newest last.
    auto& kept = eng.retained();
    REQUIRE(kept.size() == 2);
    CHECK(kept[0].topic == "ferry/gw1/last/boiler1/temperature");
    CHECK(kept[1].topic == "ferry/gw1/last/boiler1/temperature");
    CHECK(kept[1].payload == R"({"value":21.75,"quality":"good","ts":1764236400124,"seq":1002})");
    kept.clear();
    auto bad = ev(p.t2, 1004, 0);
    bad.quality = quality::bad;
    eng.on_event(bad, t0, out);
    REQUIRE(eng.retained().size() == 1);
    CHECK(eng.retained()[0].topic == "ferry/gw1/last/boiler2/temperature");
    CHECK(eng.retained()[0].payload ==
          R"({"value":null,"quality":"bad","ts":1764236400000,"seq":1004})");
}

TEST_CASE("batches are cut with room for the MQTT 5 properties below the packet limit") {
    plant p;
    const std::string gateway(40, 'g');
    rules::engine eng({make_rule("temps", {"+/temperature"}, "t/{device}", 1000)}, p.points,
                      gateway);
    const std::uint64_t limit = 2048;
    eng.set_packet_limit(limit);
    std::vector<rules::batch> out;
    for (std::uint64_t s = 1; s <= 200; ++s)
        eng.on_event(ev(p.t1, s, 21.5), t0, out);
    REQUIRE(out.size() >= 2);
    for (const auto& b : out) {
        std::string text;
        eng.wrap(b, 18446744073709551615ull, text);
        CHECK(text.size() + publish_overhead(b.topic.size(), gateway.size()) <= limit);
    }
    // The room is what the properties take at most: the expiry, and the four user properties
    // with 20-digit numbers and this gateway id.
    CHECK(mqtt5_properties_bytes(gateway.size()) ==
          5 + (3 + 7 + 2 + 40) + (3 + 5 + 2 + 20) + (3 + 9 + 2 + 20) + (3 + 8 + 2 + 20));
}
