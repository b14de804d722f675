#include "rules/match.hpp"

#include <algorithm>
#include <stdexcept>

namespace ferry::rules {

pattern_index::pattern_index() : nodes_(1) {}

void pattern_index::add(std::string_view pattern, std::uint32_t rule) {
    std::uint32_t n = 0;
    std::size_t start = 0;
    for (;;) {
        auto slash = pattern.find('/', start);
        auto level =
            pattern.substr(start, slash == std::string_view::npos ? pattern.npos : slash - start);
        if (level == "#") {
            nodes_[n].hash_rules.push_back(rule);
            return;
        }
        std::uint32_t child = none;
        if (level == "+") {
            child = nodes_[n].plus;
            if (child == none) {
                child = static_cast<std::uint32_t>(nodes_.size());
                nodes_[n].plus = child;
                nodes_.emplace_back();
            }
        } else if (auto star = level.find('*'); star != std::string_view::npos) {
            auto& bucket = nodes_[n].globs[std::string(level.substr(0, star))];
            auto it = std::find_if(bucket.begin(), bucket.end(),
                                   [&](const auto& g) { return g.first.text() == level; });
            if (it != bucket.end()) {
                child = it->second;
            } else {
                auto compiled = topic_pattern::compile(level);
                if (!compiled) throw std::invalid_argument("invalid pattern level");
                child = static_cast<std::uint32_t>(nodes_.size());
                bucket.emplace_back(std::move(*compiled), child);
                auto& lengths = nodes_[n].glob_prefix_lengths;
                if (std::find(lengths.begin(), lengths.end(), star) == lengths.end()) {
                    lengths.push_back(star);
                    std::sort(lengths.begin(), lengths.end());
                }
                nodes_.emplace_back();  // invalidates `bucket`: last
            }
        } else {
            auto [it, added] = nodes_[n].literal.try_emplace(
                std::string(level), static_cast<std::uint32_t>(nodes_.size()));
            child = it->second;
            if (added) nodes_.emplace_back();
        }
        n = child;
        if (slash == std::string_view::npos) {
            nodes_[n].end_rules.push_back(rule);
            return;
        }
        start = slash + 1;
    }
}

void pattern_index::walk(std::uint32_t n, std::string_view rest, bool exhausted,
                         std::vector<std::uint32_t>& out) const {
    const auto& nd = nodes_[n];
    // `#` matches the rest of the address, including nothing.
    out.insert(out.end(), nd.hash_rules.begin(), nd.hash_rules.end());
    if (exhausted) {
        out.insert(out.end(), nd.end_rules.begin(), nd.end_rules.end());
        return;
    }
    auto slash = rest.find('/');
    auto level = rest.substr(0, slash);
    bool last = slash == std::string_view::npos;
    auto tail = last ? std::string_view{} : rest.substr(slash + 1);
    if (!nd.literal.empty()) {
        // Lookup by string_view without allocating would need C++20 heterogeneous lookup for
        // unordered containers (g++ 12 has it only with a transparent hash); building is rare.
        auto it = nd.literal.find(std::string(level));
        if (it != nd.literal.end()) walk(it->second, tail, last, out);
    }
    if (nd.plus != none) walk(nd.plus, tail, last, out);
    for (auto len : nd.glob_prefix_lengths) {
        if (len > level.size()) break;
        auto it = nd.globs.find(std::string(level.substr(0, len)));
        if (it == nd.globs.end()) continue;
        for (const auto& [glob, child] : it->second)
            if (glob.matches(level)) walk(child, tail, last, out);
    }
}

void pattern_index::match(std::string_view address, std::vector<std::uint32_t>& out) const {
    auto first = out.size();
    walk(0, address, false, out);
    std::sort(out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
    out.erase(std::unique(out.begin() + static_cast<std::ptrdiff_t>(first), out.end()), out.end());
}

}  // namespace ferry::rules
