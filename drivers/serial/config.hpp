// The keys of the serial_line driver (CONTRACT.md, config/REFERENCE.md): their declarations
// (config.cpp) and the settings they are read into. A serial_line device carries
// `device_settings` in its `settings` slot (core/config.hpp); its points take only keys every
// driver shares, so their slot stays empty. The reader, framer and parser read them through
// `of()`, which throws std::logic_error for a device of another driver.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"

namespace ferry::config {
struct driver_schema;
}

namespace ferry::drivers::serial {

// How the byte stream is cut into frames. Exactly one of the two is set.
struct framing_settings {
    std::string delimiter = "\n";  // frames end with this (stripped); used when length == 0
    std::uint32_t length = 0;      // > 0: fixed-size frames of this many bytes
    // Delimiter framing: a longer frame is counted (reason too_long) and dropped.
    std::uint32_t max_frame = 4096;

    bool operator==(const framing_settings&) const = default;
};

// A request written at a fixed interval, for sensors that answer on demand (YAML key `poll`;
// named `request` in code so it does not read like `poll_interval`).
struct request_settings {
    std::string request;
    config::duration interval{1000};

    bool operator==(const request_settings&) const = default;
};

enum class parse_format { regex, csv, json, kv };

// How a frame becomes values of the device's points.
struct parse_settings {
    parse_format format = parse_format::regex;
    std::string regex;             // format regex: named groups name points
    std::vector<std::string> csv;  // format csv: column i -> point csv[i] ("" skips a column)
    std::string separator;         // csv: "," by default; kv: " " by default
    std::string checksum;          // "" or "nmea": verify and strip "*hh"

    bool operator==(const parse_settings&) const = default;
};

// A serial_line device's own keys.
struct device_settings {
    static constexpr std::string_view k_what = "serial_line device settings";

    std::optional<config::serial_settings> serial;
    framing_settings framing;
    std::optional<parse_settings> parse;
    std::optional<request_settings> request;  // YAML key `poll`

    bool operator==(const device_settings&) const = default;
};

// The serial_line settings of a device of that driver.
inline const device_settings& of(const config::device& d) {
    return d.settings.as<device_settings>();
}

const config::driver_schema& line_schema();

}  // namespace ferry::drivers::serial
