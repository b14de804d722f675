// Logging: one line per event, `key=value`, to stderr (journald picks it up).
//
//   log::info("spool", "recovered corrupt spool", {{"path", p}, {"moved_to", q}});
//   -> ts=2026-11-27T17:00:00.123Z level=info component=spool msg="recovered corrupt spool"
//   path=... moved_to=...
//
// Thread-safe; each line is written with one write(2). Never pass secrets as fields.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "core/config.hpp"

namespace ferry::log {

using field = std::pair<std::string_view, std::string>;

void set_level(config::log_level level);
bool enabled(config::log_level level);

void write(config::log_level level, std::string_view component, std::string_view msg,
           std::initializer_list<field> fields = {});

inline void debug(std::string_view c, std::string_view m, std::initializer_list<field> f = {}) {
    write(config::log_level::debug, c, m, f);
}
inline void info(std::string_view c, std::string_view m, std::initializer_list<field> f = {}) {
    write(config::log_level::info, c, m, f);
}
inline void warn(std::string_view c, std::string_view m, std::initializer_list<field> f = {}) {
    write(config::log_level::warn, c, m, f);
}
inline void error(std::string_view c, std::string_view m, std::initializer_list<field> f = {}) {
    write(config::log_level::error, c, m, f);
}

}  // namespace ferry::log
