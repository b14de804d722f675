#include "core/bus.hpp"

#include <algorithm>

namespace ferry {
namespace {

bool matches(const std::vector<topic_pattern>& patterns, std::string_view address) {
    return std::any_of(patterns.begin(), patterns.end(),
                       [&](const topic_pattern& p) { return p.matches(address); });
}

}  // namespace

std::string_view to_string(drop_reason r) {
    switch (r) {
        case drop_reason::drop_oldest:
            return "drop_oldest";
        case drop_reason::drop_newest:
            return "drop_newest";
        case drop_reason::closed:
            return "closed";
        case drop_reason::count_:
            break;
    }
    return "unknown";
}

subscription::subscription(std::string name, std::size_t capacity, overflow_policy policy,
                           bus& owner)
    : name_(std::move(name)),
      capacity_(std::max<std::size_t>(capacity, 1)),
      policy_(policy),
      owner_(owner) {}

void subscription::count_drop(drop_reason r, std::uint64_t n) {
    dropped_[static_cast<std::size_t>(r)].fetch_add(n, std::memory_order_relaxed);
    owner_.count_drop(r, n);
}

void subscription::push(std::span<const event> events) {
    std::unique_lock lock(mu_);
    for (const auto& e : events) {
        if (closed_) {
            count_drop(drop_reason::closed, 1);
            continue;
        }
        if (queue_.size() >= capacity_) {
            switch (policy_) {
                case overflow_policy::block:
                    not_full_.wait(lock, [&] { return closed_ || queue_.size() < capacity_; });
                    if (closed_) {
                        count_drop(drop_reason::closed, 1);
                        continue;
                    }
                    break;
                case overflow_policy::drop_oldest:
                    queue_.pop_front();
                    count_drop(drop_reason::drop_oldest, 1);
                    break;
                case overflow_policy::drop_newest:
                    count_drop(drop_reason::drop_newest, 1);
                    continue;
            }
        }
        queue_.push_back(e);
    }
    const bool wake = queue_.size() >= wake_at_ || closed_;
    lock.unlock();
    if (wake) not_empty_.notify_one();
}

std::size_t subscription::pop(std::vector<event>& out, std::size_t max,
                              std::chrono::steady_clock::time_point deadline,
                              std::chrono::steady_clock::duration gather) {
    std::unique_lock lock(mu_);
    not_empty_.wait_until(lock, deadline, [&] { return closed_ || !queue_.empty(); });
    if (gather > std::chrono::steady_clock::duration::zero() && !closed_ && !queue_.empty() &&
        queue_.size() < max) {
        wake_at_ = max;
        not_empty_.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() + gather),
                              [&] { return closed_ || queue_.size() >= max; });
        wake_at_ = 1;
    }
    std::size_t n = std::min(max, queue_.size());
    for (std::size_t i = 0; i < n; ++i) {
        out.push_back(std::move(queue_.front()));
        queue_.pop_front();
    }
    lock.unlock();
    if (n > 0) not_full_.notify_all();
    return n;
}

void subscription::close() {
    {
        std::lock_guard lock(mu_);
        closed_ = true;
    }
    not_full_.notify_all();
    not_empty_.notify_all();
}

bool subscription::drained() const {
    std::lock_guard lock(mu_);
    return closed_ && queue_.empty();
}

std::size_t subscription::depth() const {
    std::lock_guard lock(mu_);
    return queue_.size();
}

bus::bus(const point_table& points)
    : points_(points), table_(std::make_shared<const route_table>()) {}

std::shared_ptr<subscription> bus::subscribe(std::string name,
                                             const std::vector<topic_pattern>& patterns,
                                             std::size_t capacity, overflow_policy policy) {
    auto sub = std::make_shared<subscription>(std::move(name), capacity, policy, *this);
    std::lock_guard lock(write_mu_);
    sub->patterns_ = patterns;
    auto next = std::make_shared<route_table>(*table_.load());
    const auto known = static_cast<point_id>(next->routes.size());
    for (point_id id = 0; id < known; ++id) {
        if (matches(sub->patterns_, points_.get(id).address)) next->routes[id].push_back(sub.get());
    }
    next->subs.push_back(sub);
    route_points(*next, known);
    table_.store(std::move(next));
    return sub;
}

void bus::route_points(route_table& t, point_id from) const {
    const auto n = points_.size();
    t.routes.resize(n);
    for (auto id = from; id < n; ++id) {
        const auto& address = points_.get(id).address;
        for (const auto& s : t.subs) {
            if (matches(s->patterns_, address)) t.routes[id].push_back(s.get());
        }
    }
}

void bus::add_points() {
    std::lock_guard lock(write_mu_);
    auto next = std::make_shared<route_table>(*table_.load());
    route_points(*next, static_cast<point_id>(next->routes.size()));
    table_.store(std::move(next));
}

void bus::resubscribe(subscription& sub, const std::vector<topic_pattern>& patterns) {
    std::lock_guard lock(write_mu_);
    sub.patterns_ = patterns;
    auto next = std::make_shared<route_table>(*table_.load());
    for (point_id id = 0; id < next->routes.size(); ++id) {
        auto& r = next->routes[id];
        r.erase(std::remove(r.begin(), r.end(), &sub), r.end());
        if (matches(patterns, points_.get(id).address)) {
            // Keep the subscription order of subscribe(): publish() compares routes.
            auto pos = r.begin();
            for (const auto& s : next->subs) {
                if (s.get() == &sub) break;
                if (pos != r.end() && *pos == s.get()) ++pos;
            }
            r.insert(pos, &sub);
        }
    }
    table_.store(std::move(next));
}

void bus::publish(std::span<const event> events) {
    // The table is kept alive by this reference while we push, however long a push waits.
    const auto table = table_.load();
    const auto& routes = table->routes;
    published_.fetch_add(events.size(), std::memory_order_relaxed);
    // Fast path: every event of one poll usually routes to the same subscribers; push runs
    // per subscriber to take each queue lock once per run of events with the same route.
    std::size_t i = 0;
    while (i < events.size()) {
        point_id id = events[i].point;
        const auto* route = id < routes.size() ? &routes[id] : nullptr;
        std::size_t j = i + 1;
        while (j < events.size() && events[j].point < routes.size() &&
               (route ? routes[events[j].point] == *route : false)) {
            ++j;
        }
        if (route) {
            for (auto* sub : *route)
                sub->push(events.subspan(i, j - i));
        }
        // Subscriptions outside the route count the run as unmatched: a few subscriptions,
        // each route a short list, once per run of events (not per event).
        for (const auto& s : table->subs) {
            if (!route || std::find(route->begin(), route->end(), s.get()) == route->end())
                s->unmatched_.fetch_add(j - i, std::memory_order_relaxed);
        }
        i = j;
    }
}

void bus::close() {
    for (auto& s : table_.load()->subs)
        s->close();
}

}  // namespace ferry
