// Downlink commands (see commands.hpp for what is promised).
//
// Design note: the order of the checks. A malformed payload is answered first (with the id
// when there is one); then a gateway with commands disabled says so; then a repeated id is
// answered from the store before anything else is looked at, so a retry of a command that
// was written gets its original answer even if the config or the clock changed since. Only
// then device, its driver, point, writable, age, value, and last the rate limit, so that refused
// commands do not use up the device's budget. The id is recorded (fsynced) before the write is
// queued: a crash after that point can leave the id "in progress", never a second write.
#include "commands/commands.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/registry.h>
#include <boost/multiprecision/cpp_int.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "core/json.hpp"
#include "core/log.hpp"
#include "core/sqlite.hpp"

namespace ferry::commands {

namespace {

constexpr std::string_view k_component = "commands";
constexpr std::size_t k_max_id = 256;       // bytes
constexpr std::size_t k_queue = 1024;       // messages waiting for the service thread
constexpr std::size_t k_logged_value = 64;  // bytes of a value shown in a log line
// Repeats of an id being written that wait for its result; more are answered at once.
constexpr std::size_t k_max_waiting = 16;
// Writes queued or on the wire per device: a hanging device would otherwise collect every
// command the rate limit lets through (rate_limit per second, drained one per timeout).
constexpr std::size_t k_max_writing = 8;
constexpr const char* k_disabled =
    "commands are disabled in this gateway's config (commands.enabled: false)";

std::int64_t unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string text_of(const ferry::value& v) {
    std::string out;
    json::append_value(out, v);
    return out;
}

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
            }
            if (member == "value") out.value = std::move(s);
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
    if (p.tbl == config::table::coil || p.type == config::point_type::boolean) {
        if (is_bool) return {};
        return std::string("value must be true or false (") +
               (p.tbl == config::table::coil ? "a coil" : "type bool") + ")";
    }
    if (p.type == config::point_type::string) {
        if (is_text) return {};
        return "value must be a string (type string)";
    }
    if (is_bool || is_text) return "value must be a number (type " + type + ")";
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

// ---- The store ---------------------------------------------------------------------------
//
// commands(id TEXT PRIMARY KEY, device, point, state, error, at_ms): state 0 = in progress,
// 1 = ok, 2 = failed. WAL with synchronous=FULL: every commit is fsynced, so an id recorded
// "in progress" is on disk before its write is queued.

namespace {

using sqlite::statement;

enum class state : int { in_progress = 0, ok = 1, failed = 2 };

}  // namespace

// Ages are measured on the store's own clock: Ferry's accumulated running time in ms
// (`meta.runtime_ms`, persisted with every recorded id and at close, plus the monotonic time
// since this open), never the wall clock. A wall clock that NTP steps by hours (an RTC-less
// box) therefore neither expires an id early (a step forward) nor keeps rows recorded while
// it was behind from ageing (a step back): a retried id is never written twice (issue 13).
// Time while Ferry is not running does not count, so an id may be kept longer than `ttl` in
// wall time, never shorter; a kill -9 loses at most the running time since the last recorded
// id (ids then live longer). `at_ms` keeps the wall-clock time of the write, for people.
struct store::impl {
    std::string path;
    options opt;
    sqlite3* db = nullptr;
    statement find_st, insert_st, finish_st, forget_st, evict_age_st, evict_count_st, count_st,
        runtime_st;
    std::int64_t runtime_base = 0;  // meta.runtime_ms at open
    std::chrono::steady_clock::time_point opened = std::chrono::steady_clock::now();

    std::int64_t now() const {
        return runtime_base + std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::steady_clock::now() - opened)
                                  .count();
    }

    // "<path>: <what>: <sqlite3_errmsg>" (sqlite::error is a std::runtime_error).
    [[noreturn]] void fail(int rc, const std::string& what) const {
        throw sqlite::error(db, rc, path + ": " + what);
    }
    void exec(const char* sql) {
        if (const int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr); rc != SQLITE_OK)
            fail(rc, sql);
    }
    void prepare(statement& st, const std::string& sql) {
        if (const int rc = st.prepare(db, sql); rc != SQLITE_OK)
            fail(rc, "not a Ferry command store");
    }
    // Runs a statement to completion; the caller bound its parameters.
    void run(statement& st, const char* what) {
        if (const int rc = sqlite::step_done(st); rc != SQLITE_OK) fail(rc, what);
    }
    // Copied: the text need not outlive the call.
    void bind(statement& st, int i, std::string_view text) {
        sqlite::bind_text(st.get(), i, text, SQLITE_TRANSIENT);
    }

    impl(std::string p, options o) : path(std::move(p)), opt(o) {
        if (sqlite3_open_v2(path.c_str(), &db,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                            nullptr) != SQLITE_OK) {
            const std::string why = db ? sqlite3_errmsg(db) : "out of memory";
            sqlite3_close(db);
            db = nullptr;
            throw std::runtime_error(path + ": cannot open: " + why);
        }
        try {
            sqlite3_busy_timeout(db, 1000);
            exec("PRAGMA journal_mode=WAL");
            exec("PRAGMA synchronous=FULL");
            exec(
                "CREATE TABLE IF NOT EXISTS commands(id TEXT PRIMARY KEY, device TEXT NOT NULL, "
                "point TEXT NOT NULL, state INTEGER NOT NULL, error TEXT NOT NULL DEFAULT '', "
                "at_ms INTEGER NOT NULL)");
            // Version 1 files aged ids by at_ms (the wall clock); their ids start at running
            // time 0 here, so they are kept for a full ttl of running time from now on.
            if (!has_column("commands", "run_ms"))
                exec("ALTER TABLE commands ADD COLUMN run_ms INTEGER NOT NULL DEFAULT 0");
            exec("CREATE INDEX IF NOT EXISTS commands_run ON commands(run_ms)");
            exec("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)");
            prepare(find_st, "SELECT state, error, run_ms FROM commands WHERE id = ?1");
            prepare(insert_st,
                    "INSERT OR REPLACE INTO commands(id, device, point, state, error, at_ms, "
                    "run_ms) VALUES (?1, ?2, ?3, 0, '', ?4, ?5)");
            prepare(finish_st, "UPDATE commands SET state = ?2, error = ?3 WHERE id = ?1");
            prepare(forget_st, "DELETE FROM commands WHERE id = ?1");
            prepare(evict_age_st, "DELETE FROM commands WHERE run_ms < ?1");
            // Keeps the newest ?1 ids.
            prepare(evict_count_st,
                    "DELETE FROM commands WHERE rowid IN (SELECT rowid FROM commands ORDER BY "
                    "run_ms DESC, rowid DESC LIMIT -1 OFFSET ?1)");
            // Never backwards: a caller-supplied clock (tests) may be ahead of ours.
            prepare(runtime_st,
                    "INSERT INTO meta(key, value) VALUES ('runtime_ms', ?1) ON CONFLICT(key) "
                    "DO UPDATE SET value = max(value, excluded.value)");
            {
                statement base;
                prepare(base,
                        "SELECT max(coalesce((SELECT value FROM meta WHERE key = "
                        "'runtime_ms'), 0), coalesce((SELECT max(run_ms) FROM commands), 0))");
                if (sqlite3_step(base.get()) == SQLITE_ROW)
                    runtime_base = sqlite3_column_int64(base.get(), 0);
            }
            prepare(count_st, "SELECT count(*) FROM commands");
            // Ids a previous run left in progress: ferry stopped between recording and
            // answering; whether the device took the write is unknown.
            statement recover;
            prepare(recover, "UPDATE commands SET state = 2, error = ?1 WHERE state = 0");
            bind(recover, 1, k_unknown_outcome);
            run(recover, "recovering ids in progress");
            const int n = sqlite3_changes(db);
            if (n > 0) {
                log::warn(
                    k_component, "commands were in progress when ferry stopped",
                    {{"count", std::to_string(n)}, {"answer", std::string(k_unknown_outcome)}});
            }
        } catch (...) {
            close();
            throw;
        }
    }
    bool has_column(const char* table, const char* column) {
        statement st;
        prepare(st, "SELECT 1 FROM pragma_table_info('" + std::string(table) + "') WHERE name = '" +
                        column + "'");
        return sqlite3_step(st.get()) == SQLITE_ROW;
    }
    void store_runtime(std::int64_t ms) {
        sqlite3_bind_int64(runtime_st.get(), 1, ms);
        run(runtime_st, "recording the running time");
    }
    void close() {
        if (db && runtime_st.get()) {
            try {
                store_runtime(now());  // the running time of this run counts at the next
            } catch (const std::exception&) {
                // A store that cannot write any more: ids live longer, nothing worse.
            }
        }
        for (auto* st : {&find_st, &insert_st, &finish_st, &forget_st, &evict_age_st,
                         &evict_count_st, &count_st, &runtime_st})
            st->finalize();
        sqlite3_close(db);
        db = nullptr;
    }
    ~impl() { close(); }
};

store::store(const std::string& path, options opt) : impl_(std::make_unique<impl>(path, opt)) {}
store::~store() = default;

std::optional<store::entry> store::find(const std::string& id, std::int64_t now_ms) {
    sqlite::use st(impl_->find_st);
    impl_->bind(impl_->find_st, 1, id);
    std::optional<entry> out;
    const int rc = sqlite3_step(*st);
    if (rc == SQLITE_ROW && sqlite3_column_int64(*st, 2) >= now_ms - impl_->opt.ttl.count()) {
        const auto s = static_cast<state>(sqlite3_column_int(*st, 0));
        out = entry{s == state::in_progress, s == state::ok,
                    std::string(sqlite::column_text(*st, 1))};
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) impl_->fail(rc, "looking up a command id");
    return out;
}

void store::begin(const std::string& id, const std::string& device, const std::string& point,
                  std::int64_t now_ms) {
    impl_->exec("BEGIN IMMEDIATE");
    try {
        sqlite3_bind_int64(impl_->evict_age_st.get(), 1, now_ms - impl_->opt.ttl.count());
        impl_->run(impl_->evict_age_st, "evicting expired ids");
        const auto keep = static_cast<std::int64_t>(std::max<std::size_t>(impl_->opt.max_ids, 1));
        sqlite3_bind_int64(impl_->evict_count_st.get(), 1, keep - 1);  // room for this one
        impl_->run(impl_->evict_count_st, "evicting the oldest ids");
        impl_->bind(impl_->insert_st, 1, id);
        impl_->bind(impl_->insert_st, 2, device);
        impl_->bind(impl_->insert_st, 3, point);
        sqlite3_bind_int64(impl_->insert_st.get(), 4,
                           std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count());
        sqlite3_bind_int64(impl_->insert_st.get(), 5, now_ms);
        impl_->run(impl_->insert_st, "recording a command id");
        impl_->store_runtime(now_ms);
        impl_->exec("COMMIT");
    } catch (...) {
        sqlite3_exec(impl_->db, "ROLLBACK", nullptr, nullptr, nullptr);
        throw;
    }
}

void store::finish(const std::string& id, bool ok, const std::string& error) {
    impl_->bind(impl_->finish_st, 1, id);
    sqlite3_bind_int(impl_->finish_st.get(), 2, static_cast<int>(ok ? state::ok : state::failed));
    impl_->bind(impl_->finish_st, 3, error);
    impl_->run(impl_->finish_st, "recording a command's result");
}

void store::forget(const std::string& id) {
    impl_->bind(impl_->forget_st, 1, id);
    impl_->run(impl_->forget_st, "forgetting a command id");
}

std::int64_t store::now() const {
    return impl_->now();
}

std::size_t store::size() {
    sqlite::use st(impl_->count_st);
    std::size_t n = 0;
    if (sqlite3_step(*st) == SQLITE_ROW) n = static_cast<std::size_t>(sqlite3_column_int64(*st, 0));
    return n;
}

// ---- The service -------------------------------------------------------------------------

struct service::impl {
    config::commands_section settings;
    std::string prefix;  // ferry/{gateway}/cmd/
    std::string filter;
    std::string store_path;
    mutable std::mutex dmu;  // guards devices (a config reload replaces them)
    std::vector<config::device> devices;
    writer_for writers;
    publish_fn publish;
    std::array<prometheus::Counter*, k_results> counters{};
    std::array<std::atomic<std::uint64_t>, k_results> counted{};
    // ferry_input_rejected_total{input="command",reason}: refused by a budget.
    prometheus::Counter* too_large = nullptr;
    prometheus::Counter* too_deep = nullptr;
    prometheus::Counter* too_many_waiting = nullptr;
    prometheus::Counter* queue_full = nullptr;
    prometheus::Counter* device_busy = nullptr;

    std::mutex mu;  // guards db, buckets, in_flight
    std::unique_ptr<store> db;
    std::string store_error;
    std::map<std::string, token_bucket> buckets;
    // Ids being written, with the result topics of repeats that arrived meanwhile.
    std::map<std::string, std::vector<std::string>> in_flight;
    std::map<std::string, std::size_t> writing;  // per device: writes not finished yet

    std::mutex qmu;
    std::condition_variable qcv;
    struct message {
        std::string topic;
        std::string payload;  // only its first k_id_window bytes when over max_payload
        bool retained = false;
        std::size_t size = 0;  // of the payload as it arrived
    };
    std::deque<message> queue;
    bool stopping = false;
    std::thread thread;

    void count(result r) {
        counters[static_cast<std::size_t>(r)]->Increment();
        ++counted[static_cast<std::size_t>(r)];
    }

    // One log line and one count per answer.
    void answer(const std::string& topic, const std::optional<std::string>& id, result r, bool ok,
                const std::string& error, const std::string& device, const std::string& point,
                const std::string& value) {
        publish(topic, result_json(id, ok, error));
        count(r);
        const bool wrote = r == result::ok || r == result::device_error;
        auto level =
            ok || r == result::duplicate ? config::log_level::info : config::log_level::warn;
        log::write(level, k_component, wrote ? "write" : "command answered without a write",
                   {{"id", id ? id->substr(0, k_max_id) : std::string("null")},
                    {"device", device},
                    {"point", point},
                    {"value", value.substr(0, k_logged_value)},
                    {"result", std::string(to_string(r))},
                    {"error", error}});
    }

    // A copy: a reload may replace the devices while this command is checked and written.
    std::optional<config::device> find_device(const std::string& id) const {
        std::lock_guard lock(dmu);
        for (const auto& d : devices) {
            if (d.id == id) return d;
        }
        return std::nullopt;
    }

    void handle(const std::string& topic, const std::string& text, bool retained, std::size_t size);
    void finish(const std::string& id, const std::string& device, const std::string& point,
                const std::string& value, const std::string& topic, const write_outcome& o);
    void loop();
};

void service::impl::handle(const std::string& topic, const std::string& text, bool retained,
                           std::size_t size) {
    // ferry/{gateway}/cmd/{device}/{tag}/set
    constexpr std::string_view suffix = "/set";
    if (topic.size() <= prefix.size() + suffix.size() || topic.compare(0, prefix.size(), prefix) ||
        topic.compare(topic.size() - suffix.size(), suffix.size(), suffix))
        return;
    const auto middle = topic.substr(prefix.size(), topic.size() - prefix.size() - suffix.size());
    const auto slash = middle.find('/');
    if (slash == std::string::npos || middle.find('/', slash + 1) != std::string::npos) return;
    const auto device = middle.substr(0, slash);
    const auto point = middle.substr(slash + 1);
    const auto reply_to = prefix + middle + "/result";

    // The budget first: a payload over max_payload is never parsed (on_message kept only its
    // first k_id_window bytes), only searched for an id to answer. With commands disabled the
    // answer needs nothing but the id, so nothing else is parsed either.
    payload p;
    if (size > settings.max_payload) {
        p.id = find_id(text);
        p.error = "payload too large: " + std::to_string(size) +
                  " bytes, more than commands.max_payload (" +
                  std::to_string(settings.max_payload) + " bytes)";
        too_large->Increment();
        if (!p.id) {
            // No id to answer to: counted and logged only.
            log::warn(k_component, "command payload too large; dropped without an answer",
                      {{"topic", topic}, {"bytes", std::to_string(size)}});
            return;
        }
    } else if (!settings.enabled) {
        p.id = find_id(text);
        p.error = k_disabled;
    } else {
        p = parse_payload(text, settings.max_payload);
        if (p.too_deep) too_deep->Increment();
    }
    const auto value = p.error.empty() ? text_of(p.value) : std::string();
    auto refuse = [&](result r, const std::string& error) {
        answer(reply_to, p.id, r, false, error, device, point, value);
    };
    if (!p.error.empty())
        return refuse(p.error == k_disabled ? result::disabled : result::rejected, p.error);
    if (retained) {
        return refuse(result::rejected,
                      "a retained command is not executed (the broker would replay it at every "
                      "reconnect); publish commands with retain false");
    }
    const auto& id = *p.id;
    const auto now_ms = unix_ms();  // for "ts" (max_age): the operator's wall clock

    std::unique_lock lock(mu);
    if (!db) return refuse(result::rejected, store_error);
    if (auto it = in_flight.find(id); it != in_flight.end()) {
        // Answered together with the first when its write completes; a bounded number of
        // them (a sender repeating an id while a write hangs would grow this without end).
        if (it->second.size() < k_max_waiting) {
            it->second.push_back(reply_to);
            count(result::duplicate);
            return;
        }
        too_many_waiting->Increment();
        answer(reply_to, p.id, result::duplicate, false,
               "a write with this id is in progress; its result is not known yet (send the id "
               "again later)",
               device, point, value);
        return;
    }
    std::optional<store::entry> seen;
    try {
        seen = db->find(id, db->now());
    } catch (const std::exception& e) {
        return refuse(
            result::rejected,
            std::string("cannot read the command-id store; nothing was written: ") + e.what());
    }
    if (seen) {
        // Still "in progress" here means the result could not be stored: unknown as well.
        const auto error = seen->in_progress ? std::string(store::k_unknown_outcome) : seen->error;
        answer(reply_to, p.id, result::duplicate, seen->ok, error, device, point, value);
        return;
    }

    const auto dev = find_device(device);
    if (!dev) return refuse(result::rejected, "unknown device '" + device + "'");
    auto* w = writers(*dev);
    if (!w)
        return refuse(result::rejected,
                      "device '" + device + "' (driver " + dev->driver + ") does not take writes");
    const auto pt = std::find_if(dev->points.begin(), dev->points.end(),
                                 [&](const config::point& q) { return q.name == point; });
    if (pt == dev->points.end())
        return refuse(result::rejected, "device '" + device + "' has no point '" + point + "'");
    if (!pt->writable)
        return refuse(result::rejected, "point '" + device + "/" + point +
                                            "' is not writable (writable: false in the config)");
    bool future = false;
    if (auto why = check_age(p.ts, now_ms, settings.max_age, &future); !why.empty())
        return refuse(future ? result::rejected : result::stale, why);
    if (auto why = check_value(*pt, p.value, p.decimal); !why.empty())
        return refuse(result::rejected, why);
    if (auto why = w->check(*dev, *pt, p.value); !why.empty()) return refuse(result::rejected, why);
    if (writing[device] >= k_max_writing) {
        device_busy->Increment();
        return refuse(result::rate_limited, "device '" + device +
                                                "' is busy: " + std::to_string(k_max_writing) +
                                                " writes are waiting for it; nothing was written");
    }
    auto bucket = buckets.try_emplace(device, settings.rate_limit, settings.rate_period).first;
    if (!bucket->second.take(std::chrono::steady_clock::now())) {
        return refuse(result::rate_limited, "rate limited: device '" + device + "' takes at most " +
                                                std::to_string(settings.rate_limit) +
                                                " commands per " +
                                                std::to_string(settings.rate_period.count()) +
                                                " ms (commands.rate_limit)");
    }
    try {
        db->begin(id, device, point, db->now());
    } catch (const std::exception& e) {
        return refuse(
            result::rejected,
            std::string("cannot record the command id; nothing was written: ") + e.what());
    }
    in_flight[id];
    ++writing[device];
    lock.unlock();
    log::debug(k_component, "writing",
               {{"id", id}, {"device", device}, {"point", point}, {"value", value}});
    w->write(*dev, *pt, p.value, [this, id, device, point, value, reply_to](write_outcome o) {
        finish(id, device, point, value, reply_to, o);
    });
}

void service::impl::finish(const std::string& id, const std::string& device,
                           const std::string& point, const std::string& value,
                           const std::string& topic, const write_outcome& o) {
    std::vector<std::string> repeats;
    {
        std::lock_guard lock(mu);
        try {
            // Nothing reached the device: the id may be sent again.
            if (o.attempted)
                db->finish(id, o.ok, o.error);
            else
                db->forget(id);
        } catch (const std::exception& e) {
            log::error(k_component, "cannot store a command's result",
                       {{"id", id}, {"error", e.what()}});
        }
        if (auto it = in_flight.find(id); it != in_flight.end()) {
            repeats = std::move(it->second);
            in_flight.erase(it);
        }
        if (auto it = writing.find(device); it != writing.end() && --it->second == 0)
            writing.erase(it);
    }
    answer(topic, id, o.ok ? result::ok : result::device_error, o.ok, o.error, device, point,
           value);
    for (const auto& t : repeats)
        publish(t, result_json(id, o.ok, o.error));
}

void service::impl::loop() {
    std::unique_lock lock(qmu);
    for (;;) {
        qcv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (stopping) break;
        auto [topic, text, retained, size] = std::move(queue.front());
        queue.pop_front();
        lock.unlock();
        try {
            handle(topic, text, retained, size);
        } catch (const std::exception& e) {
            log::error(k_component, "command failed", {{"topic", topic}, {"error", e.what()}});
        }
        lock.lock();
    }
    if (!queue.empty()) {
        log::warn(k_component, "commands not handled at shutdown (no answer sent)",
                  {{"count", std::to_string(queue.size())}});
    }
}

service::service(const config::config& cfg, std::string store_path, writer_for writers,
                 publish_fn publish, prometheus::Registry& registry)
    : impl_(std::make_unique<impl>()) {
    auto& m = *impl_;
    m.settings = cfg.commands;
    m.prefix = "ferry/" + cfg.gateway.id + "/cmd/";
    m.filter = m.prefix + "+/+/set";
    m.store_path = std::move(store_path);
    m.devices = cfg.devices;
    m.writers = std::move(writers);
    m.publish = std::move(publish);
    auto& family = prometheus::BuildCounter()
                       .Name("ferry_commands_total")
                       .Help("Downlink commands by result")
                       .Register(registry);
    for (std::size_t r = 0; r < k_results; ++r)
        m.counters[r] = &family.Add({{"result", std::string(to_string(static_cast<result>(r)))}});
    auto& rejected = prometheus::BuildCounter()
                         .Name("ferry_input_rejected_total")
                         .Help("Inputs refused by a budget or a check, by input and reason")
                         .Register(registry);
    m.too_large = &rejected.Add({{"input", "command"}, {"reason", "too_large"}});
    m.too_deep = &rejected.Add({{"input", "command"}, {"reason", "too_deep"}});
    m.too_many_waiting = &rejected.Add({{"input", "command"}, {"reason", "too_many_waiting"}});
    m.queue_full = &rejected.Add({{"input", "command"}, {"reason", "queue_full"}});
    m.device_busy = &rejected.Add({{"input", "command"}, {"reason", "device_busy"}});
    if (!m.settings.enabled) return;
    try {
        m.db = std::make_unique<store>(m.store_path, store::options{});
    } catch (const std::exception& e) {
        m.store_error = std::string("commands are refused: the command-id store cannot be used (") +
                        e.what() + ")";
        log::error(k_component, "command-id store unusable; every command will be refused",
                   {{"path", m.store_path}, {"error", e.what()}});
    }
}

service::~service() {
    stop();
}

const std::string& service::filter() const {
    return impl_->filter;
}

void service::start() {
    std::lock_guard lock(impl_->qmu);
    if (impl_->thread.joinable() || impl_->stopping) return;
    impl_->thread = std::thread([this] { impl_->loop(); });
    log::info(k_component, impl_->settings.enabled ? "commands enabled" : "commands disabled",
              {{"filter", impl_->filter},
               {"store", impl_->settings.enabled ? impl_->store_path : std::string("-")}});
}

void service::stop() {
    {
        std::lock_guard lock(impl_->qmu);
        impl_->stopping = true;
    }
    impl_->qcv.notify_all();
    if (impl_->thread.joinable()) impl_->thread.join();
}

void service::on_message(const std::string& topic, const std::string& payload, bool retained) {
    {
        std::lock_guard lock(impl_->qmu);
        if (impl_->stopping) return;
        if (impl_->queue.size() >= k_queue) {
            // Answering here would publish from Paho's callback thread; the sender is told by
            // the missing answer and the log.
            log::warn(k_component, "command queue full; command dropped without an answer",
                      {{"topic", topic}});
            impl_->count(result::rate_limited);
            impl_->queue_full->Increment();
            return;
        }
        // Over the budget only the head is kept (to find an id to answer): the queue holds at
        // most k_queue × max_payload bytes of payloads, whatever the broker delivers.
        const std::string_view kept = payload.size() > impl_->settings.max_payload
                                          ? std::string_view(payload).substr(0, k_id_window)
                                          : std::string_view(payload);
        impl_->queue.push_back({topic, std::string(kept), retained, payload.size()});
    }
    impl_->qcv.notify_one();
}

void service::handle(const std::string& topic, const std::string& payload, bool retained) {
    impl_->handle(topic, payload, retained, payload.size());
}

void service::update_devices(std::vector<config::device> devices) {
    std::lock_guard lock(impl_->dmu);
    impl_->devices = std::move(devices);
}

std::array<std::uint64_t, k_results> service::counts() const {
    std::array<std::uint64_t, k_results> out{};
    for (std::size_t r = 0; r < k_results; ++r)
        out[r] = impl_->counted[r].load();
    return out;
}

}  // namespace ferry::commands
