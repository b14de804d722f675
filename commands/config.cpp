#include "commands/config.hpp"

#include <optional>
#include <string>

namespace ferry::commands {
namespace {

using config::option;

constexpr option k_commands_options[] = {
    {"enabled", "bool", "false",
     "Accept downlink writes. When false, every command is still answered: ok false, "
     "\"commands are disabled ...\"."},
    {"max_age", "duration 1ms..720h", "30s", "A command whose `ts` is older is refused as stale."},
    {"rate_limit", "N/s \\| N/m \\| N/h", "10/s",
     "Most commands per device in that time (a token bucket: bursts up to N)."},
    {"max_payload", "size 64..64KiB", "4KiB",
     "Largest command payload parsed. A larger one is refused unparsed: answered `payload too "
     "large` when its `id` stands in its first 2 KiB, else only counted and logged "
     "(`ferry_input_rejected_total{input=\"command\",reason=\"too_large\"}`). MQTT 5: Ferry "
     "asks the broker (Maximum Packet Size) not to send it messages over this + 1 MiB."},
};

void read_commands(config::loader& ld, const config::value_ref& v, config::config& c) {
    config::map_reader m(ld, v, k_commands_options);
    if (!m.is_map()) return;
    m.check_keys();
    ld.set_bool(m, "enabled", c.commands.enabled);
    ld.set_dur(m, "max_age", c.commands.max_age, true);
    if (auto r = m.get("max_payload"))
        if (auto n = ld.size(*r, 64, 64 * 1024))
            c.commands.max_payload = static_cast<std::size_t>(*n);
    if (auto r = m.get("rate_limit")) {
        auto s = ld.str(*r);
        if (!s) return;
        auto slash = s->find('/');
        std::optional<std::int64_t> n;
        if (slash != std::string::npos) n = config::parse_integer(s->substr(0, slash));
        std::string unit = slash == std::string::npos ? "" : s->substr(slash + 1);
        std::optional<config::duration> per;
        if (unit == "s") per = config::duration{1000};
        if (unit == "m") per = config::duration{60000};
        if (unit == "h") per = config::duration{3600000};
        if (!n || !per || *n < 1 || *n > 1000000) {
            ld.fail(*r, "invalid rate limit '" + *s + "' (use N/s, N/m or N/h, e.g. 10/s)");
            return;
        }
        c.commands.rate_limit = static_cast<std::uint32_t>(*n);
        c.commands.rate_period = *per;
    }
}

}  // namespace

const config::section_schema& config_section() {
    static const config::section_schema s{
        {"commands", "map", "", "Downlink writes to writable points."},
        {{"commands", "", k_commands_options}},
        read_commands,
        nullptr};
    return s;
}

}  // namespace ferry::commands
