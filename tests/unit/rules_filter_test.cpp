// The filter language: what a user writes in `rules[].filter`, what passes, and the errors
// they see (at load with positions; at run time as dead-letter reasons).
#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "core/config.hpp"
#include "gateway/components.hpp"
#include "rules/filter.hpp"

using namespace ferry;
using rules::filter;
using rules::filter_outcome;

// Counts heap allocations, to hold evaluate() to its promise of allocating nothing. Not under
// AddressSanitizer, which owns operator new itself.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool k_counting = false;
std::atomic<std::size_t> g_allocations{0};
#else
constexpr bool k_counting = true;
// (g++ 12 takes the free() in a replaced operator delete for a mismatch; it is not one.)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
namespace {
std::atomic<std::size_t> g_allocations{0};
}
void* operator new(std::size_t n) {
    ++g_allocations;
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}
#endif

namespace {

struct sample {
    point_info point{"boiler1", "temperature", "degC", "boiler1/temperature"};
    event e;
    explicit sample(ferry::value v, quality q = quality::good) {
        e.value = std::move(v);
        e.quality = q;
    }
};

filter_outcome run(std::string_view text, const sample& s, std::string* why = nullptr) {
    auto f = filter::compile(text);
    REQUIRE_MESSAGE(f, text);
    return f->evaluate(s.e, s.point, why);
}

bool passes(std::string_view text, ferry::value v, quality q = quality::good) {
    sample s(std::move(v), q);
    auto r = run(text, s);
    REQUIRE_MESSAGE(r != filter_outcome::error, text);
    return r == filter_outcome::pass;
}

std::string compile_error(std::string_view text) {
    rules::filter_error err;
    auto f = filter::compile(text, &err);
    if (f) return "compiled";
    return std::to_string(err.position) + ": " + err.message;
}

}  // namespace

TEST_CASE("comparisons, arithmetic and logic over value, device, tag and quality") {
    CHECK(passes("value > -40 and value < 200", 21.5));
    CHECK_FALSE(passes("value > -40 and value < 200", 250.0));
    CHECK_FALSE(passes("value > -40 and value < 200", -40.0));
    CHECK(passes("value >= -40", -40.0));
    CHECK(passes("value <= 3", std::int64_t{3}));
    CHECK(passes("value == 18446744073709551615", std::uint64_t{18446744073709551615ull}));
    CHECK(passes("value != 3", 3.5));
    CHECK(passes("value * 1.8 + 32 == 212", 100.0));
    CHECK(passes("(value - 32) / 1.8 == 100", 212.0));
    CHECK(passes("2 + 3 * 4 == 14", 0.0));  // * binds tighter than +
    CHECK(passes("10 - 4 - 3 == 3", 0.0));  // left to right
    CHECK(passes("-value == 5 and --value == -5", -5.0));
    CHECK(passes("abs(value - 50) >= 2.5", 47.0));
    CHECK_FALSE(passes("abs(value - 50) >= 2.5", 48.0));
    CHECK(passes("value < 1e3 and value > .5", 0.75));
    CHECK(passes("device == \"boiler1\" and tag == 'temperature'", 1.0));
    CHECK(passes("device != 'boiler2'", 1.0));
    CHECK(passes("quality == \"good\"", 1.0));
    CHECK(passes("quality == 'uncertain'", 1.0, quality::uncertain));
    CHECK(passes("not (value > 3)", 2.0));
    CHECK(passes("not value > 3", 2.0));  // `not` binds looser than comparisons
    CHECK(passes("value > 100 or tag == 'temperature'", 1.0));
    CHECK(passes("true or false and false", 0.0));  // and before or
    CHECK_FALSE(passes("(true or false) and false", 0.0));
    CHECK(passes("device < 'boiler2' and 'a' <= 'a'", 1.0));  // strings order by bytes
    CHECK(passes("value == \"ON\"", std::string("ON")));
    CHECK(passes("value == 'say \\'hi\\''", std::string("say 'hi'")));
}

TEST_CASE("bool values are conditions, and count as 0/1 against numbers") {
    CHECK(passes("value", true));
    CHECK_FALSE(passes("value", false));
    CHECK(passes("not value", false));
    CHECK(passes("value == true", true));
    CHECK(passes("value == 1", true));
    CHECK(passes("value and quality == 'good'", true));
}

TEST_CASE("an absent value (quality bad): comparisons are false, == only matches absent") {
    CHECK_FALSE(passes("value > 3", std::monostate{}, quality::bad));
    CHECK_FALSE(passes("value <= 3", std::monostate{}, quality::bad));
    CHECK(passes("value != 3", std::monostate{}, quality::bad));
    CHECK_FALSE(passes("value == 3", std::monostate{}, quality::bad));
    CHECK_FALSE(passes("value", std::monostate{}, quality::bad));
    CHECK_FALSE(passes("abs(value * 2) > 0", std::monostate{}, quality::bad));
    CHECK(passes("quality == 'bad' or value > 3", std::monostate{}, quality::bad));
    // A bad event carries no value even if a driver left one in it.
    CHECK_FALSE(passes("value > 3", 10.0, quality::bad));
}

TEST_CASE("and/or short-circuit: the right side is not evaluated when the left decides") {
    // Evaluating the right side would be a type error on a string value.
    sample s(std::string("PUMP-1"));
    CHECK(run("tag == 'temperature' or value > 3", s) == filter_outcome::pass);
    CHECK(run("tag == 'speed' and value > 3", s) == filter_outcome::drop);
    CHECK(run("tag == 'temperature' and value > 3", s) == filter_outcome::error);
}

TEST_CASE("type errors at run time are errors with a reason naming operator and position") {
    std::string why;
    sample text(std::string("PUMP-1"));
    CHECK(run("value > 3", text, &why) == filter_outcome::error);
    CHECK(why == "filter at position 7: '>' compares a string with a number");
    CHECK(run("value + 1 > 3", text, &why) == filter_outcome::error);
    CHECK(why == "filter at position 7: '+' needs numbers, got a string with a number");
    CHECK(run("abs(value) > 3", text, &why) == filter_outcome::error);
    CHECK(why == "filter at position 1: 'abs' needs a number, got a string");
    sample number(5.0);
    CHECK(run("value", number, &why) == filter_outcome::error);
    CHECK(why == "filter at position 1: the filter needs a condition, got a number");
    CHECK(run("value and true", number, &why) == filter_outcome::error);
    CHECK(why == "filter at position 7: 'and' needs a condition, got a number");
    CHECK(run("value == 'x'", number, &why) == filter_outcome::error);
    CHECK(why == "filter at position 7: '==' compares a number with a string");
    CHECK(run("1 / (value - 5) > 0", number, &why) == filter_outcome::error);
    CHECK(why == "filter at position 3: '/' division by zero");
}

TEST_CASE("syntax and static type errors are found at compile time, with their position") {
    CHECK(compile_error("value > -40 and value < 200") == "compiled");
    CHECK(compile_error("") == "1: empty expression");
    CHECK(compile_error("   ") == "1: empty expression");
    CHECK(compile_error("value >") == "8: expected a value, found the end of the expression");
    CHECK(compile_error("value >> 3") == "8: expected a value, found '>'");
    CHECK(compile_error("value = 3") == "7: '=' is not an operator; use '==' to compare");
    CHECK(compile_error("value > 3 && value < 5") == "11: '&' is not an operator; use 'and'");
    CHECK(compile_error("value > 3 || 1") == "11: '|' is not an operator; use 'or'");
    CHECK(compile_error("!value") == "1: '!' is not an operator; use 'not' or '!='");
    CHECK(compile_error("valeu > 3") ==
          "1: unknown name 'valeu' (known: value, device, tag, quality, abs(), true, false)");
    CHECK(compile_error("(value > 3") == "11: missing ')' for the '(' at position 1");
    CHECK(compile_error("value > 3)") == "10: unbalanced ')'");
    CHECK(compile_error("value 3") == "7: expected an operator or the end, found '3'");
    CHECK(compile_error("device == 'boiler1") == "11: unterminated string");
    CHECK(compile_error("tag == 'a\\qb'") == "10: unknown escape '\\q' in a string");
    CHECK(compile_error("1 < value < 3") == "11: comparisons cannot be chained; use 'and'");
    CHECK(compile_error("value > 3x") == "10: unexpected character 'x' after a number");
    CHECK(compile_error("value > 1.2.3") == "9: invalid number '1.2.3'");
    CHECK(compile_error("value > 3 $") == "11: unexpected character '$'");
    CHECK(compile_error("abs value") == "5: expected '(' after 'abs'");
    CHECK(compile_error("value > and") == "9: expected a value, found 'and'");
    // Types known before any event is seen.
    CHECK(compile_error("device > 3") == "8: '>' compares a string with a number");
    CHECK(compile_error("tag + 1 > 2") == "5: '+' needs numbers, got a string");
    CHECK(compile_error("value + 1") ==
          "1: the filter must be a condition (true or false), not a number; e.g. value > 3");
    CHECK(compile_error("device") ==
          "1: the filter must be a condition (true or false), not a string; e.g. value > 3");
    CHECK(compile_error("3 and value") ==
          "3: 'and' needs a condition (true or false), got a number");
    CHECK(compile_error("not 3") == "1: 'not' needs a condition (true or false), got a number");
    CHECK(compile_error("(value > 1) < true") == "13: '<' cannot order conditions");
    CHECK(compile_error("-'a' == 'b'") == "1: '-' needs numbers, got a string");
}

TEST_CASE("hostile input: deep nesting is refused, never a crash") {
    std::string deep(200, '(');
    deep += "value > 1";
    deep += std::string(200, ')');
    CHECK(compile_error(deep) == "65: expression is nested too deeply");
    std::string nots;
    for (int i = 0; i < 100; ++i)
        nots += "not ";
    CHECK(compile_error(nots + "true").find("nested too deeply") != std::string::npos);
    // A long flat expression is fine; a right-leaning one deeper than the stack is not.
    std::string flat = "value > 0";
    for (int i = 0; i < 500; ++i)
        flat += " and value > " + std::to_string(i);
    CHECK(compile_error(flat) == "compiled");
    std::string sum = "value";
    for (int i = 0; i < 40; ++i)
        sum = "1 + (" + sum + ")";
    CHECK(compile_error(sum + " > 0").find("nested too deeply") != std::string::npos);
}

TEST_CASE("evaluation allocates nothing" * doctest::skip(!k_counting)) {
    auto f = filter::compile(
        "device == 'boiler1' and (abs(value - 50) >= 2.5 or quality != 'good') and "
        "tag != 'x'");
    REQUIRE(f);
    sample s(47.0);
    sample text(std::string("a string long enough to be on the heap, not inline"));
    auto g = filter::compile("value == 'x' or value != 'y'");
    REQUIRE(g);
    auto before = g_allocations.load();
    int passed = 0;
    for (int i = 0; i < 1000; ++i) {
        passed += f->evaluate(s.e, s.point) == filter_outcome::pass;
        passed += g->evaluate(text.e, text.point) == filter_outcome::pass;
    }
    CHECK(g_allocations.load() == before);
    CHECK(passed == 2000);
}

TEST_CASE("the config loader reports a bad filter at its line and column with the position") {
    auto load = [](const std::string& filter_line) {
        try {
            ferry::load_config_text(
                "gateway: { id: g }\nrules:\n  - name: r\n    match: '#'\n" + filter_line + "\n",
                "t.yaml");
            return std::string("loaded");
        } catch (const config::errors& e) {
            return std::string(e.what());
        }
    };
    CHECK(load("    filter: \"value > -40 and value < 200\"") == "loaded");
    CHECK(load("    filter: \"value >> 3\"") ==
          "t.yaml:5:13: rules[0].filter: at position 8 of the expression: expected a value, "
          "found '>'");
    CHECK(load("    filter: device > 3") ==
          "t.yaml:5:13: rules[0].filter: at position 8 of the expression: '>' compares a string "
          "with a number");
    CHECK(load("    filter: ''") == "t.yaml:5:13: rules[0].filter: must not be empty");
}

TEST_CASE(
    "random token soup: compile either fails with a position inside the text or yields a "
    "program that evaluates without crashing") {
    const char* pieces[] = {
        "value", "device",   "tag",  "quality", "abs", "(", ")", "and", "or", "not", "==",   "!=",
        "<",     "<=",       ">",    ">=",      "+",   "-", "*", "/",   "3",  "0",   "-2.5", "1e3",
        "'x'",   "\"good\"", "true", "false",   " ",   "=", "!", "&",   "'",  "$"};
    std::uint64_t state = 12345;
    auto next = [&] {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        return state >> 33;
    };
    sample values[] = {sample(21.5), sample(std::string("PUMP")), sample(true),
                       sample(std::int64_t{0}), sample(std::monostate{}, quality::bad)};
    int compiled = 0;
    for (int i = 0; i < 20000; ++i) {
        std::string text;
        for (auto n = next() % 12; n > 0; --n) {
            text += pieces[next() % std::size(pieces)];
            text += ' ';
        }
        rules::filter_error err;
        auto f = filter::compile(text, &err);
        if (!f) {
            CAPTURE(text);
            CHECK(err.position >= 1);
            CHECK(err.position <= text.size() + 1);
            CHECK(!err.message.empty());
            continue;
        }
        ++compiled;
        std::string why;
        for (const auto& s : values) {
            auto r = f->evaluate(s.e, s.point, &why);
            if (r == filter_outcome::error) CHECK(why.rfind("filter at position ", 0) == 0);
        }
    }
    CHECK(compiled > 100);  // the soup does produce valid filters too
}
