// The bus: topic-addressed pub/sub between drivers (producers) and consumers (the rule
// engine, the read model).
//
// Each subscription owns a bounded queue and an overflow policy:
//   block        the producer waits for room (backpressure up to the driver, which then
//                skips polls and counts them); released by close() or bus::close()
//   drop_oldest  the oldest queued event is discarded to make room
//   drop_newest  the incoming event is discarded
// Every discarded event is counted by reason, bus-wide (`bus::dropped(reason)`) and per
// subscription (`subscription::dropped(reason)`); events of points a subscription does not
// match are counted per subscription too (`unmatched()`), so a consumer's owner can account
// for every event published (core/conservation.hpp: `unrouted` for the rule engine).
//
// Routing is decided once per point: each subscribe() computes which points it matches, and
// publish() walks a precomputed list — no pattern matching on the hot path. Points interned
// later (a config reload) get their routes from add_points(), and a subscription's patterns
// can be replaced (resubscribe). The routes are an immutable table that those calls replace
// as a whole: publish() takes the current table and holds no lock while it pushes, so a
// producer blocked by a full `block` queue never holds up a reload (issue 13: a SIGHUP used
// to wait forever for the route lock such a producer held). The price: a publish that began
// before a route change may still deliver by the old routes (the rule engine counts events
// it has no rule for as unrouted). Subscribe before producers start; publish() is safe from
// many threads at once; each subscription has one consumer thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "core/event.hpp"
#include "core/topic.hpp"

namespace ferry {

enum class overflow_policy { block, drop_oldest, drop_newest };

enum class drop_reason : std::uint8_t { drop_oldest, drop_newest, closed, count_ };
std::string_view to_string(drop_reason r);

class bus;

class subscription {
  public:
    subscription(std::string name, std::size_t capacity, overflow_policy policy, bus& owner);

    // Moves up to `max` queued events into `out` (appended). Waits until at least one event
    // is there, `deadline` passes or the subscription is closed. Returns how many it moved.
    // With `gather` > 0, once the first event is there it waits up to `gather` longer (never
    // past `deadline`) for `max` events, and producers do not wake it for each publish
    // meanwhile: a consumer that takes 50,000 events/s in 500 small publishes wakes 1/gather
    // times a second instead of 500 (each wake is a context switch: docs/PERFORMANCE.md).
    std::size_t pop(std::vector<event>& out, std::size_t max,
                    std::chrono::steady_clock::time_point deadline,
                    std::chrono::steady_clock::duration gather = {});
    // Stops the subscription: blocked producers are released, further events are counted as
    // dropped (reason closed), pop() returns what is left and then 0 at once.
    void close();
    // Closed and nothing left to pop: the consumer may end. (There is no closed(): "a pop that
    // returned nothing, and closed" is not "drained". That pop may have timed out before
    // events came and the queue was closed; ending then left them unpopped, uncounted: see
    // docs/FAULTS.md, the poll lost at a SIGTERM that met a failing append.)
    bool drained() const;

    const std::string& name() const { return name_; }
    std::size_t depth() const;
    // Events this subscription discarded, by reason (also in bus::dropped).
    std::uint64_t dropped(drop_reason r) const {
        return dropped_[static_cast<std::size_t>(r)].load(std::memory_order_relaxed);
    }
    // Events published on the bus whose point this subscription does not match (no route).
    std::uint64_t unmatched() const { return unmatched_.load(std::memory_order_relaxed); }
    std::size_t capacity() const { return capacity_; }

  private:
    friend class bus;
    // Called by bus::publish with the subscription's lock not held.
    void push(std::span<const event> events);
    void count_drop(drop_reason r, std::uint64_t n);

    std::string name_;
    std::vector<topic_pattern> patterns_;  // guarded by the bus's write_mu_
    std::size_t capacity_;
    overflow_policy policy_;
    bus& owner_;
    mutable std::mutex mu_;
    std::condition_variable not_empty_;
    std::condition_variable not_full_;
    std::deque<event> queue_;
    bool closed_ = false;
    // push() wakes the consumer once the queue holds this many events: 1, or pop()'s `max`
    // while it gathers.
    std::size_t wake_at_ = 1;
    std::array<std::atomic<std::uint64_t>, static_cast<std::size_t>(drop_reason::count_)>
        dropped_{};
    std::atomic<std::uint64_t> unmatched_{0};
};

class bus {
  public:
    explicit bus(const point_table& points);

    // Subscribes to every point whose "device/tag" matches any of `patterns`.
    std::shared_ptr<subscription> subscribe(std::string name,
                                            const std::vector<topic_pattern>& patterns,
                                            std::size_t capacity, overflow_policy policy);

    // Routes the points interned since the last call (or subscribe) to the subscriptions
    // whose patterns match them. Call before a producer publishes events of a new point.
    void add_points();
    // Replaces the patterns of `sub` and recomputes its routes over every point.
    void resubscribe(subscription& sub, const std::vector<topic_pattern>& patterns);

    // Delivers events to every matching subscription. With a `block` subscriber this may wait.
    void publish(std::span<const event> events);
    void publish(const event& e) { publish(std::span<const event>(&e, 1)); }

    // Closes every subscription (releases blocked producers).
    void close();

    std::uint64_t dropped(drop_reason r) const {
        return dropped_[static_cast<std::size_t>(r)].load();
    }
    std::uint64_t published() const { return published_.load(); }

  private:
    friend class subscription;
    void count_drop(drop_reason r, std::uint64_t n) {
        dropped_[static_cast<std::size_t>(r)].fetch_add(n, std::memory_order_relaxed);
    }

    // What publish() reads: never changed once stored (a route change stores a new one).
    struct route_table {
        std::vector<std::shared_ptr<subscription>> subs;
        std::vector<std::vector<subscription*>> routes;  // per point id
    };
    // Routes points [from, points_.size()) of `t` over its subscriptions.
    void route_points(route_table& t, point_id from) const;

    const point_table& points_;
    std::mutex write_mu_;  // serialises subscribe, add_points, resubscribe (and patterns_)
    std::atomic<std::shared_ptr<const route_table>> table_;
    std::array<std::atomic<std::uint64_t>, static_cast<std::size_t>(drop_reason::count_)>
        dropped_{};
    std::atomic<std::uint64_t> published_{0};
};

}  // namespace ferry
