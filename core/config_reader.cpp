// The config machinery (core/config_reader.hpp): reading typed values with their positions,
// checking keys against declared options, and the reference generated from the declarations.
#include "core/config_reader.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <unordered_map>
#include <utility>

#include "core/topic.hpp"

namespace ferry::config {
namespace {

// ---------------------------------------------------------------------------------------------
// Features the YAML accepts but this version of Ferry cannot do yet. Each present key (and,
// when `value` is set, only with that value) is an error at its position, e.g.
//   {"commands.enabled", "true", "'commands' (downlink writes)"} gives
//   commands.enabled: 'commands' (downlink writes) is not built yet in this version of Ferry
// `key` is a key path with the list indices removed. Empty now: every key is built.
struct not_built_row {
    std::string_view key;
    std::string_view value;  // empty: any value
    std::string_view what;
};

constexpr std::array<not_built_row, 0> k_not_built_yet{};

// ---------------------------------------------------------------------------------------------
// Small helpers.

std::string join(std::span<const std::string_view> items, std::string_view sep) {
    std::string out;
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (i) out += sep;
        out += items[i];
    }
    return out;
}

// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
    for (std::size_t i = 0; i <= a.size(); ++i)
        d[i][0] = i;
    for (std::size_t j = 0; j <= b.size(); ++j)
        d[0][j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        for (std::size_t j = 1; j <= b.size(); ++j) {
            std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
    }
    return d[a.size()][b.size()];
}

// The closest known key to a misspelt one, if any is close enough to be a likely typo.
std::string_view suggest(std::string_view unknown, std::span<const option> opts, driver_mask mask) {
    std::string_view best;
    std::size_t best_d = std::numeric_limits<std::size_t>::max();
    for (const auto& o : opts) {
        if (!(o.drivers & mask)) continue;
        std::size_t d = edit_distance(unknown, o.name);
        // "password" -> "password_file": a known key that only adds a suffix.
        if (o.name.size() > unknown.size() && o.name.substr(0, unknown.size()) == unknown &&
            o.name[unknown.size()] == '_')
            d = std::min<std::size_t>(d, 1);
        if (d < best_d) {
            best_d = d;
            best = o.name;
        }
    }
    std::size_t limit = std::min<std::size_t>(2, std::max<std::size_t>(1, unknown.size() / 3));
    return best_d <= limit ? best : std::string_view{};
}

bool is_name_char(char c, bool allow_dot) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || (allow_dot && c == '.');
}

bool valid_name(std::string_view s, bool allow_dot) {
    if (s.empty() || s.size() > k_max_name) return false;
    return std::all_of(s.begin(), s.end(), [&](char c) { return is_name_char(c, allow_dot); });
}

// Why `s` is not a valid name: too long (names go into MQTT topics, whose limit is 65535 bytes
// in all; k_max_name keeps every topic Ferry builds far below it), or a character not allowed.
std::string bad_name(const std::string& s, std::string_view what, std::string_view chars) {
    if (s.size() > k_max_name) {
        return "'" + s.substr(0, 32) + "...' (" + std::to_string(s.size()) +
               " bytes) is not a valid " + std::string(what) + ": longer than " +
               std::to_string(k_max_name) + " bytes";
    }
    return "'" + s + "' is not a valid " + std::string(what) + " (use " + std::string(chars) + ")";
}

// "rules[3].match[0]" -> "rules[].match[]"
std::string generic_path(std::string_view path) {
    std::string out;
    bool in_index = false;
    for (char c : path) {
        if (c == '[') in_index = true;
        if (c == ']') in_index = false;
        if (!in_index || c == '[') out.push_back(c);
    }
    return out;
}

std::string describe(const yaml::node& n) {
    switch (n.type()) {
        case yaml::kind::scalar:
            return "'" + std::string(n.Scalar()) + "'";
        case yaml::kind::sequence:
            return "a list";
        case yaml::kind::map:
            return "a map";
        case yaml::kind::null:
            break;
    }
    return "nothing";
}

std::optional<double> parse_number(std::string_view s) {
    if (!s.empty() && s[0] == '+') s.remove_prefix(1);
    double v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc{} || p != s.data() + s.size() || !std::isfinite(v))
        return std::nullopt;
    return v;
}

std::optional<std::string> env_value(const char* v) {
    if (!v) return std::nullopt;
    return std::string(v);
}

std::string dir_of(const std::string& file) {
    auto slash = file.rfind('/');
    if (slash == std::string::npos) return "";
    return file.substr(0, slash + 1);
}

std::string cell(std::string_view s) {
    std::string out;
    for (char c : s) {
        if (c == '|' && (out.empty() || out.back() != '\\')) out += '\\';
        out += c;
    }
    return out;
}

}  // namespace

// Reads a whole file of at most `max_bytes`; on failure returns nullopt and sets `why` to the
// reason. Reads no more than max_bytes + 1 whatever the file is (/dev/zero, a FIFO, a log).
std::optional<std::string> read_file(const std::string& path, std::string& why,
                                     std::size_t max_bytes) {
    errno = 0;
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) {
        why = std::strerror(errno);
        return std::nullopt;
    }
    std::string out;
    char buf[4096];
    for (;;) {
        std::size_t n = std::fread(buf, 1, sizeof buf, f);
        out.append(buf, n);
        if (out.size() > max_bytes) {
            std::fclose(f);
            why = "larger than " + std::to_string(max_bytes) + " bytes (the limit for this file)";
            return std::nullopt;
        }
        if (n < sizeof buf) break;
    }
    bool failed = std::ferror(f) != 0;
    int err = errno;
    std::fclose(f);
    if (failed) {
        why = std::strerror(err ? err : EIO);
        return std::nullopt;
    }
    return out;
}

// Integers: decimal with an optional '-', or 0x hexadecimal (Modbus addresses often are).
std::optional<std::int64_t> parse_integer(std::string_view s) {
    std::int64_t v = 0;
    int base = 10;
    bool neg = false;
    if (!s.empty() && s[0] == '-') {
        neg = true;
        s.remove_prefix(1);
    }
    if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s.remove_prefix(2);
    }
    if (s.empty() || s[0] == '-' || s[0] == '+') return std::nullopt;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
    if (ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
    return neg ? -v : v;
}

std::optional<int_range> parse_range(std::string_view text) {
    auto number = [](std::string_view s) -> std::optional<std::int64_t> {
        while (!s.empty() && s.front() == ' ')
            s.remove_prefix(1);
        while (!s.empty() && s.back() == ' ')
            s.remove_suffix(1);
        std::int64_t v = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (s.empty() || s[0] == '-' || ec != std::errc{} || p != s.data() + s.size())
            return std::nullopt;
        return v;
    };
    const auto dash = text.find('-', 1);
    if (dash == std::string_view::npos) return std::nullopt;
    auto first = number(text.substr(0, dash));
    auto last = number(text.substr(dash + 1));
    if (!first || !last) return std::nullopt;
    return int_range{*first, *last};
}

std::string check_range(const int_range& r, std::int64_t lo, std::int64_t hi,
                        std::string_view what) {
    for (const auto x : {r.first, r.last})
        if (x < lo || x > hi)
            return std::string(what) + " " + std::to_string(x) + " is out of range (" +
                   std::to_string(lo) + ".." + std::to_string(hi) + ")";
    if (r.first > r.last)
        return "the range " + std::to_string(r.first) + "-" + std::to_string(r.last) +
               " runs backwards (write \"" + std::to_string(r.last) + "-" +
               std::to_string(r.first) + "\")";
    return {};
}

mark to_mark(const YAML::Mark& m) {
    return {m.line < 0 ? 0 : m.line + 1, m.column < 0 ? 0 : m.column + 1};
}

map_reader::map_reader(loader& ld, const value_ref& v, std::span<const option> opts)
    : ld_(ld), opts_(opts), path_(v.path), where_(v.where) {
    if (v.node.IsNull()) {
        is_map_ = true;  // `section:` with nothing under it reads as an empty map
        return;
    }
    if (!v.node.IsMap()) {
        ld_.fail(v, "expected a map, got " + describe(v.node));
        return;
    }
    is_map_ = true;
    where_ = v.node.Mark();
    const std::size_t pairs = v.node.size();
    entries_.reserve(pairs);
    // The keys kept so far, by name, once the map is too large to search them in a row (a map
    // of a point has a handful of keys; a hostile one may have 100,000).
    constexpr std::size_t k_scan = 16;
    std::unordered_map<std::string_view, std::size_t> index;
    for (std::size_t i = 0; i < pairs; ++i) {
        const yaml::node key = v.node.key(i);
        if (!key.IsScalar()) {
            ld_.fail(key.Mark(), path_, "a key must be a string, got " + describe(key));
            continue;
        }
        const std::string_view name = key.Scalar();
        const entry* first = nullptr;
        if (entries_.size() <= k_scan) {
            first = find(name);
        } else {
            if (index.empty())
                for (std::size_t j = 0; j < entries_.size(); ++j)
                    index.emplace(entries_[j].key.Scalar(), j);
            if (auto it = index.find(name); it != index.end()) first = &entries_[it->second];
        }
        if (first) {
            ld_.fail(key.Mark(), sub(name),
                     "duplicate key (first at line " +
                         std::to_string(to_mark(first->key.Mark()).line) + ")");
            continue;
        }
        if (!index.empty()) index.emplace(name, entries_.size());
        entries_.push_back({std::string(name), key, v.node.value(i)});
    }
}

void map_reader::check_keys(driver_mask mask, std::string_view driver) {
    std::vector<entry> kept;
    for (auto& e : entries_) {
        auto it = std::find_if(opts_.begin(), opts_.end(),
                               [&](const option& o) { return o.name == e.name; });
        if (it == opts_.end()) {
            std::string msg = "unknown key";
            if (auto s = suggest(e.name, opts_, mask); !s.empty())
                msg += " (did you mean '" + std::string(s) + "'?)";
            ld_.fail(e.key.Mark(), path_of(e), msg);
            continue;
        }
        if (!(it->drivers & mask)) {
            ld_.fail(e.key.Mark(), path_of(e),
                     "'" + e.name + "' does not apply to driver '" + std::string(driver) + "'");
            continue;
        }
        for (const auto& row : k_not_built_yet) {
            if (row.key != generic_path(path_of(e))) continue;
            if (row.value.empty()) {
                ld_.fail(e.key.Mark(), path_of(e),
                         std::string(row.what) + " is not built yet in this version of Ferry");
            } else if (e.value.IsScalar()) {
                auto text = ld_.expand_env(std::string(e.value.Scalar()), nullptr);
                if (text && *text == row.value)
                    ld_.fail(e.value.Mark(), path_of(e),
                             std::string(row.what) + " is not built yet in this version of Ferry");
            }
        }
        kept.push_back(std::move(e));
    }
    // Keys reported above are not read any further: one error per key.
    entries_ = std::move(kept);
}

bool map_reader::require(std::string_view name, std::string_view note) const {
    if (has(name)) return true;
    std::string msg = "missing required key '" + std::string(name) + "'";
    if (!note.empty()) msg += " (" + std::string(note) + ")";
    ld_.fail(where_, path_, msg);
    return false;
}

std::optional<std::string> loader::expand_env(const std::string& s, const value_ref* report) {
    if (s.find("${") == std::string::npos) return s;
    std::string out;
    bool ok = true;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '$' && i + 1 < s.size() && s[i + 1] == '{') {
            auto close = s.find('}', i + 2);
            if (close != std::string::npos) {
                std::string name = s.substr(i + 2, close - i - 2);
                bool valid = !name.empty() && !(name[0] >= '0' && name[0] <= '9') &&
                             std::all_of(name.begin(), name.end(),
                                         [](char c) { return is_name_char(c, false) && c != '-'; });
                if (valid) {
                    if (auto val = hooks_.getenv ? hooks_.getenv(name)
                                                 : env_value(std::getenv(name.c_str()))) {
                        out += *val;
                    } else {
                        ok = false;
                        if (report) fail(*report, "environment variable " + name + " is not set");
                    }
                    i = close;
                    continue;
                }
            }
        }
        out.push_back(s[i]);
    }
    if (!ok) return std::nullopt;
    return out;
}

std::optional<std::string> loader::str(const value_ref& v) {
    if (!v.node.IsScalar()) {
        fail(v, "expected a string, got " + describe(v.node));
        return std::nullopt;
    }
    return expand_env(std::string(v.node.Scalar()), &v);
}

std::optional<std::string> loader::nonempty_str(const value_ref& v) {
    auto s = str(v);
    if (s && s->empty()) {
        fail(v, "must not be empty");
        return std::nullopt;
    }
    return s;
}

std::optional<bool> loader::boolean(const value_ref& v) {
    if (!v.node.IsScalar()) {
        fail(v, "expected true or false, got " + describe(v.node));
        return std::nullopt;
    }
    auto s = expand_env(std::string(v.node.Scalar()), &v);
    if (!s) return std::nullopt;
    if (*s == "true") return true;
    if (*s == "false") return false;
    fail(v, "expected true or false, got '" + *s + "'");
    return std::nullopt;
}

std::optional<std::int64_t> loader::integer(const value_ref& v, std::int64_t lo, std::int64_t hi) {
    if (!v.node.IsScalar()) {
        fail(v, "expected an integer, got " + describe(v.node));
        return std::nullopt;
    }
    auto s = expand_env(std::string(v.node.Scalar()), &v);
    if (!s) return std::nullopt;
    auto x = parse_integer(*s);
    if (!x) {
        fail(v, "expected an integer, got '" + *s + "'");
        return std::nullopt;
    }
    if (*x < lo || *x > hi) {
        fail(v, std::to_string(*x) + " is out of range (" + std::to_string(lo) + ".." +
                    std::to_string(hi) + ")");
        return std::nullopt;
    }
    return x;
}

std::optional<double> loader::number(const value_ref& v) {
    if (!v.node.IsScalar()) {
        fail(v, "expected a number, got " + describe(v.node));
        return std::nullopt;
    }
    auto s = expand_env(std::string(v.node.Scalar()), &v);
    if (!s) return std::nullopt;
    auto x = parse_number(*s);
    if (!x) fail(v, "expected a number, got '" + *s + "'");
    return x;
}

std::optional<duration> loader::dur(const value_ref& v, bool positive) {
    if (!v.node.IsScalar()) {
        fail(v, "expected a duration, got " + describe(v.node));
        return std::nullopt;
    }
    auto s = expand_env(std::string(v.node.Scalar()), &v);
    if (!s) return std::nullopt;
    auto d = parse_duration(*s);
    if (!d) {
        fail(v, "invalid duration '" + *s + "' (use e.g. 250ms, 2s, 5m, 1h)");
        return std::nullopt;
    }
    if (positive && d->count() == 0) {
        fail(v, "must be greater than 0");
        return std::nullopt;
    }
    // Durations are added to clock readings (steady_clock counts nanoseconds in 64 bits):
    // one bound for every key keeps all of that arithmetic far from overflow.
    if (*d > k_max_duration) {
        fail(v, "duration '" + *s + "' is too long (at most " +
                    std::to_string(k_max_duration.count() / 3600000) + "h)");
        return std::nullopt;
    }
    return d;
}

std::optional<std::uint64_t> loader::size(const value_ref& v, std::uint64_t lo, std::uint64_t hi) {
    if (!v.node.IsScalar()) {
        fail(v, "expected a size, got " + describe(v.node));
        return std::nullopt;
    }
    auto s = expand_env(std::string(v.node.Scalar()), &v);
    if (!s) return std::nullopt;
    auto n = parse_size(*s);
    if (!n) {
        fail(v, "invalid size '" + *s + "' (use e.g. 512, 64KiB, 512MiB, 1GiB)");
        return std::nullopt;
    }
    if (*n < lo || *n > hi) {
        fail(v, "size '" + *s + "' is out of range (" + std::to_string(lo) + ".." +
                    std::to_string(hi) + " bytes)");
        return std::nullopt;
    }
    return n;
}

std::optional<std::size_t> loader::choice(const value_ref& v,
                                          std::span<const std::string_view> names,
                                          std::string_view noun, std::string_view label) {
    auto s = str(v);
    if (!s) return std::nullopt;
    for (std::size_t i = 0; i < names.size(); ++i)
        if (names[i] == *s) return i;
    fail(v, "unknown " + std::string(noun) + " '" + *s + "' (" + std::string(label) + ": " +
                join(names, ", ") + ")");
    return std::nullopt;
}

std::vector<value_ref> loader::list(const value_ref& v) {
    std::vector<value_ref> out;
    if (v.node.IsNull()) return out;
    if (!v.node.IsSequence()) {
        fail(v, "expected a list, got " + describe(v.node));
        return out;
    }
    out.reserve(v.node.size());
    for (std::size_t i = 0; i < v.node.size(); ++i) {
        const yaml::node item = v.node.item(i);
        std::string path = v.path + "[" + std::to_string(i) + "]";
        // yaml-cpp places an empty item at the next token; the list's own position is the
        // better hint then.
        if (item.IsNull()) {
            fail(v.node.Mark(), path, "empty list item");
            continue;
        }
        out.push_back({item, item.Mark(), std::move(path)});
    }
    return out;
}

std::vector<std::pair<std::string, value_ref>> loader::strings(const value_ref& v) {
    std::vector<std::pair<std::string, value_ref>> out;
    if (v.node.IsScalar()) {
        if (auto s = str(v)) out.emplace_back(std::move(*s), v);
        return out;
    }
    if (!v.node.IsSequence()) {
        fail(v, "expected a string or a list of strings, got " + describe(v.node));
        return out;
    }
    for (auto& item : list(v))
        if (auto s = str(item)) out.emplace_back(std::move(*s), item);
    return out;
}

std::optional<std::string> loader::expand_placeholders(
    const std::string& text, const value_ref& v,
    std::initializer_list<std::pair<std::string_view, std::string_view>> vars) {
    std::string out;
    std::string known;
    for (const auto& [name, value] : vars)
        known += (known.empty() ? "{" : " {") + std::string(name) + "}";
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '{') {
            out.push_back(text[i]);
            continue;
        }
        auto close = text.find('}', i);
        if (close == std::string::npos) {
            fail(v, "unclosed '{' at position " + std::to_string(i + 1));
            return std::nullopt;
        }
        std::string_view name(text.data() + i + 1, close - i - 1);
        auto it = std::find_if(vars.begin(), vars.end(), [&](auto& p) { return p.first == name; });
        if (it == vars.end()) {
            fail(v, "unknown placeholder {" + std::string(name) + "} (known: " + known + ")");
            return std::nullopt;
        }
        out += it->second;
        i = close;
    }
    return out;
}

void loader::topic(const value_ref& v, std::string& out) {
    auto s = str(v);
    if (!s) return;
    // With names of at most k_max_name bytes, a topic then stays far below MQTT's 65535.
    if (s->size() > k_max_topic_template) {
        fail(v, "topic template of " + std::to_string(s->size()) + " bytes is longer than " +
                    std::to_string(k_max_topic_template));
        return;
    }
    std::string why;
    if (!topic_template::compile(*s, &why)) {
        fail(v, "invalid topic template '" + *s + "': " + why);
        return;
    }
    out = std::move(*s);
}

// ---------------------------------------------------------------------------------------------
// Sections.

// An alias is the node it refers to, so the document is small; the loader, though, would
// build every use of it (one device aliased 3,000 times: 3,000 devices). Counting what the
// file expands to first, and stopping at the bound, keeps a short file from costing seconds
// and hundreds of MiB. The error stands at the entry where the bound was passed.
//
// A depth-first walk, children last to first (the order the bound was first defined in, so a
// file is refused at the same entry as before); a map's keys are counted when it is entered.
// Paths are only spelled out for the error: the walk's frames hold how each was reached.
bool loader::within_budget(const yaml::node& root) {
    struct frame {
        yaml::node node;
        YAML::Mark at;         // where to report: the key of the entry (an alias's value has its
                               // anchor's position, possibly far away)
        std::size_t from = 0;  // its place in the parent: pair or item index
        std::size_t left = 0;  // children not walked yet
    };
    std::vector<frame> frames;
    // The path of the value reached from the innermost frame by child `last`.
    auto path_of = [&](std::size_t last) {
        std::string path;
        for (std::size_t f = 0; f < frames.size(); ++f) {
            const auto& parent = frames[f].node;
            const std::size_t i = f + 1 < frames.size() ? frames[f + 1].from : last;
            if (parent.IsMap()) {
                const auto key = parent.key(i);
                const std::string name = key.IsScalar() ? std::string(key.Scalar()) : "?";
                path = path.empty() ? name : path + "." + name;
            } else {
                path += "[" + std::to_string(i) + "]";
            }
        }
        return path;
    };
    // Counted on from the trees read before (the config, then each profile file).
    std::size_t& count = values_;
    // Visits a value: counts it, then opens a frame for its children.
    auto visit = [&](const yaml::node& n, const YAML::Mark& at, std::size_t from) {
        if (++count > k_max_config_nodes) {
            fail(at, path_of(from),
                 "the file expands to more than " + std::to_string(k_max_config_nodes) +
                     " values (each use of a YAML alias counts as a copy of what it refers to)");
            return false;
        }
        if (frames.size() > k_max_config_depth) {
            fail(at, path_of(from),
                 "nested deeper than " + std::to_string(k_max_config_depth) + " levels");
            return false;
        }
        if (n.IsMap()) count += n.size();  // the keys
        if (n.size()) frames.push_back({n, at, from, n.size()});
        return true;
    };
    if (!visit(root, root.Mark(), 0)) return false;
    while (!frames.empty()) {
        auto& top = frames.back();
        if (top.left == 0) {
            frames.pop_back();
            continue;
        }
        const std::size_t i = --top.left;
        const yaml::node parent = top.node;
        bool ok = true;
        if (parent.IsMap()) {
            ok = visit(parent.value(i), parent.key(i).Mark(), i);
        } else {
            const auto item = parent.item(i);
            ok = visit(item, item.Mark().is_null() ? top.at : item.Mark(), i);
        }
        if (!ok) return false;
    }
    return true;
}

// ---- The loader's own services ---------------------------------------------------------------

loader::loader(std::string file, const schema& s, const load_hooks& hooks)
    : file_(std::move(file)),
      base_dir_(dir_of(file_)),
      schema_(s),
      hooks_(hooks),
      profiles_dir_(s.profiles_dir),
      sources_{file_} {
    // One table of device keys and one of point keys, over every driver: a key one driver
    // takes and another does not is then "does not apply to driver", not "unknown key". Rows
    // keep the order of their first declaration.
    auto merge = [](std::vector<option>& out, std::span<const option> rows, driver_mask bit) {
        for (const auto& row : rows) {
            auto it = std::find_if(out.begin(), out.end(),
                                   [&](const option& o) { return o.name == row.name; });
            if (it == out.end()) {
                out.push_back(row);
                out.back().drivers = bit;
            } else {
                it->drivers |= bit;
            }
        }
    };
    device_options_.push_back({"id", "string [A-Za-z0-9_.-]+", "required",
                               "Unique device name; the first level of the bus address "
                               "`device/tag`."});
    for (const auto* d : schema_.drivers)
        driver_names_.push_back(d->name);
    device_options_.push_back(
        {"driver", "", "required", "How the device is read.", k_all_drivers, driver_names_});
    device_options_.push_back(
        {"profile", "string", "none",
         "Takes the keys and points of this profile (`profiles[]`, or NAME.yaml in "
         "`gateway.profiles_dir`); the device's own keys override the profile's, its own "
         "`points` are added after the profile's."});
    point_options_.push_back({"name", "string [A-Za-z0-9_.-]+", "required",
                              "Tag name, unique within the device; the second level of "
                              "`device/tag`."});
    for (std::size_t i = 0; i < schema_.drivers.size(); ++i) {
        const driver_mask bit = driver_mask{1} << i;
        merge(device_options_, schema_.drivers[i]->device_options, bit);
        merge(point_options_, schema_.drivers[i]->point_options, bit);
    }
    device_options_.push_back(
        {"points", "list of maps", "required (unless the profile has points)",
         "The values read from the device; at least one. With a `profile`, added after the "
         "profile's points."});

    top_options_ = {
        {"gateway", "map", "required", "This gateway: id, data directory, log level."},
        {"http", "map", "absent: no HTTP server",
         "The HTTP server for /metrics, /healthz, /readyz and /api/v1/*."},
        {"devices", "list of maps", "[]", "The devices to poll."},
        {"profiles", "list of maps", "[]",
         "Reusable devices: each has an `id` and any device keys but `id` and `profile` "
         "(docs/PROFILES.md)."},
    };
    for (const auto* sec : schema_.sections)
        top_options_.push_back(sec->top);
}

// A mark's pos is the number of the file it stands in (core/yaml_tree.hpp). The same error
// twice is reported once: a profile's keys are read again for each device that uses it, and
// a device's own keys for each unit id of its range.
void loader::fail(const YAML::Mark& m, std::string path, std::string message) {
    auto pos = to_mark(m);
    const auto source = static_cast<std::size_t>(m.pos < 0 ? 0 : m.pos);
    error e{source < sources_.size() ? sources_[source] : file_, pos.line, pos.column,
            std::move(path), std::move(message)};
    if (!reported_.insert(e.to_string()).second) return;
    errors_.push_back(std::move(e));
}

void loader::unique(std::map<std::string, mark>& seen, const std::string& name, const mark& here,
                    std::string path, std::string_view what) {
    auto [it, fresh] = seen.emplace(name, here);
    if (fresh) return;
    YAML::Mark at;
    at.line = here.line - 1;
    at.column = here.column - 1;
    fail(at, std::move(path),
         "duplicate " + std::string(what) + " '" + name + "' (first at line " +
             std::to_string(it->second.line) + ")");
}

std::optional<std::string> loader::name(const value_ref& v, std::string_view what, bool allow_dot) {
    auto s = str(v);
    if (!s) return std::nullopt;
    if (valid_name(*s, allow_dot)) return s;
    fail(v, bad_name(*s, what, allow_dot ? "[A-Za-z0-9_.-]+" : "[A-Za-z0-9_-]+"));
    return std::nullopt;
}

std::optional<std::string> loader::secret_file(const value_ref& v, const std::string& path) {
    std::string why;
    auto content = hooks_.read_file ? hooks_.read_file(path, k_max_secret_file, why)
                                    : read_file(path, why, k_max_secret_file);
    if (!content) {
        fail(v, "cannot read password file '" + path + "': " + why);
        return std::nullopt;
    }
    while (!content->empty() && (content->back() == '\n' || content->back() == '\r'))
        content->pop_back();
    if (content->empty()) {
        fail(v, "password file '" + path + "' is empty");
        return std::nullopt;
    }
    return content;
}

std::optional<value_ref> loader::recall(const std::string& key) const {
    auto it = kept_.find(key);
    if (it == kept_.end()) return std::nullopt;
    return it->second;
}

// ---- The reference ---------------------------------------------------------------------------

namespace {

// Tables of `docs`, each row's "Drivers:" note naming the drivers of `shown` (a mask over the
// schema's drivers) that take it, when not all of them do.
std::string tables_markdown(const schema& s, const std::vector<section_doc>& docs,
                            driver_mask shown) {
    // Only bits of drivers the schema has: a row every one of them takes gets no note.
    if (s.drivers.size() < 64) shown &= (driver_mask{1} << s.drivers.size()) - 1;
    std::string out;
    for (const auto& sec : docs) {
        out += "### `" + std::string(sec.path) + "`\n\n";
        if (!sec.help.empty()) out += std::string(sec.help) + "\n\n";
        out += "| key | type | default | meaning |\n| --- | --- | --- | --- |\n";
        for (const auto& o : sec.options) {
            if (!(o.drivers & shown)) continue;
            std::string type = o.choices.empty() ? cell(o.type) : join(o.choices, " \\| ");
            std::string help = cell(o.help);
            if ((o.drivers & shown) != shown) {
                std::vector<std::string_view> names;
                for (std::size_t i = 0; i < s.drivers.size(); ++i)
                    if (o.drivers & shown & (driver_mask{1} << i))
                        names.push_back(s.drivers[i]->name);
                help += " Drivers: " + join(names, ", ") + ".";
            }
            out += "| `" + std::string(o.name) + "` | " + type + " | " + cell(o.def) + " | " +
                   help + " |\n";
        }
        out += "\n";
    }
    return out;
}

void add_doc(std::vector<section_doc>& docs, const section_doc& d) {
    if (std::none_of(docs.begin(), docs.end(),
                     [&](const section_doc& o) { return o.path == d.path; }))
        docs.push_back(d);
}

}  // namespace

std::string reference_markdown(const schema& s) {
    // The loader merges the drivers' tables; a loader of no file gives them.
    const load_hooks none;
    loader ld("", s, none);
    const auto tables = ld.tables();
    std::vector<section_doc> docs;
    add_doc(docs, {"(top level)", "The sections of the file.", tables.top});
    add_doc(docs, {"gateway", "", k_gateway_options});
    add_doc(docs, {"http", "Absent: no HTTP server.", k_http_options});
    add_doc(docs,
            {"devices[]", "Keys a driver does not take are errors (e.g. `host` on modbus_rtu).",
             tables.device});
    for (const auto* d : s.drivers)
        for (const auto& doc : d->docs)
            add_doc(docs, doc);
    add_doc(docs, {"devices[].points[]", "", tables.point});
    for (const auto* sec : s.sections)
        for (const auto& doc : sec->docs)
            add_doc(docs, doc);

    std::string out = tables_markdown(s, docs, k_all_drivers);
    out += "### Not built yet\n\nAccepted by the parser but refused with an error until built:\n\n";
    if (k_not_built_yet.empty()) out += "Nothing: every key above is built.\n";
    for (const auto& row : k_not_built_yet) {
        out += "- `" + std::string(row.key);
        if (!row.value.empty()) out += ": " + std::string(row.value);
        out += "`\n";
    }
    return out;
}

std::string driver_markdown(const schema& s, std::span<const std::string_view> drivers) {
    // A schema of these drivers alone: their own rows and wording, not another driver's.
    schema only;
    for (const auto* d : s.drivers)
        if (std::find(drivers.begin(), drivers.end(), d->name) != drivers.end())
            only.drivers.push_back(d);
    const load_hooks none;
    loader ld("", only, none);
    const auto tables = ld.tables();
    std::vector<section_doc> docs;
    docs.push_back({"devices[]", "", tables.device});
    for (const auto* d : only.drivers)
        for (const auto& doc : d->docs)
            add_doc(docs, doc);
    docs.push_back({"devices[].points[]", "", tables.point});
    return tables_markdown(only, docs, k_all_drivers);
}

std::string section_markdown(const schema& s, std::string_view top_key) {
    std::vector<section_doc> docs;
    for (const auto* sec : s.sections)
        if (sec->top.name == top_key) docs = sec->docs;
    return tables_markdown(s, docs, k_all_drivers);
}

}  // namespace ferry::config
