// The Modbus codec: golden registers computed by hand for every type x byte order, scale and
// offset, strings, range checks on writes, round trips, the probe's table, and a cross-check
// against the simulator's independent encoder (tests/tools/modbus_encode.hpp).
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>

#include "drivers/modbus/codec.hpp"
#include "tests/tools/modbus_encode.hpp"

using namespace ferry;
using namespace ferry::drivers::modbus;
using config::point_type;
using regs = std::vector<std::uint16_t>;

namespace {

config::point make(point_type t, byte_order o = byte_order::abcd, double scale = 1.0,
                   double offset = 0.0) {
    auto p = make_point("p", table::holding, 0, t, o);
    p.scale = scale;
    p.offset = offset;
    return p;
}

config::point make_string(std::uint32_t length, byte_order o = byte_order::abcd) {
    return make_point("p", table::holding, 0, point_type::string, o, length);
}

ferry::value decode(const config::point& p, const regs& r) {
    return decode_registers(p, std::span<const std::uint16_t>(r));
}

regs encode(const config::point& p, double v) {
    regs out;
    std::string why;
    const bool ok = encode_registers(p, v, out, &why);
    CAPTURE(why);
    REQUIRE(ok);
    return out;
}

std::string encode_fails(const config::point& p, double v) {
    regs out{0xdead};
    std::string why;
    CHECK_FALSE(encode_registers(p, v, out, &why));
    CHECK(out == regs{0xdead});  // untouched on failure
    CHECK_FALSE(why.empty());
    return why;
}

constexpr byte_order A = byte_order::abcd, C = byte_order::cdab, B = byte_order::badc,
                     D = byte_order::dcba;

// Hand-computed registers: the value's big-endian bytes are noted in each comment.
struct golden {
    point_type type;
    byte_order order;
    ferry::value value;
    regs registers;
};

const std::vector<golden> goldens = {
    // uint16 4660 = 0x1234; int16 -2 = 0xFFFE
    {point_type::uint16, A, std::uint64_t{4660}, {0x1234}},
    {point_type::uint16, C, std::uint64_t{4660}, {0x1234}},
    {point_type::uint16, B, std::uint64_t{4660}, {0x3412}},
    {point_type::uint16, D, std::uint64_t{4660}, {0x3412}},
    {point_type::int16, A, std::int64_t{-2}, {0xfffe}},
    {point_type::int16, C, std::int64_t{-2}, {0xfffe}},
    {point_type::int16, B, std::int64_t{-2}, {0xfeff}},
    {point_type::int16, D, std::int64_t{-2}, {0xfeff}},
    {point_type::int16, A, std::int64_t{-32768}, {0x8000}},
    {point_type::uint16, A, std::uint64_t{65535}, {0xffff}},
    // uint32 305419896 = 12 34 56 78
    {point_type::uint32, A, std::uint64_t{305419896}, {0x1234, 0x5678}},
    {point_type::uint32, C, std::uint64_t{305419896}, {0x5678, 0x1234}},
    {point_type::uint32, B, std::uint64_t{305419896}, {0x3412, 0x7856}},
    {point_type::uint32, D, std::uint64_t{305419896}, {0x7856, 0x3412}},
    // int32 -1000000 = FF F0 BD C0
    {point_type::int32, A, std::int64_t{-1000000}, {0xfff0, 0xbdc0}},
    {point_type::int32, C, std::int64_t{-1000000}, {0xbdc0, 0xfff0}},
    {point_type::int32, B, std::int64_t{-1000000}, {0xf0ff, 0xc0bd}},
    {point_type::int32, D, std::int64_t{-1000000}, {0xc0bd, 0xf0ff}},
    // float32 3.14159f = 40 49 0F D0
    {point_type::float32, A, 3.14159, {0x4049, 0x0fd0}},
    {point_type::float32, C, 3.14159, {0x0fd0, 0x4049}},
    {point_type::float32, B, 3.14159, {0x4940, 0xd00f}},
    {point_type::float32, D, 3.14159, {0xd00f, 0x4940}},
    // float32 -21.25 = C1 AA 00 00
    {point_type::float32, A, -21.25, {0xc1aa, 0x0000}},
    {point_type::float32, C, -21.25, {0x0000, 0xc1aa}},
    // uint64 72623859790382856 = 01 02 03 04 05 06 07 08
    {point_type::uint64, A, std::uint64_t{72623859790382856}, {0x0102, 0x0304, 0x0506, 0x0708}},
    {point_type::uint64, C, std::uint64_t{72623859790382856}, {0x0708, 0x0506, 0x0304, 0x0102}},
    {point_type::uint64, B, std::uint64_t{72623859790382856}, {0x0201, 0x0403, 0x0605, 0x0807}},
    {point_type::uint64, D, std::uint64_t{72623859790382856}, {0x0807, 0x0605, 0x0403, 0x0201}},
    {point_type::uint64,
     A,
     std::numeric_limits<std::uint64_t>::max(),
     {0xffff, 0xffff, 0xffff, 0xffff}},
    // int64 -2 = FF FF FF FF FF FF FF FE
    {point_type::int64, A, std::int64_t{-2}, {0xffff, 0xffff, 0xffff, 0xfffe}},
    {point_type::int64, C, std::int64_t{-2}, {0xfffe, 0xffff, 0xffff, 0xffff}},
    {point_type::int64, B, std::int64_t{-2}, {0xffff, 0xffff, 0xffff, 0xfeff}},
    {point_type::int64, D, std::int64_t{-2}, {0xfeff, 0xffff, 0xffff, 0xffff}},
    // float64 1.5 = 3F F8 00 00 00 00 00 00
    {point_type::float64, A, 1.5, {0x3ff8, 0x0000, 0x0000, 0x0000}},
    {point_type::float64, C, 1.5, {0x0000, 0x0000, 0x0000, 0x3ff8}},
    {point_type::float64, B, 1.5, {0xf83f, 0x0000, 0x0000, 0x0000}},
    {point_type::float64, D, 1.5, {0x0000, 0x0000, 0x0000, 0xf83f}},
    // float64 -123.456 = C0 5E DD 2F 1A 9F BE 77
    {point_type::float64, A, -123.456, {0xc05e, 0xdd2f, 0x1a9f, 0xbe77}},
    {point_type::float64, C, -123.456, {0xbe77, 0x1a9f, 0xdd2f, 0xc05e}},
    {point_type::float64, B, -123.456, {0x5ec0, 0x2fdd, 0x9f1a, 0x77be}},
    {point_type::float64, D, -123.456, {0x77be, 0x9f1a, 0x2fdd, 0x5ec0}},
};

double as_number(const ferry::value& v) {
    if (auto d = std::get_if<double>(&v)) return *d;
    if (auto i = std::get_if<std::int64_t>(&v)) return static_cast<double>(*i);
    if (auto u = std::get_if<std::uint64_t>(&v)) return static_cast<double>(*u);
    FAIL("not a number");
    return 0;
}

tools::sim_type sim_type_of(point_type t) {
    switch (t) {
        case point_type::uint16:
            return tools::sim_type::u16;
        case point_type::int16:
            return tools::sim_type::i16;
        case point_type::uint32:
            return tools::sim_type::u32;
        case point_type::int32:
            return tools::sim_type::i32;
        case point_type::uint64:
            return tools::sim_type::u64;
        case point_type::int64:
            return tools::sim_type::i64;
        case point_type::float32:
            return tools::sim_type::f32;
        case point_type::float64:
            return tools::sim_type::f64;
        case point_type::string:
            return tools::sim_type::str;
        default:
            return tools::sim_type::boolean;
    }
}

tools::sim_order sim_order_of(byte_order o) {
    switch (o) {
        case byte_order::abcd:
            return tools::sim_order::abcd;
        case byte_order::cdab:
            return tools::sim_order::cdab;
        case byte_order::badc:
            return tools::sim_order::badc;
        case byte_order::dcba:
            return tools::sim_order::dcba;
    }
    return tools::sim_order::abcd;
}

}  // namespace

TEST_CASE("register_count matches the golden register lengths") {
    for (const auto& g : goldens) {
        CHECK(register_count(make(g.type, g.order)) == g.registers.size());
    }
    CHECK(register_count(make_string(5)) == 5);
}

TEST_CASE("decode: every type in every byte order, against hand-computed registers") {
    for (const auto& g : goldens) {
        CAPTURE(static_cast<int>(g.type));
        CAPTURE(order_name(g.order));
        const auto v = decode(make(g.type, g.order), g.registers);
        CHECK(v.index() == g.value.index());  // int64 / uint64 / double as documented
        CHECK(v == g.value);
    }
}

TEST_CASE("encode: every type in every byte order gives the hand-computed registers") {
    for (const auto& g : goldens) {
        CAPTURE(static_cast<int>(g.type));
        CAPTURE(order_name(g.order));
        // encode takes a double: 64-bit integers beyond 2^53 cannot be written exactly (they
        // are covered by decode above and by the cross-check with the simulator's encoder).
        if (std::fabs(as_number(g.value)) > 9007199254740992.0) continue;
        CHECK(encode(make(g.type, g.order), as_number(g.value)) == g.registers);
    }
}

TEST_CASE("float32 3.14159 in CDAB") {
    const auto p = make(point_type::float32, byte_order::cdab);
    CHECK(encode(p, 3.14159) == regs{0x0fd0, 0x4049});
    const auto v = decode(p, {0x0fd0, 0x4049});
    REQUIRE(std::holds_alternative<double>(v));
    CHECK(std::get<double>(v) == doctest::Approx(3.14159).epsilon(1e-7));
}

TEST_CASE("scale and offset") {
    SUBCASE("int16 with scale gives a double") {
        const auto p = make(point_type::int16, A, 0.1);
        auto v = decode(p, {215});
        REQUIRE(std::holds_alternative<double>(v));
        CHECK(std::get<double>(v) == doctest::Approx(21.5));
        v = decode(p, {0xff9c});  // -100
        CHECK(std::get<double>(v) == doctest::Approx(-10.0));
        CHECK(encode(p, 21.5) == regs{215});
        CHECK(encode(p, -10.0) == regs{0xff9c});
        CHECK(encode(p, 21.54) == regs{215});  // rounds to the nearest raw step
        CHECK(encode(p, 21.56) == regs{216});
    }
    SUBCASE("uint16 with offset only") {
        const auto p = make(point_type::uint16, A, 1.0, -40.0);
        const auto v = decode(p, {60});
        REQUIRE(std::holds_alternative<double>(v));
        CHECK(std::get<double>(v) == 20.0);
        CHECK(encode(p, 20.0) == regs{60});
        encode_fails(p, -41.0);  // raw -1
    }
    SUBCASE("uint32 CDAB energy with scale 0.01") {
        const auto p = make(point_type::uint32, C, 0.01);
        const auto v = decode(p, {0x86a0, 0x0001});  // 100000
        CHECK(std::get<double>(v) == doctest::Approx(1000.0));
        CHECK(encode(p, 1000.0) == regs{0x86a0, 0x0001});
    }
    SUBCASE("float with scale and offset: value = raw * scale + offset") {
        const auto p = make(point_type::float32, A, 1.8, 32.0);
        CHECK(std::get<double>(decode(p, {0x41a0, 0x0000})) == doctest::Approx(68.0));  // 20.0f
        CHECK(encode(p, 68.0) == regs{0x41a0, 0x0000});
    }
    SUBCASE("decimal scales give the decimal a person reads, not binary noise") {
        // -3 * 0.1 is -0.30000000000000004 in binary floating point; the codec gives the
        // double of the literal -0.3, which JSON prints as -0.3.
        CHECK(std::get<double>(decode(make(point_type::int16, A, 0.1), {0xfffd})) == -0.3);
        CHECK(std::get<double>(decode(make(point_type::uint32, C, 0.01), {12345, 0})) == 123.45);
        CHECK(std::get<double>(decode(make(point_type::uint16, A, 0.1, 0.5), {7})) == 1.2);
        CHECK(std::get<double>(decode(make(point_type::uint16, A, 0.001, -40.0), {65535})) ==
              25.535);
        // An offset that is not a whole number of steps still applies.
        CHECK(std::get<double>(decode(make(point_type::uint16, A, 0.5, 0.25), {3})) == 1.75);
        // Scales that are not 1/k multiply as before.
        CHECK(std::get<double>(decode(make(point_type::uint16, A, 0.3), {10})) ==
              doctest::Approx(3.0));
    }
    SUBCASE("no scale: integers stay integers") {
        CHECK(std::holds_alternative<std::int64_t>(decode(make(point_type::int32), {0, 1})));
        CHECK(std::holds_alternative<std::uint64_t>(decode(make(point_type::uint32), {0, 1})));
    }
}

TEST_CASE("bool from a register and from a bit") {
    const auto p = make(point_type::boolean);
    CHECK(decode(p, {0}) == ferry::value{false});
    CHECK(decode(p, {1}) == ferry::value{true});
    CHECK(decode(p, {0x8000}) == ferry::value{true});
    CHECK(decode_bit(p, 0) == ferry::value{false});
    CHECK(decode_bit(p, 1) == ferry::value{true});
    CHECK(encode(p, 1.0) == regs{1});
    CHECK(encode(p, 0.0) == regs{0});
    encode_fails(p, 2.0);
    encode_fails(p, 0.5);

    const auto coil = make_point("p", table::coil, 0, point_type::boolean);
    CHECK(encode(coil, 1.0) == regs{1});
    encode_fails(coil, -1.0);
}

TEST_CASE("strings: two chars per register, high byte first; NULs and trailing spaces trimmed") {
    CHECK(decode(make_string(4), {0x5055, 0x4d50, 0x2d31, 0x0000}) == ferry::value{"PUMP-1"});
    CHECK(decode(make_string(4), {0x5055, 0x4d50, 0x2d31, 0x2020}) == ferry::value{"PUMP-1"});
    CHECK(decode(make_string(3), {0x4142, 0x4300, 0x4445}) == ferry::value{"ABC"});  // cut at NUL
    CHECK(decode(make_string(2), {0x2041, 0x2020}) == ferry::value{" A"});           // leading kept
    CHECK(decode(make_string(2), {0, 0}) == ferry::value{""});
    // BADC and DCBA swap the bytes of each register (registers are never reversed).
    CHECK(decode(make_string(2, B), {0x4241, 0x0043}) == ferry::value{"ABC"});
    CHECK(decode(make_string(2, D), {0x4241, 0x0043}) == ferry::value{"ABC"});
    CHECK(decode(make_string(2, C), {0x4142, 0x4300}) == ferry::value{"ABC"});
    // Text as the device holds it, but always valid UTF-8: ill-formed bytes become U+FFFD.
    CHECK(decode(make_string(2), {0x41ff, 0x0142}) == ferry::value{"A\xEF\xBF\xBD\x01"
                                                                   "B"});
    CHECK(decode(make_string(2), {0x5AC3, 0xBC72}) == ferry::value{"Z\xC3\xBCr"});  // "Zür"
    std::size_t repaired = 0;
    const std::uint16_t latin1[2] = {0x5AFC, 0x7269};  // "Züri" in Latin-1
    CHECK(decode_registers(make_string(2), latin1, &repaired) == ferry::value{"Z\xEF\xBF\xBDri"});
    CHECK(repaired == 1);

    regs out;
    std::string why;
    CHECK(encode_string(make_string(4), "PUMP-1", out, &why));
    CHECK(out == regs{0x5055, 0x4d50, 0x2d31, 0x0000});
    CHECK(encode_string(make_string(2, B), "ABC", out, &why));
    CHECK(out == regs{0x4241, 0x0043});
    CHECK_FALSE(encode_string(make_string(2), "ABCDE", out, &why));
    CHECK(why.find("does not fit") != std::string::npos);
    encode_fails(make_string(2), 1.0);
}

TEST_CASE("a wrong number of registers decodes to no value") {
    CHECK(std::holds_alternative<std::monostate>(decode(make(point_type::float32), {1})));
    CHECK(std::holds_alternative<std::monostate>(decode(make(point_type::uint16), {1, 2})));
    CHECK(std::holds_alternative<std::monostate>(decode(make(point_type::int64), {1, 2, 3})));
    CHECK(std::holds_alternative<std::monostate>(decode(make(point_type::uint16), {})));
}

TEST_CASE("float edge cases pass through") {
    const auto v = decode(make(point_type::float32), {0x7fc0, 0x0000});
    REQUIRE(std::holds_alternative<double>(v));
    CHECK(std::isnan(std::get<double>(v)));
    CHECK(std::get<double>(decode(make(point_type::float32), {0xff80, 0})) ==
          -std::numeric_limits<double>::infinity());
}

TEST_CASE("encode refuses what does not fit") {
    CHECK(encode_fails(make(point_type::int16), 32768.0).find("int16") != std::string::npos);
    encode_fails(make(point_type::int16), -32769.0);
    encode_fails(make(point_type::uint16), -1.0);
    encode_fails(make(point_type::uint16), 65536.0);
    encode_fails(make(point_type::int32), 2147483648.0);
    encode_fails(make(point_type::uint32), 4294967296.0);
    encode_fails(make(point_type::uint64), 18446744073709551616.0);
    encode_fails(make(point_type::int64), 9223372036854775808.0);
    encode_fails(make(point_type::float32), 1e39);
    encode_fails(make(point_type::float64), std::numeric_limits<double>::quiet_NaN());
    encode_fails(make(point_type::float64), std::numeric_limits<double>::infinity());
    // With scale: raw = 4000 / 0.1 = 40000 does not fit int16.
    CHECK(encode_fails(make(point_type::int16, A, 0.1), 4000.0).find("raw") != std::string::npos);
    // Edges that do fit.
    CHECK(encode(make(point_type::int16), -32768.0) == regs{0x8000});
    CHECK(encode(make(point_type::uint16), 65535.0) == regs{0xffff});
    CHECK(encode(make(point_type::int64), -9223372036854775808.0) == regs{0x8000, 0, 0, 0});

    auto p = make(point_type::uint16);
    p.min = 10;
    p.max = 20;
    CHECK(encode(p, 10.0) == regs{10});
    CHECK(encode(p, 20.0) == regs{20});
    CHECK(encode_fails(p, 9.0).find("min") != std::string::npos);
    CHECK(encode_fails(p, 21.0).find("max") != std::string::npos);
}

TEST_CASE("round trip: encode then decode gives the value back") {
    std::mt19937_64 rng(42);
    const point_type ints[] = {point_type::int16,  point_type::uint16, point_type::int32,
                               point_type::uint32, point_type::int64,  point_type::uint64};
    for (auto order : decodings::orders) {
        for (auto t : ints) {
            for (int i = 0; i < 200; ++i) {
                const auto p = make(t, order);
                const int bits = t == point_type::int16 || t == point_type::uint16   ? 16
                                 : t == point_type::int32 || t == point_type::uint32 ? 32
                                                                                     : 52;
                // Up to 2^52: exactly representable as the double encode takes.
                const std::uint64_t raw = rng() & ((std::uint64_t{1} << bits) - 1);
                const bool neg =
                    (t == point_type::int16 || t == point_type::int32 || t == point_type::int64) &&
                    (rng() & 1);
                double v = static_cast<double>(raw >> 1);
                if (neg) v = -v;
                CAPTURE(v);
                CHECK(as_number(decode(p, encode(p, v))) == v);
            }
        }
        for (int i = 0; i < 200; ++i) {
            const double v = std::ldexp(static_cast<double>(rng() % 2000000) - 1e6,
                                        static_cast<int>(rng() % 40) - 20);
            const auto p64 = make(point_type::float64, order);
            CHECK(std::get<double>(decode(p64, encode(p64, v))) == v);
            const auto p32 = make(point_type::float32, order);
            // float32 comes back as the shortest decimal of the float: the same float.
            CHECK(static_cast<float>(std::get<double>(decode(p32, encode(p32, v)))) ==
                  static_cast<float>(v));
            const auto scaled = make(point_type::int32, order, 0.01, -5.0);
            const double w = std::round(v * 100.0) / 100.0;
            if (std::fabs(w) < 1e7) {
                CHECK(std::get<double>(decode(scaled, encode(scaled, w))) ==
                      doctest::Approx(w).epsilon(1e-12));
            }
        }
    }
}

TEST_CASE("the simulator's encoder and the codec agree") {
    struct sample {
        point_type type;
        const char* text;
    };
    const sample samples[] = {
        {point_type::uint16, "0"},
        {point_type::uint16, "65535"},
        {point_type::uint16, "0x1234"},
        {point_type::int16, "-1"},
        {point_type::int16, "-32768"},
        {point_type::int16, "12345"},
        {point_type::uint32, "4000000000"},
        {point_type::int32, "-123456789"},
        {point_type::int32, "2147483647"},
        {point_type::uint64, "18446744073709551615"},
        {point_type::uint64, "72623859790382856"},
        {point_type::int64, "-1234567890123456789"},
        {point_type::int64, "-9223372036854775808"},
        {point_type::float32, "3.14159"},
        {point_type::float32, "-21.25"},
        {point_type::float32, "1e-30"},
        {point_type::float64, "2.718281828459045"},
        {point_type::float64, "-123.456"},
    };
    for (auto order : decodings::orders) {
        for (const auto& s : samples) {
            CAPTURE(order_name(order));
            CAPTURE(s.text);
            const auto words =
                tools::encode_value(sim_type_of(s.type), sim_order_of(order), s.text);
            REQUIRE(words.has_value());
            const auto p = make(s.type, order);
            const auto v = decode(p, *words);
            // The decoded value is the text's value.
            const std::string text = s.text;
            switch (s.type) {
                case point_type::float32:
                    // The shortest decimal of the float: exactly the text the sim was given.
                    CHECK(std::get<double>(v) == std::stod(text));
                    break;
                case point_type::float64:
                    CHECK(std::get<double>(v) == std::stod(text));
                    break;
                case point_type::int16:
                case point_type::int32:
                case point_type::int64:
                    CHECK(std::get<std::int64_t>(v) == std::stoll(text, nullptr, 0));
                    break;
                default:
                    CHECK(std::get<std::uint64_t>(v) == std::stoull(text, nullptr, 0));
                    break;
            }
            // And the codec encodes that value to the same registers (where it is a double).
            const double d = as_number(v);
            if (std::fabs(d) < 9e15 || s.type == point_type::float32 ||
                s.type == point_type::float64) {
                CHECK(encode(p, d) == *words);
            }
        }
        // Strings.
        const auto words =
            tools::encode_value(tools::sim_type::str, sim_order_of(order), "Ferry 1");
        REQUIRE(words.has_value());
        CHECK(decode(make_string(static_cast<std::uint32_t>(words->size()), order), *words) ==
              ferry::value{"Ferry 1"});
        regs out;
        CHECK(encode_string(make_string(static_cast<std::uint32_t>(words->size()), order),
                            "Ferry 1", out, nullptr));
        CHECK(out == *words);
    }
}

TEST_CASE("decode_all: every decoding of a window, for probe") {
    // 3.14159f in CDAB followed by two more registers.
    const regs window{0x0fd0, 0x4049, 0x0000, 0x0000};
    const auto d = decode_all(window);
    const auto i = [](byte_order o) { return decodings::order_index(o); };
    CHECK(d.u16[i(A)] == 0x0fd0);
    CHECK(d.u16[i(B)] == 0xd00f);
    CHECK(d.i16[i(A)] == 0x0fd0);
    CHECK(d.u32[i(A)] == 0x0fd04049u);
    CHECK(d.u32[i(C)] == 0x40490fd0u);
    REQUIRE(d.f32[i(C)].has_value());
    CHECK(*d.f32[i(C)] == 3.14159f);
    CHECK(d.u64[i(A)] == 0x0fd0404900000000ull);
    CHECK(d.u64[i(C)] == 0x000000004049'0fd0ull);
    CHECK(d.f64[i(A)].has_value());
    CHECK(d.ascii == "..@I....");

    const auto neg = decode_all(regs{0xfffe, 0xffff});
    CHECK(neg.i16[i(A)] == -2);
    CHECK(neg.i16[i(B)] == -257);  // 0xFEFF
    CHECK(neg.i32[i(C)] == -2);
    CHECK_FALSE(neg.u64[i(A)].has_value());  // two registers are not enough
    CHECK_FALSE(neg.f64[i(D)].has_value());

    const auto empty = decode_all(regs{});
    CHECK_FALSE(empty.u16[i(A)].has_value());
    CHECK(order_name(C) == "CDAB");
}

TEST_CASE("is_reading: NaN, infinities and absent values are no reading") {
    const auto f32 = make(config::point_type::float32);
    const std::uint16_t nan[2] = {0x7fc0, 0x0000}, inf[2] = {0x7f80, 0x0000},
                        ok[2] = {0x41ac, 0x0000};
    CHECK_FALSE(is_reading(decode_registers(f32, nan)));
    CHECK_FALSE(is_reading(decode_registers(f32, inf)));
    CHECK(is_reading(decode_registers(f32, ok)));
    CHECK_FALSE(is_reading(ferry::value{}));
    CHECK(is_reading(ferry::value{std::string("x")}));
    CHECK(is_reading(ferry::value{std::uint64_t{7}}));
    // A finite double that scale takes past the double range.
    const auto big = make(config::point_type::float64, byte_order::abcd, 10);
    const auto raw = std::bit_cast<std::uint64_t>(1e308);
    const std::uint16_t words[4] = {
        static_cast<std::uint16_t>(raw >> 48), static_cast<std::uint16_t>(raw >> 32),
        static_cast<std::uint16_t>(raw >> 16), static_cast<std::uint16_t>(raw)};
    CHECK_FALSE(is_reading(decode_registers(big, words)));
}
