// The filter language of a rule: a small expression over one event, compiled once.
//
//   value > -40 and value < 200
//   device == "boiler1" or (tag != "setpoint" and abs(value - 50) >= 2.5)
//   quality == "good" and not value
//
// Grammar (loosest first): `or`, `and`, `not`, comparisons (== != < <= > >=, not chained),
// `+ -`, `* /`, unary `-`, then operands: numbers, strings in "double" or 'single' quotes,
// `true`, `false`, the names `value device tag quality`, `abs(x)` and parentheses.
//
// compile() parses the text into a flat bytecode program for a stack machine and checks types
// as far as they are known before any event is seen: `device > 3` or `value + 1` (not a
// condition) are errors at load time, with their position. `value` is typed at run time:
// numbers (integers, floats; bools count as 0/1 in arithmetic and ordering), strings, or absent
// (a bad-quality event). Absent follows these rules: arithmetic on it stays absent, `==` is
// true only against absent, `!=` the opposite, ordering comparisons are false, and in a
// condition it is false.
//
// evaluate() runs the program on an event without allocating. A type error at run time (for
// example `value > 3` on a string value, or a division by zero) is returned as an error with
// its reason; the engine sends that event to the dead-letter topic.
//
// A program is immutable after compile(): evaluate() may be called from many threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/event.hpp"

namespace ferry::rules {

// Why evaluation failed; `message` names the operator and its position in the expression.
struct filter_error {
    std::size_t position = 0;  // 1-based, in characters of the expression
    std::string message;
};

enum class filter_outcome : std::uint8_t { pass, drop, error };

class filter {
  public:
    // Returns the compiled filter, or nullopt with `err` set (position 1-based in `text`).
    static std::optional<filter> compile(std::string_view text, filter_error* err = nullptr);

    // pass / drop; on error, `why` (if given) gets the reason as one line of text.
    filter_outcome evaluate(const event& e, const point_info& p, std::string* why = nullptr) const;

    const std::string& text() const { return text_; }
    // Instructions in the program (for tests and the benchmark's state accounting).
    std::size_t size() const { return code_.size(); }

    // The deepest nesting the compiler accepts (the evaluator's stack is this big).
    static constexpr std::size_t max_depth = 32;

    enum class op : std::uint8_t {
        constant,  // push constants_[arg]
        load_value,
        load_device,
        load_tag,
        load_quality,
        neg,
        abs,
        add,
        sub,
        mul,
        div,
        eq,
        ne,
        lt,
        le,
        gt,
        ge,
        not_,
        to_bool,        // checks a condition's value is boolean
        jump_if_false,  // peek; if false jump to arg (keeps the value)
        jump_if_true,   // peek; if true jump to arg (keeps the value)
        pop,
    };
    struct instr {
        op code;
        std::uint16_t position;  // 1-based column in the expression, for run-time errors
        std::uint32_t arg;
    };
    struct constant {
        enum class kind : std::uint8_t { number, string, boolean } k;
        double number = 0;
        bool boolean = false;
        std::string string;
    };

  private:
    friend class filter_compiler;
    std::string text_;
    std::vector<instr> code_;
    std::vector<constant> constants_;
};

}  // namespace ferry::rules
