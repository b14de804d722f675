// Properties of the rule engine over random event streams (seeded: a failure names its seed),
// on a fake clock. Each property is checked against what a consumer sees: the decoded batches.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <map>
#include <random>
#include <set>

#include "rules/engine.hpp"
#include "rules/match.hpp"

using namespace ferry;
using namespace std::chrono_literals;
using nlohmann::json;
using rules::steady_time;

namespace {

// A number in [0, n) as a size (std::mt19937_64 gives 64 bits; size_t is 32 on armhf).
std::size_t roll(std::mt19937_64& rng, std::uint64_t n) {
    return static_cast<std::size_t>(rng() % n);
}

// Fewer under the sanitizers (a Debug build), where one iteration costs ten times as much.
#if defined(__SANITIZE_ADDRESS__)
constexpr int k_iterations = 30;
#else
constexpr int k_iterations = 150;
#endif

struct plant {
    point_table points;
    std::vector<point_id> ids;
    plant(int devices, int tags) {
        for (int d = 0; d < devices; ++d)
            for (int t = 0; t < tags; ++t)
                ids.push_back(points.intern("dev" + std::to_string(d), "tag" + std::to_string(t),
                                            t % 2 ? "degC" : ""));
    }
};

config::rule make_rule(std::string name, std::vector<std::string> match, std::string topic) {
    config::rule r;
    r.name = std::move(name);
    r.match = std::move(match);
    r.publish.topic = std::move(topic);
    return r;
}

// A published event as the consumer decodes it, with when the engine let it go.
struct seen {
    std::string topic;
    json event;
    steady_time published;
};

struct runner {
    rules::engine& eng;
    std::vector<seen> events;
    std::vector<std::pair<rules::batch, steady_time>> batches;
    std::vector<rules::batch> out;
    std::string text;
    void take(steady_time now) {
        for (auto& b : out) {
            eng.wrap(b, 1, text);
            auto j = json::parse(text);
            const char* key = b.dead_letter ? "dead_letters" : "events";
            REQUIRE(j[key].size() == b.events);
            for (auto& e : j[key])
                events.push_back({b.topic, e, now});
            batches.emplace_back(std::move(b), now);
        }
        out.clear();
    }
    // Drives the clock as the daemon does: on_tick at every deadline before `now`.
    void advance(steady_time now) {
        while (eng.next_deadline() <= now) {
            auto at = eng.next_deadline();
            eng.on_tick(at, out);
            take(at);
        }
    }
    void feed(const event& e, steady_time now) {
        advance(now);
        eng.on_event(e, now, out);
        take(now);
    }
    void finish() {
        eng.flush_all(out);
        take(steady_time::max());
    }
};

}  // namespace

TEST_CASE("deadband: consecutive published values differ by the deadband, unless explained") {
    for (int iter = 0; iter < k_iterations; ++iter) {
        const auto seed = 1000 + static_cast<std::uint64_t>(iter);
        CAPTURE(seed);
        std::mt19937_64 rng(seed);
        plant p(3, 2);
        config::rule r = make_rule("r", {"#"}, "t/{device}/{tag}");
        r.batch.max_events = 50;
        const bool percent = roll(rng, 2) == 0;
        const double amount =
            std::uniform_real_distribution<double>(0.0, percent ? 20.0 : 3.0)(rng);
        r.deadband = config::deadband_settings{
            percent ? config::deadband_kind::percent : config::deadband_kind::absolute, amount};
        std::optional<std::chrono::milliseconds> heartbeat;
        if (roll(rng, 2)) heartbeat = std::chrono::milliseconds(100 + roll(rng, 2000));
        r.heartbeat = heartbeat;
        if (roll(rng, 3) == 0) r.transform = config::transform_settings{-1.5, 10.0, "x"};
        rules::engine eng({r}, p.points, "gw");
        runner run{eng, {}, {}, {}, {}};

        // Random walks with jumps and quality changes; seq = index + 1.
        std::vector<double> level(p.ids.size(), 20.0);
        std::vector<event> input;
        std::vector<steady_time> at;
        steady_time now{};
        std::normal_distribution<double> step(0.0, 0.8);
        for (int i = 0; i < 400; ++i) {
            now += std::chrono::milliseconds(roll(rng, 60));
            auto k = roll(rng, p.ids.size());
            event e;
            e.seq = static_cast<std::uint64_t>(i + 1);
            e.point = p.ids[k];
            e.ts = wall_clock::time_point(std::chrono::milliseconds(1764236400000 + i));
            const auto dice = roll(rng, 100);
            if (dice < 5) {
                e.quality = quality::bad;
            } else {
                e.quality = dice < 10 ? quality::uncertain : quality::good;
                level[k] += dice < 15 ? step(rng) * 20 : dice < 30 ? 0.0 : step(rng);
                e.value = level[k];
            }
            input.push_back(e);
            at.push_back(now);
            run.feed(e, now);
        }
        run.finish();

        // Replay what was published per device/tag against the input.
        auto scaled = [&](double v) { return r.transform ? v * -1.5 + 10.0 : v; };
        std::map<std::string, const event*> last_pub;
        std::map<std::string, steady_time> last_time;
        std::set<std::uint64_t> published;
        for (const auto& s : run.events)
            published.insert(s.event["seq"].get<std::uint64_t>());
        std::size_t passed_count = 0, deduped_count = 0;
        for (std::size_t i = 0; i < input.size(); ++i) {
            const auto& e = input[i];
            const auto& addr = p.points.get(e.point).address;
            const bool pub = published.count(e.seq) == 1;
            auto it = last_pub.find(addr);
            bool explained = true;  // why a small change may pass
            bool moved_enough = true;
            if (it != last_pub.end()) {
                const event& prev = *it->second;
                const bool quality_changed = prev.quality != e.quality;
                const bool heartbeat_due = heartbeat && at[i] - last_time[addr] >= *heartbeat;
                explained = quality_changed || heartbeat_due;
                if (e.quality != quality::bad && prev.quality != quality::bad) {
                    double a = scaled(std::get<double>(prev.value));
                    double b = scaled(std::get<double>(e.value));
                    double threshold = percent ? std::fabs(a) * amount / 100.0 : amount;
                    double moved = std::fabs(b - a);
                    moved_enough = moved > 0 && moved >= threshold;
                } else {
                    moved_enough = false;  // absent: unchanged, or a quality change
                }
            }
            CAPTURE(i);
            if (pub) {
                // The acceptance property: a small change only with a reason.
                CHECK((moved_enough || explained));
                last_pub[addr] = &e;
                last_time[addr] = at[i];
                ++passed_count;
            } else {
                // And nothing is dropped that should have passed.
                CHECK_FALSE(moved_enough);
                CHECK_FALSE(explained);
                ++deduped_count;
            }
        }
        CHECK(eng.counters(0).passed == passed_count);
        CHECK(eng.counters(0).deduped == deduped_count);
    }
}

TEST_CASE("batches: never over max_events or max_bytes, never later than max_age, nothing lost") {
    for (int iter = 0; iter < k_iterations; ++iter) {
        const auto seed = 2000 + static_cast<std::uint64_t>(iter);
        CAPTURE(seed);
        std::mt19937_64 rng(seed);
        plant p(4, 3);
        config::rule r = make_rule("r", {"#"}, roll(rng, 2) ? "t/{device}" : "t");
        r.batch.max_events = 1 + roll(rng, 30);
        r.batch.max_bytes = 1024 + roll(rng, 3000);
        r.batch.max_age = std::chrono::milliseconds(roll(rng, 2000));
        rules::engine eng({r}, p.points, "gateway-" + std::to_string(roll(rng, 1000)));
        runner run{eng, {}, {}, {}, {}};
        std::map<std::uint64_t, steady_time> entered;
        steady_time now{};
        for (int i = 0; i < 300; ++i) {
            now += std::chrono::milliseconds(roll(rng, 150));
            event e;
            e.seq = static_cast<std::uint64_t>(i + 1);
            e.point = p.ids[roll(rng, p.ids.size())];
            e.ts = wall_clock::time_point(std::chrono::milliseconds(1764236400000 + i * 7));
            // Values of very different sizes, so max_bytes and max_events both bite.
            if (roll(rng, 4) == 0)
                e.value = std::string(roll(rng, 200), 'x');
            else
                e.value = std::uniform_real_distribution<double>(-1e6, 1e6)(rng);
            entered[e.seq] = now;
            run.feed(e, now);
        }
        // A last stretch of silence: the deadlines alone must empty every batch.
        run.advance(now + r.batch.max_age + 1ms);
        CHECK(eng.next_deadline() == steady_time::max());

        std::string text;
        for (const auto& [b, when] : run.batches) {
            CHECK(b.events >= 1);
            CHECK(b.events <= r.batch.max_events);
            eng.wrap(b, 18446744073709551615ull, text);  // the widest batch number
            CHECK(text.size() <= r.batch.max_bytes);
        }
        std::map<std::string, std::uint64_t> last_seq;
        std::set<std::uint64_t> delivered;
        for (const auto& s : run.events) {
            auto seq = s.event["seq"].get<std::uint64_t>();
            CHECK(delivered.insert(seq).second);  // once
            CHECK(s.published - entered[seq] <= r.batch.max_age);
            CHECK(seq > last_seq[s.topic]);  // in order per topic
            last_seq[s.topic] = seq;
        }
        CHECK(delivered.size() == 300);
    }
}

namespace {

// Random patterns over dev0..dev5 / tag0..tag5 using every kind of level.
std::string random_pattern(std::mt19937_64& rng) {
    auto level = [&](const char* stem) -> std::string {
        switch (roll(rng, 6)) {
            case 0:
                return "+";
            case 1:
                return std::string(stem) + "*";
            case 2:
                return "*" + std::to_string(roll(rng, 6));
            case 3:
                return std::string(stem).substr(0, 1) + "*" + std::to_string(roll(rng, 6));
            default:
                return std::string(stem) + std::to_string(roll(rng, 6));
        }
    };
    switch (roll(rng, 8)) {
        case 0:
            return "#";
        case 1:
            return level("dev") + "/#";
        case 2:
            return level("dev") + "/" + level("tag") + "/#";
        case 3:
            return level("dev");  // one level: never matches device/tag
        default:
            return level("dev") + "/" + level("tag");
    }
}

}  // namespace

TEST_CASE("fan-out: every event reaches every rule that matches it, once, keeping its seq") {
    for (int iter = 0; iter < k_iterations; ++iter) {
        const auto seed = 3000 + static_cast<std::uint64_t>(iter);
        CAPTURE(seed);
        std::mt19937_64 rng(seed);
        plant p(6, 6);
        std::vector<config::rule> rules;
        std::vector<std::vector<topic_pattern>> compiled;
        const auto n_rules = 1 + roll(rng, 12);
        for (std::size_t i = 0; i < n_rules; ++i) {
            std::vector<std::string> pats;
            auto& cp = compiled.emplace_back();
            for (std::size_t k = 0, n = 1 + roll(rng, 3); k < n; ++k) {
                pats.push_back(random_pattern(rng));
                cp.push_back(*topic_pattern::compile(pats.back()));
            }
            auto r = make_rule("r" + std::to_string(i), pats, "{rule}/{device}");
            r.batch.max_events = 1 + roll(rng, 5);
            rules.push_back(r);
        }
        rules::engine eng(rules, p.points, "gw");
        runner run{eng, {}, {}, {}, {}};
        std::vector<point_id> point_of(201);
        for (int i = 0; i < 200; ++i) {
            event e;
            e.seq = static_cast<std::uint64_t>(i + 1);
            e.point = p.ids[roll(rng, p.ids.size())];
            e.value = static_cast<std::int64_t>(i);
            point_of[static_cast<std::size_t>(e.seq)] = e.point;
            run.feed(e, steady_time{} + std::chrono::milliseconds(i));
        }
        run.finish();
        // Which rules got which seqs, from the topics "{rule}/{device}".
        std::map<std::string, std::multiset<std::uint64_t>> got;
        for (const auto& s : run.events) {
            auto rule = s.topic.substr(0, s.topic.find('/'));
            CHECK(s.topic == rule + "/" + s.event["device"].get<std::string>());
            got[rule].insert(s.event["seq"].get<std::uint64_t>());
        }
        for (std::size_t r = 0; r < n_rules; ++r) {
            CAPTURE(rules[r].match);
            // Brute force: every pattern of the rule against the event's address.
            std::multiset<std::uint64_t> want;
            for (std::uint64_t seq = 1; seq <= 200; ++seq) {
                const auto& addr = p.points.get(point_of[static_cast<std::size_t>(seq)]).address;
                if (std::any_of(compiled[r].begin(), compiled[r].end(),
                                [&](const topic_pattern& t) { return t.matches(addr); }))
                    want.insert(seq);
            }
            CHECK(got[rules[r].name] == want);
            CHECK(eng.counters(r).passed == want.size());
        }
    }
}

TEST_CASE("the match trie agrees with topic_pattern::matches on random patterns and addresses") {
    std::mt19937_64 rng(4242);
    for (int iter = 0; iter < 300; ++iter) {
        rules::pattern_index index;
        std::vector<topic_pattern> pats;
        for (std::uint32_t i = 0; i < 20; ++i) {
            auto text = random_pattern(rng);
            pats.push_back(*topic_pattern::compile(text));
            index.add(text, i);
        }
        for (int a = 0; a < 20; ++a) {
            std::string addr = "dev" + std::to_string(roll(rng, 7));
            auto levels = roll(rng, 4);
            for (std::uint64_t l = 0; l < levels; ++l)
                addr += "/tag" + std::to_string(roll(rng, 7));
            CAPTURE(addr);
            std::vector<std::uint32_t> want, got;
            for (std::uint32_t i = 0; i < pats.size(); ++i)
                if (pats[i].matches(addr)) want.push_back(i);
            index.match(addr, got);
            CHECK(got == want);
        }
    }
}
