// The Sparkplug B edge node (see node.hpp and docs/SPARKPLUG.md). Every payload is built and
// read with the classes protoc generates from sparkplug_b.proto (protobuf-lite).
#include "upstream/sparkplug/node.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <shared_mutex>
#include <stdexcept>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <nlohmann/json.hpp>

#include "upstream/sparkplug/sparkplug_b.pb.h"
#include "upstream/spool.hpp"

namespace ferry::upstream::sparkplug {
namespace {

namespace pb = org::eclipse::tahu::protobuf;

constexpr const char* k_namespace = "spBv1.0";
constexpr const char* k_bdseq_key = "sparkplug_bdseq";
constexpr const char* k_rebirth = "Node Control/Rebirth";
// OPC quality codes, as Ignition and other hosts read the "Quality" property.
constexpr std::uint32_t k_quality_uncertain = 64;
constexpr std::uint32_t k_quality_bad = 0;

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::int64_t unix_ms(const event& e) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(e.ts.time_since_epoch()).count();
}

// The value of `v` in the field its datatype asks for (specification 3.0, 6.4.16): Int8..Int32,
// UInt8 and UInt16 in int_value (signed ones as their two's complement); UInt32, Int64,
// UInt64 and DateTime in long_value.
void set_value(pb::Payload_Metric& m, std::uint32_t dt, const ferry::value& v) {
    const auto number = as_double(v);
    switch (dt) {
        case pb::Boolean:
            if (const auto* b = std::get_if<bool>(&v))
                m.set_boolean_value(*b);
            else
                m.set_boolean_value(number && *number != 0);
            return;
        case pb::String:
        case pb::Text:
            if (const auto* s = std::get_if<std::string>(&v))
                m.set_string_value(*s);
            else if (number)
                m.set_string_value(std::to_string(*number));
            return;
        case pb::Float:
            m.set_float_value(static_cast<float>(number.value_or(0)));
            return;
        case pb::Double:
            m.set_double_value(number.value_or(0));
            return;
        default:
            break;
    }
    std::int64_t i = 0;
    std::uint64_t u = 0;
    if (const auto* x = std::get_if<std::int64_t>(&v)) {
        i = *x;
        u = static_cast<std::uint64_t>(*x);
    } else if (const auto* y = std::get_if<std::uint64_t>(&v)) {
        u = *y;
        i = static_cast<std::int64_t>(*y);
    } else if (number && std::isfinite(*number)) {
        i = static_cast<std::int64_t>(std::llround(*number));
        u = static_cast<std::uint64_t>(i);
    }
    switch (dt) {
        case pb::Int8:
        case pb::Int16:
        case pb::Int32:
            m.set_int_value(static_cast<std::uint32_t>(static_cast<std::int32_t>(i)));
            return;
        case pb::UInt8:
        case pb::UInt16:
            m.set_int_value(static_cast<std::uint32_t>(u));
            return;
        default:  // UInt32 (the specification puts it in long_value), Int64, UInt64, DateTime
            m.set_long_value(u);
            return;
    }
}

// The datatype of a value seen without a DBIRTH entry (a point not configured).
std::uint32_t datatype_of_value(const ferry::value& v) {
    switch (v.index()) {
        case 1:
            return pb::Boolean;
        case 2:
            return pb::Int64;
        case 3:
            return pb::UInt64;
        case 5:
            return pb::String;
        default:
            return pb::Double;
    }
}

void add_property(pb::Payload_PropertySet& set, const std::string& key, std::uint32_t type,
                  const auto& fill) {
    set.add_keys(key);
    auto* v = set.add_values();
    v->set_type(type);
    fill(*v);
}

// A value from a command's metric, by the field that is set (the datatype decides the sign).
std::optional<ferry::value> command_value(const pb::Payload_Metric& m, std::uint32_t dt) {
    switch (m.value_case()) {
        case pb::Payload_Metric::kBooleanValue:
            return ferry::value{m.boolean_value()};
        case pb::Payload_Metric::kIntValue:
            if (dt == pb::Int8 || dt == pb::Int16 || dt == pb::Int32)
                return ferry::value{
                    static_cast<std::int64_t>(static_cast<std::int32_t>(m.int_value()))};
            return ferry::value{static_cast<std::int64_t>(m.int_value())};
        case pb::Payload_Metric::kLongValue:
            if (dt == pb::UInt64) return ferry::value{m.long_value()};
            return ferry::value{static_cast<std::int64_t>(m.long_value())};
        case pb::Payload_Metric::kFloatValue:
            return ferry::value{static_cast<double>(m.float_value())};
        case pb::Payload_Metric::kDoubleValue:
            return ferry::value{m.double_value()};
        case pb::Payload_Metric::kStringValue:
            return ferry::value{m.string_value()};
        default:
            return std::nullopt;
    }
}

}  // namespace

std::uint32_t datatype_of(const config::point& p) {
    const bool scaled = p.scale != 1.0 || p.offset != 0.0;
    switch (p.type) {
        case config::point_type::boolean:
            return pb::Boolean;
        case config::point_type::string:
            return pb::String;
        case config::point_type::float32:
            return scaled ? pb::Double : pb::Float;
        case config::point_type::float64:
            return pb::Double;
        default:
            break;
    }
    if (scaled) return pb::Double;
    switch (p.type) {
        case config::point_type::int16:
            return pb::Int16;
        case config::point_type::uint16:
            return pb::UInt16;
        case config::point_type::int32:
            return pb::Int32;
        case config::point_type::uint32:
            return pb::UInt32;
        case config::point_type::int64:
            return pb::Int64;
        default:
            return pb::UInt64;
    }
}

std::uint64_t alias_of(std::string_view device, std::string_view tag) {
    std::uint64_t h = 1469598103934665603ull;
    auto mix = [&h](std::string_view s) {
        for (char c : s) {
            h ^= static_cast<unsigned char>(c);
            h *= 1099511628211ull;
        }
    };
    mix(device);
    mix("/");
    mix(tag);
    return h & 0x7fffffffffffffffull;
}

struct node::impl {
    struct metric_def {
        std::string name;
        std::uint64_t alias = 0;
        std::uint32_t datatype = 0;
        std::string unit;
        std::optional<double> min;
        std::optional<double> max;
        bool writable = false;
        // The last reading a rule encoded (for the next DBIRTH's "current value").
        ferry::value last;
        ferry::quality last_quality = quality::bad;
        std::int64_t last_ts = 0;
    };
    struct device_def {
        std::string id;
        std::vector<metric_def> metrics;
        bool down = false;
    };

    config::sparkplug_settings settings;
    spool& sp;
    mutable std::mutex mu;
    std::map<std::string, device_def> devices;
    // point id -> (device, metric index), for the codec.
    std::vector<std::pair<device_def*, std::size_t>> by_point;
    std::unordered_map<std::uint64_t, std::pair<device_def*, std::size_t>> by_alias;
    bool host_online = false;
    std::int64_t host_ts = -1;  // timestamp of the last STATE taken
    bool born = false;          // births sent since the last connect or host change
    std::uint64_t bd_seq = 0;
    std::uint64_t seq = 0;  // the next seq to give
    std::int64_t birth_ms = 0;

    // Metrics (null without a registry).
    std::map<std::string, prometheus::Counter*, std::less<>> sent;
    std::map<std::string, prometheus::Counter*, std::less<>> received;
    prometheus::Counter* err_command = nullptr;
    prometheus::Counter* err_state = nullptr;
    prometheus::Gauge* g_bdseq = nullptr;
    prometheus::Gauge* g_host = nullptr;

    impl(config::sparkplug_settings s, spool& p) : settings(std::move(s)), sp(p) {}

    void metrics(prometheus::Registry& r) {
        auto& s = prometheus::BuildCounter()
                      .Name("ferry_sparkplug_sent_total")
                      .Help("Sparkplug messages handed to the broker, by type")
                      .Register(r);
        for (const char* t : {"NBIRTH", "DBIRTH", "DDATA", "DDEATH", "NDEATH"})
            sent[t] = &s.Add({{"type", t}});
        auto& in = prometheus::BuildCounter()
                       .Name("ferry_sparkplug_received_total")
                       .Help("Sparkplug messages received, by type")
                       .Register(r);
        for (const char* t : {"NCMD", "DCMD", "STATE"})
            received[t] = &in.Add({{"type", t}});
        auto& e = prometheus::BuildCounter()
                      .Name("ferry_sparkplug_errors_total")
                      .Help("Sparkplug messages not understood, by reason")
                      .Register(r);
        err_command = &e.Add({{"reason", "command"}});
        err_state = &e.Add({{"reason", "state"}});
        g_bdseq = &prometheus::BuildGauge()
                       .Name("ferry_sparkplug_bdseq")
                       .Help("The bdSeq of the current (or next) connection")
                       .Register(r)
                       .Add({});
        g_host = &prometheus::BuildGauge()
                      .Name("ferry_sparkplug_primary_host_online")
                      .Help("1 while the primary host's STATE says online (1 without one)")
                      .Register(r)
                      .Add({});
        g_host->Set(settings.primary_host_id.empty() ? 1 : 0);
    }
    void count(const std::map<std::string, prometheus::Counter*, std::less<>>& m,
               std::string_view type) const {
        if (auto it = m.find(type); it != m.end()) it->second->Increment();
    }

    std::string topic(std::string_view type, std::string_view device) const {
        std::string t = std::string(k_namespace) + "/" + settings.group_id + "/" +
                        std::string(type) + "/" + settings.edge_node_id;
        if (!device.empty()) t += "/" + std::string(device);
        return t;
    }

    // With mu held.
    std::string dbirth(const device_def& d, std::int64_t ts) const {
        pb::Payload p;
        p.set_timestamp(static_cast<std::uint64_t>(ts));
        for (const auto& md : d.metrics) {
            auto* m = p.add_metrics();
            m->set_name(md.name);
            m->set_alias(md.alias);
            m->set_timestamp(static_cast<std::uint64_t>(md.last_ts != 0 ? md.last_ts : ts));
            m->set_datatype(md.datatype);
            auto* props = m->mutable_properties();
            if (!md.unit.empty())
                add_property(*props, "engUnit", pb::String,
                             [&](auto& v) { v.set_string_value(md.unit); });
            if (md.min)
                add_property(*props, "engLow", pb::Double,
                             [&](auto& v) { v.set_double_value(*md.min); });
            if (md.max)
                add_property(*props, "engHigh", pb::Double,
                             [&](auto& v) { v.set_double_value(*md.max); });
            if (md.last.index() == 0 || md.last_quality == quality::bad)
                m->set_is_null(true);
            else
                set_value(*m, md.datatype, md.last);
            if (props->keys_size() == 0) m->clear_properties();
        }
        return p.SerializeAsString();
    }

    std::string ddeath(std::int64_t ts) const {
        pb::Payload p;
        p.set_timestamp(static_cast<std::uint64_t>(ts));
        return p.SerializeAsString();
    }
};

node::node(config::sparkplug_settings settings, spool& sp, prometheus::Registry* registry)
    : impl_(std::make_unique<impl>(std::move(settings), sp)) {
    impl_->bd_seq = sp.load_state(k_bdseq_key, 0);
    if (registry != nullptr) {
        impl_->metrics(*registry);
        impl_->g_bdseq->Set(static_cast<double>(impl_->bd_seq));
    }
}

node::~node() = default;

void node::configure(const std::vector<config::device>& devices, const point_table& points) {
    std::lock_guard lk(impl_->mu);
    std::map<std::string, impl::device_def> next;
    for (const auto& d : devices) {
        auto& dd = next[d.id];
        dd.id = d.id;
        if (auto old = impl_->devices.find(d.id); old != impl_->devices.end())
            dd.down = old->second.down;
        for (const auto& p : d.points) {
            impl::metric_def m;
            m.name = p.name;
            m.alias = alias_of(d.id, p.name);
            m.datatype = datatype_of(p);
            m.unit = p.unit;
            m.min = p.min;
            m.max = p.max;
            m.writable = p.writable;
            dd.metrics.push_back(std::move(m));
        }
    }
    std::vector<std::pair<impl::device_def*, std::size_t>> by_point(points.size(), {nullptr, 0});
    std::unordered_map<std::uint64_t, std::pair<impl::device_def*, std::size_t>> by_alias;
    for (auto& [id, dd] : next) {
        for (std::size_t i = 0; i < dd.metrics.size(); ++i) {
            auto [it, added] = by_alias.try_emplace(dd.metrics[i].alias, &dd, i);
            if (!added)
                throw std::invalid_argument("sparkplug: points " + id + "/" + dd.metrics[i].name +
                                            " and " + it->second.first->id + "/" +
                                            it->second.first->metrics[it->second.second].name +
                                            " share a metric alias; rename one");
            if (auto pid = points.find(id + "/" + dd.metrics[i].name))
                if (*pid < by_point.size()) by_point[*pid] = {&dd, i};
        }
    }
    impl_->devices = std::move(next);
    impl_->by_point = std::move(by_point);
    impl_->by_alias = std::move(by_alias);
}

std::string node::topic(std::string_view type, std::string_view device) const {
    return impl_->topic(type, device);
}

std::vector<std::string> node::command_filters() const {
    return {impl_->topic("NCMD", {}), impl_->topic("DCMD", "+")};
}

std::string node::topic_template() const {
    return impl_->topic("DDATA", "{device}");
}

bool node::append_event(std::string& body, const event& e, point_id id, const point_info& p) const {
    pb::Payload one;
    auto* m = one.add_metrics();
    std::uint32_t dt = 0;
    {
        std::lock_guard lk(impl_->mu);
        if (id < impl_->by_point.size() && impl_->by_point[id].first != nullptr) {
            auto& [dev, index] = impl_->by_point[id];
            auto& md = dev->metrics[index];
            dt = md.datatype;
            m->set_alias(md.alias);
            if (e.quality != quality::bad && e.value.index() != 0) md.last = e.value;
            md.last_quality = e.quality;
            md.last_ts = unix_ms(e);
            // Remembered for the DBIRTH when the device is back, not sent now.
            if (dev->down) return false;
        }
    }
    if (dt == 0) {  // not in the DBIRTH (a point a reload added before configure)
        dt = datatype_of_value(e.value);
        m->set_alias(alias_of(p.device, p.tag));
    }
    m->set_timestamp(static_cast<std::uint64_t>(unix_ms(e)));
    // Written even when false (2 bytes): flagging the metric historical at send time then
    // leaves the payload's size as the engine measured it against the broker's Maximum
    // Packet Size; a flag added there would make a full batch too large, resent forever.
    m->set_is_historical(false);
    m->set_datatype(dt);
    if (e.quality == quality::bad || e.value.index() == 0)
        m->set_is_null(true);
    else
        set_value(*m, dt, e.value);
    if (e.quality != quality::good) {
        add_property(*m->mutable_properties(), "Quality", pb::Int32, [&](auto& v) {
            v.set_int_value(e.quality == quality::bad ? k_quality_bad : k_quality_uncertain);
        });
    }
    // A Payload holding only this metric encodes as exactly one `metrics` field: bodies of
    // such items concatenate into the metrics list of one Payload.
    one.AppendToString(&body);
    return true;
}

std::size_t node::header_size() const {
    // timestamp (tag + 10-byte varint) and the seq appended at send time (tag + 2 bytes).
    return 11 + 3;
}

void node::wrap(std::string_view body, std::uint64_t, std::string& out) const {
    pb::Payload p;
    p.set_timestamp(static_cast<std::uint64_t>(now_ms()));
    p.SerializeToString(&out);
    out.append(body);
}

message node::will() {
    {
        std::lock_guard lk(impl_->mu);
        impl_->bd_seq = (impl_->bd_seq + 1) % 256;
        impl_->sp.store_state(k_bdseq_key, impl_->bd_seq);
        if (impl_->g_bdseq) impl_->g_bdseq->Set(static_cast<double>(impl_->bd_seq));
    }
    return death();
}

message node::death() const {
    std::lock_guard lk(impl_->mu);
    pb::Payload p;
    p.set_timestamp(static_cast<std::uint64_t>(now_ms()));
    auto* m = p.add_metrics();
    m->set_name("bdSeq");
    m->set_datatype(pb::Int64);
    m->set_long_value(impl_->bd_seq);
    // The specification: NDEATH at QoS 1, not retained.
    return {impl_->topic("NDEATH", {}), p.SerializeAsString(), 1, false};
}

std::vector<message> node::births() {
    std::lock_guard lk(impl_->mu);
    const auto ts = now_ms();
    impl_->birth_ms = ts;
    std::vector<message> out;
    pb::Payload nb;
    nb.set_timestamp(static_cast<std::uint64_t>(ts));
    auto* bd = nb.add_metrics();
    bd->set_name("bdSeq");
    bd->set_timestamp(static_cast<std::uint64_t>(ts));
    bd->set_datatype(pb::Int64);
    bd->set_long_value(impl_->bd_seq);
    auto* rb = nb.add_metrics();
    rb->set_name(k_rebirth);
    rb->set_timestamp(static_cast<std::uint64_t>(ts));
    rb->set_datatype(pb::Boolean);
    rb->set_boolean_value(false);
    out.push_back({impl_->topic("NBIRTH", {}), nb.SerializeAsString(), 0, false});
    for (const auto& [id, d] : impl_->devices)
        out.push_back({impl_->topic("DBIRTH", id), impl_->dbirth(d, ts), 0, false});
    for (const auto& [id, d] : impl_->devices)
        if (d.down) out.push_back({impl_->topic("DDEATH", id), impl_->ddeath(ts), 0, false});
    return out;
}

void node::before_send(const std::string& topic, std::string& payload, std::int64_t created_ms) {
    const std::string prefix = std::string(k_namespace) + "/" + impl_->settings.group_id + "/";
    if (topic.compare(0, prefix.size(), prefix) != 0) return;
    auto type = std::string_view(topic).substr(prefix.size());
    type = type.substr(0, type.find('/'));
    impl_->count(impl_->sent, type);
    if (type == "NDEATH") return;
    std::uint64_t seq = 0;
    std::int64_t birth = 0;
    {
        std::lock_guard lk(impl_->mu);
        if (type == "NBIRTH") impl_->seq = 0;
        seq = impl_->seq;
        impl_->seq = (impl_->seq + 1) % 256;
        birth = impl_->birth_ms;
    }
    if (type == "DDATA" && created_ms < birth) {
        // Stored before this session's NBIRTH: a host must not take it for live data.
        pb::Payload p;
        if (p.ParseFromString(payload)) {
            for (auto& m : *p.mutable_metrics())
                m.set_is_historical(true);
            p.SerializeToString(&payload);
        }
    }
    pb::Payload tail;
    tail.set_seq(seq);
    tail.AppendToString(&payload);
}

std::string node::state_topic() const {
    if (impl_->settings.primary_host_id.empty()) return {};
    return std::string(k_namespace) + "/STATE/" + impl_->settings.primary_host_id;
}

std::optional<bool> node::host_state(const std::string& payload) {
    impl_->count(impl_->received, "STATE");
    bool online = false;
    std::int64_t ts = 0;
    if (payload == "ONLINE" || payload == "OFFLINE") {
        online = payload == "ONLINE";
    } else {
        const auto doc = nlohmann::json::parse(payload, nullptr, false);
        if (!doc.is_object() || !doc.contains("online") || !doc["online"].is_boolean()) {
            if (impl_->err_state) impl_->err_state->Increment();
            return std::nullopt;
        }
        online = doc["online"].get<bool>();
        if (doc.contains("timestamp") && doc["timestamp"].is_number_integer())
            ts = doc["timestamp"].get<std::int64_t>();
    }
    std::lock_guard lk(impl_->mu);
    if (ts < impl_->host_ts) return std::nullopt;  // older than one already taken
    impl_->host_ts = ts;
    if (online == impl_->host_online) return std::nullopt;
    impl_->host_online = online;
    if (impl_->g_host) impl_->g_host->Set(online ? 1 : 0);
    impl_->born = false;  // online: births first; offline: they are due at the next online
    return online;
}

std::vector<message> node::after_connect() {
    {
        std::lock_guard lk(impl_->mu);
        impl_->born = false;
        if (!impl_->settings.primary_host_id.empty()) {
            // Each connection waits for the host's retained STATE (it may have gone offline
            // while we were away): the subscription delivers it again at once.
            impl_->host_online = false;
            if (impl_->g_host) impl_->g_host->Set(0);
            return {};
        }
    }
    return births();
}

std::optional<std::vector<message>> node::gate() {
    {
        std::lock_guard lk(impl_->mu);
        if (impl_->settings.primary_host_id.empty() || impl_->born) return std::vector<message>{};
        if (!impl_->host_online) return std::nullopt;
        impl_->born = true;
    }
    return births();
}

std::optional<message> node::device_state(const std::string& device, bool up) {
    std::lock_guard lk(impl_->mu);
    auto it = impl_->devices.find(device);
    if (it == impl_->devices.end() || it->second.down == !up) return std::nullopt;
    it->second.down = !up;
    const auto ts = now_ms();
    if (up) return message{impl_->topic("DBIRTH", device), impl_->dbirth(it->second, ts), 0, false};
    return message{impl_->topic("DDEATH", device), impl_->ddeath(ts), 0, false};
}

command node::parse_command(const std::string& topic, const std::string& payload) const {
    command out = parse(topic, payload);
    if (impl_->err_command && !out.errors.empty())
        impl_->err_command->Increment(static_cast<double>(out.errors.size()));
    return out;
}

command node::parse(const std::string& topic, const std::string& payload) const {
    command out;
    impl_->count(impl_->received, topic.starts_with(impl_->topic("NCMD", {})) ? "NCMD" : "DCMD");
    pb::Payload p;
    if (!p.ParseFromString(payload)) {
        out.errors.push_back("payload is not a Sparkplug B payload");
        return out;
    }
    const auto ncmd = impl_->topic("NCMD", {});
    if (topic == ncmd) {
        for (const auto& m : p.metrics()) {
            if (m.name() == k_rebirth && m.has_boolean_value() && m.boolean_value())
                out.rebirth = true;
            else
                out.errors.push_back("unknown node command '" + m.name() + "'");
        }
        return out;
    }
    const auto dcmd = impl_->topic("DCMD", {}) + "/";
    if (topic.compare(0, dcmd.size(), dcmd) != 0) {
        out.errors.push_back("not a command topic of this edge node");
        return out;
    }
    const std::string device = topic.substr(dcmd.size());
    std::lock_guard lk(impl_->mu);
    auto dit = impl_->devices.find(device);
    if (dit == impl_->devices.end()) {
        out.errors.push_back("unknown device '" + device + "'");
        return out;
    }
    for (const auto& m : p.metrics()) {
        const impl::metric_def* md = nullptr;
        for (const auto& x : dit->second.metrics)
            if ((m.has_alias() && x.alias == m.alias()) || (m.has_name() && x.name == m.name()))
                md = &x;
        if (md == nullptr) {
            out.errors.push_back("unknown metric '" +
                                 (m.has_name() ? m.name() : std::to_string(m.alias())) + "'");
            continue;
        }
        auto v = command_value(m, m.has_datatype() ? m.datatype() : md->datatype);
        if (!v) {
            out.errors.push_back("metric '" + md->name + "' has no value");
            continue;
        }
        // Hosts send a command once; its timestamp and the metric make a stable id, so a
        // redelivered DCMD (QoS 1) is answered again, never written twice.
        const auto ts = m.has_timestamp() ? m.timestamp() : p.timestamp();
        out.writes.push_back({device, md->name, std::move(*v),
                              "spb-" + std::to_string(ts) + "-" + std::to_string(md->alias),
                              static_cast<std::int64_t>(ts)});
    }
    return out;
}

std::uint64_t node::bd_seq() const {
    std::lock_guard lk(impl_->mu);
    return impl_->bd_seq;
}

}  // namespace ferry::upstream::sparkplug
