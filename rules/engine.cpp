#include "rules/engine.hpp"

#include <algorithm>
#include <map>
#include <stdexcept>

#include "gateway/json.hpp"

namespace ferry::rules {

engine::engine(const std::vector<config::rule>& rules, const point_table& points,
               std::string gateway_id)
    : points_(points), gateway_(std::move(gateway_id)) {
    std::vector<std::vector<topic_pattern>> rule_patterns;
    for (const auto& r : rules) {
        std::string why;
        auto tmpl = topic_template::compile(r.publish.topic, &why);
        if (!tmpl) throw std::invalid_argument("rule " + r.name + ": publish.topic: " + why);
        rules_.push_back(rule_state{r.name, *tmpl, r.batch, r.publish.qos, r.publish.retain});
        rule_names_.push_back(r.name);
        auto& pats = rule_patterns.emplace_back();
        for (const auto& m : r.match) {
            auto p = topic_pattern::compile(m, &why);
            if (!p) throw std::invalid_argument("rule " + r.name + ": match '" + m + "': " + why);
            pats.push_back(*p);
            patterns_.push_back(*p);
        }
    }
    counters_.resize(rules_.size());

    // Routes per point: which rules it feeds and into which batch slot (one per rule+topic).
    routes_.resize(points.size());
    std::map<std::pair<std::size_t, std::string>, std::size_t> slot_of;
    for (point_id id = 0; id < points.size(); ++id) {
        const auto& p = points.get(id);
        for (std::size_t r = 0; r < rules_.size(); ++r) {
            const auto& pats = rule_patterns[r];
            if (!std::any_of(pats.begin(), pats.end(),
                             [&](const topic_pattern& t) { return t.matches(p.address); }))
                continue;
            auto topic = rules_[r].topic.expand({gateway_, p.device, p.tag, rules_[r].name});
            auto [it, added] = slot_of.try_emplace({r, topic}, slots_.size());
            if (added) slots_.push_back(slot{r, topic, {}, 0, 0, {}, 0});
            routes_[id].push_back(route{r, it->second});
        }
    }
}

std::size_t engine::header_size() const {
    // {"gateway":"<id>","batch":<up to 20 digits>,"events":[ ... ]}
    return 12 + gateway_.size() + 2 + 9 + 20 + 11 + 2;
}

void engine::emit(slot& s, std::vector<batch>& out) {
    const auto& r = rules_[s.rule];
    batch b;
    b.topic = s.topic;
    b.rule = r.name;
    b.qos = r.qos;
    b.retain = r.retain;
    b.events = s.events;
    b.body = std::move(s.body);
    b.first_ts_ms = s.first_ts_ms;
    out.push_back(std::move(b));
    s.body = std::string();
    s.events = 0;
    ++s.generation;
}

void engine::on_event(const event& e, steady_time now, std::vector<batch>& out) {
    if (e.point >= routes_.size()) return;
    const auto& info = points_.get(e.point);
    for (const auto& rt : routes_[e.point]) {
        auto& s = slots_[rt.slot];
        const auto& limits = rules_[rt.rule].limits;
        ++counters_[rt.rule].passed;
        scratch_.clear();
        json::append_event(scratch_, e, info);
        // Would this event push the batch over max_bytes? Then the batch leaves first.
        if (s.events > 0 &&
            header_size() + s.body.size() + 1 + scratch_.size() > limits.max_bytes) {
            emit(s, out);
        }
        if (s.events == 0) {
            s.opened = now;
            s.first_ts_ms =
                std::chrono::duration_cast<std::chrono::milliseconds>(e.ts.time_since_epoch())
                    .count();
            s.body.reserve(
                std::min<std::size_t>(limits.max_bytes, scratch_.size() * limits.max_events + 16));
            due_.push(due{now + limits.max_age, rt.slot, s.generation});
        } else {
            s.body.push_back(',');
        }
        s.body += scratch_;
        ++s.events;
        if (s.events >= limits.max_events) emit(s, out);
    }
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
    out.reserve(header_size() + b.body.size());
    out += "{\"gateway\":";
    json::append_string(out, gateway_);
    out += ",\"batch\":";
    out += std::to_string(batch_no);
    out += ",\"events\":[";
    out += b.body;
    out += "]}";
}

}  // namespace ferry::rules
