// UTF-8 checks for text that comes from outside (devices, above all): every string Ferry
// puts into an upstream payload or an HTTP answer is valid UTF-8 (CONTRACT.md), so that a
// strict JSON parser downstream never rejects a whole batch for one sensor's stray byte.
//
// Well-formed means RFC 3629 / Unicode §3.9: no overlong forms, no surrogates (U+D800..DFFF),
// nothing above U+10FFFF, no lone continuation bytes, no truncated sequences. Repair replaces
// each *maximal subpart* of an ill-formed sequence with one U+FFFD (the practice Unicode
// recommends and WHATWG's decoder follows): `caf\xe9\xff` becomes `caf\uFFFD\uFFFD`, and
// valid text is never changed.
//
// Hand-written rather than taken from a library we link: nlohmann::json's replacing
// serializer needs a DOM per string, and the JSON writer (json.hpp) works byte by byte into
// a reused buffer with no allocation per event. Pure functions, safe from any thread.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace ferry::utf8 {

// The bytes the replacement character U+FFFD takes in UTF-8.
inline constexpr std::string_view k_replacement = "\xEF\xBF\xBD";

// Length of the well-formed sequence starting at s[0] (1 to 4), or 0 when s[0] starts an
// ill-formed one; `bad` then holds the length of its maximal subpart (1 to 3), which one
// U+FFFD replaces. s must not be empty.
std::size_t sequence(std::string_view s, std::size_t& bad);

// True when all of s is well-formed UTF-8.
bool valid(std::string_view s);

// Appends s to out with every ill-formed part replaced by U+FFFD; returns how many
// replacements were made (0: s was appended unchanged).
std::size_t append_repaired(std::string& out, std::string_view s);

// Repairs s in place (no allocation when it is already valid); returns the replacements.
std::size_t repair(std::string& s);

}  // namespace ferry::utf8
