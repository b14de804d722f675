#include "drivers/serial/config.hpp"

#include <algorithm>
#include <string>
#include <utility>

#include "core/config_reader.hpp"
#include "drivers/serial/regex.hpp"

namespace ferry::drivers::serial {
namespace {

using config::option;

constexpr std::string_view k_checksum_names[] = {"nmea"};

constexpr option k_device[] = {
    {"serial", "map", "required", "The serial line (see `devices[].serial`)."},
    {"framing", "map", "{ delimiter: \"\\n\" }",
     "How the byte stream is cut into frames (see `devices[].framing`)."},
    {"parse", "map", "required", "How a frame becomes point values (see `devices[].parse`)."},
    {"poll", "map", "none: the sensor sends on its own",
     "Write a request at an interval (see `devices[].poll`)."},
};

constexpr option k_point[] = {
    {"type", "", "uint16", "What the text is converted to.", config::k_all_drivers,
     config::k_type_names},
    {"scale", "number != 0", "1", "value = raw * scale + offset."},
    {"offset", "number", "0", "value = raw * scale + offset."},
    {"unit", "string", "\"\"", "Unit sent with each value, e.g. degC."},
};

constexpr option k_framing_options[] = {
    {"delimiter", "string", "\"\\n\"",
     "Frames end with this string, which is stripped. With \"\\n\", a \\r before it is stripped "
     "too (CR LF line ends). Multi-byte delimiters may be split across reads."},
    {"length", "integer 1..65535", "",
     "Fixed-size frames of this many bytes instead (no delimiter)."},
    {"max_frame", "size 1..1MiB", "4KiB",
     "Delimiter framing only: a longer frame is counted once (reason `too_long`) and everything up "
     "to the next delimiter is dropped; memory stays bounded on a stream with no delimiter (wrong "
     "baud rate, binary data)."},
};

constexpr option k_poll_options[] = {
    {"request", "string", "required",
     "Written to the port at every interval, e.g. \"READ?\\r\\n\" (YAML double quotes take \\r, "
     "\\n, \\x02)."},
    {"interval", "duration 1ms..720h", "1s",
     "Fixed rate without drift; if the previous request is still being written, this one is "
     "skipped."},
};

constexpr option k_parse_options[] = {
    {"regex", "string", "",
     "A regular expression searched in the frame (anchor it with `^...$` to match the whole "
     "frame); each named group `(?<point>...)` (or `(?P<point>...)`) gives that point's value. RE2 "
     "syntax: linear in the line, no backtracking. A group that does not take part in the match "
     "gives no value. Every group name must be a point (checked by `ferry check`)."},
    {"csv", "list of strings", "",
     "Column i goes to the point named by item i; \"\" skips a column. A frame with fewer columns "
     "than the list is a parse error; extra columns are ignored."},
    {"json", "bool", "false",
     "The frame is a flat JSON object; keys that name points give their values (numbers, strings, "
     "bools); other keys are ignored. A point key holding an object, array or null is a parse "
     "error."},
    {"kv", "bool", "false",
     "`a=1 b=2`: tokens split by `separator` (empty tokens are skipped); keys that name points "
     "give their values; a token without `=` is a parse error."},
    {"separator", "string", "\",\" for csv, \" \" for kv", "Field separator of csv and kv."},
    {"checksum", "", "none",
     "With any format: the frame must end in `*hh`, the XOR of the bytes after a leading `$`/`!` "
     "(or of all bytes before `*` without one), hex in either case; verified and stripped before "
     "parsing.",
     config::k_all_drivers, k_checksum_names},
};

// `parse`: exactly one format.
std::optional<parse_settings> read_parse(config::loader& ld, const config::map_reader& m) {
    if (!m.require("parse")) return std::nullopt;
    config::map_reader pm(ld, *m.get("parse"), k_parse_options);
    if (!pm.is_map()) return std::nullopt;
    pm.check_keys();
    parse_settings p;
    int formats = 0;
    if (auto r = pm.get("regex")) {
        ++formats;
        p.format = parse_format::regex;
        if (auto s = ld.nonempty_str(*r)) {
            p.regex = *s;
            ld.remember(m.path() + "#regex", *r);  // finish_names checks its groups
            if (auto e = check_regex(*s).error; !e.empty()) ld.fail(*r, "invalid regex: " + e);
        }
    }
    if (auto r = pm.get("csv")) {
        ++formats;
        p.format = parse_format::csv;
        for (auto& item : ld.list(*r)) {
            if (auto s = ld.str(item)) {
                ld.remember(m.path() + "#csv" + std::to_string(p.csv.size()), item);
                p.csv.push_back(*s);
            }
        }
        if (p.csv.empty()) ld.fail(*r, "csv needs at least one column");
        p.separator = ",";
    }
    if (auto r = pm.get("json"); r && ld.boolean(*r).value_or(false)) {
        ++formats;
        p.format = parse_format::json;
    }
    if (auto r = pm.get("kv"); r && ld.boolean(*r).value_or(false)) {
        ++formats;
        p.format = parse_format::kv;
        p.separator = " ";
    }
    if (formats != 1)
        ld.fail(pm.where(), pm.path(), "set exactly one of regex, csv, json: true, kv: true");
    if (auto r = pm.get("separator")) {
        if (p.format != parse_format::csv && p.format != parse_format::kv)
            ld.fail(pm.key_ref("separator"), "'separator' applies only to csv and kv");
        else if (auto s = ld.nonempty_str(*r))
            p.separator = *s;
    }
    if (auto r = pm.get("checksum"))
        if (ld.choice(*r, k_checksum_names, "checksum")) p.checksum = "nmea";
    return p;
}

void read_device(config::loader& ld, const config::map_reader& m, config::device& d) {
    device_settings out;
    if (m.require("serial")) out.serial = config::read_serial(ld, *m.get("serial"));
    framing_settings f;
    if (auto r = m.get("framing")) {
        config::map_reader fm(ld, *r, k_framing_options);
        if (fm.is_map()) {
            fm.check_keys();
            if (fm.has("delimiter") && fm.has("length"))
                ld.fail(fm.where(), fm.path(), "set either 'delimiter' or 'length', not both");
            if (auto x = fm.get("delimiter"))
                if (auto s = ld.nonempty_str(*x)) f.delimiter = *s;
            ld.set(fm, "length", f.length, 1, 65535);
            if (auto x = fm.get("max_frame")) {
                if (fm.has("length"))
                    ld.fail(fm.key_ref("max_frame"),
                            "'max_frame' applies only to delimiter framing");
                else if (auto n = ld.size(*x, 1, 1024 * 1024))
                    f.max_frame = static_cast<std::uint32_t>(*n);
            }
        }
    }
    out.framing = f;

    if (auto r = m.get("poll")) {
        config::map_reader qm(ld, *r, k_poll_options);
        if (qm.is_map()) {
            qm.check_keys();
            request_settings q;
            if (qm.require("request"))
                if (auto s = ld.nonempty_str(*qm.get("request"))) q.request = *s;
            ld.set_dur(qm, "interval", q.interval, true);
            out.request = std::move(q);
        }
    }

    out.parse = read_parse(ld, m);
    d.settings = config::driver_settings::make(std::move(out));
}

void read_point(config::loader& ld, const config::map_reader& m, config::point& p) {
    ld.set_enum(m, "type", p.type, config::k_type_names);
}

// Names in the parse settings must be points of this device.
void finish_device(config::loader& ld, const config::map_reader& m, config::device& d) {
    const auto& parse = of(d).parse;
    if (!parse) return;
    auto known = [&](const std::string& n) {
        return std::any_of(d.points.begin(), d.points.end(),
                           [&](const config::point& p) { return p.name == n; });
    };
    if (auto r = ld.recall(m.path() + "#regex")) {
        for (const auto& name : check_regex(parse->regex).names) {
            if (!known(name))
                ld.fail(*r, "named group '" + name + "' is not a point of device '" + d.id + "'");
        }
    }
    for (std::size_t i = 0; i < parse->csv.size(); ++i) {
        const auto& n = parse->csv[i];
        if (n.empty() || known(n)) continue;
        if (auto r = ld.recall(m.path() + "#csv" + std::to_string(i)))
            ld.fail(*r, "'" + n + "' is not a point of device '" + d.id + "'");
    }
}

}  // namespace

const config::driver_schema& line_schema() {
    static const config::driver_schema s{
        "serial_line",
        k_device,
        k_point,
        {{"devices[].serial", "modbus_rtu and serial_line.", config::k_serial_options},
         {"devices[].framing", "serial_line; at most one of delimiter and length.",
          k_framing_options},
         {"devices[].parse", "serial_line; exactly one of regex, csv, json, kv.", k_parse_options},
         {"devices[].poll", "serial_line, for sensors that answer on demand.", k_poll_options}},
        read_device,
        read_point,
        finish_device};
    return s;
}

}  // namespace ferry::drivers::serial
