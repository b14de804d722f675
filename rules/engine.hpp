// The rule engine: match → filter → transform → deadband/heartbeat → batch, and dead-letter.
// Pure: no threads, sockets, clocks or sleeps; the caller passes `now` (a steady time point),
// so tests drive it with a fake clock. rules/README.md documents every key and the payloads.
//
// Matching is decided per point when the engine is built (points are known from config), by
// one trie over every rule's patterns (rules/match.hpp): each point carries the list of
// routes (rule, batch slot, deadband state) it feeds, so the cost of an event grows with the
// number of rules it matches, not with the number of rules. An event that matches several
// rules goes to each of them (fan-out), keeping its seq.
//
// Per route, in rule order:
//   filter     compiled once (rules/filter.hpp) and run on the event as sampled; false drops
//              the event (counted `filtered`); a type error sends it to dead-letter.
//   transform  value * scale + offset for numbers (the result is a float); the rule's unit
//              replaces the point's in the encoded event. Scaling a string or bool value is an
//              error: dead-letter. Absent values (quality bad) stay absent.
//   deadband   per device/tag per rule, on the transformed value, against the last value this
//              rule published for it: a number passes when it moved at least `absolute` (or
//              `percent` of the last published value) and moved at all; other values pass when
//              they changed; a change of quality always passes. Dropped events count `deduped`.
//   heartbeat  the first event that arrives once `heartbeat` has passed since the rule last
//              published that device/tag passes whatever its value. It is the next *sampled*
//              reading, with its own seq, never a re-send of an old one (a consumer dropping
//              duplicates on (gateway, seq) would drop a re-send). A heartbeat without a
//              deadband publishes on change only, plus the heartbeat.
//   format     `sparkplug_b` rules encode through the codec the daemon hands in
//              (core/batch_codec.hpp); an event the codec refuses (a reading of a device after
//              its Sparkplug DDEATH) counts `deduped`.
//   batch      one open batch per resulting topic. An event is JSON-encoded into its batch's
//              body as it arrives. A batch leaves when it holds max_events, when the next event
//              would push it over max_bytes, or when max_age has passed since its first event.
//              With a broker packet limit known (set_packet_limit), max_bytes is at most that
//              limit minus the publish overhead of the batch's topic, so every batch fits in
//              one packet the broker takes (a single event larger than that still leaves alone,
//              and the publisher dead-letters it).
//
// Dead-letter: an event a rule could not handle goes, with the rule name and the reason, into
// a batch on the dead-letter topic (counted `dead_letter`); the pipeline goes on.
//
// Not thread-safe: one thread drives an engine.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <vector>

#include "core/batch_codec.hpp"
#include "core/config.hpp"
#include "core/event.hpp"
#include "core/topic.hpp"
#include "rules/filter.hpp"

namespace ferry::rules {

using steady_time = std::chrono::steady_clock::time_point;

// A finished batch, ready for the spool. `body` holds the comma-separated event objects (or
// dead-letter objects); the spool wraps it with the header once the batch number is known
// (see wrap()).
struct batch {
    std::string topic;
    std::string rule;  // empty for dead-letter batches
    int qos = 1;
    bool retain = false;
    bool dead_letter = false;
    std::size_t events = 0;
    std::string body;
    std::int64_t first_ts_ms = 0;        // sampling time of the oldest event in it
    const batch_codec* codec = nullptr;  // how wrap() encodes it; nullptr: the contract's JSON
    std::uint32_t expiry_s = 0;          // the rule's MQTT 5 message_expiry (0: none)
};

// The newest value of one point for a rule with retain_last: published retained, not spooled.
struct retained_value {
    std::string topic;
    std::string payload;
};

// The `outcome` label values of ferry_rule_events_total, in the order of rule_counters::values().
inline constexpr std::array<std::string_view, 4> k_outcomes{"passed", "filtered", "deduped",
                                                            "dead_letter"};

struct rule_counters {
    std::uint64_t passed = 0;       // went into a batch
    std::uint64_t filtered = 0;     // the filter was false
    std::uint64_t deduped = 0;      // within the deadband (or unchanged)
    std::uint64_t dead_letter = 0;  // the rule could not handle it
    std::array<std::uint64_t, 4> values() const { return {passed, filtered, deduped, dead_letter}; }
};

// Limits of dead-letter batches (the dead_letter section has only a topic).
inline constexpr config::batch_settings k_dead_letter_batch{100, 256 * 1024,
                                                            std::chrono::milliseconds(1000)};

class engine {
  public:
    // Throws std::invalid_argument if a rule's match pattern, topic or filter does not compile
    // (the config loader reports those with positions first; this is a second line of defence).
    // `sparkplug`: the codec of rules with `format: sparkplug_b` (it outlives the engine); such
    // a rule without one is refused the same way. Their topic is the codec's; events are
    // encoded by it, and dead letters stay JSON on the dead-letter topic.
    engine(const std::vector<config::rule>& rules, const point_table& points,
           std::string gateway_id,
           const std::string& dead_letter_topic = "ferry/{gateway}/dead-letter",
           const batch_codec* sparkplug = nullptr);

    // The union of every rule's patterns (each text once): what the engine subscribes to.
    const std::vector<topic_pattern>& patterns() const { return patterns_; }

    // The broker's Maximum Packet Size (0: unknown, no limit). Applies to events appended from
    // now on; an open batch already over it leaves before the next event joins it.
    void set_packet_limit(std::uint64_t limit) { packet_limit_ = limit; }

    // Feeds one event. Batches that became complete are appended to `out`.
    void on_event(const event& e, steady_time now, std::vector<batch>& out);
    // The values of rules with retain_last that passed since the last call, oldest first (one
    // per event that passed: the caller keeps the newest per topic). The caller clears it.
    std::vector<retained_value>& retained() { return retained_; }
    // Appends the batches whose max_age has passed by `now`.
    void on_tick(steady_time now, std::vector<batch>& out);
    // When on_tick next has something to do; steady_time::max() when nothing is open.
    steady_time next_deadline() const;
    // Appends every open batch (at shutdown).
    void flush_all(std::vector<batch>& out);

    const std::vector<std::string>& rule_names() const { return rule_names_; }
    const rule_counters& counters(std::size_t rule) const { return counters_[rule]; }
    // Events that reached the engine but match no rule (a point it does not know, e.g. one
    // routed by the bus just before a reload gave the engine other patterns): dropped, counted.
    std::uint64_t unrouted() const { return unrouted_; }

    // The full payload of `b` as batch number `batch_no` of its topic.
    void wrap(const batch& b, std::uint64_t batch_no, std::string& out) const;

    // Routes (matched rule × device/tag pairs) and the bytes the engine holds for them while
    // no batch is open: what each tracked device/tag costs.
    std::size_t routes() const;
    std::size_t state_bytes() const;

  private:
    struct rule_state {
        std::string name;
        topic_template topic;
        config::batch_settings limits;
        int qos;
        bool retain;
        std::optional<rules::filter> filter;
        bool scales = false;  // scale != 1 or offset != 0
        double scale = 1.0;
        double offset = 0.0;
        std::string unit;     // replaces the point's when not empty
        bool tracks = false;  // deadband or heartbeat: keeps state per device/tag
        config::deadband_kind deadband_kind = config::deadband_kind::absolute;
        double deadband = 0.0;  // 0: any change passes
        std::optional<std::chrono::steady_clock::duration> heartbeat;
        const batch_codec* codec = nullptr;  // nullptr: JSON
        std::uint32_t expiry_s = 0;
        std::optional<topic_template> retain_topic;  // retain_last: where each value goes
    };
    struct slot {
        std::string topic;
        const config::batch_settings* limits;
        std::uint32_t rule;  // index into rules_; for dead-letter slots unused
        bool dead_letter;
        std::string body;
        std::size_t events = 0;
        std::int64_t first_ts_ms = 0;
        steady_time opened;
        std::uint64_t generation = 0;  // bumps each time the slot is emitted
        std::size_t last_bytes = 0;    // the body of the last batch: the next one's reserve
    };
    enum class kind : std::uint8_t { none, absent, number, boolean, string };
    // What a rule remembers per device/tag: the last value it published.
    struct last_published {
        double number = 0;       // numbers and bools
        std::uint64_t hash = 0;  // strings (a hash of the text, not a copy)
        steady_time when;        // for the heartbeat
        kind k = kind::none;     // none: nothing published yet
        ferry::quality quality = quality::good;
    };
    struct route {
        std::uint32_t rule;
        std::uint32_t slot;
        std::uint32_t dead_slot;
        const point_info* info;  // the point, or its copy with the rule's unit
        last_published last;
        std::string retain_topic;  // expanded, when the rule has retain_last
    };
    struct due {
        steady_time when;
        std::size_t slot;
        std::uint64_t generation;
        // Batches due at the same time leave in slot order: the output does not depend on
        // the heap's handling of ties.
        bool operator>(const due& o) const {
            return when != o.when ? when > o.when : slot > o.slot;
        }
    };

    bool deadband_passes(const rule_state& r, route& rt, const event& e, steady_time now) const;
    void dead_letter(route& rt, const event& e, const point_info& p, std::string_view reason,
                     steady_time now, std::vector<batch>& out);
    void append(std::size_t slot_index, std::string_view item, std::int64_t ts_ms, steady_time now,
                std::vector<batch>& out);
    void emit(slot& s, std::vector<batch>& out);
    void retain_last(const route& rt, const event& e, std::int64_t ts_ms);
    std::size_t header_size(bool dead_letter) const;
    std::size_t header_size(const slot& s) const;
    std::size_t max_bytes(const slot& s) const;

    const point_table& points_;
    std::string gateway_;
    std::vector<rule_state> rules_;
    std::vector<std::string> rule_names_;
    std::vector<rule_counters> counters_;
    std::uint64_t unrouted_ = 0;
    std::vector<topic_pattern> patterns_;
    std::vector<slot> slots_;
    std::vector<std::vector<route>> routes_;  // per point id
    std::deque<point_info> unit_overrides_;   // stable addresses for route::info
    std::priority_queue<due, std::vector<due>, std::greater<>> due_;
    std::string scratch_;
    std::string coded_;  // one event in a codec's encoding
    std::string reason_;
    std::uint64_t packet_limit_ = 0;
    std::vector<retained_value> retained_;
};

}  // namespace ferry::rules
