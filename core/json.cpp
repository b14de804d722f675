#include "core/json.hpp"

#include <charconv>
#include <cmath>

#include "core/utf8.hpp"

namespace ferry::json {
namespace {

template <typename T>
void append_number(std::string& out, T v) {
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, static_cast<std::size_t>(end - buf));
}

}  // namespace

void append_string(std::string& out, std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    out.push_back('"');
    // Names, units and most values need no escaping: find the first byte that does and copy
    // the run before it whole (a byte-by-byte push_back was ~5 % of the rule thread).
    std::size_t plain = 0;
    while (plain < s.size()) {
        const auto u = static_cast<unsigned char>(s[plain]);
        if (u < 0x20 || u >= 0x7f || u == '"' || u == '\\') break;
        ++plain;
    }
    out.append(s.data(), plain);
    std::size_t bad = 0;
    for (std::size_t i = plain; i < s.size();) {
        const char c = s[i];
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x80) {
            // Whatever the caller hands us, the output stays valid UTF-8: an ill-formed
            // sequence becomes U+FFFD here (drivers repair and count device text before).
            const auto n = utf8::sequence(s.substr(i), bad);
            if (n > 0) {
                out.append(s.substr(i, n));
                i += n;
            } else {
                out.append(utf8::k_replacement);
                i += bad;
            }
            continue;
        }
        ++i;
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
                if (u < 0x20 || u == 0x7f) {
                    out += "\\u00";
                    out.push_back(hex[u >> 4]);
                    out.push_back(hex[u & 0xf]);
                } else {
                    out.push_back(c);
                }
        }
    }
    out.push_back('"');
}

void append_value(std::string& out, const value& v) {
    struct visitor {
        std::string& out;
        void operator()(std::monostate) const { out += "null"; }
        void operator()(bool b) const { out += b ? "true" : "false"; }
        void operator()(std::int64_t i) const { append_number(out, i); }
        void operator()(std::uint64_t u) const { append_number(out, u); }
        void operator()(double d) const {
            if (std::isfinite(d))
                append_number(out, d);
            else
                out += "null";
        }
        void operator()(const std::string& s) const { append_string(out, s); }
    };
    std::visit(visitor{out}, v);
}

void append_event(std::string& out, const event& e, const point_info& p) {
    out += "{\"seq\":";
    append_number(out, e.seq);
    out += ",\"device\":";
    append_string(out, p.device);
    out += ",\"tag\":";
    append_string(out, p.tag);
    out += ",\"ts\":";
    append_number(
        out,
        std::chrono::duration_cast<std::chrono::milliseconds>(e.ts.time_since_epoch()).count());
    out += ",\"value\":";
    if (e.quality == quality::bad)
        out += "null";
    else
        append_value(out, e.value);
    out += ",\"quality\":\"";
    out += to_string(e.quality);
    out += '"';
    if (!p.unit.empty()) {
        out += ",\"unit\":";
        append_string(out, p.unit);
    }
    out += '}';
}

void encode_batch(std::string& out, std::string_view gateway, std::uint64_t batch,
                  std::span<const event> events, const point_table& points) {
    out.clear();
    out += "{\"gateway\":";
    append_string(out, gateway);
    out += ",\"batch\":";
    append_number(out, batch);
    out += ",\"events\":[";
    bool first = true;
    for (const auto& e : events) {
        if (!first) out.push_back(',');
        first = false;
        append_event(out, e, points.get(e.point));
    }
    out += "]}";
}

std::size_t event_size(const event& e, const point_info& p) {
    thread_local std::string scratch;
    scratch.clear();
    append_event(scratch, e, p);
    return scratch.size() + 1;  // the separating comma
}

}  // namespace ferry::json
