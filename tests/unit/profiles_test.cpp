// Profiles and unit-id ranges (docs/PROFILES.md): the loader's expansion, its errors, what
// `ferry check --expand` prints, and what a reload sees when a profile file changes.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "drivers/modbus/config.hpp"
#include "gateway/components.hpp"
#include "tests/support/files.hpp"
#include "tests/support/golden.hpp"
#include "tests/support/paths.hpp"
#include "tests/unit/unit_support.hpp"

namespace cfg = ferry::config;
namespace mb = ferry::drivers::modbus;
namespace fs = std::filesystem;
using lines = std::vector<std::string>;

namespace {

const std::string k_shipped = std::string(FERRY_SOURCE_DIR) + "/config/profiles";

void write(const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
}

lines errors_of(const std::string& file) {
    try {
        ferry::load_config(file);
    } catch (const cfg::errors& e) {
        lines out;
        for (const auto& x : e.list())
            out.push_back(x.to_string());
        return out;
    }
    FAIL("expected errors from " << file);
    return {};
}

std::size_t count(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
        ++n;
    return n;
}

std::size_t line_count(const std::string& text) {
    return count(text, "\n");
}

// The issue's acceptance config: 30 identical meters through a shipped profile.
std::string thirty_meters(const std::string& profiles_dir) {
    return "gateway:\n"
           "  id: plant\n"
           "  profiles_dir: " +
           profiles_dir +
           "\n"
           "devices:\n"
           "  - id: \"meter{unit_id}\"\n"
           "    driver: modbus_rtu\n"
           "    serial: { port: /dev/ttyUSB0, baud: 9600 }\n"
           "    unit_id: \"1-30\"\n"
           "    profile: eastron_sdm630\n"
           "    poll_interval: 10s\n";
}

}  // namespace

TEST_CASE("30 identical meters in at most 15 lines through a profile; --expand lists every point") {
    ferry::unit::tmp_dir dir;
    const auto text = thirty_meters(k_shipped);
    CHECK(line_count(text) <= 15);
    write(dir.file("ferry.yaml"), text);

    const auto c = ferry::load_config(dir.file("ferry.yaml"));
    REQUIRE(c.devices.size() == 30);
    const auto shipped = ferry::test::read_file(k_shipped + "/eastron_sdm630.yaml");
    const auto per_meter = count(shipped, "- { name: ");
    CHECK(per_meter == 36);
    for (int i = 0; i < 30; ++i) {
        const auto& d = c.devices[static_cast<std::size_t>(i)];
        CAPTURE(d.id);
        CHECK(d.id == "meter" + std::to_string(i + 1));
        CHECK(mb::of(d).unit_id == i + 1);
        CHECK(d.poll_interval == std::chrono::seconds(10));
        CHECK(d.points.size() == per_meter);
        CHECK(mb::of(d).serial->port == "/dev/ttyUSB0");
    }
    const auto& power = c.devices[0].points[21];
    CHECK(power.name == "power_total");
    CHECK(mb::of(power).address == 0x34);
    CHECK(mb::of(power).tbl == mb::table::input);
    CHECK(power.type == cfg::point_type::float32);

    const auto out = ferry::expand_config(dir.file("ferry.yaml"));
    CHECK(count(out, "- id: meter") == 30);
    CHECK(count(out, "{name: ") == 30 * per_meter);
    CHECK(count(out, "name: energy_total,") == 30);
    CHECK(out.find("profile:") == std::string::npos);
    CHECK(out.find("profiles:") == std::string::npos);
}

TEST_CASE("a typo in a profile used by 30 meters is reported once, at the profile's line") {
    ferry::unit::tmp_dir dir;
    fs::create_directory(dir.file("profiles"));
    auto profile = ferry::test::read_file(k_shipped + "/eastron_sdm630.yaml");
    const std::string good = "{ name: frequency, table: input, address: 0x0046, type: float32";
    const auto at = profile.find(good);
    REQUIRE(at != std::string::npos);
    profile.replace(at, good.size(),
                    "{ name: frequency, table: inptu, address: 0x0046, type: float32");
    write(dir.file("profiles/eastron_sdm630.yaml"), profile);
    write(dir.file("ferry.yaml"), thirty_meters("profiles"));

    const auto line = count(profile.substr(0, at), "\n") + 1;
    const auto column =
        at - profile.rfind('\n', at) + std::string("{ name: frequency, table: ").size();
    CHECK(errors_of(dir.file("ferry.yaml")) ==
          lines{dir.file("profiles/eastron_sdm630.yaml") + ":" + std::to_string(line) + ":" +
                std::to_string(column) +
                ": points[25].table: unknown table 'inptu' (allowed: holding, input, coil, "
                "discrete)"});
}

TEST_CASE("a device's own keys override its profile's; its own points come after the profile's") {
    ferry::unit::tmp_dir dir;
    write(dir.file("ferry.yaml"), R"(gateway: { id: g }
profiles:
  - id: meter
    driver: modbus_tcp
    host: 10.0.0.1
    timeout: 1s
    retries: 5
    points:
      - { name: a, address: 0 }
      - { name: b, address: 1 }
devices:
  - id: m1
    profile: meter
    timeout: 2s
    points: [ { name: c, address: 2 } ]
  - id: m2
    profile: meter
    host: 10.0.0.2
  - id: other
    driver: modbus_tcp
    host: 10.0.0.3
    points: [ { name: x, address: 0 } ]
)");
    const auto c = ferry::load_config(dir.file("ferry.yaml"));
    REQUIRE(c.devices.size() == 3);
    const auto& m1 = c.devices[0];
    CHECK(m1.driver == "modbus_tcp");
    CHECK(mb::of(m1).host == "10.0.0.1");
    CHECK(mb::of(m1).timeout == std::chrono::seconds(2));
    CHECK(mb::of(m1).retries == 5);
    REQUIRE(m1.points.size() == 3);
    CHECK(m1.points[0].name == "a");
    CHECK(m1.points[2].name == "c");
    const auto& m2 = c.devices[1];
    CHECK(mb::of(m2).host == "10.0.0.2");
    CHECK(mb::of(m2).timeout == std::chrono::seconds(1));
    CHECK(m2.points.size() == 2);
    CHECK(mb::of(c.devices[2]).retries == 2);
}

TEST_CASE("unit_id as a list, and {unit_id} in the id of a single unit") {
    ferry::unit::tmp_dir dir;
    write(dir.file("ferry.yaml"), R"(gateway: { id: g }
devices:
  - id: "pump-{unit_id}"
    driver: modbus_tcp
    host: 10.0.0.1
    unit_id: [5, 2, 9]
    points: [ { name: speed, address: 0 } ]
  - id: "valve{unit_id}"
    driver: modbus_tcp
    host: 10.0.0.1
    unit_id: 7
    points: [ { name: open, table: coil, address: 0 } ]
)");
    const auto c = ferry::load_config(dir.file("ferry.yaml"));
    REQUIRE(c.devices.size() == 4);
    CHECK(c.devices[0].id == "pump-5");
    CHECK(c.devices[1].id == "pump-2");
    CHECK(c.devices[2].id == "pump-9");
    CHECK(mb::of(c.devices[1]).unit_id == 2);
    CHECK(c.devices[3].id == "valve7");
    CHECK(mb::of(c.devices[3]).unit_id == 7);
}

TEST_CASE("--expand output loads to the same devices as the file it came from") {
    ferry::unit::tmp_dir dir;
    const auto src = ferry::test::testcases_dir("expand") / "range_list_override";
    fs::copy(src, dir.path, fs::copy_options::recursive);
    const auto original = ferry::load_config(dir.file("ferry.yaml"));
    write(dir.file("expanded.yaml"), ferry::expand_config(dir.file("ferry.yaml")));
    const auto again = ferry::load_config(dir.file("expanded.yaml"));
    REQUIRE(again.devices.size() == original.devices.size());
    CHECK(original.devices.size() == 6);
    for (std::size_t i = 0; i < again.devices.size(); ++i) {
        CAPTURE(original.devices[i].id);
        CHECK(cfg::same_settings(again.devices[i], original.devices[i]));
    }
}

TEST_CASE("a reload that re-reads a changed profile sees every device using it as changed") {
    ferry::unit::tmp_dir dir;
    fs::create_directory(dir.file("profiles"));
    write(dir.file("profiles/meter.yaml"), "points:\n  - { name: p, address: 0 }\n");
    write(dir.file("ferry.yaml"), R"(gateway: { id: g, profiles_dir: profiles }
devices:
  - { id: "m{unit_id}", driver: modbus_tcp, host: h, unit_id: "1-3", profile: meter }
  - { id: other, driver: modbus_tcp, host: h, points: [ { name: p, address: 0 } ] }
)");
    const auto before = ferry::load_config(dir.file("ferry.yaml"));
    const auto same = ferry::load_config(dir.file("ferry.yaml"));
    // The profile's point moves: only the lines of the file change, nothing the devices hold.
    write(dir.file("profiles/meter.yaml"), "\n\npoints:\n  - { name: p,  address: 0 }\n");
    const auto moved = ferry::load_config(dir.file("ferry.yaml"));
    write(dir.file("profiles/meter.yaml"), "points:\n  - { name: p, address: 1 }\n");
    const auto after = ferry::load_config(dir.file("ferry.yaml"));
    REQUIRE(before.devices.size() == 4);
    REQUIRE(after.devices.size() == 4);
    for (std::size_t i = 0; i < 4; ++i) {
        CAPTURE(before.devices[i].id);
        CHECK(cfg::same_settings(before.devices[i], same.devices[i]));
        CHECK(cfg::same_settings(before.devices[i], moved.devices[i]));
        CHECK(cfg::same_settings(before.devices[i], after.devices[i]) == (i == 3));
    }
}

TEST_CASE("every shipped profile loads and names its source document") {
    std::size_t n = 0;
    for (const auto& f : fs::directory_iterator(k_shipped)) {
        const auto name = f.path().stem().string();
        CAPTURE(name);
        ++n;
        const auto text = ferry::test::read_file(f.path().string());
        CHECK(text.find("# Source: ") != std::string::npos);
        CHECK(text.find("# Included: ") != std::string::npos);
        for (const char* driver : {"modbus_tcp", "modbus_rtu"}) {
            ferry::unit::tmp_dir dir;
            const std::string where = std::string(driver) == "modbus_tcp"
                                          ? "host: 10.0.0.1"
                                          : "serial: { port: /dev/ttyUSB0 }";
            write(dir.file("ferry.yaml"), "gateway: { id: g, profiles_dir: " + k_shipped +
                                              " }\ndevices:\n  - { id: d, driver: " + driver +
                                              ", " + where + ", profile: " + name + " }\n");
            const auto c = ferry::load_config(dir.file("ferry.yaml"));
            REQUIRE(c.devices.size() == 1);
            CHECK(c.devices[0].points.size() >= 20);
        }
    }
    CHECK(n >= 3);
}

TEST_CASE("--expand golden cases: tests/testcases/expand/<case>/{ferry.yaml, expected}") {
    const auto cases = ferry::test::check_golden("expand", "expected", [](const fs::path& dir) {
        return ferry::test::replace_all(ferry::expand_config((dir / "ferry.yaml").string()),
                                        dir.string(), ".");
    });
    CHECK(cases >= 1);
}

TEST_CASE("a profile used at every unit of long ranges is held to the budget of values") {
    ferry::unit::tmp_dir dir;
    fs::create_directory(dir.file("profiles"));
    std::ostringstream profile;
    profile << "points:\n";
    for (int i = 0; i < 700; ++i)
        profile << "  - { name: p" << i << ", address: " << i % 60000 << " }\n";
    write(dir.file("profiles/big.yaml"), profile.str());
    std::ostringstream file;
    file << "gateway: { id: g, profiles_dir: profiles }\ndevices:\n";
    for (int i = 0; i < 4; ++i)
        file << "  - { id: \"d" << i << "-{unit_id}\", driver: modbus_tcp, host: h, unit_id: "
             << "\"0-255\", profile: big }\n";
    write(dir.file("ferry.yaml"), file.str());
    const auto e = errors_of(dir.file("ferry.yaml"));
    REQUIRE(e.size() == 1);
    CHECK(e[0].find("ferry.yaml:4:5: devices[1]: the file expands to more than 1000000 values") !=
          std::string::npos);
}
