// Event conservation: every event a driver publishes is delivered or counted as dropped,
// with a reason from one fixed set. Every component that drops events counts them through
// events_dropped(), so the chaos tests can check
//   ferry_events_produced_total = ferry_events_delivered_total + sum(ferry_events_dropped_total)
// (for a config with one rule; with several rules an event may be counted once per route).
//
// events_dropped() registers the family "ferry_events_dropped_total" on first use (with every
// reason present at 0, so a scrape always shows the whole set) and returns the counter of one
// reason. Thread-safe as prometheus-cpp's registry is; the counters live as long as the
// registry. Header-only so any component can use it without a new link dependency.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/registry.h>

#include <cstddef>
#include <iterator>
#include <string>
#include <string_view>

namespace ferry {

enum class drop {
    filtered,      // a rule's filter rejected the event
    deduped,       // a rule's dedupe dropped a repeat
    unrouted,      // no rule matches the point
    bus_overflow,  // a bus queue was full (drop policy)
    spool_full,    // the spool's when_full: drop_oldest / drop_newest
    too_large,     // a batch larger than the whole spool
    refused,       // the broker refused the publish (dead-lettered by policy)
    corrupt,       // rows lost to a damaged spool page
    shutdown,      // could not be spooled within the stop budget
    encode,        // the batch could not be encoded
    expired,       // a spooled message's MQTT 5 message_expiry passed before it could be sent
    count_
};

inline std::string_view to_string(drop d) {
    // In the order of the enum.
    constexpr std::string_view names[] = {"filtered",   "deduped",   "unrouted", "bus_overflow",
                                          "spool_full", "too_large", "refused",  "corrupt",
                                          "shutdown",   "encode",    "expired"};
    static_assert(std::size(names) == static_cast<std::size_t>(drop::count_));
    const auto i = static_cast<std::size_t>(d);
    return i < std::size(names) ? names[i] : "unknown";
}

// BuildCounter on a name the registry already holds returns that family (prometheus-cpp),
// and Family::Add with labels it already has returns the same counter: calling this from
// several components, any number of times, yields one family and one counter per reason.
inline prometheus::Counter& events_dropped(prometheus::Registry& registry, drop d) {
    auto& family = prometheus::BuildCounter()
                       .Name("ferry_events_dropped_total")
                       .Help("Events dropped, by reason")
                       .Register(registry);
    for (std::size_t r = 0; r < static_cast<std::size_t>(drop::count_); ++r)
        family.Add({{"reason", std::string(to_string(static_cast<drop>(r)))}});
    return family.Add({{"reason", std::string(to_string(d))}});
}

}  // namespace ferry
