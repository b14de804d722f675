#include "drivers/modbus/plan.hpp"

#include <algorithm>

#include "drivers/modbus/link.hpp"

namespace ferry::drivers::modbus {
namespace {

read_block block_of(const std::vector<config::point>& points,
                    std::vector<std::size_t>::const_iterator first,
                    std::vector<std::size_t>::const_iterator last) {
    read_block b;
    b.tbl = of(points[*first]).tbl;
    b.start = of(points[*first]).address;
    std::uint32_t end = b.start;
    for (auto it = first; it != last; ++it) {
        const auto& p = of(points[*it]);
        b.start = std::min(b.start, p.address);
        end = std::max(end, p.address + register_count(points[*it].type, p));
        b.points.push_back(*it);
    }
    b.count = end - b.start;
    return b;
}

}  // namespace

std::vector<read_block> plan_blocks(const std::vector<config::point>& points, std::uint32_t max_gap,
                                    std::uint32_t max_registers, std::uint32_t max_bits) {
    std::vector<std::size_t> all(points.size());
    for (std::size_t i = 0; i < all.size(); ++i)
        all[i] = i;
    return plan_blocks(points, std::move(all), max_gap, max_registers, max_bits);
}

std::vector<read_block> plan_blocks(const std::vector<config::point>& points,
                                    std::vector<std::size_t> which, std::uint32_t max_gap,
                                    std::uint32_t max_registers, std::uint32_t max_bits) {
    auto& order = which;  // sorted by table and address below
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        const auto &x = of(points[a]), &y = of(points[b]);
        if (x.tbl != y.tbl) return x.tbl < y.tbl;
        return x.address < y.address;
    });
    std::vector<read_block> blocks;
    for (auto i : order) {
        const auto& p = of(points[i]);
        const std::uint32_t n = register_count(points[i].type, p);
        const std::uint32_t limit = is_bit_table(p.tbl) ? max_bits : max_registers;
        if (!blocks.empty()) {
            auto& b = blocks.back();
            const std::uint32_t end = std::max(b.start + b.count, p.address + n);
            if (b.tbl == p.tbl && p.address <= b.start + b.count + max_gap &&
                end - b.start <= limit) {
                b.count = end - b.start;
                b.points.push_back(i);
                continue;
            }
        }
        blocks.push_back(read_block{p.tbl, p.address, n, {i}});
    }
    return blocks;
}

std::pair<read_block, read_block> split_block(const read_block& b,
                                              const std::vector<config::point>& points) {
    // b.points is in address order; cut after the point followed by the widest gap.
    std::size_t cut = 1;
    std::int64_t widest = -1;
    for (std::size_t k = 1; k < b.points.size(); ++k) {
        const auto& prev = points[b.points[k - 1]];
        const std::int64_t gap = static_cast<std::int64_t>(of(points[b.points[k]]).address) -
                                 static_cast<std::int64_t>(of(prev).address + register_count(prev));
        // Ties: the cut nearest the middle, so a run of equal gaps is bisected.
        const auto mid = static_cast<std::int64_t>(b.points.size() / 2);
        const auto dist = std::abs(static_cast<std::int64_t>(k) - mid);
        const auto best_dist = std::abs(static_cast<std::int64_t>(cut) - mid);
        if (gap > widest || (gap == widest && dist < best_dist)) {
            widest = gap;
            cut = k;
        }
    }
    const auto mid = b.points.begin() + static_cast<std::ptrdiff_t>(cut);
    return {block_of(points, b.points.begin(), mid), block_of(points, mid, b.points.end())};
}

}  // namespace ferry::drivers::modbus
