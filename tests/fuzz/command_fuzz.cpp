// Fuzz target: the downlink command payload (commands/checks.hpp): parse_payload, find_id,
// check_value and check_age, as the service runs them on a payload from MQTT.
//
// The input is a set payload. Invariants, each a trap when broken:
// - nothing throws; a payload over the budget is refused as too large, unparsed;
// - an id that is kept is non-empty and at most 256 bytes, and result_json() with it is JSON
//   that parses back to the same id (whatever bytes the id holds);
// - a well-formed payload has no error and a number value keeps its decimal text;
// - check_value() on integer points accepts a number only when (value - offset) / scale is a
//   whole raw step to the double's precision: no value between two steps is taken for one;
// - check_age() never overflows (UBSan) for any ts and gives an answer for ts at the limits.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "commands/checks.hpp"
#include "drivers/modbus/config.hpp"

namespace cmd = ferry::commands;
namespace cfg = ferry::config;
namespace mb = ferry::drivers::modbus;

namespace {

[[noreturn]] void violated(const char* what, std::string_view text) {
    std::fprintf(stderr, "command_fuzz: %s\n  payload: %.*s\n", what,
                 static_cast<int>(std::min<std::size_t>(text.size(), 512)), text.data());
    __builtin_trap();
}

cfg::point point(mb::table t, cfg::point_type type, double scale = 1, double offset = 0) {
    // std::string(1, 'p'), not "p": GCC 12 -O2 warns a false -Wrestrict on that
    auto p = mb::make_point(std::string(1, 'p'), t, 0, type);
    p.scale = scale;
    p.offset = offset;
    p.writable = true;
    return p;
}

const cfg::point k_points[] = {
    point(mb::table::holding, cfg::point_type::uint32),
    point(mb::table::holding, cfg::point_type::int32, 0.001),
    point(mb::table::holding, cfg::point_type::int16, 0.1, -5),
    point(mb::table::holding, cfg::point_type::int64),
    point(mb::table::holding, cfg::point_type::uint16, 0.5, 0.25),
    point(mb::table::holding, cfg::point_type::float32),
    point(mb::table::coil, cfg::point_type::boolean),
    point(mb::table::holding, cfg::point_type::string),
};

void check_result_json(const std::optional<std::string>& id, std::string_view text) {
    const auto out = cmd::result_json(id, false, "error");
    const auto j = nlohmann::json::parse(out, nullptr, false);
    if (j.is_discarded() || !j.is_object()) violated("result_json is not a JSON object", text);
    if (id && j["id"] != *id) violated("result_json does not carry the id back", text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const auto found = cmd::find_id(text);
        if (found && (found->empty() || found->size() > 256)) violated("find_id: bad id", text);

        const std::size_t budget = 1024;
        const auto p = cmd::parse_payload(text, budget);
        if (size > budget && !p.too_large) violated("over the budget but parsed", text);
        if (p.id && (p.id->empty() && p.error.empty())) violated("empty id accepted", text);
        if (p.error.empty() && (!p.id || p.id->size() > 256)) violated("bad id accepted", text);
        if (p.id && p.id->size() <= 256) check_result_json(p.id, text);
        if (!p.error.empty()) return 0;

        const bool number =
            ferry::as_double(p.value).has_value() && !std::holds_alternative<bool>(p.value);
        if (number && p.decimal.empty()) violated("a number without its decimal text", text);
        for (const auto& pt : k_points) {
            const auto why = cmd::check_value(pt, p.value, p.decimal);
            if (!why.empty() || !number) continue;
            const bool integer = pt.type != cfg::point_type::float32 &&
                                 pt.type != cfg::point_type::float64 &&
                                 mb::of(pt).tbl != mb::table::coil;
            if (!integer) continue;
            const double d = *ferry::as_double(p.value);
            const double raw = (d - pt.offset) / pt.scale;
            if (std::isfinite(raw) &&
                std::fabs(raw - std::nearbyint(raw)) > 1e-6 * std::max(1.0, std::fabs(raw)))
                violated("a value between two raw steps was accepted", text);
        }
        using namespace std::chrono_literals;
        constexpr auto lo = std::numeric_limits<std::int64_t>::min();
        constexpr auto hi = std::numeric_limits<std::int64_t>::max();
        for (const std::int64_t now : {lo, std::int64_t{0}, std::int64_t{1764236400123}, hi})
            (void)cmd::check_age(p.ts, now, 30000ms);
    } catch (const std::exception& e) {
        violated(e.what(), text);
    }
    return 0;
}
