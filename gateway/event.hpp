// The event: one sampled reading of one point, as it travels through Ferry.
//
// Points are known from config. `point_table` interns device/tag/unit once, before any
// driver starts, and events carry a small `point_id`, so the hot path never allocates a
// string per event. The table is append-only and must not be modified while drivers run;
// reading it from many threads is safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>

namespace ferry {

using wall_clock = std::chrono::system_clock;
using point_id = std::uint32_t;

enum class quality : std::uint8_t { good, uncertain, bad };
std::string_view to_string(quality q);

// monostate = no value (a failed read, quality bad).
using value = std::variant<std::monostate, bool, std::int64_t, std::uint64_t, double, std::string>;

// Numeric view of a value for comparisons and deadbands; nullopt for strings and absent values.
std::optional<double> as_double(const value& v);

struct event {
    std::uint64_t seq = 0;
    point_id point = 0;
    ferry::value value;
    ferry::quality quality = quality::good;
    wall_clock::time_point ts;
};

struct point_info {
    std::string device;
    std::string tag;
    std::string unit;
    std::string address;  // "device/tag": the bus address
};

class point_table {
  public:
    // Returns the id of device/tag, adding it if new. Not thread-safe: call before start.
    point_id intern(std::string_view device, std::string_view tag, std::string_view unit);
    std::optional<point_id> find(std::string_view address) const;
    const point_info& get(point_id id) const { return points_[id]; }
    std::size_t size() const { return points_.size(); }

  private:
    std::deque<point_info> points_;  // deque: references stay valid as it grows
    std::unordered_map<std::string, point_id> by_address_;
};

}  // namespace ferry
