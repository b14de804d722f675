// The keys of the modbus_tcp and modbus_rtu drivers (CONTRACT.md, config/REFERENCE.md): their
// declarations (config.cpp) and the settings they are read into. A Modbus device carries
// `device_settings` and each of its points `point_settings` in their `settings` slot
// (core/config.hpp); the poller, the planner and the codec read them through `of()`, which
// throws std::logic_error for a device or point of another driver. A new Modbus key goes here
// and in config.cpp, never into core.
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

namespace ferry::drivers::modbus {

enum class table : std::uint8_t { holding, input, coil, discrete };
enum class byte_order : std::uint8_t { abcd, dcba, badc, cdab };

// A device's Modbus keys: where it is and how patiently it is asked.
struct device_settings {
    static constexpr std::string_view k_what = "modbus device settings";

    std::string host;  // modbus_tcp
    std::uint16_t port = 502;
    int unit_id = 1;
    config::duration timeout{500};
    int retries = 2;
    std::uint32_t max_gap = 16;           // unused registers bridged to save a request
    int down_after = 3;                   // polls without any answer before the device is down
    config::duration retry_every{30000};  // a down device is tried once per this (jittered)
    // Quirks of devices that cannot take what the protocol allows (README "Quirks").
    std::uint32_t max_registers = 125;  // per read request (FC 3/4)
    std::uint32_t max_coils = 2000;     // bits per read request (FC 1/2)
    config::duration request_delay{0};  // pause before each request
    config::duration connect_delay{0};  // modbus_tcp: after connecting, before the first request
    bool close_after_poll = false;      // modbus_tcp: a new connection for every poll
    std::optional<config::serial_settings> serial;  // modbus_rtu

    bool operator==(const device_settings&) const = default;
};

// A point's Modbus keys: where its registers are and how they are laid out. 16 bytes, so that
// a point's slot is one small allocation (core/config.hpp).
struct point_settings {
    static constexpr std::string_view k_what = "modbus point settings";

    table tbl = table::holding;
    byte_order order = byte_order::abcd;
    std::uint32_t address = 0;
    std::uint32_t length = 0;  // registers, for strings
    // The point's own poll rate in ms (its poll group, README "Poll groups"); 0: the device's
    // poll_interval.
    std::uint32_t poll_interval_ms = 0;

    bool operator==(const point_settings&) const = default;
    // A refused command says "a coil" rather than "type bool" (commands/checks.hpp).
    std::string_view kind() const { return tbl == table::coil ? "a coil" : ""; }
};

inline bool is_bit_table(table t) {
    return t == table::coil || t == table::discrete;
}

// The Modbus settings of a device or point of modbus_tcp or modbus_rtu.
inline const device_settings& of(const config::device& d) {
    return d.settings.as<device_settings>();
}
inline const point_settings& of(const config::point& p) {
    return p.settings.as<point_settings>();
}

// How often a point is read: its own poll_interval, or its device's.
inline config::duration poll_interval_of(const config::device& d, const config::point& p) {
    const auto own = of(p).poll_interval_ms;
    return own > 0 ? config::duration(own) : d.poll_interval;
}

// Number of registers a point occupies (bits count 1 for coil and discrete).
std::uint32_t register_count(config::point_type type, const point_settings& s);
inline std::uint32_t register_count(const config::point& p) {
    return register_count(p.type, of(p));
}

// Devices and points built in code (tests, benchmarks, tools) as the loader builds them. Tune
// other keys with `settings.change<device_settings>(...)`.
config::point make_point(std::string name, table tbl, std::uint32_t address,
                         config::point_type type, byte_order order = byte_order::abcd,
                         std::uint32_t length = 0, config::duration poll_interval = {});
config::device make_tcp_device(std::string id, std::string host, std::uint16_t port,
                               std::vector<config::point> points);
config::device make_rtu_device(std::string id, config::serial_settings serial, int unit_id,
                               std::vector<config::point> points);

const config::driver_schema& tcp_schema();
const config::driver_schema& rtu_schema();

}  // namespace ferry::drivers::modbus
