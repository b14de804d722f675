// Per channel (one TCP connection, or one serial port with every unit on it: "the line"):
// every request a link carries is counted by result and timed, whichever device it is for, so
// an operator sees which line fails or is slow, beside the per-device poll metrics.
//   ferry_modbus_channel_requests_total{channel,result}  result: ok, or the reason label of
//                                                        ferry_driver_errors_total (link.hpp)
//   ferry_modbus_channel_request_seconds{channel}        histogram, connect time included
// `channel` is the link's name: "HOST:PORT" or the serial port's path. A channel's series stay
// until a restart when a reload takes the channel away (another channel by that name, added
// while the old one still finishes a poll, shares them).
// Thread-safety as link: one thread at a time.
#pragma once

#include <memory>

#include "drivers/modbus/link.hpp"

namespace prometheus {
class Registry;
}

namespace ferry::drivers::modbus {

// `inner`, with its requests counted and timed in `registry`.
std::unique_ptr<link> with_metrics(std::unique_ptr<link> inner, prometheus::Registry& registry);

}  // namespace ferry::drivers::modbus
