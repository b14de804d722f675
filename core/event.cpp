#include "core/event.hpp"

#include <stdexcept>

namespace ferry {

std::string_view to_string(quality q) {
    switch (q) {
        case quality::good:
            return "good";
        case quality::uncertain:
            return "uncertain";
        case quality::bad:
            return "bad";
    }
    return "bad";
}

std::optional<double> as_double(const value& v) {
    struct visitor {
        std::optional<double> operator()(std::monostate) const { return std::nullopt; }
        std::optional<double> operator()(bool b) const { return b ? 1.0 : 0.0; }
        std::optional<double> operator()(std::int64_t i) const { return static_cast<double>(i); }
        std::optional<double> operator()(std::uint64_t u) const { return static_cast<double>(u); }
        std::optional<double> operator()(double d) const { return d; }
        std::optional<double> operator()(const std::string&) const { return std::nullopt; }
    };
    return std::visit(visitor{}, v);
}

point_id point_table::intern(std::string_view device, std::string_view tag, std::string_view unit) {
    std::string address;
    address.reserve(device.size() + tag.size() + 1);
    address.append(device).append("/").append(tag);
    std::unique_lock lock(mu_);
    auto it = by_address_.find(address);
    if (it != by_address_.end() && get(it->second).unit == unit) return it->second;
    const auto n = size_.load(std::memory_order_relaxed);
    if (n >= k_chunks << k_chunk_bits) throw std::length_error("too many points");
    const auto id = static_cast<point_id>(n);
    if ((id & k_chunk_mask) == 0) {
        owned_.push_back(std::make_unique<point_info[]>(std::size_t{1} << k_chunk_bits));
        chunks_[id >> k_chunk_bits].store(owned_.back().get(), std::memory_order_release);
    }
    chunks_[id >> k_chunk_bits].load(std::memory_order_relaxed)[id & k_chunk_mask] =
        point_info{std::string(device), std::string(tag), std::string(unit), address};
    size_.store(n + 1, std::memory_order_release);
    by_address_.insert_or_assign(std::move(address), id);
    return id;
}

std::optional<point_id> point_table::find(std::string_view address) const {
    std::shared_lock lock(mu_);
    if (auto it = by_address_.find(std::string(address)); it != by_address_.end())
        return it->second;
    return std::nullopt;
}

}  // namespace ferry
