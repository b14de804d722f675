// The system driver: this box's health as points of a device, beside the plant data.
//
// Each point names one metric (`name: load1`); the driver samples every point of a device at
// its poll_interval and publishes the values as events. A metric the box cannot give (no
// thermal zone for cpu_temp) is sent with quality bad and counted in
// ferry_driver_errors_total{reason="unavailable"}; the other points of that poll stay good.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/event.hpp"
#include "drivers/driver.hpp"
#include "drivers/source.hpp"

namespace ferry::drivers::system {

enum class metric { load1, mem_available, disk_free, uptime, cpu_temp, spool_bytes };

// In the order of `metric`: the point names a device may use, with their units.
inline constexpr std::array<std::string_view, 6> k_metric_names{
    "load1", "mem_available", "disk_free", "uptime", "cpu_temp", "spool_bytes"};
inline constexpr std::array<std::string_view, 6> k_metric_units{"", "B", "B", "s", "degC", "B"};

std::optional<metric> metric_of(std::string_view name);

// Where the metrics come from; tests point them at files of their own.
struct sources_paths {
    std::string proc = "/proc";
    std::string thermal = "/sys/class/thermal";
    std::string spool;  // the spool file: disk_free on its filesystem, spool_bytes its size
};

// The metric now: a double for load1, uptime and cpu_temp, bytes as uint64; monostate when
// the box does not have it.
ferry::value sample(metric m, const sources_paths& paths);

// The source of every `driver: system` device.
std::unique_ptr<source> make_source(std::vector<config::device> devices, const driver_context& ctx,
                                    sources_paths paths);

}  // namespace ferry::drivers::system
