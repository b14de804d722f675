// Checks of a downlink command (commands.hpp has the whole contract): the payload parser, the
// value and age checks, the per-device rate limit, and the results a command is answered with.
// Pure functions (no I/O, no clock of their own: callers pass the time), safe from any thread;
// a token_bucket is not thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/config.hpp"
#include "core/event.hpp"

namespace ferry::commands {

// ---- Results ----

// The bounded label set of ferry_commands_total{result}.
enum class result : std::uint8_t {
    ok,
    rejected,      // malformed, unknown device/point, not writable, wrong type, out of range
    stale,         // "ts" older than commands.max_age
    rate_limited,  // over the device's commands.rate_limit
    duplicate,     // a repeated id, answered from memory
    device_error,  // the device did not take the write (exception, timeout, ...)
    disabled,      // commands.enabled: false
    count_
};
std::string_view to_string(result r);
constexpr std::size_t k_results = static_cast<std::size_t>(result::count_);

// {"id":"c-17","ok":true} or {"id":"c-17","ok":false,"error":"..."}; id null when absent.
std::string result_json(const std::optional<std::string>& id, bool ok, std::string_view error);

// ---- Checks (pure) ----

// A set payload, parsed strictly: an object with "id" (non-empty string), "value" and
// optionally "ts" (Unix ms, an integer); no other keys, no key twice. `error` is set when
// malformed (`id` is still filled when the payload had a string id, so the answer can name it).
//
// Budget: a payload longer than `max_bytes` is not parsed at all ("payload too large"; `id` is
// looked for with find_id). Parsing streams (no document is built) and stops at the first
// value nested deeper than k_max_depth levels, so its cost is O(size) time and O(1) memory
// beyond the strings it keeps (at most the payload's size).
struct payload {
    std::optional<std::string> id;
    ferry::value value;   // bool, int64/uint64/double or string, as JSON typed it
    std::string decimal;  // a number's text as sent ("3000000000.4"), for exact checks
    std::optional<std::int64_t> ts;
    std::string error;
    bool too_large = false;  // refused unparsed (more than max_bytes)
    bool too_deep = false;   // refused: nested deeper than k_max_depth
};
constexpr std::size_t k_max_depth = 16;
constexpr std::size_t k_id_window = 2048;  // bytes of a payload find_id looks at
payload parse_payload(std::string_view text, std::size_t max_bytes = 4096);

// The payload's "id" when it can be found cheaply: a non-empty string member of the top-level
// object, within the first k_id_window bytes. Looks at nothing else (used to answer a payload
// too large to parse, and commands while they are disabled).
std::optional<std::string> find_id(std::string_view text);

// The value's type against the point's: true/false for bool points (Modbus coils are), a string for
// string points, a number otherwise; for integer types the number must be a whole number of
// raw steps after the inverse of scale/offset (raw = (value - offset) / scale), computed
// exactly in decimal on the number's text (`decimal`, as sent; from the double when empty) and
// on the shortest decimal form of scale and offset, so that no value between two raw steps is
// taken for either of them. 64-bit integers beyond 2^53 are refused (not exact as a double).
// "" when fine, else why, naming the point's type ("type bool"), or the kind its driver
// gives (core/config.hpp driver_settings::kind: "a coil"). min/max and the raw type's range
// are the writer's check.
std::string check_value(const config::point& p, const ferry::value& v,
                        std::string_view decimal = {});

// "" when `ts` is absent or within max_age of now_ms, else why it is refused. A `ts` older
// than max_age is stale (`*future` false); one more than max_age ahead of now_ms cannot be
// trusted either (`*future` true). Computed without overflow for any int64 `ts`.
std::string check_age(std::optional<std::int64_t> ts, std::int64_t now_ms,
                      std::chrono::milliseconds max_age, bool* future = nullptr);

// At most `capacity` commands per `period`, refilled continuously (a token bucket that
// starts full). Not thread-safe.
class token_bucket {
  public:
    token_bucket(std::uint32_t capacity, std::chrono::milliseconds period);
    bool take(std::chrono::steady_clock::time_point now);

  private:
    double capacity_;
    double per_ms_;
    double tokens_;
    std::optional<std::chrono::steady_clock::time_point> last_;
};

}  // namespace ferry::commands
