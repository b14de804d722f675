// Writes (downlink commands) without I/O: the request a value becomes for a point, and the
// words an operator reads when the device did not take it. The poller (poller.cpp) queues and
// sends them on the device's channel.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/event.hpp"
#include "drivers/modbus/config.hpp"
#include "drivers/modbus/link.hpp"

namespace ferry::drivers::modbus {

// The function code and registers (or the one bit) that write `v` to point `p` (FC 5 for a
// coil, FC 6 for one register, FC 16 for more and for strings); 0 with the reason in `why`
// when the value does not suit the point.
std::uint8_t encode_write(const config::point& p, const ferry::value& v,
                          std::vector<std::uint16_t>& values, std::string& why);

// What an operator reads in the command's result when device `d` did not take a write.
std::string describe_write_error(const read_result& r, const config::device& d, const link& lnk);

}  // namespace ferry::drivers::modbus
