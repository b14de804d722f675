// Golden cases of the rule engine, one folder per case under tests/testcases/rules/:
//
//   config.yaml  a whole Ferry config (loaded by the real loader): devices give the points,
//                rules and dead_letter give the engine
//   input        one line per step, on a fake steady clock in milliseconds:
//                  at MS DEVICE/TAG VALUE [good|uncertain|bad]   an event (seq 1, 2, 3, ...;
//                      sampled at 1764236400000 + MS); VALUE: 21.5 (float), -3 (integer),
//                      true/false, "text", or - (no value)
//                  tick MS                                         on_tick(MS)
//                  flush                                           flush_all()
//   expected     every message the engine sent, in order, as `TOPIC PAYLOAD` (batch numbers
//                count from 1 per topic, as the spool numbers them), then one line per rule:
//                `counters RULE passed=N filtered=N deduped=N dead_letter=N`
//
// The runner is tests/support/golden.hpp (FERRY_UPDATE_GOLDEN=1 rewrites `expected`).
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/config.hpp"
#include "gateway/components.hpp"
#include "rules/engine.hpp"
#include "tests/support/golden.hpp"
#include "tests/support/paths.hpp"

using namespace ferry;
namespace fs = std::filesystem;

namespace {

constexpr std::int64_t k_epoch_ms = 1764236400000;

ferry::value parse_value(const std::string& text) {
    if (text == "-") return std::monostate{};
    if (text == "true") return true;
    if (text == "false") return false;
    if (text.size() >= 2 && text.front() == '"' && text.back() == '"')
        return text.substr(1, text.size() - 2);
    if (text.find_first_of(".eEn") != std::string::npos) return std::stod(text);
    return static_cast<std::int64_t>(std::stoll(text));
}

quality parse_quality(const std::string& text) {
    if (text.empty() || text == "good") return quality::good;
    if (text == "uncertain") return quality::uncertain;
    if (text == "bad") return quality::bad;
    FAIL("unknown quality " << text);
    return quality::bad;
}

std::string run_case(const fs::path& dir) {
    auto cfg = ferry::load_config((dir / "config.yaml").string());
    point_table points;
    for (const auto& d : cfg.devices)
        for (const auto& p : d.points)
            points.intern(d.id, p.name, p.unit);
    rules::engine eng(cfg.rules, points, cfg.gateway.id, cfg.dead_letter.topic);

    std::string result;
    std::map<std::string, std::uint64_t> batch_no;
    std::vector<rules::batch> out;
    std::string payload;
    auto drain = [&] {
        for (const auto& b : out) {
            eng.wrap(b, ++batch_no[b.topic], payload);
            result += b.topic + " " + payload + "\n";
        }
        out.clear();
    };

    std::istringstream input(ferry::test::read_file((dir / "input").string()));
    std::uint64_t seq = 0;
    std::string line;
    int line_no = 0;
    while (std::getline(input, line)) {
        ++line_no;
        CAPTURE(line_no);
        if (line.empty() || line[0] == '#') continue;
        std::istringstream words(line);
        std::string verb;
        words >> verb;
        if (verb == "at" || verb == "tick") {
            std::int64_t ms = 0;
            words >> ms;
            rules::steady_time now{std::chrono::milliseconds(ms)};
            if (verb == "tick") {
                eng.on_tick(now, out);
            } else {
                std::string address, value_text, quality_text;
                words >> address;
                words >> std::ws;
                if (words.peek() == '"') {
                    std::getline(words, value_text, '"');
                    std::getline(words, value_text, '"');
                    value_text = "\"" + value_text + "\"";
                } else {
                    words >> value_text;
                }
                words >> quality_text;
                auto id = points.find(address);
                REQUIRE_MESSAGE(id, "unknown point " << address);
                event e;
                e.seq = ++seq;
                e.point = *id;
                e.value = parse_value(value_text);
                e.quality = parse_quality(quality_text);
                e.ts = wall_clock::time_point(std::chrono::milliseconds(k_epoch_ms + ms));
                eng.on_event(e, now, out);
            }
        } else if (verb == "flush") {
            eng.flush_all(out);
        } else {
            FAIL("unknown step: " << line);
        }
        drain();
    }
    for (std::size_t r = 0; r < eng.rule_names().size(); ++r) {
        const auto& c = eng.counters(r);
        result += "counters " + eng.rule_names()[r] + " passed=" + std::to_string(c.passed) +
                  " filtered=" + std::to_string(c.filtered) +
                  " deduped=" + std::to_string(c.deduped) +
                  " dead_letter=" + std::to_string(c.dead_letter) + "\n";
    }
    return result;
}

}  // namespace

TEST_CASE("golden cases: events in, the exact messages and counters out") {
    CHECK(ferry::test::check_golden("rules", "expected", run_case) >= 8);
}

TEST_CASE("rules/example.yaml loads, and its rules do what rules/README.md says") {
    auto cfg = ferry::load_config(std::string(FERRY_SOURCE_DIR) + "/rules/example.yaml");
    REQUIRE(cfg.rules.size() == 3);
    point_table points;
    for (const auto& d : cfg.devices)
        for (const auto& p : d.points)
            points.intern(d.id, p.name, p.unit);
    rules::engine eng(cfg.rules, points, cfg.gateway.id, cfg.dead_letter.topic);
    std::vector<rules::batch> out;
    auto send = [&](const char* address, ferry::value v, std::uint64_t seq) {
        event e;
        e.seq = seq;
        e.point = *points.find(address);
        e.value = std::move(v);
        e.ts = wall_clock::time_point(std::chrono::milliseconds(k_epoch_ms));
        eng.on_event(e, rules::steady_time{}, out);
    };
    send("boiler1/temperature", 100.0, 1);              // temps: 212 degF
    send("boiler1/temperature", 100.2, 2);              // temps: 212.36, within 0.5 degF: deduped
    send("boiler1/temperature", 900.0, 3);              // temps: filtered; boiler: abs(value) > 2.5
    send("boiler1/pressure", 1.0, 4);                   // boiler: filtered
    send("boiler1/burner_on", true, 5);                 // boiler: passes
    send("boiler1/serial_no", std::string("SN-1"), 6);  // boiler: filtered before abs()
    send("meter7/energy", std::int64_t{1000}, 7);       // energy: first value passes
    send("meter7/energy", std::int64_t{1009}, 8);       // energy: 0.9 %: deduped
    eng.flush_all(out);
    std::map<std::string, std::vector<std::uint64_t>> seqs;
    std::string text;
    for (const auto& b : out) {
        eng.wrap(b, 1, text);
        for (std::size_t at = text.find("\"seq\":"); at != std::string::npos;
             at = text.find("\"seq\":", at + 1))
            seqs[b.topic].push_back(std::stoull(text.substr(at + 6)));
        if (b.topic == "plant/plant-a-gw1/boiler1/temperature")
            CHECK(text.find("\"value\":212,\"quality\":\"good\",\"unit\":\"degF\"") !=
                  std::string::npos);
    }
    CHECK(seqs == std::map<std::string, std::vector<std::uint64_t>>{
                      {"plant/plant-a-gw1/boiler1/temperature", {1}},
                      {"plant/plant-a-gw1/boiler1", {1, 2, 3, 5}},
                      {"plant/plant-a-gw1/energy/meter7/energy", {7}}});
    CHECK(eng.counters(0).deduped == 1);
    CHECK(eng.counters(0).filtered == 1);
    CHECK(eng.counters(1).filtered == 2);
    CHECK(eng.counters(2).deduped == 1);
    CHECK(eng.counters(1).dead_letter == 0);
}
