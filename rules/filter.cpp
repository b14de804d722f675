#include "rules/filter.hpp"

#include <array>
#include <charconv>
#include <cmath>

namespace ferry::rules {

// ---------------------------------------------------------------------------------------------
// Lexer.
namespace {

enum class tok {
    end,
    number,
    string,
    name,  // identifiers and keywords
    lparen,
    rparen,
    plus,
    minus,
    star,
    slash,
    eq,
    ne,
    lt,
    le,
    gt,
    ge,
};

struct token {
    tok kind = tok::end;
    std::size_t position = 0;  // 1-based
    std::string_view text;     // as written (names, operators)
    double number = 0;
    std::string string;  // unescaped
};

bool is_name_start(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}
bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

}  // namespace

class filter_compiler {
  public:
    explicit filter_compiler(std::string_view text) : text_(text) {}

    std::optional<filter> run(filter_error* err);

  private:
    // Static types, as far as they are known before an event is seen.
    enum class type { number, string, boolean, any };

    struct failure {
        std::size_t position;
        std::string message;
    };

    [[noreturn]] void fail(std::size_t position, std::string message) {
        throw failure{position, std::move(message)};
    }

    void next();
    type parse_logic(bool is_or);
    type parse_not();
    type parse_comparison();
    type parse_arithmetic(bool additive);
    type parse_unary();
    type parse_primary();

    void need_condition(type t, std::size_t position, std::string_view what);
    void need_number(type t, std::size_t position, std::string_view what);
    void emit(filter::op code, std::size_t position, std::uint32_t arg = 0);
    void push(std::size_t position);
    void pop_n(std::size_t n) { depth_ -= n; }
    std::uint32_t add_constant(filter::constant c);

    std::string_view text_;
    std::size_t at_ = 0;
    token cur_;
    filter out_;
    std::size_t depth_ = 0;
    std::size_t nesting_ = 0;
};

void filter_compiler::next() {
    while (at_ < text_.size() &&
           (text_[at_] == ' ' || text_[at_] == '\t' || text_[at_] == '\n' || text_[at_] == '\r'))
        ++at_;
    cur_ = token{};
    cur_.position = at_ + 1;
    if (at_ >= text_.size()) {
        cur_.kind = tok::end;
        return;
    }
    const char c = text_[at_];
    const std::size_t start = at_;
    auto two = [&](char second) { return at_ + 1 < text_.size() && text_[at_ + 1] == second; };
    auto single = [&](tok k, std::size_t len) {
        cur_.kind = k;
        cur_.text = text_.substr(start, len);
        at_ += len;
    };
    if (is_digit(c) || (c == '.' && at_ + 1 < text_.size() && is_digit(text_[at_ + 1]))) {
        std::size_t end = at_;
        while (end < text_.size() && (is_digit(text_[end]) || text_[end] == '.'))
            ++end;
        if (end < text_.size() && (text_[end] == 'e' || text_[end] == 'E')) {
            std::size_t exp = end + 1;
            if (exp < text_.size() && (text_[exp] == '+' || text_[exp] == '-')) ++exp;
            if (exp < text_.size() && is_digit(text_[exp])) {
                end = exp;
                while (end < text_.size() && is_digit(text_[end]))
                    ++end;
            }
        }
        auto [p, ec] = std::from_chars(text_.data() + start, text_.data() + end, cur_.number);
        if (ec != std::errc{} || p != text_.data() + end || !std::isfinite(cur_.number))
            fail(cur_.position,
                 "invalid number '" + std::string(text_.substr(start, end - start)) + "'");
        if (end < text_.size() && is_name_start(text_[end]))
            fail(end + 1,
                 "unexpected character '" + std::string(1, text_[end]) + "' after a number");
        cur_.kind = tok::number;
        cur_.text = text_.substr(start, end - start);
        at_ = end;
        return;
    }
    if (c == '"' || c == '\'') {
        std::size_t i = at_ + 1;
        for (;; ++i) {
            if (i >= text_.size()) fail(cur_.position, "unterminated string");
            char d = text_[i];
            if (d == c) break;
            if (d == '\\') {
                if (i + 1 >= text_.size()) fail(cur_.position, "unterminated string");
                char e = text_[++i];
                switch (e) {
                    case 'n':
                        cur_.string.push_back('\n');
                        break;
                    case 't':
                        cur_.string.push_back('\t');
                        break;
                    case '\\':
                    case '"':
                    case '\'':
                        cur_.string.push_back(e);
                        break;
                    default:
                        fail(i, "unknown escape '\\" + std::string(1, e) + "' in a string");
                }
                continue;
            }
            cur_.string.push_back(d);
        }
        cur_.kind = tok::string;
        cur_.text = text_.substr(start, i + 1 - start);
        at_ = i + 1;
        return;
    }
    if (is_name_start(c)) {
        std::size_t end = at_;
        while (end < text_.size() && (is_name_start(text_[end]) || is_digit(text_[end])))
            ++end;
        single(tok::name, end - at_);
        return;
    }
    switch (c) {
        case '(':
            return single(tok::lparen, 1);
        case ')':
            return single(tok::rparen, 1);
        case '+':
            return single(tok::plus, 1);
        case '-':
            return single(tok::minus, 1);
        case '*':
            return single(tok::star, 1);
        case '/':
            return single(tok::slash, 1);
        case '<':
            return two('=') ? single(tok::le, 2) : single(tok::lt, 1);
        case '>':
            return two('=') ? single(tok::ge, 2) : single(tok::gt, 1);
        case '=':
            if (two('=')) return single(tok::eq, 2);
            fail(cur_.position, "'=' is not an operator; use '==' to compare");
        case '!':
            if (two('=')) return single(tok::ne, 2);
            fail(cur_.position, "'!' is not an operator; use 'not' or '!='");
        case '&':
            fail(cur_.position, "'&' is not an operator; use 'and'");
        case '|':
            fail(cur_.position, "'|' is not an operator; use 'or'");
        default:
            fail(cur_.position, "unexpected character '" + std::string(1, c) + "'");
    }
}

void filter_compiler::emit(filter::op code, std::size_t position, std::uint32_t arg) {
    out_.code_.push_back(filter::instr{code, static_cast<std::uint16_t>(position), arg});
}

void filter_compiler::push(std::size_t position) {
    if (++depth_ > filter::max_depth) fail(position, "expression is nested too deeply");
}

std::uint32_t filter_compiler::add_constant(filter::constant c) {
    out_.constants_.push_back(std::move(c));
    return static_cast<std::uint32_t>(out_.constants_.size() - 1);
}

void filter_compiler::need_condition(type t, std::size_t position, std::string_view what) {
    if (t == type::boolean || t == type::any) return;
    fail(position, std::string(what) + " needs a condition (true or false), got a " +
                       (t == type::number ? "number" : "string"));
}

void filter_compiler::need_number(type t, std::size_t position, std::string_view what) {
    if (t == type::number || t == type::any) return;
    fail(position, std::string(what) + " needs numbers, got a " +
                       (t == type::string ? "string" : "condition"));
}

std::optional<filter> filter_compiler::run(filter_error* err) {
    try {
        if (text_.size() > 60000) fail(1, "expression is too long");
        out_.text_ = std::string(text_);
        next();
        if (cur_.kind == tok::end) fail(1, "empty expression");
        auto t = parse_logic(true);
        if (cur_.kind != tok::end) {
            if (cur_.kind == tok::rparen) fail(cur_.position, "unbalanced ')'");
            fail(cur_.position,
                 "expected an operator or the end, found '" + std::string(cur_.text) + "'");
        }
        if (t == type::number || t == type::string)
            fail(1, std::string("the filter must be a condition (true or false), not a ") +
                        (t == type::number ? "number" : "string") + "; e.g. value > 3");
        if (t == type::any) emit(filter::op::to_bool, 1);
        return std::move(out_);
    } catch (const failure& f) {
        if (err) *err = filter_error{f.position, f.message};
        return std::nullopt;
    }
}

// `or` over `and` over `not`: one loop for both. The jump keeps the left value on the stack
// when it decides the result (short-circuit); otherwise it is popped and the right side runs.
filter_compiler::type filter_compiler::parse_logic(bool is_or) {
    auto operand = [&] { return is_or ? parse_logic(false) : parse_not(); };
    const std::string_view word = is_or ? "or" : "and";
    auto t = operand();
    while (cur_.kind == tok::name && cur_.text == word) {
        auto pos = cur_.position;
        const std::string what = "'" + std::string(word) + "'";
        need_condition(t, pos, what);
        auto jump = out_.code_.size();
        emit(is_or ? filter::op::jump_if_true : filter::op::jump_if_false, pos);
        emit(filter::op::pop, pos);
        pop_n(1);
        next();
        auto r = operand();
        need_condition(r, pos, what);
        if (r == type::any) emit(filter::op::to_bool, pos);
        out_.code_[jump].arg = static_cast<std::uint32_t>(out_.code_.size());
        t = type::boolean;
    }
    return t;
}

filter_compiler::type filter_compiler::parse_not() {
    if (cur_.kind == tok::name && cur_.text == "not") {
        auto pos = cur_.position;
        if (++nesting_ > 64) fail(pos, "expression is nested too deeply");
        next();
        auto t = parse_not();
        --nesting_;
        need_condition(t, pos, "'not'");
        emit(filter::op::not_, pos);
        return type::boolean;
    }
    return parse_comparison();
}

filter_compiler::type filter_compiler::parse_comparison() {
    auto t = parse_arithmetic(true);
    filter::op code;
    switch (cur_.kind) {
        case tok::eq:
            code = filter::op::eq;
            break;
        case tok::ne:
            code = filter::op::ne;
            break;
        case tok::lt:
            code = filter::op::lt;
            break;
        case tok::le:
            code = filter::op::le;
            break;
        case tok::gt:
            code = filter::op::gt;
            break;
        case tok::ge:
            code = filter::op::ge;
            break;
        default:
            return t;
    }
    auto pos = cur_.position;
    auto name = std::string(cur_.text);
    next();
    auto r = parse_arithmetic(true);
    const bool ordering = code != filter::op::eq && code != filter::op::ne;
    auto known = [](type x) { return x != type::any; };
    if (known(t) && known(r) && t != r) {
        auto noun = [](type x) {
            return x == type::number ? "a number" : x == type::string ? "a string" : "a condition";
        };
        fail(pos, "'" + name + "' compares " + noun(t) + " with " + noun(r));
    }
    if (ordering && (t == type::boolean || r == type::boolean))
        fail(pos, "'" + name + "' cannot order conditions");
    emit(code, pos);
    pop_n(1);
    switch (cur_.kind) {
        case tok::eq:
        case tok::ne:
        case tok::lt:
        case tok::le:
        case tok::gt:
        case tok::ge:
            fail(cur_.position, "comparisons cannot be chained; use 'and'");
        default:
            break;
    }
    return type::boolean;
}

// `+ -` over `* /` over unary minus: one loop for both levels.
filter_compiler::type filter_compiler::parse_arithmetic(bool additive) {
    auto operand = [&] { return additive ? parse_arithmetic(false) : parse_unary(); };
    const tok first = additive ? tok::plus : tok::star;
    const tok second = additive ? tok::minus : tok::slash;
    auto t = operand();
    while (cur_.kind == first || cur_.kind == second) {
        auto pos = cur_.position;
        auto name = "'" + std::string(cur_.text) + "'";
        auto code = cur_.kind == first ? (additive ? filter::op::add : filter::op::mul)
                                       : (additive ? filter::op::sub : filter::op::div);
        need_number(t, pos, name);
        next();
        auto r = operand();
        need_number(r, pos, name);
        emit(code, pos);
        pop_n(1);
        t = type::number;
    }
    return t;
}

filter_compiler::type filter_compiler::parse_unary() {
    if (cur_.kind == tok::minus) {
        auto pos = cur_.position;
        if (++nesting_ > 64) fail(pos, "expression is nested too deeply");
        next();
        auto t = parse_unary();
        --nesting_;
        need_number(t, pos, "'-'");
        emit(filter::op::neg, pos);
        return type::number;
    }
    return parse_primary();
}

filter_compiler::type filter_compiler::parse_primary() {
    auto pos = cur_.position;
    switch (cur_.kind) {
        case tok::number: {
            filter::constant c{filter::constant::kind::number, cur_.number, false, {}};
            emit(filter::op::constant, pos, add_constant(std::move(c)));
            push(pos);
            next();
            return type::number;
        }
        case tok::string: {
            filter::constant c{filter::constant::kind::string, 0, false, std::move(cur_.string)};
            emit(filter::op::constant, pos, add_constant(std::move(c)));
            push(pos);
            next();
            return type::string;
        }
        case tok::lparen: {
            if (++nesting_ > 64) fail(pos, "expression is nested too deeply");
            next();
            auto t = parse_logic(true);
            if (cur_.kind != tok::rparen)
                fail(cur_.position,
                     cur_.kind == tok::end
                         ? "missing ')' for the '(' at position " + std::to_string(pos)
                         : "expected ')', found '" + std::string(cur_.text) + "'");
            --nesting_;
            next();
            return t;
        }
        case tok::name:
            break;
        case tok::end:
            fail(pos, "expected a value, found the end of the expression");
        default:
            fail(pos, "expected a value, found '" + std::string(cur_.text) + "'");
    }
    auto name = cur_.text;
    if (name == "value" || name == "device" || name == "tag" || name == "quality") {
        auto code = name == "value"    ? filter::op::load_value
                    : name == "device" ? filter::op::load_device
                    : name == "tag"    ? filter::op::load_tag
                                       : filter::op::load_quality;
        emit(code, pos);
        push(pos);
        next();
        return name == "value" ? type::any : type::string;
    }
    if (name == "true" || name == "false") {
        filter::constant c{filter::constant::kind::boolean, 0, name == "true", {}};
        emit(filter::op::constant, pos, add_constant(std::move(c)));
        push(pos);
        next();
        return type::boolean;
    }
    if (name == "abs") {
        next();
        if (cur_.kind != tok::lparen) fail(cur_.position, "expected '(' after 'abs'");
        if (++nesting_ > 64) fail(pos, "expression is nested too deeply");
        next();
        auto t = parse_logic(true);
        need_number(t, pos, "'abs'");
        if (cur_.kind != tok::rparen) fail(cur_.position, "expected ')' to close 'abs('");
        --nesting_;
        next();
        emit(filter::op::abs, pos);
        return type::number;
    }
    if (name == "and" || name == "or" || name == "not")
        fail(pos, "expected a value, found '" + std::string(name) + "'");
    fail(pos, "unknown name '" + std::string(name) +
                  "' (known: value, device, tag, quality, abs(), true, false)");
}

std::optional<filter> filter::compile(std::string_view text, filter_error* err) {
    return filter_compiler(text).run(err);
}

// ---------------------------------------------------------------------------------------------
// Evaluation: a stack machine over small tagged values; strings are views into the event, the
// point table or the program's constants, so nothing is allocated.
namespace {

enum class kind : std::uint8_t { absent, number, string, boolean };

struct slot {
    kind k = kind::absent;
    bool b = false;
    double n = 0;
    std::string_view s;
};

slot from_event(const event& e) {
    slot out;
    if (e.quality == quality::bad) return out;
    switch (e.value.index()) {
        case 1:
            out.k = kind::boolean;
            out.b = std::get<bool>(e.value);
            break;
        case 2:
            out.k = kind::number;
            out.n = static_cast<double>(std::get<std::int64_t>(e.value));
            break;
        case 3:
            out.k = kind::number;
            out.n = static_cast<double>(std::get<std::uint64_t>(e.value));
            break;
        case 4:
            out.k = kind::number;
            out.n = std::get<double>(e.value);
            break;
        case 5:
            out.k = kind::string;
            out.s = std::get<std::string>(e.value);
            break;
        default:
            break;
    }
    return out;
}

slot of_string(std::string_view s) {
    slot out;
    out.k = kind::string;
    out.s = s;
    return out;
}

slot of_bool(bool b) {
    slot out;
    out.k = kind::boolean;
    out.b = b;
    return out;
}

slot of_number(double n) {
    slot out;
    out.k = kind::number;
    out.n = n;
    return out;
}

const char* noun(kind k) {
    switch (k) {
        case kind::number:
            return "a number";
        case kind::string:
            return "a string";
        case kind::boolean:
            return "a bool";
        case kind::absent:
            break;
    }
    return "no value";
}

const char* op_text(filter::op o) {
    switch (o) {
        case filter::op::add:
            return "'+'";
        case filter::op::sub:
            return "'-'";
        case filter::op::mul:
            return "'*'";
        case filter::op::div:
            return "'/'";
        case filter::op::neg:
            return "'-'";
        case filter::op::abs:
            return "'abs'";
        case filter::op::eq:
            return "'=='";
        case filter::op::ne:
            return "'!='";
        case filter::op::lt:
            return "'<'";
        case filter::op::le:
            return "'<='";
        case filter::op::gt:
            return "'>'";
        case filter::op::ge:
            return "'>='";
        case filter::op::not_:
            return "'not'";
        case filter::op::jump_if_false:
            return "'and'";
        case filter::op::jump_if_true:
            return "'or'";
        default:
            return "the filter";
    }
}

bool numeric(kind k) {
    return k == kind::number || k == kind::boolean;
}
double as_num(const slot& s) {
    return s.k == kind::boolean ? (s.b ? 1.0 : 0.0) : s.n;
}

}  // namespace

filter_outcome filter::evaluate(const event& e, const point_info& p, std::string* why) const {
    std::array<slot, max_depth> stack;
    std::size_t top = 0;  // number of slots in use
    const filter::instr* failed = nullptr;
    std::string_view problem;
    kind left = kind::absent, right = kind::absent;

    // A condition: bool, or absent (false). Anything else is a type error.
    auto truth = [&](const slot& s, bool& out) {
        if (s.k == kind::boolean) {
            out = s.b;
            return true;
        }
        if (s.k == kind::absent) {
            out = false;
            return true;
        }
        return false;
    };

    const std::size_t n = code_.size();
    for (std::size_t pc = 0; pc < n; ++pc) {
        const auto& in = code_[pc];
        switch (in.code) {
            case op::constant: {
                const auto& c = constants_[in.arg];
                stack[top++] = c.k == constant::kind::number   ? of_number(c.number)
                               : c.k == constant::kind::string ? of_string(c.string)
                                                               : of_bool(c.boolean);
                break;
            }
            case op::load_value:
                stack[top++] = from_event(e);
                break;
            case op::load_device:
                stack[top++] = of_string(p.device);
                break;
            case op::load_tag:
                stack[top++] = of_string(p.tag);
                break;
            case op::load_quality:
                stack[top++] = of_string(to_string(e.quality));
                break;
            case op::neg:
            case op::abs: {
                auto& a = stack[top - 1];
                if (a.k == kind::absent) break;
                if (!numeric(a.k)) {
                    failed = &in;
                    problem = "needs a number, got";
                    left = a.k;
                    goto error;
                }
                a = of_number(in.code == op::neg ? -as_num(a) : std::fabs(as_num(a)));
                break;
            }
            case op::add:
            case op::sub:
            case op::mul:
            case op::div: {
                auto& a = stack[top - 2];
                const auto& b = stack[top - 1];
                --top;
                if (a.k == kind::absent || b.k == kind::absent) {
                    a = slot{};
                    break;
                }
                if (!numeric(a.k) || !numeric(b.k)) {
                    failed = &in;
                    problem = "needs numbers, got";
                    left = a.k;
                    right = b.k;
                    goto error;
                }
                double x = as_num(a), y = as_num(b);
                double r = 0;
                switch (in.code) {
                    case op::add:
                        r = x + y;
                        break;
                    case op::sub:
                        r = x - y;
                        break;
                    case op::mul:
                        r = x * y;
                        break;
                    default:
                        if (y == 0) {
                            failed = &in;
                            problem = "division by zero";
                            goto error;
                        }
                        r = x / y;
                        break;
                }
                a = of_number(r);
                break;
            }
            case op::eq:
            case op::ne:
            case op::lt:
            case op::le:
            case op::gt:
            case op::ge: {
                auto& a = stack[top - 2];
                const auto& b = stack[top - 1];
                --top;
                bool result = false;
                if (a.k == kind::absent || b.k == kind::absent) {
                    const bool both = a.k == b.k;
                    result = in.code == op::eq ? both : in.code == op::ne ? !both : false;
                } else if (a.k == kind::string && b.k == kind::string) {
                    int c = a.s.compare(b.s);
                    result = in.code == op::eq   ? c == 0
                             : in.code == op::ne ? c != 0
                             : in.code == op::lt ? c < 0
                             : in.code == op::le ? c <= 0
                             : in.code == op::gt ? c > 0
                                                 : c >= 0;
                } else if (a.k == kind::boolean && b.k == kind::boolean &&
                           (in.code == op::eq || in.code == op::ne)) {
                    result = (a.b == b.b) == (in.code == op::eq);
                } else if (numeric(a.k) && numeric(b.k)) {
                    double x = as_num(a), y = as_num(b);
                    result = in.code == op::eq   ? x == y
                             : in.code == op::ne ? x != y
                             : in.code == op::lt ? x < y
                             : in.code == op::le ? x <= y
                             : in.code == op::gt ? x > y
                                                 : x >= y;
                } else {
                    failed = &in;
                    problem = "compares";
                    left = a.k;
                    right = b.k;
                    goto error;
                }
                a = of_bool(result);
                break;
            }
            case op::not_: {
                auto& a = stack[top - 1];
                bool t = false;
                if (!truth(a, t)) {
                    failed = &in;
                    problem = "needs a condition, got";
                    left = a.k;
                    goto error;
                }
                a = of_bool(!t);
                break;
            }
            case op::to_bool:
            case op::jump_if_false:
            case op::jump_if_true: {
                auto& a = stack[top - 1];
                bool t = false;
                if (!truth(a, t)) {
                    failed = &in;
                    problem = "needs a condition, got";
                    left = a.k;
                    goto error;
                }
                a = of_bool(t);
                if ((in.code == op::jump_if_false && !t) || (in.code == op::jump_if_true && t))
                    pc = in.arg - 1;
                break;
            }
            case op::pop:
                --top;
                break;
        }
    }
    return stack[0].b ? filter_outcome::pass : filter_outcome::drop;

error:
    if (why) {
        why->clear();
        why->append("filter at position ");
        why->append(std::to_string(failed->position));
        why->append(": ");
        why->append(op_text(failed->code));
        why->push_back(' ');
        why->append(problem);
        if (left != kind::absent) {
            why->push_back(' ');
            why->append(noun(left));
            if (right != kind::absent) {
                why->append(" with ");
                why->append(noun(right));
            }
        }
    }
    return filter_outcome::error;
}

}  // namespace ferry::rules
