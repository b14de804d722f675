// Turns one frame of a serial_line device into values of its points: the `parse` settings of
// CONTRACT.md (regex with named groups, csv with a field list, flat json, kv) with the optional
// NMEA `*hh` checksum.
//
// A frame is all or nothing: if it does not parse, fails its checksum, or any of its values
// cannot be converted to its point's type, `parse` reports why and yields no value, so a
// garbled line never turns into a half-right reading. Points a frame does not mention get no
// value from it (no event). A frame that fails but shows which points it was meant to carry
// names them (parse_details::named), so that the driver can mark those readings `bad`.
//
// Text is made valid UTF-8 before it becomes a value: ill-formed sequences in a string value
// (and, for json, anywhere in the frame, before parsing) are replaced by U+FFFD
// (core/utf8.hpp) and reported in parse_details::repaired.
//
// Conversion (text → the point's type): integers must be whole and within the type's range;
// float32/float64 take any finite number as written (both become a double); bool takes
// 1/0, true/false, on/off, yes/no (any case); string takes the text as it is. `scale` and
// `offset` apply as for Modbus: value = raw * scale + offset, and a scaled integer becomes a
// double. Surrounding spaces are ignored, and a leading '+' is allowed.
//
// Pure: no I/O, no clock. Thread-safe after construction (parse is const).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "core/event.hpp"
#include "drivers/serial/config.hpp"

namespace ferry::drivers::serial {

// Why a frame was skipped; the `reason` label of ferry_driver_errors_total.
enum class frame_error : std::uint8_t { none, parse, checksum, too_long };
std::string_view to_string(frame_error e);

// NMEA 0183 checksum: `$...*hh` (or `!...*hh`, or no leading sign), hh = XOR of the bytes
// between the leading sign and '*', hex, either case. Returns the frame without "*hh", or
// nullopt when the "*hh" is missing or wrong.
std::optional<std::string_view> strip_nmea_checksum(std::string_view frame);

// Text → value of point `p`'s type (see above); nullopt when it does not convert. A string
// keeps the text's bytes as they are: line_parser::parse repairs them.
std::optional<ferry::value> convert_text(std::string_view text, const config::point& p);

// One value found in a frame: the point's index in the device's points, and its value.
struct field {
    std::size_t point = 0;
    ferry::value value;
};

// What parse() found besides the values.
struct parse_details {
    // Ill-formed UTF-8 sequences replaced by U+FFFD in this frame's values (json: in the frame).
    std::size_t repaired = 0;
    // On an error: the points the frame was meant to carry, each once, when it shows which
    // (regex: the groups of a match; csv: every column's point, as every line is a reading
    // of them; json and kv: the keys naming points). Empty when the frame shows none of
    // them: a checksum or framing error, a regex that does not match, json that does not
    // parse (a sensor's other sentences and banners are not readings of these points).
    std::vector<std::size_t> named;
};

class line_parser {
  public:
    // Throws std::invalid_argument for settings it cannot use (a regex that does not
    // compile, a name that is not one of `points`). The config loader checks the same first.
    line_parser(const parse_settings& parse, std::vector<config::point> points);
    ~line_parser();
    line_parser(line_parser&&) noexcept;
    line_parser& operator=(line_parser&&) noexcept;

    // Parses one frame (delimiter already stripped). On success `out` holds every value found
    // (at least one; strings valid UTF-8) and the result is frame_error::none; otherwise `out`
    // is empty. `details`, when given, is filled in either case.
    frame_error parse(std::string_view frame, std::vector<field>& out,
                      parse_details* details = nullptr) const;

    const std::vector<config::point>& points() const;

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry::drivers::serial
