#include "drivers/serial/regex.hpp"

#include <re2/re2.h>

#include <algorithm>
#include <utility>

namespace ferry::drivers::serial {

std::string to_re2_syntax(std::string_view p) {
    std::string out;
    out.reserve(p.size() + 8);
    bool in_class = false;
    for (std::size_t i = 0; i < p.size(); ++i) {
        const char c = p[i];
        out += c;
        if (c == '\\') {
            if (i + 1 < p.size()) out += p[++i];
            continue;
        }
        if (in_class) {
            if (c == ']') in_class = false;
            continue;
        }
        if (c == '[') {
            in_class = true;
            // A ']' right after '[' or '[^' is a literal, not the end of the class.
            if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
            if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
            continue;
        }
        // "(?<" followed by a name (not "(?<=" / "(?<!", lookbehinds RE2 rejects anyway).
        if (c == '(' && p.substr(i + 1, 2) == "?<" && i + 3 < p.size() && p[i + 3] != '=' &&
            p[i + 3] != '!') {
            out += "?P<";
            i += 2;
        }
    }
    return out;
}

regex_check check_regex(std::string_view pattern) {
    regex_check r;
    RE2::Options opts;
    opts.set_log_errors(false);
    const RE2 re(to_re2_syntax(pattern), opts);
    if (!re.ok()) {
        r.error = re.error();
        // The error quotes the pattern as compiled: show the user's spelling of the groups.
        if (pattern.find("(?P<") == std::string_view::npos)
            for (auto pos = r.error.find("(?P<"); pos != std::string::npos;
                 pos = r.error.find("(?P<", pos))
                r.error.erase(pos + 2, 1);
        return r;
    }
    std::vector<std::pair<int, std::string>> groups;
    for (const auto& [name, index] : re.NamedCapturingGroups())
        groups.emplace_back(index, name);
    std::sort(groups.begin(), groups.end());
    for (auto& g : groups)
        r.names.push_back(std::move(g.second));
    return r;
}

}  // namespace ferry::drivers::serial
