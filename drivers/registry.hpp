// Every driver Ferry is built with. A driver is one folder under drivers/ that defines
// `const drivers::driver& ferry::drivers::<folder>::registration()` and one line in
// FERRY_DRIVERS below (docs/ARCHITECTURE.md, "Adding a driver"); drivers/CMakeLists.txt builds
// and links every folder that has a CMakeLists.txt.
#pragma once

#include <span>

#include "drivers/source.hpp"

// The registration lines: X(folder), in the order REFERENCE.md lists their keys. Each line
// ends with a backslash, so adding a driver adds one line.
// clang-format off
#define FERRY_DRIVERS(X) \
    X(modbus)            \
    X(serial)            \
    X(system)            \
    /* end of the list */
// clang-format on

namespace ferry::drivers {

// In FERRY_DRIVERS order.
std::span<const driver* const> registered();

// The driver that serves `driver:` name, or null.
const driver* find(std::string_view driver_name);

}  // namespace ferry::drivers
