// Register encoding used by the Modbus simulator (tests/tools/modbus_sim.cpp) to lay out
// `--set` values, and by the codec unit test as an independent reference.
//
// Header-only and deliberately free of Ferry's own types (config::point, the codec), so
// that a bug in the driver's codec cannot hide behind a shared helper.
//
// Byte orders (CONTRACT.md), for a value whose big-endian bytes are A B C D [E F G H]:
//   abcd  most significant register first, big-endian within each register
//   cdab  registers reversed (least significant first), big-endian within each register
//   badc  most significant register first, the two bytes of each register swapped
//   dcba  fully little-endian: registers reversed and bytes swapped
// Strings take two characters per register, high byte first; badc/dcba swap the two bytes
// of each register (registers are never reversed for strings).
#pragma once

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::tools {

enum class sim_table { holding, input, coil, discrete };
enum class sim_type { boolean, u16, i16, u32, i32, u64, i64, f32, f64, str };
enum class sim_order { abcd, dcba, badc, cdab };

// One parsed "--set TABLE:ADDR=TYPE[:ORDER]:VALUE".
struct sim_set {
    sim_table table = sim_table::holding;
    std::uint16_t address = 0;
    // For holding/input: the registers to store from `address` on. For coil/discrete: one
    // element, 0 or 1.
    std::vector<std::uint16_t> words;
};

inline std::uint16_t swap_bytes(std::uint16_t w) {
    return static_cast<std::uint16_t>(((w & 0xffu) << 8) | (w >> 8));
}

// `raw` laid out as `nregs` registers (1, 2 or 4) in byte order `order`.
inline std::vector<std::uint16_t> to_registers(std::uint64_t raw, int nregs, sim_order order) {
    std::vector<std::uint16_t> regs(static_cast<std::size_t>(nregs));
    // abcd first: most significant register first.
    for (int i = 0; i < nregs; ++i) {
        regs[static_cast<std::size_t>(i)] =
            static_cast<std::uint16_t>(raw >> (16 * (nregs - 1 - i)));
    }
    if (order == sim_order::cdab || order == sim_order::dcba)
        std::reverse(regs.begin(), regs.end());
    if (order == sim_order::badc || order == sim_order::dcba) {
        for (auto& w : regs)
            w = swap_bytes(w);
    }
    return regs;
}

// A string as registers: two chars per register, high byte first, padded with NUL to
// `nregs` registers (0: just enough for the text). badc/dcba swap the bytes in each register.
inline std::vector<std::uint16_t> string_to_registers(std::string_view text, std::size_t nregs,
                                                      sim_order order) {
    if (nregs == 0) nregs = (text.size() + 1) / 2;
    std::vector<std::uint16_t> regs(nregs, 0);
    for (std::size_t i = 0; i < text.size() && i / 2 < nregs; ++i) {
        const auto c = static_cast<std::uint8_t>(text[i]);
        if (i % 2 == 0) {
            regs[i / 2] = static_cast<std::uint16_t>(regs[i / 2] | (c << 8));
        } else {
            regs[i / 2] = static_cast<std::uint16_t>(regs[i / 2] | c);
        }
    }
    if (order == sim_order::badc || order == sim_order::dcba) {
        for (auto& w : regs)
            w = swap_bytes(w);
    }
    return regs;
}

inline std::optional<sim_table> parse_table(std::string_view s) {
    if (s == "holding") return sim_table::holding;
    if (s == "input") return sim_table::input;
    if (s == "coil") return sim_table::coil;
    if (s == "discrete") return sim_table::discrete;
    return std::nullopt;
}

inline std::optional<sim_type> parse_type(std::string_view s) {
    if (s == "bool") return sim_type::boolean;
    if (s == "u16") return sim_type::u16;
    if (s == "i16") return sim_type::i16;
    if (s == "u32") return sim_type::u32;
    if (s == "i32") return sim_type::i32;
    if (s == "u64") return sim_type::u64;
    if (s == "i64") return sim_type::i64;
    if (s == "f32") return sim_type::f32;
    if (s == "f64") return sim_type::f64;
    if (s == "str") return sim_type::str;
    return std::nullopt;
}

inline std::optional<sim_order> parse_order(std::string_view s) {
    if (s == "abcd") return sim_order::abcd;
    if (s == "dcba") return sim_order::dcba;
    if (s == "badc") return sim_order::badc;
    if (s == "cdab") return sim_order::cdab;
    return std::nullopt;
}

// Encodes `value` (text) of `type` in `order`. Integers are range-checked; returns nullopt
// (and sets *why) when the text does not parse or does not fit.
inline std::optional<std::vector<std::uint16_t>> encode_value(sim_type type, sim_order order,
                                                              const std::string& value,
                                                              std::string* why = nullptr) {
    auto fail = [&](const char* msg) -> std::optional<std::vector<std::uint16_t>> {
        if (why) *why = msg;
        return std::nullopt;
    };
    auto parse_signed = [&](std::int64_t lo, std::int64_t hi) -> std::optional<std::int64_t> {
        errno = 0;
        char* end = nullptr;
        const long long v = std::strtoll(value.c_str(), &end, 0);
        if (errno != 0 || end == value.c_str() || *end != '\0' || v < lo || v > hi)
            return std::nullopt;
        return v;
    };
    auto parse_unsigned = [&](std::uint64_t hi) -> std::optional<std::uint64_t> {
        if (value.empty() || value[0] == '-') return std::nullopt;
        errno = 0;
        char* end = nullptr;
        const unsigned long long v = std::strtoull(value.c_str(), &end, 0);
        if (errno != 0 || end == value.c_str() || *end != '\0' || v > hi) return std::nullopt;
        return v;
    };
    auto parse_double = [&]() -> std::optional<double> {
        char* end = nullptr;
        const double v = std::strtod(value.c_str(), &end);
        if (end == value.c_str() || *end != '\0') return std::nullopt;
        return v;
    };
    switch (type) {
        case sim_type::boolean: {
            if (value == "1" || value == "true") return std::vector<std::uint16_t>{1};
            if (value == "0" || value == "false") return std::vector<std::uint16_t>{0};
            return fail("bool must be 0, 1, true or false");
        }
        case sim_type::u16: {
            auto v = parse_unsigned(0xffff);
            if (!v) return fail("not a u16");
            return to_registers(*v, 1, order);
        }
        case sim_type::i16: {
            auto v = parse_signed(-32768, 32767);
            if (!v) return fail("not an i16");
            return to_registers(static_cast<std::uint16_t>(*v), 1, order);
        }
        case sim_type::u32: {
            auto v = parse_unsigned(0xffffffffu);
            if (!v) return fail("not a u32");
            return to_registers(*v, 2, order);
        }
        case sim_type::i32: {
            auto v = parse_signed(INT32_MIN, INT32_MAX);
            if (!v) return fail("not an i32");
            return to_registers(static_cast<std::uint32_t>(*v), 2, order);
        }
        case sim_type::u64: {
            auto v = parse_unsigned(UINT64_MAX);
            if (!v) return fail("not a u64");
            return to_registers(*v, 4, order);
        }
        case sim_type::i64: {
            auto v = parse_signed(INT64_MIN, INT64_MAX);
            if (!v) return fail("not an i64");
            return to_registers(static_cast<std::uint64_t>(*v), 4, order);
        }
        case sim_type::f32: {
            auto v = parse_double();
            if (!v) return fail("not a number");
            return to_registers(std::bit_cast<std::uint32_t>(static_cast<float>(*v)), 2, order);
        }
        case sim_type::f64: {
            auto v = parse_double();
            if (!v) return fail("not a number");
            return to_registers(std::bit_cast<std::uint64_t>(*v), 4, order);
        }
        case sim_type::str:
            if (value.empty()) return fail("empty string");
            return string_to_registers(value, 0, order);
    }
    return fail("unknown type");
}

// Parses "TABLE:ADDR=TYPE[:ORDER]:VALUE". VALUE is everything after the type (and order),
// so strings may contain ':'. Coils and discrete inputs take bool (or 0/1 as u16).
inline std::optional<sim_set> parse_set(const std::string& spec, std::string* why = nullptr) {
    auto fail = [&](std::string msg) -> std::optional<sim_set> {
        if (why) *why = std::move(msg);
        return std::nullopt;
    };
    const auto eq = spec.find('=');
    if (eq == std::string::npos) return fail("missing '=' (TABLE:ADDR=TYPE[:ORDER]:VALUE)");
    const std::string left = spec.substr(0, eq);
    const std::string right = spec.substr(eq + 1);

    const auto colon = left.find(':');
    if (colon == std::string::npos) return fail("missing ':' between table and address");
    sim_set out;
    const auto tbl = parse_table(left.substr(0, colon));
    if (!tbl) return fail("unknown table '" + left.substr(0, colon) + "'");
    out.table = *tbl;
    const std::string addr_text = left.substr(colon + 1);
    char* end = nullptr;
    errno = 0;
    const unsigned long addr = std::strtoul(addr_text.c_str(), &end, 0);
    if (addr_text.empty() || *end != '\0' || errno != 0 || addr > 65535)
        return fail("bad address '" + addr_text + "'");
    out.address = static_cast<std::uint16_t>(addr);

    const auto c1 = right.find(':');
    if (c1 == std::string::npos) return fail("missing ':' between type and value");
    const auto type = parse_type(right.substr(0, c1));
    if (!type) return fail("unknown type '" + right.substr(0, c1) + "'");
    std::string rest = right.substr(c1 + 1);
    sim_order order = sim_order::abcd;
    if (const auto c2 = rest.find(':'); c2 != std::string::npos) {
        if (auto o = parse_order(rest.substr(0, c2))) {
            order = *o;
            rest = rest.substr(c2 + 1);
        }
    }
    const bool bit_table = out.table == sim_table::coil || out.table == sim_table::discrete;
    if (bit_table && *type != sim_type::boolean && *type != sim_type::u16)
        return fail("coil/discrete take bool");
    std::string reason;
    auto words = encode_value(*type, order, rest, &reason);
    if (!words) return fail(reason + ": '" + rest + "'");
    if (bit_table && (*words)[0] > 1) return fail("coil/discrete value must be 0 or 1");
    if (static_cast<std::size_t>(out.address) + words->size() > 65536)
        return fail("value runs past address 65535");
    out.words = std::move(*words);
    return out;
}

}  // namespace ferry::tools
