#include "core/topic.hpp"

namespace ferry {
namespace {

std::vector<std::string_view> split_levels(std::string_view s) {
    std::vector<std::string_view> out;
    std::size_t start = 0;
    for (;;) {
        auto slash = s.find('/', start);
        if (slash == std::string_view::npos) {
            out.push_back(s.substr(start));
            return out;
        }
        out.push_back(s.substr(start, slash - start));
        start = slash + 1;
    }
}

// Glob within one level: `*` matches any run of characters (no '/', levels are split already).
bool glob_level(std::string_view pat, std::string_view text) {
    std::size_t p = 0, t = 0, star = std::string_view::npos, resume = 0;
    while (t < text.size()) {
        if (p < pat.size() && pat[p] == '*') {
            star = p++;
            resume = t;
        } else if (p < pat.size() && pat[p] == text[t]) {
            ++p;
            ++t;
        } else if (star != std::string_view::npos) {
            p = star + 1;
            t = ++resume;
        } else {
            return false;
        }
    }
    while (p < pat.size() && pat[p] == '*')
        ++p;
    return p == pat.size();
}

bool set_why(std::string* why, std::string text) {
    if (why) *why = std::move(text);
    return false;
}

}  // namespace

std::optional<topic_pattern> topic_pattern::compile(std::string_view text, std::string* why) {
    if (text.empty()) {
        set_why(why, "empty pattern");
        return std::nullopt;
    }
    auto levels = split_levels(text);
    topic_pattern p;
    p.text_ = std::string(text);
    for (std::size_t i = 0; i < levels.size(); ++i) {
        auto level = levels[i];
        if (level.find('#') != std::string_view::npos) {
            if (level != "#" || i + 1 != levels.size()) {
                set_why(why, "'#' must be a whole level and the last one");
                return std::nullopt;
            }
        }
        if (level.find('+') != std::string_view::npos && level != "+") {
            set_why(why, "'+' must be a whole level");
            return std::nullopt;
        }
        if (level.empty()) {
            set_why(why, "empty level in pattern");
            return std::nullopt;
        }
        p.levels_.emplace_back(level);
    }
    return p;
}

bool topic_pattern::matches(std::string_view address) const {
    std::size_t start = 0;
    for (std::size_t i = 0; i < levels_.size(); ++i) {
        const auto& pat = levels_[i];
        if (pat == "#") return true;
        if (start > address.size()) return false;
        auto slash = address.find('/', start);
        auto level = address.substr(
            start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
        if (pat != "+" && !glob_level(pat, level)) return false;
        if (slash == std::string_view::npos) {
            // Address exhausted: matches only if the pattern ends here or continues with '#'.
            return i + 1 == levels_.size() || (i + 2 == levels_.size() && levels_[i + 1] == "#");
        }
        start = slash + 1;
    }
    return false;  // the address has more levels than the pattern
}

std::optional<topic_template> topic_template::compile(std::string_view text, std::string* why) {
    topic_template t;
    t.text_ = std::string(text);
    if (text.empty()) {
        set_why(why, "empty topic");
        return std::nullopt;
    }
    std::string literal;
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (c == '+' || c == '#') {
            set_why(why, std::string("wildcard '") + c + "' is not allowed in a publish topic");
            return std::nullopt;
        }
        if (c == '}') {
            set_why(why, "unmatched '}' at position " + std::to_string(i + 1));
            return std::nullopt;
        }
        if (c != '{') {
            literal.push_back(c);
            continue;
        }
        auto close = text.find('}', i);
        if (close == std::string_view::npos) {
            set_why(why, "unclosed '{' at position " + std::to_string(i + 1));
            return std::nullopt;
        }
        auto name = text.substr(i + 1, close - i - 1);
        part_kind kind;
        if (name == "gateway")
            kind = part_kind::gateway;
        else if (name == "device")
            kind = part_kind::device;
        else if (name == "tag")
            kind = part_kind::tag;
        else if (name == "rule")
            kind = part_kind::rule;
        else {
            set_why(why, "unknown placeholder {" + std::string(name) +
                             "} (known: {gateway} {device} {tag} {rule})");
            return std::nullopt;
        }
        if (!literal.empty()) t.parts_.push_back({part_kind::literal, std::move(literal)});
        literal.clear();
        t.parts_.push_back({kind, {}});
        t.uses_device_ |= kind == part_kind::device;
        t.uses_tag_ |= kind == part_kind::tag;
        i = close;
    }
    if (!literal.empty()) t.parts_.push_back({part_kind::literal, std::move(literal)});
    return t;
}

void topic_template::expand(const template_vars& vars, std::string& out) const {
    out.clear();
    for (const auto& p : parts_) {
        switch (p.kind) {
            case part_kind::literal:
                out += p.literal;
                break;
            case part_kind::gateway:
                out += vars.gateway;
                break;
            case part_kind::device:
                out += vars.device;
                break;
            case part_kind::tag:
                out += vars.tag;
                break;
            case part_kind::rule:
                out += vars.rule;
                break;
        }
    }
}

std::string topic_template::expand(const template_vars& vars) const {
    std::string out;
    expand(vars, out);
    return out;
}

}  // namespace ferry
