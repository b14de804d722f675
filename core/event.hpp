// The event: one sampled reading of one point, as it travels through Ferry.
//
// Points are known from config. `point_table` interns device/tag/unit once, before the
// device's driver starts, and events carry a small `point_id`, so the hot path never
// allocates a string per event. The table is append-only: an id, once given, names the same
// point_info for the life of the process. A config reload may intern more points while
// drivers run (one thread interns at a time); get() is lock-free and safe from any thread
// for any id that thread has received.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

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
    // Returns the id of device/tag, adding it if new. A known device/tag whose unit changed
    // gets a new id (the old one keeps its point_info, for events still in flight); find()
    // then answers the new one.
    point_id intern(std::string_view device, std::string_view tag, std::string_view unit);
    // The current id of "device/tag".
    std::optional<point_id> find(std::string_view address) const;
    const point_info& get(point_id id) const {
        return chunks_[id >> k_chunk_bits].load(std::memory_order_acquire)[id & k_chunk_mask];
    }
    std::size_t size() const { return size_.load(std::memory_order_acquire); }

  private:
    static constexpr unsigned k_chunk_bits = 12;  // 4,096 points per chunk
    static constexpr point_id k_chunk_mask = (1u << k_chunk_bits) - 1;
    static constexpr std::size_t k_chunks = 1024;  // at most 4,194,304 points

    // Chunks never move, so a point_info's address is stable and get() needs no lock.
    std::array<std::atomic<point_info*>, k_chunks> chunks_{};
    std::vector<std::unique_ptr<point_info[]>> owned_;
    std::atomic<std::size_t> size_{0};
    mutable std::shared_mutex mu_;  // guards by_address_, owned_ and appends
    std::unordered_map<std::string, point_id> by_address_;
};

}  // namespace ferry
