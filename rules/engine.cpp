#include "rules/engine.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <stdexcept>

#include "core/json.hpp"
#include "rules/match.hpp"

namespace ferry::rules {
namespace {

std::int64_t unix_ms(const event& e) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(e.ts.time_since_epoch()).count();
}

// FNV-1a: enough to tell a changed string from an unchanged one without keeping a copy.
std::uint64_t hash_of(std::string_view s) {
    std::uint64_t h = 1469598103934665603ull;
    for (char c : s) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ull;
    }
    return h;
}

}  // namespace

engine::engine(const std::vector<config::rule>& rules, const point_table& points,
               std::string gateway_id, const std::string& dead_letter_topic,
               const batch_codec* sparkplug)
    : points_(points), gateway_(std::move(gateway_id)) {
    std::string why;
    auto dead_tmpl = topic_template::compile(dead_letter_topic, &why);
    if (!dead_tmpl) throw std::invalid_argument("dead_letter.topic: " + why);

    pattern_index index;
    std::set<std::string> pattern_texts;
    for (const auto& r : rules) {
        const batch_codec* codec = nullptr;
        if (r.publish.format == config::payload_format::sparkplug_b) {
            if (sparkplug == nullptr)
                throw std::invalid_argument("rule " + r.name +
                                            ": format sparkplug_b needs upstream.sparkplug");
            codec = sparkplug;
        }
        auto tmpl =
            topic_template::compile(codec ? codec->topic_template() : r.publish.topic, &why);
        if (!tmpl) throw std::invalid_argument("rule " + r.name + ": publish.topic: " + why);
        rule_state st{r.name,
                      *tmpl,
                      r.batch,
                      r.publish.qos,
                      r.publish.retain,
                      {},
                      false,
                      1.0,
                      0.0,
                      {},
                      false,
                      config::deadband_kind::absolute,
                      0.0,
                      {},
                      codec,
                      0,
                      {}};
        if (!r.filter.empty()) {
            filter_error err;
            st.filter = filter::compile(r.filter, &err);
            if (!st.filter)
                throw std::invalid_argument("rule " + r.name + ": filter: at position " +
                                            std::to_string(err.position) + ": " + err.message);
        }
        if (r.transform) {
            st.scale = r.transform->scale;
            st.offset = r.transform->offset;
            st.scales = st.scale != 1.0 || st.offset != 0.0;
            st.unit = r.transform->unit;
        }
        if (r.deadband) {
            st.deadband_kind = r.deadband->kind;
            st.deadband = r.deadband->amount;
        }
        if (r.heartbeat) st.heartbeat = *r.heartbeat;
        st.expiry_s = r.publish.message_expiry_s;
        if (r.publish.retain_last) {
            st.retain_topic = topic_template::compile(r.publish.retain_topic, &why);
            if (!st.retain_topic)
                throw std::invalid_argument("rule " + r.name + ": publish.retain_topic: " + why);
        }
        st.tracks = r.deadband.has_value() || r.heartbeat.has_value();
        rules_.push_back(std::move(st));
        rule_names_.push_back(r.name);
        for (const auto& m : r.match) {
            auto p = topic_pattern::compile(m, &why);
            if (!p) throw std::invalid_argument("rule " + r.name + ": match '" + m + "': " + why);
            index.add(m, static_cast<std::uint32_t>(rules_.size() - 1));
            if (pattern_texts.insert(m).second) patterns_.push_back(*p);
        }
    }
    counters_.resize(rules_.size());

    // Routes per point: which rules it feeds, into which batch slot (one per resulting topic).
    routes_.resize(points.size());
    std::map<std::pair<std::size_t, std::string>, std::size_t> slot_of;
    std::map<std::string, std::size_t> dead_slot_of;
    std::vector<std::uint32_t> matched;
    std::string topic;
    for (point_id id = 0; id < points.size(); ++id) {
        const auto& p = points.get(id);
        matched.clear();
        index.match(p.address, matched);
        routes_[id].reserve(matched.size());
        for (auto r : matched) {
            const auto& rs = rules_[r];
            template_vars vars{gateway_, p.device, p.tag, rs.name};
            rs.topic.expand(vars, topic);
            auto [it, added] = slot_of.try_emplace({r, topic}, slots_.size());
            if (added) slots_.push_back(slot{topic, &rs.limits, r, false, {}, 0, 0, {}, 0});
            dead_tmpl->expand(vars, topic);
            auto [dit, dadded] = dead_slot_of.try_emplace(topic, slots_.size());
            if (dadded)
                slots_.push_back(slot{topic, &k_dead_letter_batch, r, true, {}, 0, 0, {}, 0});
            const point_info* info = &p;
            if (!rs.unit.empty() && rs.unit != p.unit) {
                unit_overrides_.push_back(p);
                unit_overrides_.back().unit = rs.unit;
                info = &unit_overrides_.back();
            }
            routes_[id].push_back(route{r,
                                        static_cast<std::uint32_t>(it->second),
                                        static_cast<std::uint32_t>(dit->second),
                                        info,
                                        {},
                                        {}});
            if (rs.retain_topic) routes_[id].back().retain_topic = rs.retain_topic->expand(vars);
        }
    }
}

std::size_t engine::header_size(bool dead_letter) const {
    // {"gateway":"<id>","batch":<up to 20 digits>,"events":[ ... ]}  ("dead_letters" is longer)
    return 12 + gateway_.size() + 2 + 9 + 20 + 11 + 2 + (dead_letter ? 6 : 0);
}

std::size_t engine::header_size(const slot& s) const {
    if (!s.dead_letter && rules_[s.rule].codec) return rules_[s.rule].codec->header_size();
    return header_size(s.dead_letter);
}

void engine::emit(slot& s, std::vector<batch>& out) {
    batch b;
    b.topic = s.topic;
    if (!s.dead_letter) {
        const auto& r = rules_[s.rule];
        b.rule = r.name;
        b.qos = r.qos;
        b.retain = r.retain;
        b.expiry_s = r.expiry_s;
        b.codec = r.codec;
    }
    b.dead_letter = s.dead_letter;
    b.events = s.events;
    s.last_bytes = s.body.size();
    b.body = std::move(s.body);
    b.first_ts_ms = s.first_ts_ms;
    out.push_back(std::move(b));
    s.body = std::string();
    s.events = 0;
    ++s.generation;
}

// The rule's max_bytes, or less when the broker's packet limit is known: a batch the broker
// cannot take would be dead-lettered whole.
std::size_t engine::max_bytes(const slot& s) const {
    const std::size_t rule_max = s.limits->max_bytes;
    if (packet_limit_ == 0) return rule_max;
    const auto overhead = publish_overhead(s.topic.size(), gateway_.size());
    const auto room = packet_limit_ > overhead ? packet_limit_ - overhead : 1;
    return static_cast<std::size_t>(std::min<std::uint64_t>(rule_max, room));
}

void engine::append(std::size_t slot_index, std::string_view item, std::int64_t ts_ms,
                    steady_time now, std::vector<batch>& out) {
    auto& s = slots_[slot_index];
    const auto& limits = *s.limits;
    const auto max = max_bytes(s);
    // Would this item push the batch over max_bytes? Then the batch leaves first.
    // JSON items are separated by a comma; a codec's are concatenated.
    const bool comma = s.dead_letter || rules_[s.rule].codec == nullptr;
    if (s.events > 0 && header_size(s) + s.body.size() + (comma ? 1 : 0) + item.size() > max)
        emit(s, out);
    if (s.events == 0) {
        s.opened = now;
        s.first_ts_ms = ts_ms;
        // Room for what the last batch of this slot held (+1/8), not for max_events: a
        // slot whose batches close by age at 100 events would otherwise hold 5× the memory
        // while open (500 devices x 100 points @ 1 s: 28 MB of reserve for 5.6 MB of events).
        const std::size_t guess =
            s.last_bytes > 0 ? s.last_bytes + s.last_bytes / 8
                             : item.size() * std::min<std::size_t>(limits.max_events, 64) + 16;
        s.body.reserve(std::min<std::size_t>(max, guess));
        due_.push(due{now + limits.max_age, slot_index, s.generation});
    } else if (comma) {
        s.body.push_back(',');
    }
    s.body += item;
    ++s.events;
    if (s.events >= limits.max_events) emit(s, out);
}

void engine::dead_letter(route& rt, const event& e, const point_info& p, std::string_view reason,
                         steady_time now, std::vector<batch>& out) {
    ++counters_[rt.rule].dead_letter;
    std::string item;
    item += "{\"rule\":";
    json::append_string(item, rules_[rt.rule].name);
    item += ",\"reason\":";
    json::append_string(item, reason);
    item += ",\"event\":";
    json::append_event(item, e, p);
    item += '}';
    append(rt.dead_slot, item, unix_ms(e), now, out);
}

bool engine::deadband_passes(const rule_state& r, route& rt, const event& e,
                             steady_time now) const {
    auto& last = rt.last;
    kind k = kind::absent;
    double number = 0;
    std::uint64_t hash = 0;
    if (e.quality != quality::bad) {
        switch (e.value.index()) {
            case 1:
                k = kind::boolean;
                number = std::get<bool>(e.value) ? 1.0 : 0.0;
                break;
            case 2:
            case 3:
            case 4:
                k = kind::number;
                number = *as_double(e.value);
                break;
            case 5:
                k = kind::string;
                hash = hash_of(std::get<std::string>(e.value));
                break;
            default:
                break;
        }
    }
    bool pass = false;
    if (last.k == kind::none || e.quality != last.quality || k != last.k ||
        (r.heartbeat && now - last.when >= *r.heartbeat)) {
        pass = true;
    } else {
        switch (k) {
            case kind::number: {
                if (std::isnan(number) || std::isnan(last.number)) {
                    pass = std::isnan(number) != std::isnan(last.number);
                    break;
                }
                double moved = std::fabs(number - last.number);
                double threshold = r.deadband_kind == config::deadband_kind::absolute
                                       ? r.deadband
                                       : std::fabs(last.number) * r.deadband / 100.0;
                pass = moved > 0 && moved >= threshold;
                break;
            }
            case kind::boolean:
                pass = number != last.number;
                break;
            case kind::string:
                pass = hash != last.hash;
                break;
            default:
                pass = false;  // absent again, same quality: unchanged
                break;
        }
    }
    if (pass) {
        last.k = k;
        last.number = number;
        last.hash = hash;
        last.quality = e.quality;
        last.when = now;
    }
    return pass;
}

void engine::on_event(const event& e, steady_time now, std::vector<batch>& out) {
    if (e.point >= routes_.size() || routes_[e.point].empty()) {
        ++unrouted_;
        return;
    }
    auto& routes = routes_[e.point];
    const auto& info = points_.get(e.point);
    const auto ts_ms = unix_ms(e);
    // Rules without a transform publish the same bytes: encode once per event.
    const point_info* encoded_for = nullptr;
    event scaled;
    for (auto& rt : routes) {
        const auto& r = rules_[rt.rule];
        auto& counters = counters_[rt.rule];
        if (r.filter) {
            auto verdict = r.filter->evaluate(e, info, &reason_);
            if (verdict == filter_outcome::drop) {
                ++counters.filtered;
                continue;
            }
            if (verdict == filter_outcome::error) {
                dead_letter(rt, e, info, reason_, now, out);
                continue;
            }
        }
        const event* outgoing = &e;
        if (r.scales && e.quality != quality::bad && e.value.index() != 0) {
            if (e.value.index() == 1 || e.value.index() == 5) {
                dead_letter(rt, e, info,
                            e.value.index() == 1 ? "transform: cannot scale a bool value"
                                                 : "transform: cannot scale a string value",
                            now, out);
                continue;
            }
            scaled.seq = e.seq;
            scaled.point = e.point;
            scaled.quality = e.quality;
            scaled.ts = e.ts;
            scaled.value = *as_double(e.value) * r.scale + r.offset;
            outgoing = &scaled;
        }
        if (r.tracks && !deadband_passes(r, rt, *outgoing, now)) {
            ++counters.deduped;
            continue;
        }
        if (r.codec) {
            coded_.clear();
            if (!r.codec->append_event(coded_, *outgoing, e.point, *rt.info)) {
                ++counters.deduped;  // the codec says it adds nothing (a dead device's reading)
                continue;
            }
            ++counters.passed;
            append(rt.slot, coded_, ts_ms, now, out);
            continue;
        }
        ++counters.passed;
        if (outgoing != &e || encoded_for != rt.info) {
            scratch_.clear();
            json::append_event(scratch_, *outgoing, *rt.info);
            encoded_for = outgoing == &e ? rt.info : nullptr;
        }
        append(rt.slot, scratch_, ts_ms, now, out);
        if (r.retain_topic) retain_last(rt, *outgoing, ts_ms);
    }
}

// {"value":..,"quality":"..","ts":..,"seq":..}: what a late subscriber needs of one point.
void engine::retain_last(const route& rt, const event& e, std::int64_t ts_ms) {
    auto& v = retained_.emplace_back();
    v.topic = rt.retain_topic;
    v.payload = "{\"value\":";
    if (e.quality == quality::bad)
        v.payload += "null";
    else
        json::append_value(v.payload, e.value);
    v.payload += ",\"quality\":\"";
    v.payload += to_string(e.quality);
    v.payload += "\",\"ts\":" + std::to_string(ts_ms) + ",\"seq\":" + std::to_string(e.seq) + "}";
}

void engine::on_tick(steady_time now, std::vector<batch>& out) {
    while (!due_.empty() && due_.top().when <= now) {
        auto d = due_.top();
        due_.pop();
        auto& s = slots_[d.slot];
        if (s.generation == d.generation && s.events > 0) emit(s, out);
    }
}

steady_time engine::next_deadline() const {
    return due_.empty() ? steady_time::max() : due_.top().when;
}

void engine::flush_all(std::vector<batch>& out) {
    for (auto& s : slots_) {
        if (s.events > 0) emit(s, out);
    }
    due_ = {};
}

void engine::wrap(const batch& b, std::uint64_t batch_no, std::string& out) const {
    out.clear();
    if (b.codec) {
        b.codec->wrap(b.body, batch_no, out);
        return;
    }
    out.reserve(header_size(b.dead_letter) + b.body.size());
    out += "{\"gateway\":";
    json::append_string(out, gateway_);
    out += ",\"batch\":";
    out += std::to_string(batch_no);
    out += b.dead_letter ? ",\"dead_letters\":[" : ",\"events\":[";
    out += b.body;
    out += "]}";
}

std::size_t engine::routes() const {
    std::size_t n = 0;
    for (const auto& r : routes_)
        n += r.size();
    return n;
}

std::size_t engine::state_bytes() const {
    std::size_t bytes = routes_.capacity() * sizeof(std::vector<route>);
    for (const auto& r : routes_)
        bytes += r.capacity() * sizeof(route);
    for (const auto& s : slots_)
        bytes += sizeof(slot) + s.topic.capacity() + s.body.capacity();
    for (const auto& p : unit_overrides_)
        bytes += sizeof(point_info) + p.device.capacity() + p.tag.capacity() + p.unit.capacity() +
                 p.address.capacity();
    return bytes;
}

}  // namespace ferry::rules
