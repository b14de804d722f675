// Regular expressions of the serial_line `parse.regex` key, on RE2.
//
// RE2 matches in time linear in the input and never backtracks, so a hostile or unlucky
// pattern cannot stall the reader. CONTRACT.md writes named groups `(?<name>...)`; the RE2 of
// Debian 12 (2022-06) knows only `(?P<name>...)`, so patterns are rewritten before compiling
// (escapes and character classes are respected). Both spellings are accepted.
//
// Pure functions; thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ferry::drivers::serial {

// `(?<name>` → `(?P<name>` outside escapes and character classes; everything else as is.
std::string to_re2_syntax(std::string_view pattern);

struct regex_check {
    std::string error;               // empty: the pattern compiles
    std::vector<std::string> names;  // its named groups, in order of their opening parenthesis
};

// Compiles the pattern the way the driver does and reports what is wrong, or its group names.
regex_check check_regex(std::string_view pattern);

}  // namespace ferry::drivers::serial
