// `ferry probe modbus`: read a window of registers once and print every decoding of it side
// by side (16/32/64-bit integers and floats in ABCD, CDAB, BADC, DCBA, and ASCII), so a user
// picks the right type and byte order at the machine instead of guessing.
//
//   ferry probe modbus --host H [--port 502] --unit U --table holding --address A --count N
//   ferry probe modbus --serial /dev/ttyUSB0 --baud 19200 [--parity N] --unit U ...
//
// Uses the driver's own links (link.hpp), so what it reads is what `ferry run` would read.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

namespace ferry::drivers::modbus {

// `args` follow "probe" on the command line ("modbus", "--host", ...). Prints the table to
// `out`, errors to `err`. Returns the exit code: 0 read and printed, 2 usage error, 3 the read
// failed (no connection, timeout, exception, malformed answer: the reason is printed).
int probe_main(const std::vector<std::string>& args, std::FILE* out, std::FILE* err);

}  // namespace ferry::drivers::modbus
