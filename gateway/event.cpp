#include "gateway/event.hpp"

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
    if (auto it = by_address_.find(address); it != by_address_.end()) return it->second;
    auto id = static_cast<point_id>(points_.size());
    points_.push_back(
        point_info{std::string(device), std::string(tag), std::string(unit), address});
    by_address_.emplace(std::move(address), id);
    return id;
}

std::optional<point_id> point_table::find(std::string_view address) const {
    if (auto it = by_address_.find(std::string(address)); it != by_address_.end())
        return it->second;
    return std::nullopt;
}

}  // namespace ferry
