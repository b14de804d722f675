// The keys of the serial_line driver (CONTRACT.md, config/REFERENCE.md), read into
// config::device and config::point by the core loader through this schema.
#pragma once

#include "core/config_reader.hpp"

namespace ferry::drivers::serial {

const config::driver_schema& line_schema();

}  // namespace ferry::drivers::serial
