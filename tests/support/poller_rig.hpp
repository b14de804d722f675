// The Modbus poller in process, with a bus and a metrics registry of its own, for tests that
// read its events and counters directly (header-only: the harness library does not link the
// drivers; a test that includes this links ferry_modbus).
#pragma once

#include <prometheus/registry.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/bus.hpp"
#include "core/topic.hpp"
#include "drivers/modbus/poller.hpp"

namespace ferry::test {

struct poller_rig {
    ferry::point_table points;
    std::unique_ptr<ferry::bus> bus;
    ferry::seq_source seq{0, nullptr};
    prometheus::Registry registry;
    std::shared_ptr<ferry::subscription> sub;
    std::unique_ptr<drivers::modbus::poller> poller;
    std::vector<ferry::event> seen;

    // Interns the devices' points, subscribes to everything and starts the poller.
    explicit poller_rig(std::vector<ferry::config::device> devices) {
        for (const auto& d : devices)
            for (const auto& p : d.points)
                points.intern(d.id, p.name, p.unit);
        bus = std::make_unique<ferry::bus>(points);
        sub = bus->subscribe("test", {*ferry::topic_pattern::compile("#")}, 1 << 20,
                             ferry::overflow_policy::drop_oldest);
        poller = std::make_unique<drivers::modbus::poller>(
            std::move(devices), drivers::modbus::driver_context{*bus, seq, points, registry});
        poller->start();
    }
    ~poller_rig() { poller->stop(); }
    poller_rig(const poller_rig&) = delete;
    poller_rig& operator=(const poller_rig&) = delete;

    // The sum of the counters and gauges of `name` whose labels include `labels`.
    double metric(const std::string& name, const std::map<std::string, std::string>& labels) {
        double sum = 0;
        for (const auto& fam : registry.Collect()) {
            if (fam.name != name) continue;
            for (const auto& m : fam.metric) {
                std::size_t hits = 0;
                for (const auto& l : m.label)
                    hits += labels.count(l.name) && labels.at(l.name) == l.value ? 1 : 0;
                if (hits == labels.size()) sum += m.counter.value + m.gauge.value;
            }
        }
        return sum;
    }

    // Every event so far, in order.
    const std::vector<ferry::event>& events() {
        sub->pop(seen, 1 << 20, std::chrono::steady_clock::now());
        return seen;
    }
};

}  // namespace ferry::test
