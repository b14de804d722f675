// Ferry's configuration: the loader's walk over the file (core/config.hpp). The keys of the
// core (gateway, http, the frame of every device and point) are read here; every other
// component declares and reads its own keys (core/config_reader.hpp) and the composition
// root hands them in as a `schema` (gateway/components.hpp).
#include "core/config.hpp"

#include <yaml-cpp/exceptions.h>

#include <algorithm>
#include <charconv>
#include <limits>
#include <map>
#include <optional>
#include <tuple>
#include <utility>

#include "core/config_reader.hpp"

namespace ferry::config {

std::optional<yaml::tree> loader::parse(std::string_view text, std::uint32_t source) {
    // yaml-cpp's marks hold a byte offset as pos; ours the file's number.
    auto at = [source](YAML::Mark m) {
        m.pos = static_cast<int>(source);
        return m;
    };
    try {
        return yaml::tree::parse(text, source);
    } catch (const YAML::ParserException& e) {
        fail(at(e.mark), "", "YAML syntax error: " + e.msg);
    } catch (const YAML::Exception& e) {
        fail(at(e.mark), "", "YAML error: " + e.msg);
    }
    return std::nullopt;
}

std::string loader::expand(std::string&& text) {
    expand_ = true;
    load(std::move(text));
    return std::move(expanded_);
}

config loader::load(const std::string& text) {
    return load(parse(text));
}

config loader::load(std::string&& text) {
    auto doc = parse(text);
    // The tree holds what is read from here on: the text's memory goes before the config's
    // is taken (at 50,000 points: 2.9 MB of the peak).
    std::string().swap(text);
    return load(std::move(doc));
}

// The document is dropped when this returns: nothing of it outlives the load, so the daemon
// never holds the file's tree.
config loader::load(std::optional<yaml::tree> doc) {
    config c;
    c.file = file_;
    if (!doc) return c;
    struct forget {  // value_refs kept for `finish` point into the trees
        loader& ld;
        ~forget() {
            ld.kept_.clear();
            ld.built_.clear();
            ld.profiles_.clear();
            ld.trees_.clear();
        }
    } forget_kept{*this};
    const yaml::node root = doc->root();
    if (!within_budget(root)) return c;
    root_mark_ = root.Mark();
    // An empty document has no position: report at the start of the file.
    value_ref top{root, root.Mark().is_null() ? YAML::Mark() : root.Mark(), ""};
    if (!root.IsNull() && !root.IsMap()) {
        fail(top, "the file must be a map of sections (gateway, devices, rules, upstream, ...)");
        return c;
    }
    map_reader m(*this, top, top_options_);
    m.check_keys();
    if (m.require("gateway")) gateway(*m.get("gateway"), c);
    if (auto v = m.get("http")) http(*v, c);
    if (auto v = m.get("profiles")) profiles(*v);
    if (auto v = m.get("devices")) devices(*v, c);
    check_unused_profiles();
    for (const auto* sec : schema_.sections)
        if (auto v = m.get(sec->top.name)) sec->read(*this, *v, c);
    // Templates that need the whole file read first.
    for (const auto* sec : schema_.sections)
        if (sec->finish) sec->finish(*this, c);
    if (expand_ && errors_.empty()) expanded_ = emit_expanded(root);
    return c;
}

void loader::gateway(const value_ref& v, config& c) {
    map_reader m(*this, v, k_gateway_options);
    if (!m.is_map()) return;
    m.check_keys();
    if (m.require("id"))
        if (auto s = name(*m.get("id"), "gateway id", false)) c.gateway.id = *s;
    if (auto r = m.get("data_dir"))
        if (auto s = nonempty_str(*r)) c.gateway.data_dir = *s;
    set_enum(m, "log_level", c.gateway.level, k_log_level_names);
    if (auto r = m.get("profiles_dir"))
        if (auto s = nonempty_str(*r)) profiles_dir_ = resolve(*s);
}

void loader::http(const value_ref& v, config& c) {
    map_reader m(*this, v, k_http_options);
    if (!m.is_map()) return;
    m.check_keys();
    c.http.enabled = true;
    auto r = m.get("listen");
    if (!r) return;
    auto s = str(*r);
    if (!s) return;
    auto colon = s->rfind(':');
    std::string host = colon == std::string::npos ? "" : s->substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    auto port = colon == std::string::npos ? std::nullopt : parse_integer(s->substr(colon + 1));
    if (host.empty() || !port) {
        fail(*r, "expected host:port (e.g. 127.0.0.1:9108), got '" + *s + "'");
        return;
    }
    if (*port < 1 || *port > 65535) {
        fail(*r, "port " + std::to_string(*port) + " is out of range (1..65535)");
        return;
    }
    c.http.host = host;
    c.http.port = static_cast<std::uint16_t>(*port);
}

void loader::devices(const value_ref& v, config& c) {
    std::map<std::string, mark> seen;
    for (auto& item : list(v))
        device_item(item, c.devices, seen);
}

// The keys every device has (id, driver, points, and each point's name); the driver's own
// keys are read by its driver_schema. `m` holds the device's keys merged with its profile's
// (core/profiles.cpp), `points` the points of both.
void loader::device_entry(map_reader& m, device& d, const point_list& points) {
    d.where = to_mark(m.where());

    if (m.require("id")) {
        auto r = *m.get("id");
        if (auto s = name(r, "device id", true)) {
            d.id = *s;
            d.where = to_mark(r.where);  // duplicates are reported at this id's value
        }
    }

    driver_mask bit = 0;
    const driver_schema* drv = nullptr;
    if (m.require("driver")) {
        if (auto x = choice(*m.get("driver"), driver_names_, "driver", "known")) {
            bit = driver_mask{1} << *x;
            drv = schema_.drivers[*x];
            d.driver = std::string(drv->name);
        }
    }
    m.check_keys(bit ? bit : k_all_drivers, d.driver);
    if (drv && drv->read_device) drv->read_device(*this, m, d);

    if (points.items.empty()) {
        if (points.own && (points.own->node.IsNull() || points.own->node.IsSequence()))
            fail(*points.own, "a device needs at least one point");
        else if (!points.own && points.profile)
            fail(*points.profile, "a device needs at least one point");
        else if (!points.own)
            m.require("points");
    }
    d.points.reserve(points.items.size());  // exactly: 50,000 points held 199 bytes each, not 152
    std::map<std::string, YAML::Mark> seen;
    for (const auto& item : points.items) {
        point p;
        const auto at = point_entry(item, p, bit, d.driver, drv);
        if (!p.name.empty()) {
            auto [first, fresh] = seen.emplace(p.name, at);
            if (!fresh) {
                // The first may stand in the profile's file and this one in the config.
                const auto line = std::to_string(to_mark(first->second).line);
                fail(
                    at, item.path + ".name",
                    "duplicate point name '" + p.name + "' (first at " +
                        (first->second.pos == at.pos
                             ? "line " + line
                             : sources_[static_cast<std::size_t>(first->second.pos)] + ":" + line) +
                        ")");
            }
        }
        d.points.push_back(std::move(p));
    }
    if (drv && drv->finish_device) drv->finish_device(*this, m, d);
}

YAML::Mark loader::point_entry(const value_ref& v, point& p, driver_mask bit,
                               std::string_view driver, const driver_schema* drv) {
    map_reader m(*this, v, point_options_);
    if (!m.is_map()) return m.where();
    YAML::Mark at = m.where();
    p.where = to_mark(at);
    m.check_keys(bit ? bit : k_all_drivers, driver);
    if (m.require("name")) {
        auto r = *m.get("name");
        if (auto s = name(r, "point name", true)) {
            p.name = *s;
            at = r.where;
            p.where = to_mark(at);
        }
    }
    if (drv && drv->read_point) drv->read_point(*this, m, p);
    // Keys that mean the same for every driver that declares them (check_keys removed them
    // where the driver does not).
    if (auto r = m.get("scale")) {
        if (auto x = number(*r)) {
            if (*x == 0.0)
                fail(*r, "must not be 0");
            else
                p.scale = *x;
        }
    }
    set_number(m, "offset", p.offset);
    set_str(m, "unit", p.unit);
    return at;
}

std::optional<serial_settings> read_serial(loader& ld, const value_ref& v) {
    map_reader m(ld, v, k_serial_options);
    if (!m.is_map()) return std::nullopt;
    m.check_keys();
    serial_settings s;
    if (m.require("port"))
        if (auto p = ld.nonempty_str(*m.get("port"))) s.port = *p;
    ld.set(m, "baud", s.baud, 1, 4000000);
    ld.set_enum(m, "parity", s.par, k_parity_names);
    ld.set(m, "data_bits", s.data_bits, 7, 8);
    ld.set(m, "stop_bits", s.stop_bits, 1, 2);
    return s;
}

// ---------------------------------------------------------------------------------------------

std::string error::to_string() const {
    std::string out = file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": ";
    if (!path.empty()) out += path + ": ";
    return out + message;
}

namespace {
std::string join_errors(const std::vector<error>& list) {
    std::string out;
    for (const auto& e : list) {
        if (!out.empty()) out += '\n';
        out += e.to_string();
    }
    return out;
}
}  // namespace

errors::errors(std::vector<error> list)
    : std::runtime_error(join_errors(list)), list_(std::move(list)) {}

namespace {
// Throws every error of the load: the config file's in the order of the file, then those of
// profile files, by file name and line.
void throw_errors(loader& ld, const std::string& file) {
    auto list = ld.take_errors();
    if (list.empty()) return;
    std::stable_sort(list.begin(), list.end(), [&](const error& a, const error& b) {
        return std::tuple(a.file != file, a.file, a.line, a.column) <
               std::tuple(b.file != file, b.file, b.line, b.column);
    });
    throw errors(std::move(list));
}

config checked(loader& ld, config c) {
    throw_errors(ld, c.file);
    return c;
}

std::string read_config(const std::string& file) {
    std::string why;
    auto text = read_file(file, why, k_max_config_file);
    if (!text) throw errors({error{file, 0, 0, "", "cannot read file: " + why}});
    return std::move(*text);
}
}  // namespace

config load_config_text(const std::string& text, const std::string& file, const schema& s,
                        const load_hooks& hooks) {
    loader ld(file, s, hooks);
    return checked(ld, ld.load(text));
}

config load_config(const std::string& file, const schema& s) {
    loader ld(file, s, {});
    return checked(ld, ld.load(read_config(file)));
}

std::string expand_config(const std::string& file, const schema& s) {
    loader ld(file, s, {});
    auto out = ld.expand(read_config(file));
    throw_errors(ld, file);
    return out;
}

std::optional<duration> parse_duration(std::string_view text) {
    std::size_t digits = 0;
    while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9')
        ++digits;
    if (digits == 0) return std::nullopt;
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + digits, n);
    if (ec != std::errc{}) return std::nullopt;
    auto unit = text.substr(digits);
    std::uint64_t ms_per = 0;
    if (unit == "ms")
        ms_per = 1;
    else if (unit == "s")
        ms_per = 1000;
    else if (unit == "m")
        ms_per = 60 * 1000;
    else if (unit == "h")
        ms_per = 60 * 60 * 1000;
    else
        return std::nullopt;
    constexpr auto max_ms = static_cast<std::uint64_t>(std::numeric_limits<duration::rep>::max());
    if (n > max_ms / ms_per) return std::nullopt;
    return duration{static_cast<duration::rep>(n * ms_per)};
}

std::optional<std::uint64_t> parse_size(std::string_view text) {
    std::size_t digits = 0;
    while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9')
        ++digits;
    if (digits == 0) return std::nullopt;
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + digits, n);
    if (ec != std::errc{}) return std::nullopt;
    auto unit = text.substr(digits);
    std::uint64_t mult = 0;
    if (unit.empty())
        mult = 1;
    else if (unit == "KiB")
        mult = 1ull << 10;
    else if (unit == "MiB")
        mult = 1ull << 20;
    else if (unit == "GiB")
        mult = 1ull << 30;
    else if (unit == "TiB")
        mult = 1ull << 40;
    else
        return std::nullopt;
    if (n > std::numeric_limits<std::uint64_t>::max() / mult) return std::nullopt;
    return n * mult;
}

std::string_view type_name(point_type t) {
    return k_type_names[static_cast<int>(t)];
}

bool same_settings(device a, device b) {
    a.where = b.where = {};
    for (auto* d : {&a, &b}) {
        for (auto& p : d->points)
            p.where = {};
    }
    return a == b;
}

bool same_settings(rule a, rule b) {
    a.where = b.where = {};
    return a == b;
}

}  // namespace ferry::config