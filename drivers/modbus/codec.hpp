// Modbus register codec: registers <-> values of a configured point. Pure: no I/O, no state,
// safe from any thread.
//
// Registers are host-order 16-bit words as libmodbus returns them. Byte orders (CONTRACT.md),
// for a value whose big-endian bytes are A B C D [E F G H]:
//   ABCD  most significant register first, big-endian within each register
//   CDAB  least significant register first (registers reversed), big-endian within each
//   BADC  most significant register first, the two bytes of each register swapped
//   DCBA  fully little-endian: registers reversed and bytes swapped
// 16-bit types follow the same rule (BADC and DCBA swap the two bytes; ABCD and CDAB do
// not), as Telegraf's modbus input does. Strings: two characters per register, high byte
// first; BADC/DCBA swap the bytes of each register, registers are never reversed.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "core/event.hpp"
#include "drivers/modbus/config.hpp"

namespace ferry::drivers::modbus {

// Decodes a point's value from its registers (regs.size() must be
// register_count(p), else the result is empty: std::monostate).
//   bool     register != 0
//   ints     int64 (signed types) or uint64 (unsigned types)
//   floats   double
//   string   two chars per register, cut at the first NUL, trailing spaces trimmed; text as
//            the device holds it (UTF-8 written by a command reads back the same), except
//            that ill-formed UTF-8 is replaced by U+FFFD (core/utf8.hpp), so the value is
//            always valid UTF-8; *repaired (when given) counts the replacements
// Numeric types apply value = raw * scale + offset; the result is then a double whenever
// scale != 1 or offset != 0. NaN and infinity from a float register are passed through:
// see is_reading.
ferry::value decode_registers(const config::point& p, std::span<const std::uint16_t> regs,
                              std::size_t* repaired = nullptr);

// Whether a decoded value is a reading: not absent, and not NaN or an infinity (a float
// register saying "no value", or scale/offset past the double range), which no JSON can
// carry. The driver publishes anything else as `bad` with no value (reason not_finite).
bool is_reading(const ferry::value& v);

// A coil or discrete input: bool for type bool; for a numeric type, 0 or 1 as that type
// would decode it (scale and offset applied).
ferry::value decode_bit(const config::point& p, std::uint8_t bit);

// The inverse, for writes: engineering value v -> registers (or, for coil/discrete tables,
// one element 0 or 1). Undoes offset and scale (raw = (v - offset) / scale), rounds to the
// nearest integer for integer types, and checks that v is finite, within p.min/p.max when
// set, and that raw fits the type (float32: finite after narrowing; bool: 0 or 1).
// Returns false with the reason in *why (when given) otherwise; `out` is then unchanged.
// Strings cannot be written from a number: see encode_string. Since v is a double, 64-bit
// integers are exact only up to 2^53 in magnitude.
bool encode_registers(const config::point& p, double v, std::vector<std::uint16_t>& out,
                      std::string* why);

// A string point from text: two chars per register (byte order as above), NUL-padded to
// p.length registers; false if the text is longer than p.length * 2 bytes.
bool encode_string(const config::point& p, std::string_view text, std::vector<std::uint16_t>& out,
                   std::string* why);

// ---- raw helpers -------------------------------------------------------------------------

// The big-endian integer held by regs (1, 2 or 4 registers) in byte order `order`.
std::uint64_t assemble(std::span<const std::uint16_t> regs, byte_order order);
// The inverse: the low 16*n bits of raw as n registers (n = 1, 2 or 4) in byte order `order`.
std::vector<std::uint16_t> disassemble(std::uint64_t raw, std::size_t n, byte_order order);

// ---- every decoding, for `ferry probe` ---------------------------------------------------

// Every interpretation of the registers at the start of a window. Each array is indexed by
// order_index(byte_order); an entry is empty when the window is too short for the type.
struct decodings {
    template <class T>
    using per_order = std::array<std::optional<T>, 4>;

    // The orders in the sequence a table should show them: ABCD, CDAB, BADC, DCBA.
    static constexpr std::array<byte_order, 4> orders{byte_order::abcd, byte_order::cdab,
                                                      byte_order::badc, byte_order::dcba};
    static constexpr std::size_t order_index(byte_order o) { return static_cast<std::size_t>(o); }

    per_order<std::uint16_t> u16;
    per_order<std::int16_t> i16;
    per_order<std::uint32_t> u32;
    per_order<std::int32_t> i32;
    per_order<std::uint64_t> u64;
    per_order<std::int64_t> i64;
    per_order<float> f32;
    per_order<double> f64;
    std::string ascii;  // the whole window, high byte first; non-printable bytes as '.'
};

decodings decode_all(std::span<const std::uint16_t> regs);

// "ABCD", "DCBA", "BADC", "CDAB".
std::string_view order_name(byte_order o);

}  // namespace ferry::drivers::modbus
