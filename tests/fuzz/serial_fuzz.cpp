// Fuzz target: the serial_line driver's input path without a port — the framer
// (drivers/serial/framer.hpp) cutting a byte stream into frames, the parsers
// (drivers/serial/parser.hpp) turning frames into values, and the JSON writer
// (core/json.hpp) encoding the events that the driver would publish.
//
// Input: byte 0 picks one of the device configs below (every parse format, with and without
// NMEA checksums, delimiter and fixed-length framing), byte 1 the size of the reads the stream
// is fed in (1..64 bytes, as a UART delivers), the rest is what the sensor sent.
// Invariants, each a trap when broken:
// - frames respect the framing: at most max_frame bytes (delimiter), exactly `length` (fixed);
// - parse() never throws; success gives at least one value, each for a point of the device,
//   strings valid UTF-8, doubles finite; failure gives no value, and the points it names are
//   points of the device, each once;
// - the batch of the resulting events (good values and `bad` ones for named points) is valid
//   UTF-8 and strict JSON (nlohmann), with one event per value and `null` only on bad ones;
//   every frame written as a JSON string, whatever bytes it holds, parses back to the frame
//   with its ill-formed UTF-8 replaced by U+FFFD.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "core/json.hpp"
#include "core/utf8.hpp"
#include "drivers/serial/framer.hpp"
#include "drivers/serial/parser.hpp"

using namespace ferry;
using namespace ferry::drivers::serial;
using config::point_type;

namespace {

[[noreturn]] void violated(const char* what, std::string_view detail) {
    std::fprintf(stderr, "serial_fuzz: %s\n  %.*s\n", what, static_cast<int>(detail.size()),
                 detail.data());
    __builtin_trap();
}

config::point pt(std::string name, point_type t, double scale = 1.0) {
    config::point p;
    p.name = std::move(name);
    p.type = t;
    p.scale = scale;
    return p;
}

struct device {
    framing_settings framing;
    std::vector<config::point> points;
    std::unique_ptr<line_parser> parser;
    std::vector<point_id> ids;
};

std::vector<device>& devices(point_table& table) {
    static std::vector<device> all = [&] {
        std::vector<device> out;
        auto add = [&](parse_settings ps, std::vector<config::point> points,
                       framing_settings f = {}) {
            device d;
            d.framing = f;
            d.points = std::move(points);
            d.parser = std::make_unique<line_parser>(ps, d.points);
            for (const auto& p : d.points)
                d.ids.push_back(table.intern("dev" + std::to_string(out.size()), p.name, "u"));
            out.push_back(std::move(d));
        };
        parse_settings regex;
        regex.regex = R"(^\$FIX,(?<n>-?\d+),(?<alt>[0-9.]+),(?<id>[^,]*)$)";
        regex.checksum = "nmea";
        add(regex, {pt("n", point_type::int32), pt("alt", point_type::float64),
                    pt("id", point_type::string)});
        regex.checksum.clear();
        framing_settings small;
        small.max_frame = 64;
        add(regex,
            {pt("n", point_type::int16), pt("alt", point_type::float32, 0.1),
             pt("id", point_type::string)},
            small);
        parse_settings csv;
        csv.format = parse_format::csv;
        csv.csv = {"name", "t", "", "on", "big"};
        add(csv, {pt("name", point_type::string), pt("t", point_type::float64),
                  pt("on", point_type::boolean), pt("big", point_type::uint64)});
        parse_settings json;
        json.format = parse_format::json;
        add(json, {pt("co2", point_type::uint16), pt("id", point_type::string),
                   pt("ok", point_type::boolean), pt("x", point_type::int64, 0.001)});
        parse_settings kv;
        kv.format = parse_format::kv;
        kv.checksum = "nmea";
        add(kv, {pt("weight", point_type::float64), pt("tag", point_type::string)});
        parse_settings fixed;
        fixed.regex = "^W(?<weight>[+-][0-9.]+)$";
        framing_settings eight;
        eight.length = 8;
        add(fixed, {pt("weight", point_type::float64)}, eight);
        parse_settings crlf;
        crlf.format = parse_format::csv;
        crlf.csv = {"a", "b"};
        crlf.separator = ";";
        framing_settings two;
        two.delimiter = "\r\n";
        add(crlf, {pt("a", point_type::string), pt("b", point_type::int32)}, two);
        return out;
    }();
    return all;
}

// What one input's frames gave: the events the driver would publish, and every frame written
// as a JSON string, checked together at the end (one strict parse each, not one per frame).
struct findings {
    std::vector<event> events;
    std::string frames = "[";  // a JSON array of the frames, as strings
    std::vector<std::string> repaired;
    void clear() {
        events.clear();
        frames.assign(1, '[');
        repaired.clear();
    }
};

void check_frame(device& d, std::string_view frame, findings& f) {
    static std::vector<field> fields;
    static parse_details details;
    const auto r = d.parser->parse(frame, fields, &details);
    if (r == frame_error::none) {
        if (fields.empty()) violated("success without a value", frame);
        for (auto& fl : fields) {
            if (fl.point >= d.points.size()) violated("value for an unknown point", frame);
            if (const auto* s = std::get_if<std::string>(&fl.value); s && !utf8::valid(*s))
                violated("string value not valid UTF-8", frame);
            if (const auto* x = std::get_if<double>(&fl.value); x && !std::isfinite(*x))
                violated("value not finite", frame);
            event e;
            e.point = d.ids[fl.point];
            e.value = fl.value;
            f.events.push_back(std::move(e));
        }
    } else {
        if (!fields.empty()) violated("values from a frame in error", frame);
        for (std::size_t i = 0; i < details.named.size(); ++i) {
            if (details.named[i] >= d.points.size()) violated("named an unknown point", frame);
            for (std::size_t j = 0; j < i; ++j)
                if (details.named[j] == details.named[i]) violated("named a point twice", frame);
            event e;
            e.point = d.ids[details.named[i]];
            e.quality = quality::bad;
            f.events.push_back(std::move(e));
        }
    }
    if (f.frames.size() > 1) f.frames.push_back(',');
    json::append_string(f.frames, frame);
    f.repaired.emplace_back(frame);
    utf8::repair(f.repaired.back());
}

void check_findings(findings& f, const point_table& table) {
    static std::string out;
    json::encode_batch(out, "gw", 1, f.events, table);
    if (!utf8::valid(out)) violated("batch not valid UTF-8", out);
    const auto doc = nlohmann::json::parse(out, nullptr, false);
    if (doc.is_discarded()) violated("batch not strict JSON", out);
    if (doc["events"].size() != f.events.size()) violated("batch lost events", out);
    for (std::size_t i = 0; i < f.events.size(); ++i) {
        const bool good = f.events[i].quality == quality::good;
        if (good == doc["events"][i]["value"].is_null())
            violated("null value on a good event, or a value on a bad one", out);
    }

    f.frames.push_back(']');
    const auto texts = nlohmann::json::parse(f.frames, nullptr, false);
    if (texts.is_discarded() || texts.size() != f.repaired.size())
        violated("frames as JSON strings are not strict JSON", f.frames);
    for (std::size_t i = 0; i < f.repaired.size(); ++i)
        if (texts[i].get<std::string>() != f.repaired[i])
            violated("a JSON string is not the repaired text", f.frames);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static point_table table;
    static findings found;
    auto& all = devices(table);
    if (size < 2) return 0;
    auto& d = all[data[0] % all.size()];
    const std::size_t chunk = 1 + data[1] % 64;
    const std::string_view stream(reinterpret_cast<const char*>(data) + 2, size - 2);
    framer f(d.framing);
    found.clear();
    for (std::size_t i = 0; i < stream.size(); i += chunk) {
        f.feed(
            stream.substr(i, chunk),
            [&](std::string_view frame) {
                if (d.framing.length > 0 && frame.size() != d.framing.length)
                    violated("fixed-length frame of another length", frame);
                if (d.framing.length == 0 && frame.size() > d.framing.max_frame)
                    violated("frame over max_frame", frame);
                check_frame(d, frame, found);
            },
            [] {});
        if (d.framing.length == 0 && f.pending() > d.framing.max_frame + d.framing.delimiter.size())
            violated("framer holds more than max_frame", stream);
    }
    check_findings(found, table);
    return 0;
}
