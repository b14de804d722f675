// The serial_line parsers, framer and checksum: pure functions, no port.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "drivers/serial/framer.hpp"
#include "drivers/serial/parser.hpp"
#include "drivers/serial/regex.hpp"
#include "gateway/components.hpp"

using namespace ferry;
using namespace ferry::drivers::serial;
using config::point_type;

namespace {

config::point pt(std::string name, point_type t, double scale = 1.0, double offset = 0.0) {
    config::point p;
    p.name = std::move(name);
    p.type = t;
    p.scale = scale;
    p.offset = offset;
    return p;
}

struct framed {
    std::vector<std::string> frames;
    int too_long = 0;
};

framed feed_all(framer& f, const std::vector<std::string>& chunks) {
    framed r;
    for (const auto& c : chunks)
        f.feed(
            c, [&](std::string_view s) { r.frames.emplace_back(s); }, [&] { ++r.too_long; });
    return r;
}

framing_settings delim(std::string d, std::uint32_t max = 4096) {
    framing_settings f;
    f.delimiter = std::move(d);
    f.max_frame = max;
    return f;
}

}  // namespace

TEST_CASE("convert_text: each type, ranges, scale and offset") {
    CHECK(convert_text(" 21.5 ", pt("t", point_type::float64)) == ferry::value(21.5));
    CHECK(convert_text("+3", pt("t", point_type::float32)) == ferry::value(3.0));
    CHECK(convert_text("-42", pt("t", point_type::int16)) == ferry::value(std::int64_t{-42}));
    CHECK(convert_text("32768", pt("t", point_type::int16)) == std::nullopt);
    CHECK(convert_text("-32768", pt("t", point_type::int16)) == ferry::value(std::int64_t{-32768}));
    CHECK(convert_text("65535", pt("t", point_type::uint16)) == ferry::value(std::uint64_t{65535}));
    CHECK(convert_text("-1", pt("t", point_type::uint32)) == std::nullopt);
    CHECK(convert_text("18446744073709551615", pt("t", point_type::uint64)) ==
          ferry::value(std::uint64_t{18446744073709551615ull}));
    CHECK(convert_text("21.0", pt("t", point_type::int32)) == ferry::value(std::int64_t{21}));
    CHECK(convert_text("21.5", pt("t", point_type::int32)) == std::nullopt);
    CHECK(convert_text("1e40", pt("t", point_type::float32)) == std::nullopt);
    CHECK(convert_text("nan", pt("t", point_type::float64)) == std::nullopt);
    CHECK(convert_text("", pt("t", point_type::float64)) == std::nullopt);
    CHECK(convert_text("12abc", pt("t", point_type::float64)) == std::nullopt);
    CHECK(convert_text("ON", pt("t", point_type::boolean)) == ferry::value(true));
    CHECK(convert_text("0", pt("t", point_type::boolean)) == ferry::value(false));
    CHECK(convert_text("maybe", pt("t", point_type::boolean)) == std::nullopt);
    CHECK(convert_text(" A12 ", pt("t", point_type::string)) == ferry::value(std::string("A12")));
    // value = raw * scale + offset; a scaled integer becomes a double
    CHECK(convert_text("215", pt("t", point_type::int16, 0.1)) == ferry::value(21.5));
    CHECK(convert_text("10", pt("t", point_type::float64, 2.0, 1.0)) == ferry::value(21.0));
}

TEST_CASE("NMEA checksum: verified and stripped; missing or wrong is refused") {
    const std::string good = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
    REQUIRE(strip_nmea_checksum(good));
    CHECK(*strip_nmea_checksum(good) == good.substr(0, good.size() - 3));
    CHECK(strip_nmea_checksum(
              "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48") == std::nullopt);
    CHECK(strip_nmea_checksum("$GPGGA,123519") == std::nullopt);  // no *hh
    CHECK(strip_nmea_checksum("T=1*zz") == std::nullopt);
    // without a leading '$' every byte before '*' counts; lower-case hex is fine
    CHECK(strip_nmea_checksum("a=1*6d"));  // 0x61 ^ 0x3d ^ 0x31 = 0x6d
}

TEST_CASE("regex: CONTRACT's (?<name>) groups, unanchored search, optional groups") {
    parse_settings s;
    s.format = parse_format::regex;
    s.regex = R"(^T=(?<temperature>-?[0-9.]+);H=(?<humidity>[0-9.]+)(;S=(?<status>\w+))?$)";
    line_parser p(s, {pt("temperature", point_type::float64), pt("humidity", point_type::float64),
                      pt("status", point_type::string)});
    std::vector<field> out;
    REQUIRE(p.parse("T=-3.5;H=40", out) == frame_error::none);
    REQUIRE(out.size() == 2);
    CHECK(out[0].point == 0);
    CHECK(out[0].value == ferry::value(-3.5));
    CHECK(out[1].value == ferry::value(40.0));
    REQUIRE(p.parse("T=1;H=2;S=ok", out) == frame_error::none);
    CHECK(out.size() == 3);
    CHECK(p.parse("T=abc;H=2", out) == frame_error::parse);
    CHECK(out.empty());
    CHECK(p.parse("T=1.2.3;H=2", out) == frame_error::parse);  // matches, does not convert
    CHECK(out.empty());
}

TEST_CASE("regex: a pattern that would backtrack exponentially in a backtracking engine") {
    parse_settings s;
    s.regex = "^(a+)+$(?<x>b)?";
    line_parser p(s, {pt("x", point_type::string)});
    std::vector<field> out;
    // RE2 is linear: this returns at once (a backtracking engine takes ages on it).
    CHECK(p.parse(std::string(5000, 'a') + "!", out) == frame_error::parse);
}

TEST_CASE("regex syntax: (?<name> becomes (?P<name>, but not in classes, escapes or lookbehinds") {
    CHECK(to_re2_syntax("(?<a>x)") == "(?P<a>x)");
    CHECK(to_re2_syntax("(?P<a>x)") == "(?P<a>x)");
    CHECK(to_re2_syntax(R"(\(?<a>)") == R"(\(?<a>)");
    CHECK(to_re2_syntax("[(?<a>]") == "[(?<a>]");
    CHECK(to_re2_syntax("[]](?<a>x)") == "[]](?P<a>x)");
    CHECK(to_re2_syntax("(?<=x)") == "(?<=x)");
    auto c = check_regex("(?<b>x)(?P<a>y)");
    CHECK(c.error.empty());
    CHECK(c.names == std::vector<std::string>{"b", "a"});
    CHECK(!check_regex("(?<a>x").error.empty());
}

TEST_CASE("csv: field list, skipped columns, extra columns, too few columns") {
    parse_settings s;
    s.format = parse_format::csv;
    s.csv = {"temperature", "", "humidity"};
    s.separator = ",";
    line_parser p(s, {pt("temperature", point_type::float64), pt("humidity", point_type::uint16)});
    std::vector<field> out;
    REQUIRE(p.parse("21.5, ignored ,40,extra", out) == frame_error::none);
    REQUIRE(out.size() == 2);
    CHECK(out[1].point == 1);
    CHECK(out[1].value == ferry::value(std::uint64_t{40}));
    CHECK(p.parse("21.5,x", out) == frame_error::parse);
    CHECK(p.parse("21.5,,", out) == frame_error::parse);  // empty humidity
    s.separator = ";";
    line_parser q(s, {pt("temperature", point_type::float64), pt("humidity", point_type::uint16)});
    CHECK(q.parse("1;2;3", out) == frame_error::none);
}

TEST_CASE("json: flat object, other keys ignored, nested or wrong values refused") {
    parse_settings s;
    s.format = parse_format::json;
    line_parser p(s, {pt("t", point_type::float64), pt("n", point_type::int32),
                      pt("on", point_type::boolean), pt("id", point_type::string)});
    std::vector<field> out;
    REQUIRE(p.parse(R"({"t":21.5,"n":-7,"on":true,"id":"A1","other":[1]})", out) ==
            frame_error::none);
    REQUIRE(out.size() == 4);
    CHECK(p.parse(R"({"t":"22.25"})", out) == frame_error::none);  // quoted numbers convert
    CHECK(out[0].value == ferry::value(22.25));
    CHECK(p.parse(R"({"n":1.5})", out) == frame_error::parse);
    CHECK(p.parse(R"({"t":{"v":1}})", out) == frame_error::parse);
    CHECK(p.parse(R"({"t":null})", out) == frame_error::parse);
    CHECK(p.parse(R"({"other":1})", out) == frame_error::parse);  // no point in it
    CHECK(p.parse(R"([1,2])", out) == frame_error::parse);
    CHECK(p.parse(R"({"t":21.5)", out) == frame_error::parse);
}

TEST_CASE("kv: pairs, repeated separators, unknown keys, tokens without '='") {
    parse_settings s;
    s.format = parse_format::kv;
    s.separator = " ";
    line_parser p(s, {pt("a", point_type::int64), pt("b", point_type::float64)});
    std::vector<field> out;
    REQUIRE(p.parse("a=1  b=2.5 c=x", out) == frame_error::none);
    CHECK(out.size() == 2);
    CHECK(p.parse("a=1 garbage", out) == frame_error::parse);
    CHECK(p.parse("a=x", out) == frame_error::parse);
    CHECK(p.parse("", out) == frame_error::parse);
    s.separator = ",";
    line_parser q(s, {pt("a", point_type::int64), pt("b", point_type::float64)});
    REQUIRE(q.parse("a = 1, b=2", out) == frame_error::none);
    CHECK(out.size() == 2);
}

TEST_CASE("checksum applies before any format") {
    parse_settings s;
    s.format = parse_format::kv;
    s.separator = " ";
    s.checksum = "nmea";
    line_parser p(s, {pt("a", point_type::int64)});
    std::vector<field> out;
    CHECK(p.parse("a=1*6D", out) == frame_error::none);
    CHECK(p.parse("a=1*6e", out) == frame_error::checksum);
    CHECK(p.parse("a=1", out) == frame_error::checksum);
}

TEST_CASE("parser settings it cannot use are refused at build") {
    parse_settings s;
    s.regex = "(?<nope>x)";
    CHECK_THROWS_AS(line_parser(s, {pt("t", point_type::float64)}), std::invalid_argument);
    s.regex = "(unclosed";
    CHECK_THROWS_AS(line_parser(s, {pt("t", point_type::float64)}), std::invalid_argument);
}

TEST_CASE("a failed frame names the points it was meant to carry, when it shows them") {
    using V = std::vector<std::size_t>;
    std::vector<field> out;
    parse_details d;
    parse_settings re;
    re.regex = R"(^T=(?<t>[0-9.]+)(;H=(?<h>[0-9.]+))?(;S=(?<s>\w+))?$)";
    line_parser r(re, {pt("t", point_type::float64), pt("h", point_type::float64),
                       pt("s", point_type::string)});
    CHECK(r.parse("T=1.2.3;H=4", out, &d) == frame_error::parse);  // matched: t and h took part
    CHECK(d.named == V{0, 1});
    CHECK(r.parse("$GPRMC,1,2", out, &d) == frame_error::parse);  // another sentence: none
    CHECK(d.named.empty());
    parse_settings csv;
    csv.format = parse_format::csv;
    csv.csv = {"a", "", "b"};
    line_parser c(csv, {pt("a", point_type::int16), pt("b", point_type::int16)});
    CHECK(c.parse("1,x", out, &d) == frame_error::parse);  // too few columns
    CHECK(d.named == V{0, 1});
    CHECK(c.parse("  ", out, &d) == frame_error::parse);  // a blank line is no reading
    CHECK(d.named.empty());
    parse_settings json;
    json.format = parse_format::json;
    line_parser j(json, {pt("a", point_type::int16), pt("b", point_type::int16)});
    CHECK(j.parse(R"({"b":1.5,"z":1})", out, &d) == frame_error::parse);
    CHECK(d.named == V{1});
    CHECK(j.parse(R"({"b":1)", out, &d) == frame_error::parse);  // not json: none
    CHECK(d.named.empty());
    parse_settings kv;
    kv.format = parse_format::kv;
    line_parser k(kv, {pt("a", point_type::int16), pt("b", point_type::int16)});
    CHECK(k.parse("b=2 a=x a=3 junk", out, &d) == frame_error::parse);
    CHECK(d.named == V{1, 0});
    parse_settings sum;
    sum.format = parse_format::kv;
    sum.checksum = "nmea";
    line_parser n(sum, {pt("a", point_type::int16)});
    CHECK(n.parse("a=1*00", out, &d) == frame_error::checksum);  // wrong checksum: none
    CHECK(d.named.empty());
}

TEST_CASE("string values are valid UTF-8: ill-formed bytes become U+FFFD, and are counted") {
    const std::string fffd = "\xEF\xBF\xBD";
    std::vector<field> out;
    parse_details d;
    parse_settings csv;
    csv.format = parse_format::csv;
    csv.csv = {"name", "t"};
    line_parser c(csv, {pt("name", point_type::string), pt("t", point_type::float64)});
    REQUIRE(c.parse("caf\xE9\xFF\x01,22.5", out, &d) == frame_error::none);
    CHECK(out[0].value == ferry::value("caf" + fffd + fffd + "\x01"));
    CHECK(out[1].value == ferry::value(22.5));
    CHECK(d.repaired == 2);
    REQUIRE(c.parse("caf\xC3\xA9,1", out, &d) == frame_error::none);  // valid: unchanged
    CHECK(out[0].value == ferry::value("caf\xC3\xA9"));
    CHECK(d.repaired == 0);
    CHECK(c.parse("x,2\xFF", out, &d) == frame_error::parse);  // not a number: no repair
    parse_settings json;
    json.format = parse_format::json;
    line_parser j(json, {pt("id", point_type::string), pt("n", point_type::int16)});
    // A strict JSON parser would refuse the frame; it is repaired first, the values kept.
    REQUIRE(j.parse("{\"id\":\"S\xED\xA0\x80\",\"n\":3,\"x\":\"\xFF\"}", out, &d) ==
            frame_error::none);
    REQUIRE(out.size() == 2);
    CHECK(out[0].value == ferry::value("S" + fffd + fffd + fffd));
    CHECK(out[1].value == ferry::value(std::int64_t{3}));
    CHECK(d.repaired == 4);
}

TEST_CASE("framer: frames across reads, CR LF, multi-byte delimiters split between reads") {
    framer f(delim("\n"));
    auto r = feed_all(f, {"T=1\r\nT=", "2\n\nT=3", "\r", "\n"});
    CHECK(r.frames == std::vector<std::string>{"T=1", "T=2", "", "T=3"});
    CHECK(f.pending() == 0);
    framer g(delim("\r\n"));
    r = feed_all(g, {"a\r", "\nb\r\nc\n\r", "\n"});
    CHECK(r.frames == std::vector<std::string>{"a", "b", "c\n"});
    framer h(delim("END"));
    r = feed_all(h, {"xE", "N", "DyEN", "Dz"});
    CHECK(r.frames == std::vector<std::string>{"x", "y"});
    CHECK(h.pending() == 1);
}

TEST_CASE("framer: an overlong frame is reported once and the next frame is read normally") {
    framer f(delim("\n", 8));
    // in one read
    auto r = feed_all(f, {"12345678\n123456789\nok\n"});
    CHECK(r.frames == std::vector<std::string>{"12345678", "ok"});
    CHECK(r.too_long == 1);
    // a stream without delimiter, over many reads: one report, bounded memory
    std::vector<std::string> chunks(100, std::string(1000, 'x'));
    chunks.push_back("tail\ngood\n");
    r = feed_all(f, chunks);
    CHECK(r.too_long == 1);
    CHECK(r.frames == std::vector<std::string>{"good"});
    CHECK(f.pending() == 0);
    // an overlong frame whose delimiter straddles reads
    framer g(delim("\r\n", 4));
    r = feed_all(g, {"123456\r", "\nab\r\n"});
    CHECK(r.too_long == 1);
    CHECK(r.frames == std::vector<std::string>{"ab"});
}

TEST_CASE("framer: fixed length frames across reads; reset drops a partial frame") {
    framing_settings s;
    s.length = 4;
    framer f(s);
    auto r = feed_all(f, {"abc", "defgh", "ijkl", "m"});
    CHECK(r.frames == std::vector<std::string>{"abcd", "efgh", "ijkl"});
    CHECK(f.pending() == 1);
    f.reset();
    r = feed_all(f, {"wxyz"});
    CHECK(r.frames == std::vector<std::string>{"wxyz"});
}

TEST_CASE("config: serial_line keys reach the driver's settings") {
    const auto cfg = ferry::load_config_text(R"(gateway: { id: g }
devices:
  - id: m
    driver: serial_line
    serial: { port: /dev/ttyUSB0, baud: 19200, parity: O, data_bits: 7, stop_bits: 2 }
    framing: { delimiter: "\r\n", max_frame: 1KiB }
    poll: { request: "READ?\r\n", interval: 250ms }
    parse: { csv: [a, "", b] }
    points: [ { name: a, type: float64 }, { name: b, type: int16, scale: 0.1 } ]
  - id: n
    driver: serial_line
    serial: { port: /dev/ttyUSB1 }
    parse: { kv: true, checksum: nmea }
    points: [ { name: a } ]
)",
                                             "t.yaml");
    REQUIRE(cfg.devices.size() == 2);
    const auto& m = cfg.devices[0];
    CHECK(of(m).serial->baud == 19200);
    CHECK(of(m).serial->par == config::parity::odd);
    CHECK(of(m).serial->data_bits == 7);
    CHECK(of(m).serial->stop_bits == 2);
    CHECK(of(m).framing.delimiter == "\r\n");
    CHECK(of(m).framing.max_frame == 1024);
    REQUIRE(of(m).request);
    CHECK(of(m).request->request == "READ?\r\n");
    CHECK(of(m).request->interval == std::chrono::milliseconds(250));
    CHECK(of(m).parse->format == parse_format::csv);
    CHECK(of(m).parse->separator == ",");
    const auto& n = cfg.devices[1];
    CHECK(of(n).framing.delimiter == "\n");
    CHECK(of(n).framing.max_frame == 4096);
    CHECK(!of(n).request);
    CHECK(of(n).parse->separator == " ");
    CHECK(of(n).parse->checksum == "nmea");
}
