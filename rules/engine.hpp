// The rule engine's stages: match → batch → publish-topic. Pure: no threads, sockets,
// clocks or sleeps; the caller passes `now` (a steady time point), so tests drive it with a
// fake clock.
//
// Matching is decided per point when the engine is built (points are known from config):
// each point carries the list of (rule, batch slot) pairs it feeds, so the cost of an event
// grows with the number of rules it matches, not with the number of rules. An event that
// matches several rules goes to each of them (fan-out), keeping its seq.
//
// Batching: one open batch per (rule, resulting topic). An event is encoded into its
// batch's JSON body as it arrives (the payload is built once, sized exactly). A batch
// leaves when it holds max_events, when the next event would push it over max_bytes, or
// when max_age has passed since its first event.
//
// Not thread-safe: one thread drives an engine.
#pragma once

#include <chrono>
#include <cstdint>
#include <queue>
#include <string>
#include <vector>

#include "gateway/config.hpp"
#include "gateway/event.hpp"
#include "gateway/topic.hpp"

namespace ferry::rules {

using steady_time = std::chrono::steady_clock::time_point;

// A finished batch, ready for the spool. `body` holds the comma-separated event objects;
// the spool wraps it with the header once the batch number is known (see wrap()).
struct batch {
    std::string topic;
    std::string rule;
    int qos = 1;
    bool retain = false;
    std::size_t events = 0;
    std::string body;
    std::int64_t first_ts_ms = 0;  // sampling time of the oldest event in it
};

struct rule_counters {
    std::uint64_t passed = 0;
};

class engine {
  public:
    // Throws std::invalid_argument if a rule's match pattern or topic does not compile (the
    // config loader reports those with positions first; this is a second line of defence).
    engine(const std::vector<config::rule>& rules, const point_table& points,
           std::string gateway_id);

    // The union of every rule's patterns: what the engine subscribes to on the bus.
    const std::vector<topic_pattern>& patterns() const { return patterns_; }

    // Feeds one event. Batches that became complete are appended to `out`.
    void on_event(const event& e, steady_time now, std::vector<batch>& out);
    // Appends the batches whose max_age has passed by `now`.
    void on_tick(steady_time now, std::vector<batch>& out);
    // When on_tick next has something to do; steady_time::max() when nothing is open.
    steady_time next_deadline() const;
    // Appends every open batch (at shutdown).
    void flush_all(std::vector<batch>& out);

    const std::vector<std::string>& rule_names() const { return rule_names_; }
    const rule_counters& counters(std::size_t rule) const { return counters_[rule]; }

    // The full payload of `b` as batch number `batch_no` of its topic.
    void wrap(const batch& b, std::uint64_t batch_no, std::string& out) const;

  private:
    struct rule_state {
        std::string name;
        topic_template topic;
        config::batch_settings limits;
        int qos;
        bool retain;
    };
    struct slot {
        std::size_t rule;
        std::string topic;
        std::string body;
        std::size_t events = 0;
        std::int64_t first_ts_ms = 0;
        steady_time opened;
        std::uint64_t generation = 0;  // bumps each time the slot is emitted
    };
    struct route {
        std::size_t rule;
        std::size_t slot;
    };
    struct due {
        steady_time when;
        std::size_t slot;
        std::uint64_t generation;
        bool operator>(const due& o) const { return when > o.when; }
    };

    void emit(slot& s, std::vector<batch>& out);
    std::size_t header_size() const;

    const point_table& points_;
    std::string gateway_;
    std::vector<rule_state> rules_;
    std::vector<std::string> rule_names_;
    std::vector<rule_counters> counters_;
    std::vector<topic_pattern> patterns_;
    std::vector<slot> slots_;
    std::vector<std::vector<route>> routes_;  // per point id
    std::priority_queue<due, std::vector<due>, std::greater<>> due_;
    std::string scratch_;
};

}  // namespace ferry::rules
