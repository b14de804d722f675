// Request planning: coalescing within the protocol limits and max_gap, the fewest requests
// (checked against an exhaustive search on random layouts), and splitting at the widest gap.
#include <doctest/doctest.h>

#include <algorithm>
#include <random>

#include "drivers/modbus/plan.hpp"

using namespace ferry::config;
using ferry::drivers::modbus::of;
using ferry::drivers::modbus::plan_blocks;
using ferry::drivers::modbus::read_block;
using ferry::drivers::modbus::register_count;
using ferry::drivers::modbus::split_block;
using ferry::drivers::modbus::table;

namespace {

point make(table t, std::uint32_t address, point_type type = point_type::uint16,
           std::uint32_t length = 0) {
    return ferry::drivers::modbus::make_point(
        "p" + std::to_string(address), t, address,
        t == table::coil || t == table::discrete ? point_type::boolean : type,
        ferry::drivers::modbus::byte_order::abcd, length);
}

// Every point is inside exactly one block of its table, and each block respects the limits.
void check_cover(const std::vector<point>& pts, const std::vector<read_block>& blocks) {
    std::vector<int> seen(pts.size(), 0);
    for (const auto& b : blocks) {
        const bool bits = b.tbl == table::coil || b.tbl == table::discrete;
        CHECK(b.count >= 1);
        CHECK(b.count <= (bits ? 2000u : 125u));
        for (auto i : b.points) {
            ++seen[i];
            CHECK(of(pts[i]).tbl == b.tbl);
            CHECK(of(pts[i]).address >= b.start);
            CHECK(of(pts[i]).address + register_count(pts[i]) <= b.start + b.count);
        }
    }
    for (auto n : seen)
        CHECK(n == 1);
}

// The fewest requests by dynamic programming over the sorted points of one table: a request
// may cover points i..j when they span at most `limit` registers and no gap exceeds max_gap.
std::size_t fewest(std::vector<point> pts, std::uint32_t max_gap, std::uint32_t limit) {
    std::sort(pts.begin(), pts.end(),
              [](const point& a, const point& b) { return of(a).address < of(b).address; });
    const std::size_t n = pts.size();
    std::vector<std::size_t> best(n + 1, SIZE_MAX);
    best[0] = 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (best[i] == SIZE_MAX) continue;
        std::uint32_t end = 0;
        for (std::size_t j = i; j < n; ++j) {
            if (j > i && of(pts[j]).address > end + max_gap) break;
            end = std::max(end, of(pts[j]).address + register_count(pts[j]));
            if (end - of(pts[i]).address > limit) break;
            best[j + 1] = std::min(best[j + 1], best[i] + 1);
        }
    }
    return best[n];
}

}  // namespace

TEST_CASE("50 points over 300 registers: three requests, the protocol minimum") {
    std::vector<point> pts;
    for (std::uint32_t a = 0; a < 300; a += 6)
        pts.push_back(
            make(table::holding, a, a % 12 == 0 ? point_type::float32 : point_type::uint16));
    REQUIRE(pts.size() == 50);
    const auto blocks = plan_blocks(pts, 16);
    check_cover(pts, blocks);
    CHECK(blocks.size() == 3);  // ceil(296 / 125)
    // max_gap 0: every gap of 4 or 5 unused registers needs its own request.
    CHECK(plan_blocks(pts, 0).size() == 50);
    // max_gap 4 bridges float32 (a, a+1) to the uint16 at a+6, not the gap of 5 after it.
    CHECK(plan_blocks(pts, 4).size() == 25);
}

TEST_CASE("tables never share a request; bits coalesce up to 2000") {
    std::vector<point> pts{make(table::coil, 0),    make(table::coil, 1999),
                           make(table::coil, 2000), make(table::discrete, 5),
                           make(table::holding, 5), make(table::input, 5)};
    const auto blocks = plan_blocks(pts, 3000);
    check_cover(pts, blocks);
    CHECK(blocks.size() == 5);  // coils 0..1999, coil 2000, discrete, holding, input
}

TEST_CASE("a multi-register point never straddles two requests") {
    std::vector<point> pts{make(table::holding, 0), make(table::holding, 122, point_type::float64)};
    const auto blocks = plan_blocks(pts, 200);
    check_cover(pts, blocks);
    CHECK(blocks.size() == 2);  // 0..125 would be 126 registers
    std::vector<point> strings{make(table::holding, 10, point_type::string, 8),
                               make(table::holding, 12)};  // inside the string: shared registers
    const auto b2 = plan_blocks(strings, 0);
    check_cover(strings, b2);
    CHECK(b2.size() == 1);
    CHECK(b2[0].count == 8);
}

TEST_CASE("greedy coalescing uses the fewest requests (random layouts, exhaustive check)") {
    std::mt19937 rng(42);
    const point_type types[] = {point_type::uint16, point_type::int32, point_type::float32,
                                point_type::float64, point_type::int64};
    for (int round = 0; round < 300; ++round) {
        std::vector<point> pts;
        const int n = 1 + static_cast<int>(rng() % 60);
        for (int i = 0; i < n; ++i)
            pts.push_back(
                make(table::holding, static_cast<std::uint32_t>(rng() % 600), types[rng() % 5]));
        const auto gap = static_cast<std::uint32_t>(rng() % 40);
        const auto blocks = plan_blocks(pts, gap);
        check_cover(pts, blocks);
        CHECK(blocks.size() == fewest(pts, gap, 125));
    }
}

TEST_CASE("split_block cuts at the widest gap, bisecting runs of equal gaps") {
    std::vector<point> pts{make(table::holding, 0), make(table::holding, 1),
                           make(table::holding, 2), make(table::holding, 20),
                           make(table::holding, 21)};
    const auto blocks = plan_blocks(pts, 30);
    REQUIRE(blocks.size() == 1);
    auto [a, b] = split_block(blocks[0], pts);
    CHECK(a.start == 0);
    CHECK(a.count == 3);
    CHECK(a.points.size() == 3);
    CHECK(b.start == 20);
    CHECK(b.count == 2);
    std::vector<point> even;
    for (std::uint32_t i = 0; i < 8; ++i)
        even.push_back(make(table::holding, i));
    auto [c, d] = split_block(plan_blocks(even, 0)[0], even);
    CHECK(c.points.size() == 4);
    CHECK(d.points.size() == 4);
    CHECK(d.start == 4);
}

TEST_CASE("max_registers and max_coils cap a request; a point is never cut (issue 17)") {
    std::vector<point> regs;
    for (std::uint32_t a = 0; a < 10; ++a)
        regs.push_back(make(table::holding, a));
    auto blocks = plan_blocks(regs, 16, 4, 2000);
    REQUIRE(blocks.size() == 3);
    CHECK(blocks[0].start == 0);
    CHECK(blocks[0].count == 4);
    CHECK(blocks[1].start == 4);
    CHECK(blocks[1].count == 4);
    CHECK(blocks[2].start == 8);
    CHECK(blocks[2].count == 2);
    // A float32 at 3..4 does not fit beside 0..2 in 4 registers: it starts the next request.
    std::vector<point> mixed{make(table::holding, 0), make(table::holding, 1),
                             make(table::holding, 2), make(table::holding, 3, point_type::float32),
                             make(table::holding, 5)};
    blocks = plan_blocks(mixed, 16, 4, 2000);
    REQUIRE(blocks.size() == 2);
    CHECK(blocks[0].count == 3);
    CHECK(blocks[1].start == 3);
    CHECK(blocks[1].count == 3);
    // The cap counts bridged gaps too: 0 and 3 fit in 4 registers, 0 and 4 do not.
    CHECK(plan_blocks({make(table::holding, 0), make(table::holding, 3)}, 16, 4, 2000).size() == 1);
    CHECK(plan_blocks({make(table::holding, 0), make(table::holding, 4)}, 16, 4, 2000).size() == 2);
    // Bits: 5 coils and 3 discrete inputs at max_coils 2.
    std::vector<point> bits;
    for (std::uint32_t a = 0; a < 5; ++a)
        bits.push_back(make(table::coil, a));
    for (std::uint32_t a = 0; a < 3; ++a)
        bits.push_back(make(table::discrete, a));
    blocks = plan_blocks(bits, 16, 125, 2);
    check_cover(bits, blocks);
    CHECK(blocks.size() == 3 + 2);
    for (const auto& b : blocks)
        CHECK(b.count <= 2);
    // Random layouts: every block within the caps, every point covered once.
    std::mt19937 rng(17);
    for (int round = 0; round < 200; ++round) {
        std::vector<point> pts;
        std::uniform_int_distribution<std::uint32_t> addr(0, 300);
        for (int i = 0; i < 30; ++i)
            pts.push_back(make(table::holding, addr(rng),
                               i % 3 == 0 ? point_type::float32 : point_type::uint16));
        std::sort(pts.begin(), pts.end(),
                  [](const point& a, const point& b) { return of(a).address < of(b).address; });
        pts.erase(std::unique(pts.begin(), pts.end(),
                              [](const point& a, const point& b) {
                                  return of(a).address == of(b).address;
                              }),
                  pts.end());
        const std::uint32_t cap = 2 + static_cast<std::uint32_t>(round % 20);
        blocks = plan_blocks(pts, static_cast<std::uint32_t>(round % 8), cap, 2000);
        check_cover(pts, blocks);
        for (const auto& b : blocks)
            CHECK(b.count <= cap);
    }
}
