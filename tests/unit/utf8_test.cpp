// UTF-8 repair (core/utf8.hpp) and the JSON writer's promise that its strings are valid
// JSON text whatever bytes they are given (core/json.hpp).
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <random>
#include <string>

#include "core/json.hpp"
#include "core/utf8.hpp"

using namespace ferry;

namespace {

std::string repaired(std::string s) {
    utf8::repair(s);
    return s;
}

const std::string R = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace

TEST_CASE("valid text is kept byte for byte") {
    for (const std::string& s : std::initializer_list<std::string>{
             "", "plain ascii", "caf\xC3\xA9", "\xE2\x82\xAC 12", "\xF0\x9F\x98\x80",
             "\xED\x9F\xBF", "\xEE\x80\x80", "\xF4\x8F\xBF\xBF", std::string("nul\0inside", 10)}) {
        CHECK(utf8::valid(s));
        CHECK(repaired(s) == s);
    }
}

TEST_CASE("each maximal subpart of an ill-formed sequence becomes one U+FFFD") {
    // The sensor line: E9 starts a 3-byte sequence that FF breaks; FF is never UTF-8.
    CHECK(repaired("caf\xE9\xFF\x01") == "caf" + R + R + "\x01");
    CHECK(repaired("\x80") == R);                          // lone continuation byte
    CHECK(repaired("\xC0\xAF") == R + R);                  // overlong '/'
    CHECK(repaired("\xE0\x80\xAF") == R + R + R);          // overlong, 3 bytes
    CHECK(repaired("\xED\xA0\x80") == R + R + R);          // surrogate U+D800
    CHECK(repaired("\xF4\x90\x80\x80") == R + R + R + R);  // above U+10FFFF
    CHECK(repaired("\xF5\x80") == R + R);
    CHECK(repaired("\xE2\x82") == R);         // truncated at the end: one subpart
    CHECK(repaired("\xE2\x82x") == R + "x");  // truncated in the middle
    CHECK(repaired("\xF0\x9F\x98") == R);     // truncated 4-byte
    CHECK(repaired("a\xF0\x9F\x98\x80\xFF") == "a\xF0\x9F\x98\x80" + R);
    std::string s = "ok";
    CHECK(utf8::repair(s) == 0);
    s = "\xFF\xFE";
    CHECK(utf8::repair(s) == 2);
    CHECK_FALSE(utf8::valid("\xC3"));
}

TEST_CASE("the JSON writer: strict parsers take every string it writes, U+FFFD in place") {
    std::string out;
    json::append_string(out, "caf\xE9\xFF\x01\x7f\"\\\n");
    CHECK(out == "\"caf" + R + R + "\\u0001\\u007f\\\"\\\\\\n\"");
    const auto doc = nlohmann::json::parse(out);  // throws on invalid UTF-8 or raw controls
    CHECK(doc.get<std::string>() == "caf\xEF\xBF\xBD\xEF\xBF\xBD\x01\x7f\"\\\n");

    // Random bytes, many times: the output always parses, and is the repaired input.
    std::mt19937 rng(14);
    std::uniform_int_distribution<int> byte(0, 255), len(0, 40);
    for (int i = 0; i < 20000; ++i) {
        std::string in(static_cast<std::size_t>(len(rng)), '\0');
        for (auto& c : in)
            c = static_cast<char>(byte(rng));
        out.clear();
        json::append_string(out, in);
        REQUIRE(utf8::valid(out));
        const auto j = nlohmann::json::parse(out, nullptr, false);
        REQUIRE_FALSE(j.is_discarded());
        REQUIRE(j.get<std::string>() == repaired(in));
    }
}
