#include "drivers/modbus/probe.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "drivers/modbus/codec.hpp"
#include "drivers/modbus/link.hpp"
#include "drivers/modbus/scan.hpp"

namespace ferry::drivers::modbus {
namespace {

constexpr int k_ok = 0;
constexpr int k_usage = 2;
constexpr int k_runtime = 3;

const char* const k_probe_usage =
    "usage: ferry probe modbus --host H [--port 502] [--unit 1] [--table holding]\n"
    "                          --address A [--count 4] [--timeout 1000]\n"
    "       ferry probe modbus --serial DEVICE [--baud 9600] [--parity N|E|O]\n"
    "                          [--data-bits 8] [--stop-bits 1] [--unit 1] [--table holding]\n"
    "                          --address A [--count 4] [--timeout 1000]\n"
    "       ferry probe modbus (--host H [--port 502] | --serial DEVICE [--baud ...])\n"
    "                          --scan RANGE [--table holding] [--address 0] [--count 1]\n"
    "                          [--timeout 200] [--profiles DIR]\n"
    "  --table    holding | input | coil | discrete\n"
    "  --address  0-based protocol address; --count registers (1..125) or bits (1..2000)\n"
    "  --timeout  answer timeout in milliseconds\n"
    "  --scan     unit ids to try, one read each, no retry: 1-30, 1,2,5 or 1-10,20\n"
    "             (RTU 1..247, TCP 0..255); then the profiles each answering unit fits\n"
    "  --profiles where profile files NAME.yaml are (default: gateway.profiles_dir's)\n";

std::optional<long> parse_long(const std::string& s, long lo, long hi) {
    if (s.empty()) return std::nullopt;
    char* end = nullptr;
    const long v = std::strtol(s.c_str(), &end, 0);
    if (*end != '\0' || v < lo || v > hi) return std::nullopt;
    return v;
}

}  // namespace

std::string parse_probe_args(const std::vector<std::string>& args, probe_args& a) {
    if (args.empty() || args[0] != "modbus") return "probe takes 'modbus' first";
    config::serial_settings serial;
    bool serial_keys = false, unit_given = false, count_given = false, timeout_given = false;
    std::optional<std::string> scan;
    for (std::size_t i = 1; i < args.size(); ++i) {
        const std::string& k = args[i];
        if (i + 1 >= args.size()) return k + " needs a value";
        const std::string& v = args[++i];
        auto num = [&](long lo, long hi) { return parse_long(v, lo, hi); };
        const std::string bad = "bad value for " + k + ": '" + v + "'";
        if (k == "--host") {
            a.host = v;
        } else if (k == "--port") {
            auto n = num(1, 65535);
            if (!n) return bad;
            a.port = static_cast<std::uint16_t>(*n);
        } else if (k == "--serial") {
            serial.port = v;
            a.serial = serial;
        } else if (k == "--baud") {
            auto n = num(1, 4000000);
            if (!n) return bad;
            serial.baud = static_cast<std::uint32_t>(*n);
            serial_keys = true;
        } else if (k == "--parity") {
            if (v == "N")
                serial.par = config::parity::none;
            else if (v == "E")
                serial.par = config::parity::even;
            else if (v == "O")
                serial.par = config::parity::odd;
            else
                return bad;
            serial_keys = true;
        } else if (k == "--data-bits") {
            auto n = num(7, 8);
            if (!n) return bad;
            serial.data_bits = static_cast<int>(*n);
            serial_keys = true;
        } else if (k == "--stop-bits") {
            auto n = num(1, 2);
            if (!n) return bad;
            serial.stop_bits = static_cast<int>(*n);
            serial_keys = true;
        } else if (k == "--unit") {
            auto n = num(0, 255);
            if (!n) return bad;
            a.unit = static_cast<int>(*n);
            unit_given = true;
        } else if (k == "--table") {
            if (v == "holding")
                a.tbl = table::holding;
            else if (v == "input")
                a.tbl = table::input;
            else if (v == "coil")
                a.tbl = table::coil;
            else if (v == "discrete")
                a.tbl = table::discrete;
            else
                return bad;
        } else if (k == "--address") {
            auto n = num(0, 65535);
            if (!n) return bad;
            a.address = static_cast<std::uint16_t>(*n);
        } else if (k == "--count") {
            auto n = num(1, 2000);
            if (!n) return bad;
            a.count = static_cast<std::uint32_t>(*n);
            count_given = true;
        } else if (k == "--timeout") {
            auto n = num(1, 600000);
            if (!n) return bad;
            a.timeout = std::chrono::milliseconds(*n);
            timeout_given = true;
        } else if (k == "--scan") {
            scan = v;
        } else if (k == "--profiles") {
            if (v.empty()) return bad;
            a.profiles_dir = v;
        } else {
            return "unknown argument '" + k + "'";
        }
    }
    if (a.serial) {
        serial.port = a.serial->port;
        a.serial = serial;
    }
    if (a.host.empty() == !a.serial.has_value()) return "give exactly one of --host and --serial";
    if (serial_keys && !a.serial) return "--baud, --parity, --data-bits, --stop-bits need --serial";
    if (scan) {
        if (unit_given) return "--scan and --unit exclude each other";
        std::string why;
        // 0 is the broadcast address on a serial line: nothing answers it.
        a.scan = a.serial ? parse_unit_ids(*scan, 1, 247, why) : parse_unit_ids(*scan, 0, 255, why);
        if (a.scan.empty()) return "bad value for --scan: " + why;
        if (!a.address) a.address = 0;
        if (!count_given) a.count = 1;
        if (!timeout_given) a.timeout = k_scan_timeout;
    } else if (!a.profiles_dir.empty()) {
        return "--profiles needs --scan";
    }
    if (!a.address) return "missing --address";
    const std::uint32_t limit = is_bit_table(a.tbl) ? k_max_bits : k_max_registers;
    if (a.count > limit) return "--count is at most " + std::to_string(limit) + " for this table";
    if (*a.address + a.count > 65536) return "--address + --count runs past 65535";
    return {};
}

const char* table_name(table t) {
    switch (t) {
        case table::holding:
            return "holding";
        case table::input:
            return "input";
        case table::coil:
            return "coil";
        case table::discrete:
        default:
            return "discrete";
    }
}

namespace {

// Prints `first` and then the columns, 24 characters apart, without trailing blanks.
void print_columns(std::FILE* out, const std::string& first, const std::vector<std::string>& cols) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "  %-8s", first.c_str());
    std::string line = buf;
    for (const auto& c : cols) {
        std::snprintf(buf, sizeof buf, " %-24s", c.c_str());
        line += buf;
    }
    line.erase(line.find_last_not_of(' ') + 1);
    std::fprintf(out, "%s\n", line.c_str());
}

template <class T, class F>
void row(std::FILE* out, const char* type, const decodings::per_order<T>& values, F format) {
    std::vector<std::string> cols;
    for (auto o : decodings::orders) {
        const auto& v = values[decodings::order_index(o)];
        cols.push_back(v ? format(*v) : std::string("-"));
    }
    print_columns(out, type, cols);
}

std::string fmt_u(std::uint64_t v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%" PRIu64, v);
    return buf;
}
std::string fmt_i(std::int64_t v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%" PRId64, v);
    return buf;
}
std::string fmt_f(double v, int digits) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    return buf;
}

void print_registers(std::FILE* out, const probe_args& a, const std::vector<std::uint16_t>& regs) {
    std::fprintf(out, "%-9s %-8s %-7s %s\n", "register", "hex", "u16", "ascii");
    for (std::size_t i = 0; i < regs.size(); ++i) {
        const auto w = regs[i];
        const auto hi = static_cast<char>(w >> 8);
        const auto lo = static_cast<char>(w & 0xff);
        auto printable = [](char c) { return c >= 0x20 && c <= 0x7e ? c : '.'; };
        std::fprintf(out, "%-9zu 0x%04X   %-7u %c%c\n", *a.address + i, w, w, printable(hi),
                     printable(lo));
    }
    for (std::size_t i = 0; i < regs.size(); ++i) {
        const auto d = decode_all(std::span<const std::uint16_t>(regs).subspan(i));
        std::fprintf(out, "\nstarting at register %zu:\n", *a.address + i);
        std::vector<std::string> names;
        names.reserve(decodings::orders.size());
        for (auto o : decodings::orders)
            names.emplace_back(order_name(o));
        print_columns(out, "type", names);
        row(out, "uint16", d.u16, [](std::uint16_t v) { return fmt_u(v); });
        row(out, "int16", d.i16, [](std::int16_t v) { return fmt_i(v); });
        if (i + 2 > regs.size()) continue;
        row(out, "uint32", d.u32, [](std::uint32_t v) { return fmt_u(v); });
        row(out, "int32", d.i32, [](std::int32_t v) { return fmt_i(v); });
        row(out, "float32", d.f32, [](float v) { return fmt_f(static_cast<double>(v), 9); });
        if (i + 4 > regs.size()) continue;
        row(out, "uint64", d.u64, [](std::uint64_t v) { return fmt_u(v); });
        row(out, "int64", d.i64, [](std::int64_t v) { return fmt_i(v); });
        row(out, "float64", d.f64, [](double v) { return fmt_f(v, 17); });
    }
}

}  // namespace

int probe_main(const std::vector<std::string>& args, std::FILE* out, std::FILE* err,
               const config::schema& s) {
    if (std::find(args.begin(), args.end(), "--help") != args.end()) {
        std::fputs(k_probe_usage, out);
        return k_ok;
    }
    probe_args a;
    if (const auto why = parse_probe_args(args, a); !why.empty()) {
        std::fprintf(err, "ferry: probe: %s\n%s", why.c_str(), k_probe_usage);
        return k_usage;
    }
    auto lnk = a.serial ? make_rtu_link(*a.serial) : make_tcp_link(a.host, a.port);
    if (!a.scan.empty()) return scan_main(a, *lnk, out, err, s);
    std::vector<std::uint16_t> values(a.count);
    const auto r = lnk->read(a.unit, a.tbl, *a.address, static_cast<std::uint16_t>(a.count),
                             a.timeout, values.data());
    if (!r.ok()) {
        std::fprintf(err, "ferry: probe: reading %s %u..%u from unit %d at %s failed: %s\n",
                     table_name(a.tbl), *a.address, *a.address + a.count - 1, a.unit,
                     lnk->name().c_str(), reason(r).c_str());
        return k_runtime;
    }
    std::fprintf(out, "%s %u..%u from unit %d at %s (%u %s)\n", table_name(a.tbl), *a.address,
                 *a.address + a.count - 1, a.unit, lnk->name().c_str(), a.count,
                 is_bit_table(a.tbl) ? "bits" : "registers");
    if (is_bit_table(a.tbl)) {
        for (std::size_t i = 0; i < values.size(); ++i)
            std::fprintf(out, "%-9zu %u\n", *a.address + i, values[i]);
    } else {
        print_registers(out, a, values);
    }
    return k_ok;
}

}  // namespace ferry::drivers::modbus
