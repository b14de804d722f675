// `driver: system` as a source: one thread samples every system device at its poll_interval.
#include "drivers/system/system.hpp"
#include "drivers/system/system_config.hpp"

namespace ferry::drivers::system {

const driver& registration() {
    static const driver d{
        "system",
        {&config_schema()},
        [](const std::vector<config::device>&) {},  // every set of system devices can run
        [](std::vector<config::device> devices, const driver_context& ctx) {
            return make_source(std::move(devices), ctx, {});
        }};
    return d;
}

}  // namespace ferry::drivers::system
