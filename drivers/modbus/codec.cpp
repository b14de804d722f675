#include "drivers/modbus/codec.hpp"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/utf8.hpp"

namespace ferry::drivers::modbus {

using config::point_type;

namespace {

std::uint16_t swap_bytes(std::uint16_t w) {
    return static_cast<std::uint16_t>(((w & 0xffu) << 8) | (w >> 8));
}

bool reversed(byte_order o) {
    return o == byte_order::cdab || o == byte_order::dcba;
}
bool swapped(byte_order o) {
    return o == byte_order::badc || o == byte_order::dcba;
}

bool is_signed(point_type t) {
    return t == point_type::int16 || t == point_type::int32 || t == point_type::int64;
}
bool is_float(point_type t) {
    return t == point_type::float32 || t == point_type::float64;
}

// Sign-extends the low `bits` bits of raw.
std::int64_t sign_extend(std::uint64_t raw, int bits) {
    if (bits == 64) return static_cast<std::int64_t>(raw);
    const std::uint64_t sign = std::uint64_t{1} << (bits - 1);
    const std::uint64_t mask = (std::uint64_t{1} << bits) - 1;
    raw &= mask;
    return static_cast<std::int64_t>((raw ^ sign) - sign);  // two's complement, no UB
}

int bits_of(point_type t) {
    switch (t) {
        case point_type::int16:
        case point_type::uint16:
            return 16;
        case point_type::int32:
        case point_type::uint32:
        case point_type::float32:
            return 32;
        default:
            return 64;
    }
}

bool scaled(const config::point& p) {
    return p.scale != 1.0 || p.offset != 0.0;
}

// A float32 reading as the double a person reads: the shortest decimal that reads back as
// the same float (3.14159f → 3.14159, not 3.141590118408203). Upstream consumers see the
// value the device holds, not float32 rounding noise.
double widen(float f) {
    if (!std::isfinite(f)) return f;
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, f);
    double d = f;
    if (ec == std::errc()) std::from_chars(buf, end, d);
    return d;
}

// value = raw * scale + offset, without binary noise for decimal scales: 0.1 has no exact
// binary form, so -3 * 0.1 is -0.30000000000000004, while -3 / 10 is the double nearest -0.3
// (what a person reads). A scale of 1/k (k whole) divides by k; an offset that is a whole
// number of those steps joins the raw value before the one rounding.
double apply_scale(double raw, const config::point& p) {
    if (p.scale != 0.0 && std::fabs(p.scale) < 1.0) {
        const double k = std::round(1.0 / p.scale);
        if (k != 0.0 && std::fabs(1.0 / p.scale - k) < 1e-9 * std::fabs(k)) {
            const double steps = p.offset * k;
            if (std::fabs(steps - std::round(steps)) < 1e-9 * std::max(1.0, std::fabs(steps)))
                return (raw + std::round(steps)) / k;
            return raw / k + p.offset;
        }
    }
    return raw * p.scale + p.offset;
}

// raw integer/float -> the value of a numeric point (scale and offset applied).
ferry::value numeric_value(const config::point& p, std::uint64_t raw) {
    switch (p.type) {
        case point_type::float32: {
            const double d = widen(std::bit_cast<float>(static_cast<std::uint32_t>(raw)));
            if (!scaled(p)) return d;
            return apply_scale(d, p);
        }
        case point_type::float64:
            return apply_scale(std::bit_cast<double>(raw), p);
        case point_type::int16:
        case point_type::int32:
        case point_type::int64: {
            const std::int64_t v = sign_extend(raw, bits_of(p.type));
            if (scaled(p)) return apply_scale(static_cast<double>(v), p);
            return v;
        }
        default:
            if (scaled(p)) return apply_scale(static_cast<double>(raw), p);
            return raw;
    }
}

void set_why(std::string* why, std::string text) {
    if (why) *why = std::move(text);
}

// The shortest text that reads back as v: "-100.1", not "-100.09999999999999".
std::string fmt(double v) {
    char buf[64];
    for (int precision = 15; precision <= 17; ++precision) {
        std::snprintf(buf, sizeof buf, "%.*g", precision, v);
        if (std::strtod(buf, nullptr) == v) break;
    }
    return buf;
}

}  // namespace

std::uint64_t assemble(std::span<const std::uint16_t> regs, byte_order order) {
    std::uint64_t raw = 0;
    const std::size_t n = regs.size();
    for (std::size_t i = 0; i < n; ++i) {
        // Register i of the value, most significant first, wherever the order put it.
        std::uint16_t w = reversed(order) ? regs[n - 1 - i] : regs[i];
        if (swapped(order)) w = swap_bytes(w);
        raw = (raw << 16) | w;
    }
    return raw;
}

std::vector<std::uint16_t> disassemble(std::uint64_t raw, std::size_t n, byte_order order) {
    std::vector<std::uint16_t> regs(n);
    for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t w = static_cast<std::uint16_t>(raw >> (16 * (n - 1 - i)));
        if (swapped(order)) w = swap_bytes(w);
        regs[reversed(order) ? n - 1 - i : i] = w;
    }
    return regs;
}

ferry::value decode_registers(const config::point& p, std::span<const std::uint16_t> regs,
                              std::size_t* repaired) {
    const auto& m = of(p);
    if (regs.size() != register_count(p.type, m) || regs.empty()) return std::monostate{};
    switch (p.type) {
        case point_type::boolean:
            return regs[0] != 0;
        case point_type::string: {
            std::string s;
            s.reserve(regs.size() * 2);
            for (std::uint16_t w : regs) {
                if (swapped(m.order)) w = swap_bytes(w);
                s.push_back(static_cast<char>(w >> 8));
                s.push_back(static_cast<char>(w & 0xff));
            }
            if (const auto nul = s.find('\0'); nul != std::string::npos) s.resize(nul);
            while (!s.empty() && s.back() == ' ')
                s.pop_back();
            const auto n = utf8::repair(s);
            if (repaired) *repaired = n;
            return s;
        }
        default:
            return numeric_value(p, assemble(regs, m.order));
    }
}

bool is_reading(const ferry::value& v) {
    if (std::holds_alternative<std::monostate>(v)) return false;
    const auto* d = std::get_if<double>(&v);
    return !d || std::isfinite(*d);
}

ferry::value decode_bit(const config::point& p, std::uint8_t bit) {
    if (p.type == point_type::boolean || p.type == point_type::string) return bit != 0;
    return numeric_value(
        p, is_float(p.type)
               ? (p.type == point_type::float32 ? std::bit_cast<std::uint32_t>(bit ? 1.0f : 0.0f)
                                                : std::bit_cast<std::uint64_t>(bit ? 1.0 : 0.0))
               : std::uint64_t{bit != 0});
}

bool encode_registers(const config::point& p, double v, std::vector<std::uint16_t>& out,
                      std::string* why) {
    if (!std::isfinite(v)) return set_why(why, "value is not a finite number"), false;
    if (p.min && v < *p.min) return set_why(why, fmt(v) + " is below min " + fmt(*p.min)), false;
    if (p.max && v > *p.max) return set_why(why, fmt(v) + " is above max " + fmt(*p.max)), false;
    if (p.type == point_type::string)
        return set_why(why, "a string point cannot be written from a number"), false;

    const auto& m = of(p);
    if (p.type == point_type::boolean || is_bit_table(m.tbl)) {
        // A bit, or a bool in a register: exactly 0 or 1 (scale and offset do not apply to bool).
        double raw = v;
        if (p.type != point_type::boolean) raw = (v - p.offset) / p.scale;
        if (raw != 0.0 && raw != 1.0) return set_why(why, fmt(v) + " is not 0 or 1"), false;
        out.assign(1, raw == 1.0 ? 1 : 0);
        return true;
    }

    const double raw = (v - p.offset) / p.scale;
    if (!std::isfinite(raw)) return set_why(why, "value out of range after scale/offset"), false;
    const std::size_t n = register_count(p.type, m);
    std::uint64_t bits = 0;
    if (p.type == point_type::float32) {
        if (std::fabs(raw) > static_cast<double>(FLT_MAX))
            return set_why(why, fmt(v) + " does not fit float32"), false;
        bits = std::bit_cast<std::uint32_t>(static_cast<float>(raw));
    } else if (p.type == point_type::float64) {
        bits = std::bit_cast<std::uint64_t>(raw);
    } else {
        const double r = std::nearbyint(raw);  // round half to even (default FP mode)
        const int width = bits_of(p.type);
        // Bounds as exact powers of two: every one is representable as a double.
        const double span = std::ldexp(1.0, width);      // 2^width
        const double half = std::ldexp(1.0, width - 1);  // 2^(width-1)
        const bool fits = is_signed(p.type) ? (r >= -half && r < half) : (r >= 0 && r < span);
        if (!fits) {
            return set_why(why, fmt(v) + " does not fit " + std::string(config::type_name(p.type)) +
                                    (scaled(p) ? " (raw " + fmt(r) + " after scale/offset)" : "")),
                   false;
        }
        bits = is_signed(p.type) ? static_cast<std::uint64_t>(static_cast<std::int64_t>(r))
                                 : static_cast<std::uint64_t>(r);
    }
    out = disassemble(bits, n, m.order);
    return true;
}

bool encode_string(const config::point& p, std::string_view text, std::vector<std::uint16_t>& out,
                   std::string* why) {
    const auto& m = of(p);
    const std::size_t n = m.length;
    if (text.size() > n * 2) {
        set_why(why, "text of " + std::to_string(text.size()) + " bytes does not fit " +
                         std::to_string(n) + " registers");
        return false;
    }
    std::vector<std::uint16_t> regs(n, 0);
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto c = static_cast<std::uint8_t>(text[i]);
        regs[i / 2] = static_cast<std::uint16_t>(regs[i / 2] | (i % 2 == 0 ? c << 8 : c));
    }
    if (swapped(m.order)) {
        for (auto& w : regs)
            w = swap_bytes(w);
    }
    out = std::move(regs);
    return true;
}

decodings decode_all(std::span<const std::uint16_t> regs) {
    decodings d;
    for (byte_order o : decodings::orders) {
        const std::size_t i = decodings::order_index(o);
        if (!regs.empty()) {
            const auto raw = static_cast<std::uint16_t>(assemble(regs.first(1), o));
            d.u16[i] = raw;
            d.i16[i] = static_cast<std::int16_t>(sign_extend(raw, 16));
        }
        if (regs.size() >= 2) {
            const auto raw = static_cast<std::uint32_t>(assemble(regs.first(2), o));
            d.u32[i] = raw;
            d.i32[i] = static_cast<std::int32_t>(sign_extend(raw, 32));
            d.f32[i] = std::bit_cast<float>(raw);
        }
        if (regs.size() >= 4) {
            const auto raw = assemble(regs.first(4), o);
            d.u64[i] = raw;
            d.i64[i] = static_cast<std::int64_t>(raw);
            d.f64[i] = std::bit_cast<double>(raw);
        }
    }
    for (std::uint16_t w : regs) {
        for (int b : {w >> 8, w & 0xff}) {
            d.ascii.push_back(b >= 0x20 && b <= 0x7e ? static_cast<char>(b) : '.');
        }
    }
    return d;
}

std::string_view order_name(byte_order o) {
    switch (o) {
        case byte_order::abcd:
            return "ABCD";
        case byte_order::dcba:
            return "DCBA";
        case byte_order::badc:
            return "BADC";
        case byte_order::cdab:
            return "CDAB";
    }
    return "?";
}

}  // namespace ferry::drivers::modbus
