#include "drivers/modbus/scan.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/config.hpp"
#include "core/config_reader.hpp"
#include "drivers/modbus/codec.hpp"
#include "drivers/modbus/plan.hpp"

namespace ferry::drivers::modbus {
namespace {

using steady = std::chrono::steady_clock;

constexpr int k_found = 0;
constexpr int k_none = 3;

std::string trim(std::string_view s) {
    while (!s.empty() && s.front() == ' ')
        s.remove_prefix(1);
    while (!s.empty() && s.back() == ' ')
        s.remove_suffix(1);
    return std::string(s);
}

// A double-quoted YAML scalar: paths and host names go into YAML as they are.
std::string quoted(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

// The Modbus exceptions a TCP gateway sends for a unit behind it that did not answer.
bool gateway_silence(const read_result& r) {
    return r.err == fault::exception && (r.exception == 0x0A || r.exception == 0x0B);
}

bool answered(const read_result& r) {
    return r.ok() || (r.err == fault::exception && !gateway_silence(r));
}

std::string describe(const read_result& r) {
    if (r.ok()) return "answers";
    const std::string why = reason(r);
    if (gateway_silence(r))
        return "no answer (gateway: exception " + std::to_string(r.exception) + " " + why + ")";
    if (r.err == fault::exception)
        return "exception " + std::to_string(r.exception) + " (" + why + ")";
    if (r.err == fault::timeout) return "no answer";
    if (r.unanswered()) return "no answer (" + why + ")";
    return "bad frame (" + why + ")";
}

std::string range_text(table t, std::uint32_t start, std::uint32_t count) {
    std::string s = table_name(t);
    s += " " + std::to_string(start);
    if (count > 1) s += ".." + std::to_string(start + count - 1);
    return s;
}

// A profile loaded as a device of the probe's driver.
struct known_profile {
    std::string name;
    config::device device;
};

// The config that names profile `name` from `dir` on the probe's line; loading it reads the
// profile as `ferry run` would.
std::string profile_config(const probe_args& a, const std::string& dir, const std::string& name) {
    std::string c = "gateway:\n  id: probe\n  profiles_dir: " + quoted(dir) + "\ndevices:\n";
    c += "  - id: probe\n    unit_id: 1\n    profile: " + name + "\n";
    if (a.serial)
        c += "    driver: modbus_rtu\n    serial: { port: " + quoted(a.serial->port) + " }\n";
    else
        c += "    driver: modbus_tcp\n    host: " + quoted(a.host) + "\n";
    return c;
}

// Every NAME.yaml of `dir`, by name; one that does not load is reported on `err` and left out.
std::optional<std::vector<known_profile>> load_profiles(const probe_args& a, const std::string& dir,
                                                        const config::schema& s, std::FILE* err) {
    namespace fs = std::filesystem;
    std::vector<std::string> names;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const auto& p = it->path();
        const std::string stem = p.stem().string();
        // A profile is named [A-Za-z0-9_-]+ (docs/PROFILES.md): other files are not profiles.
        const bool name_ok = !stem.empty() && std::all_of(stem.begin(), stem.end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
        });
        if (p.extension() == ".yaml" && name_ok) names.push_back(stem);
    }
    if (ec) {
        std::fprintf(err, "ferry: probe: cannot read profiles directory %s: %s\n", dir.c_str(),
                     ec.message().c_str());
        return std::nullopt;
    }
    std::sort(names.begin(), names.end());
    std::vector<known_profile> out;
    for (const auto& name : names) {
        try {
            auto c = config::load_config_text(profile_config(a, dir, name), "(probe)", s);
            out.push_back({name, std::move(c.devices.at(0))});
        } catch (const config::errors& e) {
            std::fprintf(err, "ferry: probe: profile %s left out: %s\n", name.c_str(),
                         e.list().empty() ? "" : e.list().front().to_string().c_str());
        }
    }
    return out;
}

// Why profile `p` does not fit `unit`, or "" when it does: every request answered with data,
// every point a reading.
std::string misfit(link& lnk, int unit, const known_profile& p, std::chrono::milliseconds timeout) {
    const auto& d = p.device;
    const auto& ds = of(d);
    timeout = std::max(timeout, std::chrono::milliseconds(ds.timeout));
    // The requests `ferry run` would make: each poll group planned on its own.
    std::map<config::duration, std::vector<std::size_t>> groups;
    for (std::size_t i = 0; i < d.points.size(); ++i)
        groups[poll_interval_of(d, d.points[i])].push_back(i);
    std::vector<read_block> blocks;
    for (auto& [interval, which] : groups) {
        auto mine =
            plan_blocks(d.points, std::move(which), ds.max_gap, ds.max_registers, ds.max_coils);
        blocks.insert(blocks.end(), mine.begin(), mine.end());
    }
    std::vector<std::uint16_t> regs;
    for (const auto& b : blocks) {
        if (ds.request_delay.count() > 0) std::this_thread::sleep_for(ds.request_delay);
        regs.assign(b.count, 0);
        const auto r = lnk.read(unit, b.tbl, static_cast<std::uint16_t>(b.start),
                                static_cast<std::uint16_t>(b.count), timeout, regs.data());
        if (!r.ok()) return range_text(b.tbl, b.start, b.count) + ": " + describe(r);
        for (const auto i : b.points) {
            const auto& pt = d.points[i];
            const auto& ps = of(pt);
            const auto at = ps.address - b.start;
            const auto v = is_bit_table(b.tbl)
                               ? decode_bit(pt, static_cast<std::uint8_t>(regs[at]))
                               : decode_registers(pt, std::span<const std::uint16_t>(regs).subspan(
                                                          at, register_count(pt)));
            if (!is_reading(v))
                return "point " + pt.name + " (" + range_text(ps.tbl, ps.address, 1) + ", " +
                       std::string(config::type_name(pt.type)) + ") is not a finite value";
        }
    }
    return {};
}

std::string unit_list(const std::vector<int>& units) {
    std::string s;
    for (const auto u : units)
        s += (s.empty() ? "" : ", ") + std::to_string(u);
    return s;
}

}  // namespace

std::vector<int> parse_unit_ids(std::string_view text, int lo, int hi, std::string& why) {
    std::vector<int> out;
    const std::string what = "unit id";
    auto fail = [&](std::string message) {
        why = std::move(message);
        return std::vector<int>{};
    };
    for (std::size_t from = 0; from <= text.size();) {
        auto comma = text.find(',', from);
        if (comma == std::string_view::npos) comma = text.size();
        const std::string item = trim(text.substr(from, comma - from));
        from = comma + 1;
        if (item.empty()) return fail("an empty item in '" + std::string(text) + "'");
        config::int_range r;
        if (item.find('-', 1) != std::string::npos) {
            auto range = config::parse_range(item);
            if (!range) return fail("expected a range such as 1-30, got '" + item + "'");
            r = *range;
        } else {
            auto x = config::parse_integer(item);
            if (!x || item[0] == '-' || item.find_first_of("xX") != std::string::npos)
                return fail(
                    "expected a unit id, a range such as 1-30 or a list such as 1,2,5, "
                    "got '" +
                    item + "'");
            r = {*x, *x};
        }
        if (auto w = config::check_range(r, lo, hi, what); !w.empty()) return fail(w);
        for (auto u = r.first; u <= r.last; ++u) {
            if (std::find(out.begin(), out.end(), u) != out.end())
                return fail(what + " " + std::to_string(u) + " is listed twice");
            out.push_back(static_cast<int>(u));
        }
    }
    return out;
}

std::string device_snippet(const probe_args& a, const std::string& name,
                           const std::vector<int>& units) {
    std::string s = "- id: \"" + name + "-{unit_id}\"\n";
    if (a.serial) {
        const auto& l = *a.serial;
        const char* parity = l.par == config::parity::even  ? "E"
                             : l.par == config::parity::odd ? "O"
                                                            : "N";
        s += "  driver: modbus_rtu\n  serial: { port: " + quoted(l.port) +
             ", baud: " + std::to_string(l.baud) + ", parity: " + parity +
             ", data_bits: " + std::to_string(l.data_bits) +
             ", stop_bits: " + std::to_string(l.stop_bits) + " }\n";
    } else {
        s += "  driver: modbus_tcp\n  host: " + quoted(a.host) +
             "\n  port: " + std::to_string(a.port) + "\n";
    }
    s += "  unit_id: " +
         (units.size() == 1 ? std::to_string(units[0]) : "[" + unit_list(units) + "]") + "\n";
    s += "  profile: " + name + "\n";
    return s;
}

int scan_main(const probe_args& a, link& lnk, std::FILE* out, std::FILE* err,
              const config::schema& s) {
    std::fprintf(out,
                 "scanning %zu unit ids at %s: %s (%u %s%s), timeout %lld ms, one attempt each\n",
                 a.scan.size(), lnk.name().c_str(), range_text(a.tbl, *a.address, a.count).c_str(),
                 a.count, is_bit_table(a.tbl) ? "bit" : "register", a.count == 1 ? "" : "s",
                 static_cast<long long>(a.timeout.count()));
    std::vector<int> present;
    bool reached = false;  // the line was opened (connected) at least once
    std::vector<std::uint16_t> values(a.count);
    for (const int unit : a.scan) {
        const auto t0 = steady::now();
        const auto r = lnk.read(unit, a.tbl, *a.address, static_cast<std::uint16_t>(a.count),
                                a.timeout, values.data());
        const double ms = std::chrono::duration<double, std::milli>(steady::now() - t0).count();
        if (r.err == fault::connect && !reached) {
            // Nothing on this line can be reached: the first unit says it for all. (Later, a
            // TCP gateway that stops accepting after a timeout is one unit's "no answer".)
            std::fprintf(err, "ferry: probe: cannot %s %s\n", a.serial ? "open" : "connect to",
                         lnk.name().c_str());
            return k_none;
        }
        reached = true;
        std::fprintf(out, "unit %-4d %-40s %7.1f ms\n", unit, describe(r).c_str(), ms);
        std::fflush(out);  // a long scan shows its progress
        if (answered(r)) present.push_back(unit);
    }
    std::fprintf(out, "%zu of %zu unit ids answered\n", present.size(), a.scan.size());
    if (present.empty()) return k_none;

    const std::string dir =
        std::filesystem::absolute(a.profiles_dir.empty() ? s.profiles_dir : a.profiles_dir)
            .lexically_normal()
            .string();
    const auto profiles = load_profiles(a, dir, s, err);
    if (!profiles) return k_found;
    std::string names;
    for (const auto& p : *profiles)
        names += (names.empty() ? "" : ", ") + p.name;
    std::fprintf(out, "\nprofiles in %s: %s\n", dir.c_str(),
                 names.empty() ? "none" : names.c_str());
    std::map<std::string, std::vector<int>> fits;  // profile -> units, by name
    for (const int unit : present) {
        std::vector<std::string> mine;
        std::vector<std::string> why;
        for (const auto& p : *profiles) {
            const auto w = misfit(lnk, unit, p, a.timeout);
            if (w.empty()) {
                mine.push_back(p.name);
                fits[p.name].push_back(unit);
            } else {
                why.push_back("  " + p.name + ": " + w);
            }
        }
        std::string line;
        for (const auto& n : mine)
            line += (line.empty() ? "fits " : ", ") + n;
        std::fprintf(out, "unit %-4d %s\n", unit, line.empty() ? "no profile fits" : line.c_str());
        if (mine.empty())
            for (const auto& w : why)
                std::fprintf(out, "%s\n", w.c_str());
        std::fflush(out);
    }
    if (fits.empty()) return k_found;
    std::fprintf(
        out, "\n# devices for `ferry run` (paste under devices:; docs/PROFILES.md)%s\n",
        dir == s.profiles_dir ? "" : (" with gateway.profiles_dir: " + quoted(dir)).c_str());
    for (const auto& [name, units] : fits)
        std::fputs(device_snippet(a, name, units).c_str(), out);
    std::map<int, int> uses;  // unit -> profiles it fits
    for (const auto& [name, units] : fits)
        for (const int u : units)
            ++uses[u];
    for (const auto& [unit, n] : uses)
        if (n > 1)
            std::fprintf(out, "# unit %d fits %d profiles: keep one of its devices\n", unit, n);
    return k_found;
}

}  // namespace ferry::drivers::modbus
