// `ferry probe modbus`: look at a Modbus line from the command line, with the driver's own links
// (link.hpp), so what it reads is what `ferry run` would read.
//
// One unit: read a window of registers once and print every decoding of it side by side
// (16/32/64-bit integers and floats in ABCD, CDAB, BADC, DCBA, and ASCII), so a user picks the
// right type and byte order at the machine instead of guessing.
//
//   ferry probe modbus --host H [--port 502] --unit U --table holding --address A --count N
//   ferry probe modbus --serial /dev/ttyUSB0 --baud 19200 [--parity N] --unit U ...
//
// A line (`--scan RANGE`, scan.hpp): which unit ids answer one small read, and which known
// profile each one's registers fit.
//
//   ferry probe modbus --serial /dev/ttyUSB0 --scan 1-30 [--profiles DIR]
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "drivers/modbus/config.hpp"

namespace ferry::config {
struct schema;
}

namespace ferry::drivers::modbus {

// The command line, parsed. Defaults are the ones `--help` documents.
struct probe_args {
    std::string host;
    std::uint16_t port = 502;
    std::optional<config::serial_settings> serial;
    int unit = 1;
    table tbl = table::holding;
    std::optional<std::uint16_t> address;     // required without --scan; 0 with it
    std::uint32_t count = 4;                  // 1 with --scan
    std::chrono::milliseconds timeout{1000};  // 200 ms with --scan (scan.hpp says why)
    std::vector<int> scan;                    // --scan's unit ids, in the order given
    std::string profiles_dir;                 // --profiles; empty: the schema's default
};

// "holding", "input", "coil", "discrete".
const char* table_name(table t);

// `args` follow "probe" on the command line ("modbus", "--host", ...). Fills `a` and returns
// "", or returns what is wrong (a usage error).
std::string parse_probe_args(const std::vector<std::string>& args, probe_args& a);

// Prints to `out`, errors to `err`. `s` is the config schema of the composition root: --scan
// loads profiles with it, as `ferry run` does, and takes its profiles_dir as the default.
// Returns the exit code: 0 read and printed (with --scan: at least one unit answered), 2 usage
// error, 3 the read failed (no connection, timeout, exception, malformed answer: the reason is
// printed; with --scan: no unit answered).
int probe_main(const std::vector<std::string>& args, std::FILE* out, std::FILE* err,
               const config::schema& s);

}  // namespace ferry::drivers::modbus
