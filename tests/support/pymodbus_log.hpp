// pymodbus_server.py's request log (tests/tools/pymodbus_server.py --log: time, unit,
// function, address, count; or "connect"), read back for tests that assert what the server saw:
// which requests, how large, when. Header-only.
#pragma once

#include <algorithm>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/files.hpp"

namespace ferry::test {

// One line of pymodbus_server.py's request log.
struct request {
    double ms = 0;  // Unix time
    int unit = 0;
    bool answered = false;
    int function = 0;
    int address = 0;
    int count = 0;
    bool connect = false;  // a TCP connection accepted, no request
};

inline std::vector<request> request_log(const std::string& path) {
    std::vector<request> out;
    std::istringstream in(read_file_if_exists(path));
    for (std::string line; std::getline(in, line);) {
        std::istringstream f(line);
        request r;
        std::string unit, what;
        f >> r.ms >> unit >> what;
        if (unit == "connect") {
            r.connect = true;
            out.push_back(r);
            continue;
        }
        r.unit = std::stoi(unit);
        r.answered = what != "silent";
        if (r.answered) {
            r.function = std::stoi(what);
            f >> r.address >> r.count;
        }
        out.push_back(r);
    }
    return out;
}

inline std::vector<request> of_unit(const std::vector<request>& all, int unit) {
    std::vector<request> out;
    std::copy_if(all.begin(), all.end(), std::back_inserter(out),
                 [&](const request& r) { return !r.connect && r.unit == unit; });
    return out;
}

}  // namespace ferry::test
