// Fuzz target: the rule filter language (rules/filter.hpp), compiler and evaluator.
//
// The input is the text of a filter, as an operator writes it in `rules[].filter`. Invariants,
// each a trap when broken:
// - compile() never throws: it returns a program, or nullopt with a filter_error whose
//   position is inside the text (1 .. size + 1) and whose message is not empty;
// - a program keeps its text, and evaluate() on events of every value kind (absent, bool,
//   integers at their limits, NaN, infinities, strings) returns pass, drop or error, never
//   throws, and gives a reason starting "filter at position " with every error;
// - `not (TEXT)` answers the opposite (an error stays an error), when it compiles (it may
//   not: nesting and length limits).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "rules/filter.hpp"

using ferry::event;
using ferry::point_info;
using ferry::quality;
using ferry::rules::filter;
using ferry::rules::filter_outcome;

namespace {

[[noreturn]] void violated(const char* what, std::string_view text) {
    std::fprintf(stderr, "filter_fuzz: %s\n  filter: %.*s\n", what, static_cast<int>(text.size()),
                 text.data());
    __builtin_trap();
}

struct sample {
    point_info point;
    event e;
};

std::vector<sample> make_samples() {
    const point_info boiler{"boiler1", "temperature", "degC", "boiler1/temperature"};
    const point_info empty{"", "", "", "/"};
    auto with = [](const point_info& p, ferry::value v, quality q = quality::good) {
        sample s{p, {}};
        s.e.value = std::move(v);
        s.e.quality = q;
        return s;
    };
    constexpr double inf = std::numeric_limits<double>::infinity();
    return {
        with(boiler, std::monostate{}, quality::bad),
        with(boiler, 21.5),
        with(boiler, 0.0, quality::uncertain),
        with(boiler, -0.0),
        with(boiler, std::numeric_limits<double>::quiet_NaN()),
        with(boiler, inf),
        with(boiler, -inf),
        with(boiler, std::numeric_limits<double>::max()),
        with(boiler, std::numeric_limits<double>::denorm_min()),
        with(empty, true),
        with(empty, false),
        with(boiler, std::numeric_limits<std::int64_t>::min()),
        with(boiler, std::numeric_limits<std::int64_t>::max()),
        with(boiler, std::numeric_limits<std::uint64_t>::max()),
        with(boiler, std::string("pressure")),
        with(empty, std::string()),
        // A value that was bad but still carries one: evaluate() must ignore it.
        with(boiler, 3.0, quality::bad),
    };
}

const std::vector<sample>& samples() {
    static const std::vector<sample> all = make_samples();
    return all;
}

filter_outcome checked_evaluate(const filter& f, const sample& s, std::string_view text) {
    std::string why;
    auto outcome = f.evaluate(s.e, s.point, &why);
    switch (outcome) {
        case filter_outcome::pass:
        case filter_outcome::drop:
            break;
        case filter_outcome::error:
            if (why.rfind("filter at position ", 0) != 0)
                violated("an error without its reason", text);
            break;
        default:
            violated("evaluate() returned no outcome", text);
    }
    if (f.evaluate(s.e, s.point) != outcome) violated("evaluate() is not deterministic", text);
    return outcome;
}

void check(std::string_view text) {
    ferry::rules::filter_error err;
    auto f = filter::compile(text, &err);
    if (!f) {
        if (err.position < 1 || err.position > text.size() + 1)
            violated("a compile error positioned outside the text", text);
        if (err.message.empty()) violated("a compile error without a message", text);
        return;
    }
    if (f->text() != text) violated("the program lost its text", text);
    if (f->size() == 0) violated("an empty program", text);

    const std::string negated_text = "not (" + std::string(text) + ")";
    auto negated = filter::compile(negated_text);
    for (const auto& s : samples()) {
        const auto outcome = checked_evaluate(*f, s, text);
        if (!negated) continue;
        const auto opposite = checked_evaluate(*negated, s, negated_text);
        const auto expected = outcome == filter_outcome::pass   ? filter_outcome::drop
                              : outcome == filter_outcome::drop ? filter_outcome::pass
                                                                : filter_outcome::error;
        if (opposite != expected) violated("'not (...)' does not answer the opposite", text);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        check(text);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "filter_fuzz: exception: %s\n", e.what());
        violated("an exception escaped", text);
    } catch (...) {
        violated("an unknown exception escaped", text);
    }
    return 0;
}
