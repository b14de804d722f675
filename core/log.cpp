#include "core/log.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>

namespace ferry::log {
namespace {

std::atomic<int> g_level{static_cast<int>(config::log_level::info)};

std::string_view level_name(config::log_level l) {
    switch (l) {
        case config::log_level::debug:
            return "debug";
        case config::log_level::info:
            return "info";
        case config::log_level::warn:
            return "warn";
        case config::log_level::error:
            return "error";
    }
    return "info";
}

// Quotes a value when it holds spaces, quotes, '=' or control characters.
void append_value(std::string& out, std::string_view v) {
    bool plain = !v.empty();
    for (char c : v) {
        if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) {
            plain = false;
            break;
        }
    }
    if (plain) {
        out += v;
        return;
    }
    out += '"';
    for (char c : v) {
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                if (static_cast<unsigned char>(c) < 0x20)
                    out += '?';
                else
                    out += c;
        }
    }
    out += '"';
}

}  // namespace

void set_level(config::log_level level) {
    g_level.store(static_cast<int>(level));
}

bool enabled(config::log_level level) {
    return static_cast<int>(level) >= g_level.load();
}

void write(config::log_level level, std::string_view component, std::string_view msg,
           std::initializer_list<field> fields) {
    if (!enabled(level)) return;
    auto now = std::chrono::system_clock::now();
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
    std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char ts[40];
    std::size_t n = std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    std::string line;
    line.reserve(128);
    line.append("ts=").append(ts, n);
    char frac[8];
    std::snprintf(frac, sizeof frac, ".%03dZ", static_cast<int>(ms % 1000));
    line.append(frac);
    line.append(" level=").append(level_name(level));
    line.append(" component=").append(component);
    line.append(" msg=");
    append_value(line, msg);
    for (const auto& [k, v] : fields) {
        line.append(" ").append(k).append("=");
        append_value(line, v);
    }
    line.push_back('\n');
    // One write(2) per line keeps lines whole when several threads log at once.
    const char* p = line.data();
    std::size_t left = line.size();
    while (left > 0) {
        ssize_t w = ::write(STDERR_FILENO, p, left);
        if (w <= 0) break;
        p += w;
        left -= static_cast<std::size_t>(w);
    }
}

}  // namespace ferry::log
