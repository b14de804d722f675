#include "drivers/registry.hpp"

#include <array>

#define FERRY_DECLARE(name)          \
    namespace ferry::drivers::name { \
    const driver& registration();    \
    }
FERRY_DRIVERS(FERRY_DECLARE)
#undef FERRY_DECLARE

namespace ferry::drivers {

std::span<const driver* const> registered() {
#define FERRY_ENTRY(name) &name::registration(),
    static const std::array all{FERRY_DRIVERS(FERRY_ENTRY)};
#undef FERRY_ENTRY
    return all;
}

const driver* find(std::string_view driver_name) {
    for (const auto* d : registered())
        if (d->serves(driver_name)) return d;
    return nullptr;
}

}  // namespace ferry::drivers
