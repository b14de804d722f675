// The keys of the modbus_tcp and modbus_rtu drivers (CONTRACT.md, config/REFERENCE.md), read
// into config::device and config::point by the core loader through these schemas.
#pragma once

#include "core/config_reader.hpp"

namespace ferry::drivers::modbus {

const config::driver_schema& tcp_schema();
const config::driver_schema& rtu_schema();

}  // namespace ferry::drivers::modbus
