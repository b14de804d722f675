// Profiles and per-value keys (docs/PROFILES.md): the loader's expansion of one `devices[]`
// item into the devices it stands for.
//
// A profile is a device without an id: its keys and points, inline (`profiles:`) or in
// NAME.yaml under `gateway.profiles_dir`. A device naming it is read as one map of its own keys
// and the profile's, its own winning, and its points after the profile's. A driver's per-value
// key (Modbus: unit_id) given as a range or list makes one device per value, `{key}` in the id
// replaced by the value.
//
// The expansion is done on the YAML, before any key is read: every device is then read by the
// one path every device takes (core/config.cpp), so its keys are as strict as any, and a
// reload that re-reads a changed profile compares the devices it expanded to. Keys taken from
// a profile keep their own position, file and key path: an error in a profile is reported in
// the profile, and the loader drops the repeats of it that each device using it would make.
#include <yaml-cpp/emitter.h>
#include <yaml-cpp/exceptions.h>

#include <algorithm>
#include <charconv>
#include <string>
#include <utility>

#include "core/config_reader.hpp"

namespace ferry::config {
namespace {

// Values under `n`, each use of an alias counted again (the budget's way of counting). The
// tree passed within_budget, so this is bounded by k_max_config_nodes and depth.
std::size_t count_values(const yaml::node& n) {
    std::size_t count = 0;
    std::vector<yaml::node> todo{n};
    while (!todo.empty()) {
        const auto x = todo.back();
        todo.pop_back();
        ++count;
        if (x.IsMap()) {
            count += x.size();
            for (std::size_t i = 0; i < x.size(); ++i)
                todo.push_back(x.value(i));
        } else if (x.IsSequence()) {
            for (std::size_t i = 0; i < x.size(); ++i)
                todo.push_back(x.item(i));
        }
    }
    return count;
}

std::optional<std::int64_t> digits(std::string_view s) {
    std::int64_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || s[0] == '-' || ec != std::errc{} || p != s.data() + s.size())
        return std::nullopt;
    return v;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
    for (auto at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
        s.replace(at, from.size(), to);
    return s;
}

entry* find_entry(std::vector<entry>& keys, std::string_view name) {
    auto it =
        std::find_if(keys.begin(), keys.end(), [&](const entry& e) { return e.name == name; });
    return it == keys.end() ? nullptr : &*it;
}

// A value as YAML, aliases written out. Points are one flow map a line.
void emit(YAML::Emitter& out, const yaml::node& n) {
    switch (n.type()) {
        case yaml::kind::null:
            out << YAML::Null;
            break;
        case yaml::kind::scalar:
            out << std::string(n.Scalar());
            break;
        case yaml::kind::sequence:
            out << YAML::BeginSeq;
            for (std::size_t i = 0; i < n.size(); ++i)
                emit(out, n.item(i));
            out << YAML::EndSeq;
            break;
        case yaml::kind::map:
            out << YAML::BeginMap;
            for (std::size_t i = 0; i < n.size(); ++i) {
                out << YAML::Key;
                emit(out, n.key(i));
                out << YAML::Value;
                emit(out, n.value(i));
            }
            out << YAML::EndMap;
            break;
    }
}

}  // namespace

void loader::profiles(const value_ref& v) {
    std::map<std::string, mark> seen;
    for (auto& item : list(v)) {
        map_reader m(*this, item, device_options_);
        if (!m.is_map()) continue;
        if (!m.require("id")) continue;
        const auto r = *m.get("id");
        auto id = name(r, "profile id", false);
        if (!id) continue;
        unique(seen, *id, to_mark(r.where), r.path, "profile id");
        if (profiles_.count(*id)) continue;
        profiles_[*id] = read_profile(item, {});
    }
}

// A profile's map, inline (`profiles[i]`) or the whole of a file (`file_name` set: its `id`
// may be absent, or must be that name).
loader::profile loader::read_profile(const value_ref& v, std::string_view file_name) {
    profile p;
    p.found = true;
    map_reader m(*this, v, device_options_);
    if (!m.is_map()) return p;
    if (auto* e = m.find("driver"); e && e->value.IsScalar()) {
        for (std::size_t i = 0; i < driver_names_.size(); ++i) {
            if (driver_names_[i] == e->value.Scalar()) {
                p.mask = driver_mask{1} << i;
                p.driver = std::string(driver_names_[i]);
            }
        }
    }
    // Unknown keys are reported here, once, and dropped; keys of another driver are reported
    // by each device that uses the profile (the same error once: fail() drops repeats).
    m.check_keys(p.mask, p.driver);
    if (m.has("profile")) fail(m.key_ref("profile"), "a profile cannot use another profile");
    if (!file_name.empty()) {
        if (auto r = m.get("id")) {
            auto s = str(*r);
            if (s && *s != file_name)
                fail(*r, "the id of a profile file is its name: '" + std::string(file_name) +
                             "' (or leave it out)");
        }
    }
    for (const auto& e : m.entries()) {
        if (e.name == "id" || e.name == "profile") continue;
        if (e.name == "points") {
            p.points = m.ref(e);
            continue;
        }
        entry kept = e;
        kept.path = m.path_of(e);
        p.keys.push_back(std::move(kept));
    }
    p.values = count_values(v.node);
    return p;
}

// The profile `name_ref` names: a `profiles:` entry, else NAME.yaml in the profiles directory,
// read once. Null (reported at `name_ref`) when it is nowhere.
loader::profile* loader::use_profile(const value_ref& name_ref) {
    auto name_of = name(name_ref, "profile name", false);  // no '/' or '.': a file name
    if (!name_of) return nullptr;
    auto it = profiles_.find(*name_of);
    if (it == profiles_.end()) {
        const std::string path = profiles_dir_ + "/" + *name_of + ".yaml";
        std::string why;
        auto text = hooks_.read_file ? hooks_.read_file(path, k_max_config_file, why)
                                     : read_file(path, why, k_max_config_file);
        profile p;
        if (text) {
            // A file that cannot be read as a profile is reported in it, once; the devices
            // naming it are left out (no error of theirs would say more).
            p.broken = true;
            const auto source = static_cast<std::uint32_t>(sources_.size());
            sources_.push_back(path);
            if (auto doc = parse(*text, source)) {
                auto t = std::make_unique<yaml::tree>(std::move(*doc));
                const auto root = t->root();
                trees_.push_back(std::move(t));
                YAML::Mark start;
                start.pos = static_cast<int>(source);
                const value_ref top{root, root.Mark().is_null() ? start : root.Mark(), ""};
                if (within_budget(root)) {
                    if (root.IsMap())
                        p = read_profile(top, *name_of);
                    else
                        fail(top, "a profile file must be a map of device keys and points");
                }
            }
        } else {
            fail(name_ref, "unknown profile '" + *name_of +
                               "' (no `profiles:` entry has this id; " + path + ": " + why + ")");
        }
        it = profiles_.emplace(*name_of, std::move(p)).first;
    } else if (!it->second.found && !it->second.broken) {
        fail(name_ref, "unknown profile '" + *name_of + "'");
    }
    if (!it->second.found) return nullptr;
    it->second.used = true;
    return &it->second;
}

// An inline profile no device uses is still checked for unknown keys in its points (its own
// keys were checked when it was read); its values are only read through a device.
void loader::check_unused_profiles() {
    for (auto& [id, p] : profiles_) {
        if (p.used || !p.found || !p.points) continue;
        for (auto& item : list(*p.points)) {
            map_reader pm(*this, item, point_options_);
            if (pm.is_map()) pm.check_keys(p.mask, p.driver);
        }
    }
}

std::optional<std::vector<std::int64_t>> loader::per_values(const value_ref& v,
                                                            const driver_schema::per_value_key& k) {
    const std::string key(k.key);
    std::vector<std::int64_t> out;
    if (v.node.IsSequence()) {
        if (v.node.size() == 0) {
            fail(v, "an empty list of " + key + "s");
            return out;
        }
        std::vector<std::int64_t> values;
        bool ok = true;
        for (auto& item : list(v)) {
            auto x = integer(item, k.lo, k.hi);
            if (!x) {
                ok = false;
                continue;
            }
            if (std::find(values.begin(), values.end(), *x) != values.end()) {
                fail(item, key + " " + std::to_string(*x) + " is listed twice");
                ok = false;
            }
            values.push_back(*x);
        }
        if (ok) out = std::move(values);
        return out;
    }
    if (!v.node.IsScalar()) return std::nullopt;
    auto text = expand_env(std::string(v.node.Scalar()), nullptr);
    if (!text) return std::nullopt;
    if (text->find('-', 1) == std::string::npos) return std::nullopt;  // a plain value
    const auto range = parse_range(*text);
    if (!range) {
        fail(v, "expected an integer, a range such as \"1-30\" or a list such as [1, 2, 5], got '" +
                    *text + "'");
        return out;
    }
    if (auto why = check_range(*range, k.lo, k.hi, key); !why.empty()) {
        fail(v, why);
        return out;
    }
    for (auto x = range->first; x <= range->last; ++x)
        out.push_back(x);
    return out;
}

void loader::device_item(const value_ref& v, std::vector<device>& out,
                         std::map<std::string, mark>& seen) {
    map_reader own(*this, v, device_options_);
    if (!own.is_map() || over_budget_) return;

    profile* prof = nullptr;
    if (auto r = own.get("profile")) {
        prof = use_profile(*r);
        // Without its profile the device would be missing what the profile holds (points,
        // a driver, ...): one error about the profile says it all.
        if (!prof) return;
    }

    // The device's keys, then the profile's it does not set; points apart.
    point_list points;
    std::vector<entry> keys;
    for (const auto& e : own.entries()) {
        if (e.name == "points")
            points.own = own.ref(e);
        else if (e.name != "profile")
            keys.push_back(e);
    }
    if (prof) {
        for (const auto& e : prof->keys)
            if (!find_entry(keys, e.name)) keys.push_back(e);
        if (prof->points) {
            points.profile = prof->points;
            points.items = list(*prof->points);
        }
    }
    if (points.own) {
        auto mine = list(*points.own);
        points.items.insert(points.items.end(), mine.begin(), mine.end());
    }

    // A per-value key of the device's driver given as a range or list.
    const driver_schema* drv = nullptr;
    if (auto* e = find_entry(keys, "driver"); e && e->value.IsScalar())
        for (const auto* d : schema_.drivers)
            if (d->name == e->value.Scalar()) drv = d;
    std::optional<std::vector<std::int64_t>> values;
    entry* each = drv && !drv->each.key.empty() ? find_entry(keys, drv->each.key) : nullptr;
    if (each) {
        values = per_values(own.ref(*each), drv->each);
        if (values && values->empty()) return;  // reported
    }
    const std::string placeholder = each ? "{" + std::string(drv->each.key) + "}" : "";
    entry* id = find_entry(keys, "id");
    if (values && id && id->value.IsScalar() &&
        id->value.Scalar().find(placeholder) == std::string_view::npos) {
        fail(own.ref(*id), "with several " + std::string(drv->each.key) + "s the id must contain " +
                               placeholder + " (one device per " + std::string(drv->each.key) +
                               ", e.g. \"meter{" + std::string(drv->each.key) + "}\")");
        return;
    }

    // What this item adds to the budget: the profile's values and, for each further value of
    // a range, the item's own again.
    const std::size_t copies = values ? values->size() : 1;
    const std::size_t cost =
        copies * (prof ? prof->values : 0) + (copies > 1 ? (copies - 1) * count_values(v.node) : 0);
    if (values_ + cost > k_max_config_nodes) {
        fail(v, "the file expands to more than " + std::to_string(k_max_config_nodes) +
                    " values (a profile counts at each device that uses it, a device of a range "
                    "once per " +
                    (each ? std::string(drv->each.key) : std::string("value")) + ")");
        over_budget_ = true;
        return;
    }
    values_ += cost;

    // The id and the per-value key of each device, as values of a tree of their own at the
    // place of what they replace.
    const yaml::tree* ids = nullptr;
    const yaml::tree* units = nullptr;
    if (values && id && id->value.IsScalar()) {
        std::vector<std::pair<std::string, YAML::Mark>> id_text, unit_text;
        const std::string raw(id->value.Scalar());
        for (std::size_t i = 0; i < values->size(); ++i) {
            const auto n = std::to_string((*values)[i]);
            id_text.emplace_back(replace_all(raw, placeholder, n), id->value.Mark());
            unit_text.emplace_back(
                n, each->value.IsSequence() ? each->value.item(i).Mark() : each->value.Mark());
        }
        trees_.push_back(std::make_unique<yaml::tree>(yaml::tree::scalars(id_text)));
        ids = trees_.back().get();
        trees_.push_back(std::make_unique<yaml::tree>(yaml::tree::scalars(unit_text)));
        units = trees_.back().get();
    } else if (each && id && id->value.IsScalar() &&
               id->value.Scalar().find(placeholder) != std::string_view::npos) {
        // One plain value: `{key}` in the id still names it.
        auto n = expand_env(std::string(each->value.Scalar()), nullptr);
        if (each->value.IsScalar() && n && digits(*n)) {
            trees_.push_back(std::make_unique<yaml::tree>(
                yaml::tree::scalars({{replace_all(std::string(id->value.Scalar()), placeholder, *n),
                                      id->value.Mark()}})));
            ids = trees_.back().get();
        }
    }

    for (std::size_t i = 0; i < copies; ++i) {
        auto mine = keys;
        if (ids) find_entry(mine, "id")->value = ids->root().item(i);
        if (units) find_entry(mine, drv->each.key)->value = units->root().item(i);
        if (expand_) built_.push_back({mine, points.items});
        map_reader m(*this, v.path, own.where(), device_options_, std::move(mine));
        device d;
        device_entry(m, d, points);
        if (!d.id.empty()) unique(seen, d.id, d.where, v.path + ".id", "device id");
        out.push_back(std::move(d));
    }
}

std::string loader::emit_expanded(const yaml::node& root) const {
    YAML::Emitter out;
    out.SetIndent(2);
    out << YAML::Comment("ferry check --expand " + file_ +
                         ": profiles and unit-id ranges resolved, keys as written");
    out << YAML::BeginMap;
    for (std::size_t i = 0; root.IsMap() && i < root.size(); ++i) {
        const auto key = root.key(i).Scalar();
        if (key == "profiles") continue;
        out << YAML::Key << std::string(key) << YAML::Value;
        if (key != "devices") {
            emit(out, root.value(i));
            continue;
        }
        out << YAML::BeginSeq;
        for (const auto& d : built_) {
            out << YAML::BeginMap;
            for (const auto& e : d.keys) {
                out << YAML::Key << e.name << YAML::Value;
                emit(out, e.value);
            }
            out << YAML::Key << "points" << YAML::Value << YAML::BeginSeq;
            for (const auto& p : d.points) {
                out << YAML::Flow;
                emit(out, p.node);
            }
            out << YAML::EndSeq << YAML::EndMap;
        }
        out << YAML::EndSeq;
    }
    out << YAML::EndMap;
    return std::string(out.c_str()) + "\n";
}

}  // namespace ferry::config
