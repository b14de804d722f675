#include "drivers/serial/parser.hpp"

#include <re2/re2.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "core/utf8.hpp"
#include "drivers/serial/regex.hpp"

namespace ferry::drivers::serial {

using config::point_type;

std::string_view to_string(frame_error e) {
    switch (e) {
        case frame_error::none:
            return "none";
        case frame_error::parse:
            return "parse";
        case frame_error::checksum:
            return "checksum";
        case frame_error::too_long:
            return "too_long";
    }
    return "unknown";
}

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool is_signed(point_type t) {
    return t == point_type::int16 || t == point_type::int32 || t == point_type::int64;
}
bool is_unsigned(point_type t) {
    return t == point_type::uint16 || t == point_type::uint32 || t == point_type::uint64;
}
bool scaled(const config::point& p) {
    return p.scale != 1.0 || p.offset != 0.0;
}

std::int64_t signed_min(point_type t) {
    if (t == point_type::int16) return std::numeric_limits<std::int16_t>::min();
    if (t == point_type::int32) return std::numeric_limits<std::int32_t>::min();
    return std::numeric_limits<std::int64_t>::min();
}
std::uint64_t type_max(point_type t) {
    switch (t) {
        case point_type::int16:
            return static_cast<std::uint64_t>(std::numeric_limits<std::int16_t>::max());
        case point_type::int32:
            return static_cast<std::uint64_t>(std::numeric_limits<std::int32_t>::max());
        case point_type::int64:
            return static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
        case point_type::uint16:
            return std::numeric_limits<std::uint16_t>::max();
        case point_type::uint32:
            return std::numeric_limits<std::uint32_t>::max();
        default:
            return std::numeric_limits<std::uint64_t>::max();
    }
}

std::optional<ferry::value> scaled_value(double raw, const config::point& p) {
    const double v = raw * p.scale + p.offset;
    if (!std::isfinite(v)) return std::nullopt;
    return v;
}

std::optional<ferry::value> from_signed(std::int64_t v, const config::point& p) {
    if (p.type == point_type::boolean) {
        if (v == 0 || v == 1) return v == 1;
        return std::nullopt;
    }
    if (p.type == point_type::float32 || p.type == point_type::float64)
        return scaled_value(static_cast<double>(v), p);
    if (is_signed(p.type)) {
        if (v < signed_min(p.type) || (v > 0 && static_cast<std::uint64_t>(v) > type_max(p.type)))
            return std::nullopt;
        if (scaled(p)) return scaled_value(static_cast<double>(v), p);
        return v;
    }
    if (is_unsigned(p.type)) {
        if (v < 0 || static_cast<std::uint64_t>(v) > type_max(p.type)) return std::nullopt;
        if (scaled(p)) return scaled_value(static_cast<double>(v), p);
        return static_cast<std::uint64_t>(v);
    }
    return std::to_string(v);
}

std::optional<ferry::value> from_unsigned(std::uint64_t v, const config::point& p) {
    if (v <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        return from_signed(static_cast<std::int64_t>(v), p);
    if (p.type != point_type::uint64) {
        if (p.type == point_type::float32 || p.type == point_type::float64)
            return scaled_value(static_cast<double>(v), p);
        if (p.type == point_type::string) return std::to_string(v);
        return std::nullopt;
    }
    if (scaled(p)) return scaled_value(static_cast<double>(v), p);
    return v;
}

std::optional<ferry::value> from_double(double v, const config::point& p) {
    if (!std::isfinite(v)) return std::nullopt;
    if (p.type == point_type::float64) return scaled_value(v, p);
    if (p.type == point_type::float32) {
        if (std::fabs(v) > static_cast<double>(std::numeric_limits<float>::max()))
            return std::nullopt;
        return scaled_value(v, p);
    }
    // Integers and bool: only whole numbers within range (21.0 is 21; 21.5 is not an int16).
    if (v != std::trunc(v)) return std::nullopt;
    if (v >= -9.2233720368547748e18 && v < 9.2233720368547758e18)
        return from_signed(static_cast<std::int64_t>(v), p);
    if (v >= 0 && v < 1.8446744073709552e19) return from_unsigned(static_cast<std::uint64_t>(v), p);
    return std::nullopt;
}

// a + b + c without operator+ chains (g++ 12 raises a bogus -Wrestrict on those).
std::string cat(std::string_view a, std::string_view b, std::string_view c = {}) {
    std::string out;
    out.reserve(a.size() + b.size() + c.size());
    out.append(a).append(b).append(c);
    return out;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        if (c != b[i]) return false;
    }
    return true;
}

std::optional<ferry::value> parse_bool(std::string_view t) {
    for (auto w : {"1", "true", "on", "yes"})
        if (iequals(t, w)) return true;
    for (auto w : {"0", "false", "off", "no"})
        if (iequals(t, w)) return false;
    return std::nullopt;
}

template <class T>
bool whole(std::string_view t, T& out) {
    const auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
    return ec == std::errc() && ptr == t.data() + t.size();
}

}  // namespace

std::optional<std::string_view> strip_nmea_checksum(std::string_view f) {
    if (f.size() < 3) return std::nullopt;
    const std::size_t star = f.size() - 3;
    if (f[star] != '*') return std::nullopt;
    const int hi = hex_digit(f[star + 1]);
    const int lo = hex_digit(f[star + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    const std::size_t begin = !f.empty() && (f[0] == '$' || f[0] == '!') ? 1 : 0;
    unsigned sum = 0;
    for (std::size_t i = begin; i < star; ++i)
        sum ^= static_cast<unsigned char>(f[i]);
    if (sum != static_cast<unsigned>(hi * 16 + lo)) return std::nullopt;
    return f.substr(0, star);
}

std::optional<ferry::value> convert_text(std::string_view text, const config::point& p) {
    std::string_view t = trim(text);
    if (p.type == point_type::string) return std::string(t);
    if (p.type == point_type::boolean) return parse_bool(t);
    if (t.size() > 1 && t[0] == '+' && t[1] != '-') t.remove_prefix(1);
    if (t.empty()) return std::nullopt;
    if (is_signed(p.type) || is_unsigned(p.type)) {
        if (t[0] == '-') {
            std::int64_t v = 0;
            if (whole(t, v)) return from_signed(v, p);
        } else {
            std::uint64_t v = 0;
            if (whole(t, v)) return from_unsigned(v, p);
        }
    }
    double d = 0;
    if (!whole(t, d)) return std::nullopt;
    return from_double(d, p);
}

namespace {

std::optional<ferry::value> convert_json(const nlohmann::json& v, const config::point& p) {
    switch (v.type()) {
        case nlohmann::json::value_t::string:
            return convert_text(v.get_ref<const std::string&>(), p);
        case nlohmann::json::value_t::boolean:
            if (p.type == point_type::boolean) return v.get<bool>();
            if (p.type == point_type::string) return std::string(v.get<bool>() ? "true" : "false");
            return std::nullopt;
        case nlohmann::json::value_t::number_integer:
            if (p.type == point_type::string) return v.dump();
            return from_signed(v.get<std::int64_t>(), p);
        case nlohmann::json::value_t::number_unsigned:
            if (p.type == point_type::string) return v.dump();
            return from_unsigned(v.get<std::uint64_t>(), p);
        case nlohmann::json::value_t::number_float:
            if (p.type == point_type::string) return v.dump();
            return from_double(v.get<double>(), p);
        default:
            return std::nullopt;  // null, objects and arrays: not a flat value
    }
}

}  // namespace

struct line_parser::impl {
    parse_settings settings;
    std::vector<config::point> points;
    std::unique_ptr<RE2> re;
    std::vector<int> group_point;  // regex group index → point index, -1: not a point
    std::vector<int> csv_point;    // csv column → point index, -1: skipped

    int find(std::string_view name) const {
        for (std::size_t i = 0; i < points.size(); ++i)
            if (points[i].name == name) return static_cast<int>(i);
        return -1;
    }

    bool add(std::string_view text, int index, std::vector<field>& out) const {
        auto v = convert_text(text, points[static_cast<std::size_t>(index)]);
        if (!v) return false;
        out.push_back({static_cast<std::size_t>(index), std::move(*v)});
        return true;
    }

    frame_error regex(std::string_view f, std::vector<field>& out) const {
        thread_local std::vector<re2::StringPiece> groups;
        groups.assign(group_point.size(), re2::StringPiece());
        if (!re->Match(re2::StringPiece(f.data(), f.size()), 0, f.size(), RE2::UNANCHORED,
                       groups.data(), static_cast<int>(groups.size())))
            return frame_error::parse;
        for (std::size_t g = 1; g < groups.size(); ++g) {
            if (group_point[g] < 0 || groups[g].data() == nullptr) continue;
            if (!add(std::string_view(groups[g].data(), groups[g].size()), group_point[g], out))
                return frame_error::parse;
        }
        return frame_error::none;
    }

    frame_error csv(std::string_view f, std::vector<field>& out) const {
        const std::string& sep = settings.separator;
        std::size_t col = 0;
        for (;;) {
            const auto end = f.find(sep);
            const auto cell = f.substr(0, end);
            if (col < csv_point.size() && csv_point[col] >= 0 && !add(cell, csv_point[col], out))
                return frame_error::parse;
            ++col;
            if (end == std::string_view::npos) break;
            f.remove_prefix(end + sep.size());
        }
        // Fewer columns than the field list names: not the line the sensor is known to send.
        return col < csv_point.size() ? frame_error::parse : frame_error::none;
    }

    frame_error json(std::string_view f, std::vector<field>& out) const {
        const auto doc = nlohmann::json::parse(f.begin(), f.end(), nullptr, false);
        if (doc.is_discarded() || !doc.is_object()) return frame_error::parse;
        for (const auto& [key, v] : doc.items()) {
            const int index = find(key);
            if (index < 0) continue;  // other keys of the sensor's object are not points
            auto x = convert_json(v, points[static_cast<std::size_t>(index)]);
            if (!x) return frame_error::parse;
            out.push_back({static_cast<std::size_t>(index), std::move(*x)});
        }
        return frame_error::none;
    }

    frame_error kv(std::string_view f, std::vector<field>& out) const {
        const std::string& sep = settings.separator;
        for (;;) {
            const auto end = f.find(sep);
            const auto token = trim(f.substr(0, end));
            if (!token.empty()) {
                const auto eq = token.find('=');
                if (eq == std::string_view::npos) return frame_error::parse;
                const int index = find(trim(token.substr(0, eq)));
                if (index >= 0 && !add(token.substr(eq + 1), index, out)) return frame_error::parse;
            }
            if (end == std::string_view::npos) break;
            f.remove_prefix(end + sep.size());
        }
        return frame_error::none;
    }

    // The points a frame that failed was meant to carry (parse_details::named). Cold path:
    // only for frames in error.
    void name_points(std::string_view f, std::vector<std::size_t>& named) const {
        auto add = [&](int index) {
            if (index < 0) return;
            const auto i = static_cast<std::size_t>(index);
            if (std::find(named.begin(), named.end(), i) == named.end()) named.push_back(i);
        };
        if (trim(f).empty()) return;  // a blank line between readings is not a reading
        switch (settings.format) {
            case parse_format::regex: {
                std::vector<re2::StringPiece> groups(group_point.size());
                if (!re->Match(re2::StringPiece(f.data(), f.size()), 0, f.size(), RE2::UNANCHORED,
                               groups.data(), static_cast<int>(groups.size())))
                    return;
                for (std::size_t g = 1; g < groups.size(); ++g)
                    if (groups[g].data() != nullptr) add(group_point[g]);
                return;
            }
            case parse_format::csv:
                for (int p : csv_point)
                    add(p);
                return;
            case parse_format::json: {
                const auto doc = nlohmann::json::parse(f.begin(), f.end(), nullptr, false);
                if (doc.is_discarded() || !doc.is_object()) return;
                for (const auto& item : doc.items())
                    add(find(item.key()));
                return;
            }
            case parse_format::kv:
                for (;;) {
                    const auto end = f.find(settings.separator);
                    const auto token = trim(f.substr(0, end));
                    const auto eq = token.find('=');
                    if (eq != std::string_view::npos) add(find(trim(token.substr(0, eq))));
                    if (end == std::string_view::npos) break;
                    f.remove_prefix(end + settings.separator.size());
                }
                return;
        }
    }
};

line_parser::line_parser(const parse_settings& parse, std::vector<config::point> points)
    : impl_(std::make_unique<impl>()) {
    impl_->settings = parse;
    impl_->points = std::move(points);
    auto& s = impl_->settings;
    if (s.format == parse_format::csv && s.separator.empty()) s.separator.assign(1, ',');
    if (s.format == parse_format::kv && s.separator.empty()) s.separator.assign(1, ' ');
    if (s.format == parse_format::regex) {
        RE2::Options opts;
        opts.set_log_errors(false);
        impl_->re = std::make_unique<RE2>(to_re2_syntax(s.regex), opts);
        if (!impl_->re->ok())
            throw std::invalid_argument(cat("invalid regex: ", impl_->re->error()));
        impl_->group_point.assign(
            static_cast<std::size_t>(impl_->re->NumberOfCapturingGroups()) + 1, -1);
        for (const auto& [name, index] : impl_->re->NamedCapturingGroups()) {
            const int p = impl_->find(name);
            if (p < 0) throw std::invalid_argument(cat("named group '", name, "' is not a point"));
            impl_->group_point[static_cast<std::size_t>(index)] = p;
        }
    }
    if (s.format == parse_format::csv) {
        for (const auto& name : s.csv) {
            const int p = name.empty() ? -1 : impl_->find(name);
            if (!name.empty() && p < 0)
                throw std::invalid_argument(cat("csv column '", name, "' is not a point"));
            impl_->csv_point.push_back(p);
        }
    }
}

line_parser::~line_parser() = default;
line_parser::line_parser(line_parser&&) noexcept = default;
line_parser& line_parser::operator=(line_parser&&) noexcept = default;

const std::vector<config::point>& line_parser::points() const {
    return impl_->points;
}

frame_error line_parser::parse(std::string_view frame, std::vector<field>& out,
                               parse_details* details) const {
    out.clear();
    if (details) {
        details->repaired = 0;
        details->named.clear();
    }
    if (!impl_->settings.checksum.empty()) {
        const auto body = strip_nmea_checksum(frame);
        if (!body) return frame_error::checksum;
        frame = *body;
    }
    // JSON is repaired before parsing: a strict parser rejects ill-formed UTF-8 outright, and
    // one stray byte in a name must not cost the frame's other values.
    std::size_t repaired = 0;
    std::string repaired_frame;
    if (impl_->settings.format == parse_format::json && !utf8::valid(frame)) {
        repaired = utf8::append_repaired(repaired_frame, frame);
        frame = repaired_frame;
    }
    frame_error r = frame_error::parse;
    switch (impl_->settings.format) {
        case parse_format::regex:
            r = impl_->regex(frame, out);
            break;
        case parse_format::csv:
            r = impl_->csv(frame, out);
            break;
        case parse_format::json:
            r = impl_->json(frame, out);
            break;
        case parse_format::kv:
            r = impl_->kv(frame, out);
            break;
    }
    // A frame that names none of the points (an empty line, `{}`, a banner) is not a reading.
    if (r == frame_error::none && out.empty()) r = frame_error::parse;
    if (r != frame_error::none) {
        out.clear();
        if (details) impl_->name_points(frame, details->named);
        return r;
    }
    for (auto& f : out) {
        if (auto* text = std::get_if<std::string>(&f.value)) repaired += utf8::repair(*text);
    }
    if (details) details->repaired = repaired;
    return r;
}

}  // namespace ferry::drivers::serial
