// Benchmark (not a test): serial_line lines parsed per second on one core, per parser.
//
// One thread feeds a buffer of typical sensor lines through what the driver does per read
// (framer → checksum → parser → values of the points' types), in 4 KiB reads as the port
// delivers them, and counts lines and values. Ports, the bus and MQTT are not included: this is
// the driver's own CPU cost per line. Time is this thread's CPU time (honest on a busy box).
//
// Parsers and lines:
//   regex      T=21.53;H=40.25;P=1013.2              3 float64 points, anchored pattern
//   regex+nmea $GPGGA,... *hh (GGA sentence)          5 points, checksum verified
//   csv        21.53,40.25,1013.2,17,OK               4 points (one column skipped)
//   json       {"t":21.53,"h":40.25,"p":1013.2,"n":17,"fw":"1.2"}  4 points, one other key
//   kv         t=21.53 h=40.25 p=1013.2 n=17          4 points
#include <time.h>

#include <cstdio>
#include <string>
#include <vector>

#include "drivers/serial/framer.hpp"
#include "drivers/serial/parser.hpp"

using namespace ferry;
using namespace ferry::drivers::serial;

namespace {

double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

config::point pt(const char* name, config::point_type t) {
    config::point p;
    p.name = name;
    p.type = t;
    return p;
}

std::string with_nmea(const std::string& body) {
    unsigned x = 0;
    for (char c : body.substr(1))
        x ^= static_cast<unsigned char>(c);
    char hh[4];
    std::snprintf(hh, sizeof hh, "*%02X", x);
    return body + hh;
}

void run(const char* name, const parse_settings& s, std::vector<config::point> points,
         const std::vector<std::string>& samples) {
    line_parser parser(s, std::move(points));
    framing_settings fs;
    std::string stream;
    const std::size_t lines_per_pass = 20000;
    for (std::size_t i = 0; i < lines_per_pass; ++i)
        stream += samples[i % samples.size()] + "\r\n";
    std::vector<field> fields;
    std::uint64_t lines = 0, values = 0, errors = 0;
    const double start = thread_cpu_seconds();
    double spent = 0;
    do {
        framer f(fs);
        for (std::size_t off = 0; off < stream.size(); off += 4096) {
            f.feed(
                std::string_view(stream).substr(off, 4096),
                [&](std::string_view frame) {
                    ++lines;
                    if (parser.parse(frame, fields) != frame_error::none)
                        ++errors;
                    else
                        values += fields.size();
                },
                [&] { ++errors; });
        }
        spent = thread_cpu_seconds() - start;
    } while (spent < 1.0);
    std::printf("%-11s %10.0f lines/s  %7.0f ns/line  %5.2f values/line  errors=%llu\n", name,
                static_cast<double>(lines) / spent, spent * 1e9 / static_cast<double>(lines),
                static_cast<double>(values) / static_cast<double>(lines),
                static_cast<unsigned long long>(errors));
}

}  // namespace

int main() {
    using config::point_type;
    const auto f64 = point_type::float64;
    {
        parse_settings s;
        s.regex = R"(^T=(?<t>-?[0-9.]+);H=(?<h>[0-9.]+);P=(?<p>[0-9.]+)$)";
        run("regex", s, {pt("t", f64), pt("h", f64), pt("p", f64)},
            {"T=21.53;H=40.25;P=1013.2", "T=-3.5;H=99.1;P=990.0"});
    }
    {
        parse_settings s;
        s.regex =
            R"(^\$GPGGA,(?<utc>[0-9.]+),(?<lat>[0-9.]+),[NS],(?<lon>[0-9.]+),[EW],(?<fix>\d),(?<sats>\d+),)";
        s.checksum = "nmea";
        run("regex+nmea", s,
            {pt("utc", point_type::string), pt("lat", f64), pt("lon", f64),
             pt("fix", point_type::uint16), pt("sats", point_type::uint16)},
            {with_nmea("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")});
    }
    {
        parse_settings s;
        s.format = parse_format::csv;
        s.csv = {"t", "h", "p", "n"};
        s.separator = ",";
        run("csv", s, {pt("t", f64), pt("h", f64), pt("p", f64), pt("n", point_type::uint32)},
            {"21.53,40.25,1013.2,17,OK", "-3.5,99.1,990.0,18,OK"});
    }
    {
        parse_settings s;
        s.format = parse_format::json;
        run("json", s, {pt("t", f64), pt("h", f64), pt("p", f64), pt("n", point_type::uint32)},
            {R"({"t":21.53,"h":40.25,"p":1013.2,"n":17,"fw":"1.2"})"});
    }
    {
        parse_settings s;
        s.format = parse_format::kv;
        s.separator = " ";
        run("kv", s, {pt("t", f64), pt("h", f64), pt("p", f64), pt("n", point_type::uint32)},
            {"t=21.53 h=40.25 p=1013.2 n=17"});
    }
}
