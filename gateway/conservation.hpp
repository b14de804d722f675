// Conservation metrics shared by every component (issue 13): every event a driver produced is
// delivered (ferry_events_delivered_total) or counted here as dropped, with a reason from a
// fixed set. All reasons are registered (present at 0) by whoever builds the pipeline.
//
// events_dropped() returns the counter for one reason; BuildCounter on an existing name
// returns the same family, so any component may call it. Thread-safe as prometheus-cpp is.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/registry.h>

#include <string>
#include <string_view>

namespace ferry {

enum class drop {
    filtered,
    deduped,
    unrouted,
    bus_overflow,
    spool_full,
    too_large,
    refused,
    corrupt,
    shutdown,
    encode,
    count_
};

inline std::string_view to_string(drop d) {
    static constexpr std::string_view names[] = {
        "filtered",  "deduped", "unrouted", "bus_overflow", "spool_full",
        "too_large", "refused", "corrupt",  "shutdown",     "encode"};
    const auto i = static_cast<std::size_t>(d);
    return i < std::size(names) ? names[i] : std::string_view("unknown");
}

inline prometheus::Counter& events_dropped(prometheus::Registry& registry, drop d) {
    return prometheus::BuildCounter()
        .Name("ferry_events_dropped_total")
        .Help("Events dropped, by reason")
        .Register(registry)
        .Add({{"reason", std::string(to_string(d))}});
}

}  // namespace ferry
