// The Sparkplug B edge node's encoder (upstream/sparkplug/node.hpp), read back with the classes
// generated from the same schema: DDATA metrics (alias, timestamp, datatype, value, null and
// quality), the rule engine's sparkplug_b batches, seq given at send time (appended, the last
// occurrence wins; NBIRTH resets it; 255 wraps to 0), is_historical for DDATA spooled before
// the current NBIRTH, bdSeq rising across connects and restarts, NCMD/DCMD parsing. The
// integration test decodes what `ferry run` sends with Eclipse Tahu (an independent decoder).
#include <doctest/doctest.h>

#include <prometheus/registry.h>

#include <chrono>
#include <limits>
#include <string>
#include <vector>

#include "rules/engine.hpp"
#include "tests/unit/unit_support.hpp"
#include "upstream/sparkplug/node.hpp"
#include "upstream/sparkplug/sparkplug_b.pb.h"
#include "upstream/spool.hpp"

using namespace std::chrono_literals;
namespace pb = org::eclipse::tahu::protobuf;
using ferry::upstream::sparkplug::alias_of;
using ferry::upstream::sparkplug::datatype_of;
using ferry::upstream::sparkplug::node;

namespace {

constexpr std::int64_t k_never = std::numeric_limits<std::int64_t>::max();

ferry::config::point point(std::string name, ferry::config::point_type t, std::string unit = {},
                           double scale = 1.0) {
    ferry::config::point p;
    p.name = std::move(name);
    p.type = t;
    p.unit = std::move(unit);
    p.scale = scale;
    return p;
}

struct fixture {
    ferry::unit::tmp_dir dir;
    prometheus::Registry registry;
    std::unique_ptr<ferry::upstream::spool> sp;
    ferry::point_table points;
    std::vector<ferry::config::device> devices;
    std::unique_ptr<node> n;

    fixture() {
        open();
        ferry::config::device boiler;
        boiler.id = "boiler1";
        boiler.points = {point("temperature", ferry::config::point_type::float32, "degC"),
                         point("level", ferry::config::point_type::int16, "cm"),
                         point("count", ferry::config::point_type::uint32),
                         point("raw", ferry::config::point_type::uint16, "bar", 0.1),
                         point("on", ferry::config::point_type::boolean),
                         point("name", ferry::config::point_type::string)};
        boiler.points[1].min = -100;
        boiler.points[1].max = 400;
        boiler.points[1].writable = true;
        devices.push_back(boiler);
        for (const auto& d : devices)
            for (const auto& p : d.points)
                points.intern(d.id, p.name, p.unit);
        make_node();
    }
    void open() {
        ferry::config::spool_settings s;
        s.path = dir.file("spool.db");
        s.fsync = ferry::config::fsync_mode::never;
        sp = std::make_unique<ferry::upstream::spool>(s, registry);
    }
    void make_node() {
        ferry::config::sparkplug_settings s;
        s.group_id = "plant";
        s.edge_node_id = "gw1";
        n = std::make_unique<node>(s, *sp);
        n->configure(devices, points);
    }
    ferry::event reading(const std::string& tag, ferry::value v,
                         ferry::quality q = ferry::quality::good, std::int64_t ts = 1764236400123) {
        ferry::event e;
        e.seq = 1;
        e.point = *points.find("boiler1/" + tag);
        e.value = std::move(v);
        e.quality = q;
        e.ts = ferry::wall_clock::time_point(std::chrono::milliseconds(ts));
        return e;
    }
    void add(std::string& body, const ferry::event& e) {
        n->append_event(body, e, e.point, points.get(e.point));
    }
};

pb::Payload parse(const std::string& bytes) {
    pb::Payload p;
    REQUIRE(p.ParseFromString(bytes));
    return p;
}

}  // namespace

TEST_CASE("sparkplug: datatypes from the point type; aliases stable and distinct") {
    using t = ferry::config::point_type;
    CHECK(datatype_of(point("a", t::boolean)) == pb::Boolean);
    CHECK(datatype_of(point("a", t::int16)) == pb::Int16);
    CHECK(datatype_of(point("a", t::uint16)) == pb::UInt16);
    CHECK(datatype_of(point("a", t::int32)) == pb::Int32);
    CHECK(datatype_of(point("a", t::uint32)) == pb::UInt32);
    CHECK(datatype_of(point("a", t::int64)) == pb::Int64);
    CHECK(datatype_of(point("a", t::uint64)) == pb::UInt64);
    CHECK(datatype_of(point("a", t::float32)) == pb::Float);
    CHECK(datatype_of(point("a", t::float64)) == pb::Double);
    CHECK(datatype_of(point("a", t::string)) == pb::String);
    // The driver delivers raw * scale + offset as a float.
    CHECK(datatype_of(point("a", t::uint16, "", 0.1)) == pb::Double);
    CHECK(alias_of("boiler1", "temperature") == alias_of("boiler1", "temperature"));
    CHECK(alias_of("boiler1", "temperature") != alias_of("boiler1", "level"));
    CHECK(alias_of("boiler1", "temperature") < (1ull << 63));
}

TEST_CASE("sparkplug: DDATA metrics by alias with their own timestamps, values and quality") {
    fixture f;
    std::string body;
    f.add(body, f.reading("temperature", 21.5, ferry::quality::good, 1000));
    f.add(body, f.reading("level", std::int64_t{-5}, ferry::quality::good, 1001));
    f.add(body, f.reading("count", std::int64_t{4000000000}, ferry::quality::good, 1002));
    f.add(body, f.reading("raw", 1.5, ferry::quality::uncertain, 1003));
    f.add(body, f.reading("on", true, ferry::quality::good, 1004));
    f.add(body, f.reading("name", std::string("pump A"), ferry::quality::good, 1005));
    f.add(body, f.reading("level", std::monostate{}, ferry::quality::bad, 1006));
    std::string payload;
    f.n->wrap(body, 7, payload);
    CHECK(f.n->topic_template() == "spBv1.0/plant/DDATA/gw1/{device}");

    const auto p = parse(payload);
    CHECK(p.timestamp() > 0);
    CHECK_FALSE(p.has_seq());  // given at send time
    REQUIRE(p.metrics_size() == 7);
    const auto& temp = p.metrics(0);
    CHECK_FALSE(temp.has_name());  // by alias only
    CHECK(temp.alias() == alias_of("boiler1", "temperature"));
    CHECK(temp.timestamp() == 1000);
    CHECK(temp.datatype() == pb::Float);
    CHECK(temp.float_value() == 21.5f);
    CHECK(temp.properties().keys_size() == 0);  // good quality says nothing
    CHECK(p.metrics(1).datatype() == pb::Int16);
    CHECK(static_cast<std::int32_t>(p.metrics(1).int_value()) == -5);
    CHECK(p.metrics(2).datatype() == pb::UInt32);
    CHECK(p.metrics(2).long_value() == 4000000000u);  // UInt32 goes in long_value (spec 6.4.16)
    CHECK(p.metrics(3).datatype() == pb::Double);
    CHECK(p.metrics(3).double_value() == 1.5);
    REQUIRE(p.metrics(3).properties().keys_size() == 1);
    CHECK(p.metrics(3).properties().keys(0) == "Quality");
    CHECK(p.metrics(3).properties().values(0).int_value() == 64);
    CHECK(p.metrics(4).boolean_value());
    CHECK(p.metrics(5).string_value() == "pump A");
    const auto& bad = p.metrics(6);
    CHECK(bad.is_null());
    CHECK(bad.value_case() == pb::Payload_Metric::VALUE_NOT_SET);
    CHECK(bad.datatype() == pb::Int16);
    CHECK(bad.properties().values(0).int_value() == 0);
}

TEST_CASE("sparkplug: seq given at send time, reset by NBIRTH, 0..255; NDEATH has none") {
    fixture f;
    auto births = f.n->births();
    REQUIRE(births.size() == 2);  // NBIRTH, one DBIRTH
    CHECK(births[0].topic == "spBv1.0/plant/NBIRTH/gw1");
    CHECK(births[1].topic == "spBv1.0/plant/DBIRTH/gw1/boiler1");
    f.n->before_send(births[0].topic, births[0].payload, k_never);
    f.n->before_send(births[1].topic, births[1].payload, k_never);
    CHECK(parse(births[0].payload).seq() == 0);
    CHECK(parse(births[1].payload).seq() == 1);

    std::string body;
    f.add(body, f.reading("temperature", 20.0));
    std::string ddata;
    f.n->wrap(body, 1, ddata);
    std::uint64_t last = 1;
    for (int i = 0; i < 300; ++i) {
        auto copy = ddata;
        f.n->before_send("spBv1.0/plant/DDATA/gw1/boiler1", copy, k_never);
        const auto seq = parse(copy).seq();
        CHECK(seq == (last + 1) % 256);
        last = seq;
    }
    // Another namespace (a JSON rule's topic) is left alone and takes no seq.
    std::string json = "{\"batch\":1}";
    f.n->before_send("plant/gw1/boiler1", json, k_never);
    CHECK(json == "{\"batch\":1}");
    // A rebirth starts again at 0.
    auto again = f.n->births();
    f.n->before_send(again[0].topic, again[0].payload, k_never);
    CHECK(parse(again[0].payload).seq() == 0);
}

TEST_CASE("sparkplug: DDATA spooled before the current NBIRTH goes out is_historical") {
    fixture f;
    std::string body;
    f.add(body, f.reading("temperature", 20.0));
    f.add(body, f.reading("level", std::int64_t{3}));
    std::string ddata;
    f.n->wrap(body, 1, ddata);
    const auto spooled_at = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count() -
                            5000;
    f.n->births();
    auto old = ddata;
    f.n->before_send("spBv1.0/plant/DDATA/gw1/boiler1", old, spooled_at);
    const auto p = parse(old);
    REQUIRE(p.metrics_size() == 2);
    CHECK(p.metrics(0).is_historical());
    CHECK(p.metrics(1).is_historical());
    CHECK(p.metrics(1).int_value() == 3);
    auto live = ddata;
    f.n->before_send("spBv1.0/plant/DDATA/gw1/boiler1", live, k_never - 1);
    CHECK_FALSE(parse(live).metrics(0).is_historical());
}

TEST_CASE("sparkplug: NBIRTH/DBIRTH content; bdSeq of the will, rising across restarts") {
    fixture f;
    const auto will1 = f.n->will();
    CHECK(will1.topic == "spBv1.0/plant/NDEATH/gw1");
    CHECK(will1.qos == 1);
    CHECK_FALSE(will1.retain);
    const auto death = parse(will1.payload);
    REQUIRE(death.metrics_size() == 1);
    CHECK(death.metrics(0).name() == "bdSeq");
    CHECK(death.metrics(0).datatype() == pb::Int64);
    const auto bd1 = death.metrics(0).long_value();

    // A reading is remembered: the next DBIRTH carries it as the current value.
    std::string body;
    f.add(body, f.reading("level", std::int64_t{42}, ferry::quality::good, 5000));
    const auto births = f.n->births();
    const auto nbirth = parse(births[0].payload);
    REQUIRE(nbirth.metrics_size() == 2);
    CHECK(nbirth.metrics(0).name() == "bdSeq");
    CHECK(nbirth.metrics(0).long_value() == bd1);
    CHECK(nbirth.metrics(1).name() == "Node Control/Rebirth");
    CHECK(nbirth.metrics(1).datatype() == pb::Boolean);
    CHECK_FALSE(nbirth.metrics(1).boolean_value());
    const auto dbirth = parse(births[1].payload);
    REQUIRE(dbirth.metrics_size() == 6);
    const auto& level = dbirth.metrics(1);
    CHECK(level.name() == "level");
    CHECK(level.alias() == alias_of("boiler1", "level"));
    CHECK(level.datatype() == pb::Int16);
    CHECK(level.int_value() == 42);
    CHECK(level.timestamp() == 5000);
    REQUIRE(level.properties().keys_size() == 3);
    CHECK(level.properties().keys(0) == "engUnit");
    CHECK(level.properties().values(0).string_value() == "cm");
    CHECK(level.properties().keys(1) == "engLow");
    CHECK(level.properties().values(1).double_value() == -100);
    CHECK(level.properties().keys(2) == "engHigh");
    CHECK(dbirth.metrics(0).is_null());  // temperature: nothing read yet

    // Each connect takes the next bdSeq; a new process (same spool) goes on from there.
    CHECK(parse(f.n->will().payload).metrics(0).long_value() == (bd1 + 1) % 256);
    f.n.reset();
    f.make_node();
    CHECK(parse(f.n->will().payload).metrics(0).long_value() == (bd1 + 2) % 256);
}

TEST_CASE("sparkplug: DDEATH when a device goes down, DBIRTH when it comes back") {
    fixture f;
    CHECK_FALSE(f.n->device_state("boiler1", true));  // up already: nothing to say
    auto down = f.n->device_state("boiler1", false);
    REQUIRE(down);
    CHECK(down->topic == "spBv1.0/plant/DDEATH/gw1/boiler1");
    CHECK_FALSE(f.n->device_state("boiler1", false));
    // A (re)birth says the device is dead after its DBIRTH.
    const auto births = f.n->births();
    REQUIRE(births.size() == 3);
    CHECK(births[2].topic == "spBv1.0/plant/DDEATH/gw1/boiler1");
    // While dead its readings make no DDATA (a host would ask for a rebirth), but the last
    // one is remembered for the DBIRTH.
    std::string body;
    const auto level = f.reading("level", std::int64_t{12});
    CHECK_FALSE(f.n->append_event(body, level, level.point, f.points.get(level.point)));
    CHECK(body.empty());
    auto up = f.n->device_state("boiler1", true);
    REQUIRE(up);
    CHECK(up->topic == "spBv1.0/plant/DBIRTH/gw1/boiler1");
    CHECK(parse(up->payload).metrics_size() == 6);
    CHECK(parse(up->payload).metrics(1).int_value() == 12);
    CHECK_FALSE(f.n->device_state("nosuch", false));
}

TEST_CASE("sparkplug: NCMD rebirth and DCMD writes by name or alias") {
    fixture f;
    pb::Payload ncmd;
    ncmd.set_timestamp(1);
    auto* rb = ncmd.add_metrics();
    rb->set_name("Node Control/Rebirth");
    rb->set_datatype(pb::Boolean);
    rb->set_boolean_value(true);
    auto c = f.n->parse_command("spBv1.0/plant/NCMD/gw1", ncmd.SerializeAsString());
    CHECK(c.rebirth);
    CHECK(c.errors.empty());

    pb::Payload dcmd;
    dcmd.set_timestamp(1764236400000);
    auto* m1 = dcmd.add_metrics();
    m1->set_name("level");
    m1->set_datatype(pb::Int16);
    m1->set_int_value(static_cast<std::uint32_t>(-7));
    auto* m2 = dcmd.add_metrics();
    m2->set_alias(alias_of("boiler1", "on"));
    m2->set_boolean_value(true);
    auto* m3 = dcmd.add_metrics();
    m3->set_name("nosuch");
    m3->set_int_value(1);
    c = f.n->parse_command("spBv1.0/plant/DCMD/gw1/boiler1", dcmd.SerializeAsString());
    CHECK_FALSE(c.rebirth);
    REQUIRE(c.writes.size() == 2);
    CHECK(c.writes[0].device == "boiler1");
    CHECK(c.writes[0].tag == "level");
    CHECK(std::get<std::int64_t>(c.writes[0].value) == -7);
    CHECK(c.writes[0].ts_ms == 1764236400000);
    CHECK(c.writes[1].tag == "on");
    CHECK(std::get<bool>(c.writes[1].value));
    // The same DCMD again gives the same ids: the command store answers, never writes twice.
    const auto again =
        f.n->parse_command("spBv1.0/plant/DCMD/gw1/boiler1", dcmd.SerializeAsString());
    CHECK(again.writes[0].id == c.writes[0].id);
    REQUIRE(c.errors.size() == 1);
    CHECK(c.errors[0] == "unknown metric 'nosuch'");
    CHECK(f.n->parse_command("spBv1.0/plant/DCMD/gw1/other", dcmd.SerializeAsString())
              .errors.size() == 1);
    CHECK(f.n->parse_command("spBv1.0/plant/NCMD/gw1", "\xff\xff").errors.size() == 1);
}

TEST_CASE("sparkplug: a sparkplug_b rule's batches are DDATA per device") {
    fixture f;
    ferry::config::rule r;
    r.name = "spb";
    r.match = {"#"};
    r.publish.format = ferry::config::payload_format::sparkplug_b;
    r.batch.max_events = 2;
    ferry::rules::engine eng({r}, f.points, "gw1", "ferry/{gateway}/dead-letter", f.n.get());
    std::vector<ferry::rules::batch> out;
    const auto now = std::chrono::steady_clock::now();
    eng.on_event(f.reading("temperature", 21.0), now, out);
    eng.on_event(f.reading("level", std::int64_t{9}), now, out);
    REQUIRE(out.size() == 1);
    CHECK(out[0].topic == "spBv1.0/plant/DDATA/gw1/boiler1");
    CHECK(out[0].events == 2);
    std::string payload;
    eng.wrap(out[0], 1, payload);
    const auto p = parse(payload);
    REQUIRE(p.metrics_size() == 2);
    CHECK(p.metrics(0).alias() == alias_of("boiler1", "temperature"));
    CHECK(p.metrics(1).int_value() == 9);
    // A dead device's reading is counted `deduped`, never batched.
    f.n->device_state("boiler1", false);
    eng.on_event(f.reading("level", std::int64_t{10}), now, out);
    eng.flush_all(out);
    CHECK(out.size() == 1);
    CHECK(eng.counters(0).deduped == 1);
    CHECK(eng.counters(0).passed == 2);
    // Without a codec the rule is refused.
    CHECK_THROWS_AS(ferry::rules::engine({r}, f.points, "gw1"), std::invalid_argument);
}

TEST_CASE("sparkplug: a primary host's STATE holds and releases the stream") {
    fixture f;
    // Without a primary host the gate is always open and a connect sends the births.
    CHECK(f.n->state_topic().empty());
    REQUIRE(f.n->gate());
    CHECK(f.n->gate()->empty());
    CHECK(f.n->after_connect().size() == 2);

    ferry::config::sparkplug_settings s;
    s.group_id = "plant";
    s.edge_node_id = "gw1";
    s.primary_host_id = "scada";
    node n(s, *f.sp);
    n.configure(f.devices, f.points);
    CHECK(n.state_topic() == "spBv1.0/STATE/scada");
    CHECK(n.after_connect().empty());  // births wait for the host
    CHECK_FALSE(n.gate());             // held: nothing known yet
    CHECK(n.host_state(R"({"online":false,"timestamp":100})") == std::optional<bool>{});
    CHECK_FALSE(n.gate());
    CHECK(n.host_state(R"({"online":true,"timestamp":200})") == std::optional<bool>{true});
    auto first = n.gate();
    REQUIRE(first);
    REQUIRE(first->size() == 2);  // NBIRTH, DBIRTH: before anything else
    CHECK((*first)[0].topic == "spBv1.0/plant/NBIRTH/gw1");
    CHECK(n.gate()->empty());  // then the stream flows
    // An older STATE (a retained one replayed late) changes nothing.
    CHECK(n.host_state(R"({"online":false,"timestamp":150})") == std::optional<bool>{});
    CHECK(n.gate()->empty());
    CHECK(n.host_state(R"({"online":false,"timestamp":300})") == std::optional<bool>{false});
    CHECK_FALSE(n.gate());
    CHECK(n.host_state("not json") == std::optional<bool>{});
    CHECK(n.host_state(R"({"online":true,"timestamp":400})") == std::optional<bool>{true});
    CHECK(n.gate()->size() == 2);  // born again
    // A reconnect waits for the (retained) STATE again.
    CHECK(n.after_connect().empty());
    CHECK_FALSE(n.gate());
    CHECK(n.host_state(R"({"online":true,"timestamp":400})") == std::optional<bool>{true});
    CHECK(n.gate()->size() == 2);
    // Hosts before 3.0 say ONLINE / OFFLINE.
    CHECK(n.host_state("OFFLINE") == std::optional<bool>{});  // timestamp 0 < 400: ignored
}

TEST_CASE("sparkplug: flagging DDATA historical does not change its size") {
    // The engine cuts batches below the broker's Maximum Packet Size with the size it
    // measured; a larger payload at send time would be refused, and resent, forever.
    fixture f;
    std::string body;
    for (int i = 0; i < 50; ++i)
        f.add(body, f.reading("level", std::int64_t{i}));
    std::string ddata;
    f.n->wrap(body, 1, ddata);
    f.n->births();
    auto live = ddata;
    auto old = ddata;
    f.n->before_send("spBv1.0/plant/DDATA/gw1/boiler1", live, k_never - 1);
    f.n->before_send("spBv1.0/plant/DDATA/gw1/boiler1", old, 0);
    CHECK(parse(old).metrics(49).is_historical());
    CHECK_FALSE(parse(live).metrics(49).is_historical());
    CHECK(old.size() == live.size());
    CHECK(live.size() <= ddata.size() + f.n->header_size());
}
