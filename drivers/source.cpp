#include "drivers/source.hpp"

#include <algorithm>

namespace ferry::drivers {

std::string source::check_write(std::string_view, std::string_view, const ferry::value&) const {
    return "this driver takes no writes";
}

// By value: the interface's signature, so that sources taking writes can move `done` on.
void source::write(std::string_view, std::string_view, const ferry::value&,
                   write_done done) {  // NOLINT(performance-unnecessary-value-param)
    done({false, false, "this driver takes no writes"});
}

std::vector<std::string> device_ids(const std::vector<config::device>& devices) {
    std::vector<std::string> out;
    out.reserve(devices.size());
    for (const auto& d : devices)
        out.push_back(d.id);
    return out;
}

bool driver::serves(std::string_view driver_name) const {
    return std::any_of(schemas.begin(), schemas.end(),
                       [&](const config::driver_schema* s) { return s->name == driver_name; });
}

}  // namespace ferry::drivers
