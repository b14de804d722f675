// Golden cases of the serial_line framer and parsers, one folder per case under
// tests/testcases/serial/:
//
//   config.yaml  a whole Ferry config (loaded by the real loader) with one serial_line device
//   input        the bytes the sensor sends, exactly as in the file
//   expected     one line per frame, in order:
//                  ok POINT=VALUE ...   values: 21.5 (float), -3 (int), 7u (unsigned),
//                                       true/false, "text"
//                  error REASON [bad: POINT...]   parse | checksum | too_long; the points
//                                       the frame named, which the driver turns `bad`
//                  ... repaired=N       N ill-formed UTF-8 parts replaced by U+FFFD
//
// The input is fed in reads of 1, 7 and all bytes: the outcome must not depend on how the
// port delivers it. The runner is tests/support/golden.hpp (FERRY_UPDATE_GOLDEN=1 rewrites
// `expected`; review the diff!).
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/config.hpp"
#include "drivers/serial/framer.hpp"
#include "drivers/serial/parser.hpp"
#include "gateway/components.hpp"
#include "tests/support/golden.hpp"

using namespace ferry;
using namespace ferry::drivers::serial;
namespace fs = std::filesystem;

namespace {

std::string show(const ferry::value& v) {
    char buf[64];
    if (auto* d = std::get_if<double>(&v)) {
        std::snprintf(buf, sizeof buf, "%.17g", *d);
        return buf;
    }
    if (auto* i = std::get_if<std::int64_t>(&v)) return std::to_string(*i);
    if (auto* u = std::get_if<std::uint64_t>(&v)) return std::to_string(*u) + "u";
    if (auto* b = std::get_if<bool>(&v)) return *b ? "true" : "false";
    if (auto* s = std::get_if<std::string>(&v)) return "\"" + *s + "\"";
    return "-";
}

std::string run(const config::device& d, const std::string& input, std::size_t chunk) {
    framer f(of(d).framing);
    line_parser p(*of(d).parse, d.points);
    std::vector<field> fields;
    parse_details details;
    std::string out;
    for (std::size_t i = 0; i < input.size(); i += chunk) {
        f.feed(
            std::string_view(input).substr(i, chunk),
            [&](std::string_view frame) {
                const auto r = p.parse(frame, fields, &details);
                if (r != frame_error::none) {
                    out += "error " + std::string(to_string(r));
                    if (!details.named.empty()) out += " bad:";
                    for (auto k : details.named)
                        out += " " + d.points[k].name;
                    out += "\n";
                    return;
                }
                out += "ok";
                for (const auto& fl : fields)
                    out += " " + d.points[fl.point].name + "=" + show(fl.value);
                if (details.repaired > 0) out += " repaired=" + std::to_string(details.repaired);
                out += "\n";
            },
            [&] { out += "error too_long\n"; });
    }
    return out;
}

}  // namespace

TEST_CASE("serial golden cases") {
    const auto cases = ferry::test::check_golden("serial", "expected", [](const fs::path& dir) {
        const auto cfg = ferry::load_config((dir / "config.yaml").string());
        REQUIRE(cfg.devices.size() == 1);
        const auto& d = cfg.devices[0];
        REQUIRE(d.driver == "serial_line");
        const auto input = ferry::test::read_file((dir / "input").string());
        const auto whole = run(d, input, input.size() + 1);
        CHECK(run(d, input, 1) == whole);
        CHECK(run(d, input, 7) == whole);
        return whole;
    });
    CHECK(cases >= 5);
}
