// Which rules an address matches: every rule's `match` patterns in one trie over levels.
//
// A lookup walks the address level by level: literal levels by hash, `+` and `#` by one
// child each, and levels with `*` by the literal prefix before their first `*` (then tried
// one by one among those with the same prefix). Its cost grows with the number of levels and
// of `*` patterns sharing a prefix at the levels walked, not with the number of rules, so an
// engine with 10,000 rules is built in milliseconds.
// Semantics are exactly those of topic_pattern::matches.
//
// Built once, then read-only: match() is safe from many threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/topic.hpp"

namespace ferry::rules {

class pattern_index {
  public:
    pattern_index();

    // Adds a pattern (already validated by topic_pattern::compile) for rule `rule`.
    void add(std::string_view pattern, std::uint32_t rule);

    // Appends the rules whose patterns match `address` to `out`: sorted, each once.
    void match(std::string_view address, std::vector<std::uint32_t>& out) const;

  private:
    static constexpr std::uint32_t none = ~std::uint32_t{0};
    struct node {
        std::unordered_map<std::string, std::uint32_t> literal;
        std::uint32_t plus = none;
        // One-level `*` patterns, by their literal prefix (the text before the first `*`):
        // a level is tried only against the globs whose prefix it starts with.
        std::unordered_map<std::string, std::vector<std::pair<topic_pattern, std::uint32_t>>> globs;
        std::vector<std::size_t> glob_prefix_lengths;  // the distinct prefix lengths, sorted
        std::vector<std::uint32_t> end_rules;          // patterns that end here
        std::vector<std::uint32_t> hash_rules;         // patterns with `#` here: the rest matches
    };
    void walk(std::uint32_t n, std::string_view rest, bool exhausted,
              std::vector<std::uint32_t>& out) const;

    std::vector<node> nodes_;
};

}  // namespace ferry::rules
