// Inside ferry_commands (not a public header: only commands/*.cpp include it): what the
// checks, the store and the service share.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "core/event.hpp"
#include "core/json.hpp"

namespace ferry::commands {

inline constexpr std::string_view k_component = "commands";
inline constexpr std::size_t k_max_id = 256;       // bytes
inline constexpr std::size_t k_logged_value = 64;  // bytes of a value shown in a log line

// A value as JSON text, as it is logged and checked.
inline std::string text_of(const ferry::value& v) {
    std::string out;
    json::append_value(out, v);
    return out;
}

}  // namespace ferry::commands
