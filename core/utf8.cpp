#include "core/utf8.hpp"

#include <utility>

namespace ferry::utf8 {

std::size_t sequence(std::string_view s, std::size_t& bad) {
    const auto b0 = static_cast<unsigned char>(s[0]);
    bad = 1;
    if (b0 < 0x80) return 1;
    // Lead byte: the length, and the range of the first continuation byte (Unicode Table
    // 3-7), which is what rules out overlongs (E0, F0), surrogates (ED) and > U+10FFFF (F4).
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        len = 3;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        len = 4;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;
    } else {
        return 0;  // 80..C1 (continuation or overlong lead), F5..FF: never in UTF-8
    }
    for (std::size_t i = 1; i < len; ++i) {
        if (i >= s.size()) {
            bad = i;  // truncated: the part we have is one maximal subpart
            return 0;
        }
        const auto c = static_cast<unsigned char>(s[i]);
        const unsigned char min = i == 1 ? lo : 0x80;
        const unsigned char max = i == 1 ? hi : 0xBF;
        if (c < min || c > max) {
            bad = i;
            return 0;
        }
    }
    return len;
}

bool valid(std::string_view s) {
    std::size_t bad = 0;
    for (std::size_t i = 0; i < s.size();) {
        const auto n = sequence(s.substr(i), bad);
        if (n == 0) return false;
        i += n;
    }
    return true;
}

std::size_t append_repaired(std::string& out, std::string_view s) {
    std::size_t replaced = 0;
    std::size_t bad = 0;
    std::size_t run = 0;  // start of the valid run not yet appended
    for (std::size_t i = 0; i < s.size();) {
        if (static_cast<unsigned char>(s[i]) < 0x80) {
            ++i;
            continue;
        }
        const auto n = sequence(s.substr(i), bad);
        if (n > 0) {
            i += n;
            continue;
        }
        out.append(s.substr(run, i - run));
        out.append(k_replacement);
        ++replaced;
        i += bad;
        run = i;
    }
    out.append(s.substr(run));
    return replaced;
}

std::size_t repair(std::string& s) {
    if (valid(s)) return 0;
    std::string out;
    out.reserve(s.size() + 8);
    const auto replaced = append_repaired(out, s);
    s = std::move(out);
    return replaced;
}

}  // namespace ferry::utf8
