// Request planning: which registers of a device are read in which request. Pure, no I/O.
//
// Points of one table are coalesced into as few requests as Modbus allows: at most 125
// registers (FC 3/4) or 2000 bits (FC 1/2) per request, or the device's `max_registers` and
// `max_coils` when lower, bridging runs of at most `max_gap` unused registers. A point is
// never cut in two (the loader checks that each fits in `max_registers`). Scanning the points by
// address and closing a block only when the next point does not fit (too far, or past the request
// limit) gives the fewest requests for that gap rule: any plan needs a new request wherever this
// one starts one.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/config.hpp"
#include "drivers/modbus/config.hpp"
#include "drivers/modbus/link.hpp"

namespace ferry::drivers::modbus {

struct read_block {
    table tbl = table::holding;
    std::uint32_t start = 0;
    std::uint32_t count = 0;
    std::vector<std::size_t> points;  // indexes into the device's points, by address
};

// The blocks for the points `which` (indexes into `points`: a poll group); `max_registers`
// and `max_bits` cap a request.
std::vector<read_block> plan_blocks(const std::vector<config::point>& points,
                                    std::vector<std::size_t> which, std::uint32_t max_gap,
                                    std::uint32_t max_registers = k_max_registers,
                                    std::uint32_t max_bits = k_max_bits);
// The blocks for every point of a device.
std::vector<read_block> plan_blocks(const std::vector<config::point>& points, std::uint32_t max_gap,
                                    std::uint32_t max_registers = k_max_registers,
                                    std::uint32_t max_bits = k_max_bits);

// Splits a block of two or more points in two at its widest gap between consecutive points
// (an illegal address is most likely where no point is), so that repeated splitting narrows an
// exception down to the offending points.
std::pair<read_block, read_block> split_block(const read_block& b,
                                              const std::vector<config::point>& points);

}  // namespace ferry::drivers::modbus
