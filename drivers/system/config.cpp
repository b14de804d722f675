#include <string>

#include "drivers/system/system.hpp"
#include "drivers/system/system_config.hpp"

namespace ferry::drivers::system {
namespace {

using config::option;

constexpr option k_device[] = {
    {"poll_interval", "duration 1ms..720h", "1s", "How often all points are read."},
};

constexpr option k_point[] = {
    {"unit", "string", "the metric's: B, s, degC (none for load1)", "Unit sent with each value."},
};

void read_device(config::loader& ld, const config::map_reader& m, config::device& d) {
    ld.set_dur(m, "poll_interval", d.poll_interval, true);
}

// The point's name chooses the metric: it must be one of them.
void read_point(config::loader& ld, const config::map_reader& m, config::point& p) {
    if (p.name.empty()) return;
    if (auto x = metric_of(p.name)) {
        p.unit = std::string(k_metric_units[static_cast<std::size_t>(*x)]);  // `unit` overrides
        return;
    }
    std::string names;
    for (auto n : k_metric_names)
        names += (names.empty() ? "" : ", ") + std::string(n);
    ld.fail(*m.get("name"),
            "'" + p.name + "' is not a metric of the system driver (known: " + names + ")");
}

}  // namespace

const config::driver_schema& config_schema() {
    static const config::driver_schema s{"system",    k_device,   k_point, {},
                                         read_device, read_point, nullptr};
    return s;
}

}  // namespace ferry::drivers::system
