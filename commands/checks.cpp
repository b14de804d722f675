// Checks of a downlink command (see checks.hpp): a streaming, bounded payload parser, exact
// decimal arithmetic for "a whole number of raw steps", the age check and the token bucket.
#include "commands/checks.hpp"

#include <boost/multiprecision/cpp_int.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "commands/internal.hpp"
#include "core/json.hpp"

namespace ferry::commands {

namespace {

std::string number_text(double d) {
    return text_of(ferry::value(d));
}

bool is_integer_type(config::point_type t) {
    switch (t) {
        case config::point_type::int16:
        case config::point_type::uint16:
        case config::point_type::int32:
        case config::point_type::uint32:
        case config::point_type::int64:
        case config::point_type::uint64:
            return true;
        default:
            return false;
    }
}

}  // namespace

std::string_view to_string(result r) {
    static constexpr std::string_view names[] = {
        "ok", "rejected", "stale", "rate_limited", "duplicate", "device_error", "disabled"};
    return names[static_cast<std::size_t>(r)];
}

std::string result_json(const std::optional<std::string>& id, bool ok, std::string_view error) {
    std::string out = "{\"id\":";
    if (id)
        json::append_string(out, *id);
    else
        out += "null";
    out += ok ? ",\"ok\":true" : ",\"ok\":false";
    if (!ok) {
        out += ",\"error\":";
        json::append_string(out, error);
    }
    out += '}';
    return out;
}

// ---- Checks ------------------------------------------------------------------------------

namespace {

using json_t = nlohmann::json;
constexpr const char* k_not_integer = "must be an integer (Unix time in milliseconds)";
constexpr const char* k_not_scalar = "must be a number, true/false or a string";

// Streams a payload through nlohmann's SAX interface: no document is built, nested values are
// skipped (and refused), parsing stops past k_max_depth levels, so a hostile payload costs
// time linear in its size and no memory beyond its largest string. `id_only` (find_id) stops
// as soon as the id is known.
struct payload_reader {
    explicit payload_reader(payload& p, bool only_id = false) : out(p), id_only(only_id) {}
    payload& out;
    bool id_only = false;
    std::size_t depth = 0;
    std::string member;  // the current top-level key
    bool seen_id = false, seen_value = false, seen_ts = false;
    std::string unknown_key, duplicate_key, value_error, ts_error;
    bool syntax_error = false, not_object = false, found = false;

    // A scalar at depth 1 is a member of the top-level object; deeper ones are only skipped.
    template <class F>
    bool scalar(F&& take) {
        if (depth == 0) {
            not_object = true;
            return false;
        }
        if (depth == 1) take();
        return !found;
    }
    bool null() {
        return scalar([&] {
            if (member == "value") value_error = k_not_scalar;
            if (member == "ts") ts_error = k_not_integer;
        });
    }
    bool boolean(bool b) {
        return scalar([&] {
            if (member == "value") out.value = b;
            if (member == "ts") ts_error = k_not_integer;
        });
    }
    bool number_integer(json_t::number_integer_t n) {
        return scalar([&] {
            if (member == "value") {
                out.value = static_cast<std::int64_t>(n);
                out.decimal = std::to_string(n);
            }
            if (member == "ts") out.ts = static_cast<std::int64_t>(n);
        });
    }
    bool number_unsigned(json_t::number_unsigned_t n) {
        return scalar([&] {
            if (member == "value") {
                out.value = static_cast<std::uint64_t>(n);
                out.decimal = std::to_string(n);
            }
            if (member == "ts") {
                if (n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
                    ts_error = "is out of range (Unix time in milliseconds)";
                else
                    out.ts = static_cast<std::int64_t>(n);
            }
        });
    }
    bool number_float(json_t::number_float_t d, const std::string& text) {
        return scalar([&] {
            if (member == "value") {
                if (std::isfinite(d)) {
                    out.value = static_cast<double>(d);
                    out.decimal = text;
                } else {
                    value_error = "is out of range";
                }
            }
            if (member == "ts") ts_error = k_not_integer;
        });
    }
    bool string(std::string& s) {
        return scalar([&] {
            if (member == "id") {
                out.id = std::move(s);
                found = id_only;
            } else if (member == "value")
                out.value = std::move(s);
            if (member == "ts") ts_error = k_not_integer;
        });
    }
    bool binary(json_t::binary_t&) { return false; }  // never in JSON text
    bool nested() {
        if (depth == 0) {  // a top-level array
            not_object = true;
            return false;
        }
        if (depth == 1) {
            if (member == "value") value_error = k_not_scalar;
            if (member == "ts") ts_error = k_not_integer;
        }
        if (++depth > k_max_depth) {
            out.too_deep = true;
            return false;
        }
        return true;
    }
    bool start_object(std::size_t) {
        if (depth != 0) return nested();
        depth = 1;
        return true;
    }
    bool start_array(std::size_t) { return nested(); }
    bool end_object() {
        --depth;
        return true;
    }
    bool end_array() {
        --depth;
        return true;
    }
    bool key(std::string& k) {
        if (depth != 1) return true;
        bool* seen = k == "id"      ? &seen_id
                     : k == "value" ? &seen_value
                     : k == "ts"    ? &seen_ts
                                    : nullptr;
        if (!seen) {
            if (unknown_key.empty()) unknown_key = k.substr(0, k_max_id);
        } else if (*seen) {
            if (duplicate_key.empty()) duplicate_key = k;
        }
        if (seen) *seen = true;
        member = std::move(k);
        return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) {
        syntax_error = true;
        return false;
    }
};

}  // namespace

std::optional<std::string> find_id(std::string_view text) {
    payload p;
    payload_reader r(p, true);
    const auto window = text.substr(0, k_id_window);
    json_t::sax_parse(window.begin(), window.end(), &r, json_t::input_format_t::json, false);
    if (!r.found || p.id->empty() || p.id->size() > k_max_id) return std::nullopt;
    return p.id;
}

payload parse_payload(std::string_view text, std::size_t max_bytes) {
    payload p;
    if (text.size() > max_bytes) {
        p.id = find_id(text);
        p.too_large = true;
        p.error = "payload too large: " + std::to_string(text.size()) + " bytes, more than " +
                  "commands.max_payload (" + std::to_string(max_bytes) + " bytes)";
        return p;
    }
    payload_reader r(p);
    json_t::sax_parse(text.begin(), text.end(), &r, json_t::input_format_t::json, true);
    // A string id kept by the reader is only an id if it was the one and only "id" member.
    if (p.id && r.duplicate_key == "id") p.id.reset();
    if (p.too_deep) {
        p.error =
            "malformed payload: nested deeper than " + std::to_string(k_max_depth) + " levels";
    } else if (r.syntax_error) {
        p.error = "malformed payload: not valid JSON";
    } else if (r.not_object) {
        p.error = "malformed payload: not a JSON object";
    } else if (!p.id || p.id->empty()) {
        p.id.reset();
        p.error = "malformed payload: \"id\" must be a non-empty string";
    } else if (p.id->size() > k_max_id) {
        p.error = "malformed payload: \"id\" is longer than " + std::to_string(k_max_id) + " bytes";
    } else if (!r.unknown_key.empty()) {
        p.error =
            "malformed payload: unknown key \"" + r.unknown_key + "\" (allowed: id, value, ts)";
    } else if (!r.duplicate_key.empty()) {
        p.error = "malformed payload: \"" + r.duplicate_key + "\" is given twice";
    } else if (!r.seen_value) {
        p.error = "malformed payload: \"value\" is missing";
    } else if (!r.value_error.empty()) {
        p.error = "malformed payload: \"value\" " + r.value_error;
    } else if (!r.ts_error.empty()) {
        p.error = "malformed payload: \"ts\" " + r.ts_error;
    }
    if (!p.error.empty()) {
        p.value = ferry::value();
        p.decimal.clear();
        p.ts.reset();
    }
    return p;
}

namespace {

// 128-bit integers on every target (armhf has no __int128): arithmetic that would overflow
// throws std::overflow_error instead of wrapping.
using wide = boost::multiprecision::checked_int128_t;

// A decimal number: m × 10^e, exactly (m has at most 36 significant digits).
struct decimal {
    wide m = 0;
    int e = 0;
};

// 10^k into x; false when it does not fit (x is then unchanged).
bool scale_up(wide& x, int k) {
    try {
        wide y = x;
        for (; k > 0; --k)
            y *= 10;
        x = y;
        return true;
    } catch (const std::overflow_error&) {
        return false;
    }
}

// JSON number text ("-12.5e3") or std::to_chars output; nullopt when it has more than 36
// significant digits or an exponent beyond ±10000 (no command needs either).
std::optional<decimal> parse_decimal(std::string_view s) {
    decimal d;
    bool neg = false;
    std::size_t i = 0;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
    int digits = 0, frac = 0, zeros = 0;  // zeros: trailing ones not yet put into m
    bool dot = false, any = false;
    for (; i < s.size(); ++i) {
        const char c = s[i];
        if (c == '.' && !dot) {
            dot = true;
            continue;
        }
        if (c < '0' || c > '9') break;
        any = true;
        if (dot) ++frac;
        if (c == '0') {
            ++zeros;
            continue;
        }
        if (digits > 0 && digits + zeros + 1 > 36) return std::nullopt;
        if (digits > 0) digits += zeros;
        if (!scale_up(d.m, digits > 0 ? zeros : 0)) return std::nullopt;
        zeros = 0;
        d.m = d.m * 10 + (c - '0');
        ++digits;
    }
    if (!any) return std::nullopt;
    long exp = 0;
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
        ++i;
        bool eneg = false;
        if (i < s.size() && (s[i] == '-' || s[i] == '+')) eneg = s[i++] == '-';
        if (i == s.size()) return std::nullopt;
        for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i)
            exp = std::min<long>(exp * 10 + (s[i] - '0'), 100000);
        if (eneg) exp = -exp;
    }
    if (i != s.size()) return std::nullopt;
    if (d.m == 0) return decimal{};
    if (exp > 10000 || exp < -10000) return std::nullopt;
    d.e = static_cast<int>(exp) - frac + zeros;  // trailing zeros stay out of m
    if (neg) d.m = -d.m;
    return d;
}

// The shortest decimal text that reads back as `d` ("0.001", not 0.001000000000000000021).
std::string shortest(double d) {
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, d);
    return std::string(buf, r.ptr);
}

// (value - offset) / scale in exact decimal arithmetic: the raw integer, or why there is none.
struct exact_raw {
    std::optional<wide> raw;  // set when whole
    bool whole = false;
    bool huge = false;       // |raw| beyond any 64-bit type
    bool unchecked = false;  // too many digits to compute exactly
};
exact_raw raw_of(std::string_view value, double scale, double offset) {
    exact_raw out;
    const auto v = parse_decimal(value);
    const auto o = parse_decimal(shortest(offset));
    const auto s = parse_decimal(shortest(scale));
    if (!v || !o || !s || s->m == 0) {
        out.unchecked = true;
        return out;
    }
    const int e = std::min(v->e, o->e);
    wide vm = v->m, om = o->m, n = 0;
    if (!scale_up(vm, v->e - e) || !scale_up(om, o->e - e)) {
        out.unchecked = true;
        return out;
    }
    try {
        n = vm - om;
    } catch (const std::overflow_error&) {
        out.unchecked = true;
        return out;
    }
    if (n == 0) {
        out.whole = true;
        out.raw = 0;
        return out;
    }
    wide num = n, den = s->m;
    if (e >= s->e) {
        if (!scale_up(num, e - s->e)) {
            // |raw| = |num| / |scale's digits| > 3.4e38 / 1e17: no 64-bit type holds it.
            out.huge = true;
            return out;
        }
    } else if (!scale_up(den, s->e - e)) {
        return out;  // |den| > |num| (both < 2^128), n != 0: a fraction of a step
    }
    if (num % den != 0) return out;
    out.whole = true;
    out.raw = num / den;
    return out;
}

}  // namespace

std::string check_value(const config::point& p, const ferry::value& v, std::string_view decimal) {
    const bool is_bool = std::holds_alternative<bool>(v);
    const bool is_text = std::holds_alternative<std::string>(v);
    const std::string type(config::type_name(p.type));
    // The driver may name the point's kind better than its type does (a Modbus coil).
    const auto kind = p.settings.kind();
    const std::string what = kind.empty() ? "type " + type : std::string(kind);
    if (p.type == config::point_type::boolean) {
        if (is_bool) return {};
        return "value must be true or false (" + what + ")";
    }
    if (p.type == config::point_type::string) {
        if (is_text) return {};
        return "value must be a string (" + what + ")";
    }
    if (is_bool || is_text) return "value must be a number (" + what + ")";
    if (!is_integer_type(p.type)) return {};
    // A double holds every integer only up to 2^53.
    constexpr double exact = 9007199254740992.0;
    constexpr std::int64_t exact_int = std::int64_t{1} << 53;
    const auto* i = std::get_if<std::int64_t>(&v);
    const auto* u = std::get_if<std::uint64_t>(&v);
    const double d = *as_double(v);
    if ((i && (*i > exact_int || *i < -exact_int)) ||
        (u && *u > static_cast<std::uint64_t>(exact_int)) || std::fabs(d) > exact)
        return text_of(v) + " cannot be written exactly (beyond 2^53 in magnitude)";
    const double raw = (d - p.offset) / p.scale;
    if (!std::isfinite(raw)) return {};  // the writer's range check names it
    // Whole raw steps, exactly: on the value as sent (a double would round 2000000.0004 / 0.001
    // to 2000000000.4000001, which no relative tolerance can tell from a rounding error at
    // that size) and on scale/offset as written in the config.
    const std::string sent = decimal.empty() ? shortest(d) : std::string(decimal);
    const auto x = raw_of(sent, p.scale, p.offset);
    auto not_whole = [&](std::string_view why) {
        return sent.substr(0, k_logged_value) + " " + std::string(why) + " for type " + type +
               ": (value - offset) / scale = " + number_text(raw) + " (scale " +
               number_text(p.scale) + ", offset " + number_text(p.offset) + ")";
    };
    if (x.huge) return {};  // the writer's range check names it
    if (x.unchecked) return not_whole("has too many digits to be checked exactly");
    if (!x.whole) return not_whole("is not a whole number of raw steps");
    // The writer rounds the double (value - offset) / scale: it must land on the same step.
    if (static_cast<double>(*x.raw) != std::nearbyint(raw))
        return not_whole("cannot be written exactly (too close to the double's precision)");
    return {};
}

std::string check_age(std::optional<std::int64_t> ts, std::int64_t now_ms,
                      std::chrono::milliseconds max_age, bool* future) {
    if (future) *future = false;
    if (!ts) return {};
    // In 128 bits: now_ms - ts overflows int64 for a ts near ±2^63.
    const wide age = wide(now_ms) - wide(*ts);
    const wide limit = max_age.count();
    auto text = [](const wide& x) { return x.str(); };
    if (age > limit) {
        return "stale: \"ts\" is " + text(age) + " ms old, more than commands.max_age (" +
               std::to_string(max_age.count()) + " ms)";
    }
    if (-age > limit) {
        if (future) *future = true;
        return "\"ts\" is " + text(-age) +
               " ms ahead of this gateway's clock, more than "
               "commands.max_age (" +
               std::to_string(max_age.count()) + " ms)";
    }
    return {};
}

token_bucket::token_bucket(std::uint32_t capacity, std::chrono::milliseconds period)
    : capacity_(static_cast<double>(std::max<std::uint32_t>(capacity, 1))),
      per_ms_(capacity_ / static_cast<double>(std::max<std::int64_t>(period.count(), 1))),
      tokens_(capacity_) {}

bool token_bucket::take(std::chrono::steady_clock::time_point now) {
    if (last_ && now > *last_) {
        const auto ms = std::chrono::duration<double, std::milli>(now - *last_).count();
        tokens_ = std::min(capacity_, tokens_ + ms * per_ms_);
    }
    if (!last_ || now > *last_) last_ = now;
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
}

}  // namespace ferry::commands
