// The device status board (gateway/device_status.hpp) without a broker: which reports become
// messages, what they hold, what a reload and a stop publish.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "gateway/device_status.hpp"

using nlohmann::json;

namespace {

struct published {
    std::vector<std::pair<std::string, std::string>> all;
    ferry::device_status_board::publish_fn fn() {
        return [this](const std::string& topic, std::string payload) {
            all.emplace_back(topic, std::move(payload));
        };
    }
};

}  // namespace

TEST_CASE("device status: one message per change of state, with since and reason") {
    published out;
    ferry::device_status_board board("gw", {"a", "b"}, out.fn());
    board.report("a", true, "");
    board.report("b", false, "timeout");
    REQUIRE(out.all.size() == 2);
    CHECK(out.all[0].first == "ferry/gw/device/a/status");
    const auto a = json::parse(out.all[0].second);
    CHECK(a["state"] == "online");
    CHECK(a["since"].get<std::int64_t>() > 1700000000000);
    CHECK(!a.contains("reason"));
    const auto b = json::parse(out.all[1].second);
    CHECK(b == json{{"state", "offline"}, {"since", b["since"]}, {"reason", "timeout"}});

    // The same state again (a device restarted by a reload reports its first outcome again):
    // nothing new, since kept.
    board.report("a", true, "");
    board.report("b", false, "connect: 127.0.0.1:502");
    CHECK(out.all.size() == 2);

    board.report("b", true, "");
    REQUIRE(out.all.size() == 3);
    const auto back = json::parse(out.all[2].second);
    CHECK(back["state"] == "online");
    CHECK(back["since"].get<std::int64_t>() >= b["since"].get<std::int64_t>());

    // A device that is not configured (removed while a poll was under way): ignored.
    board.report("ghost", false, "timeout");
    CHECK(out.all.size() == 3);
}

TEST_CASE("device status: a reason is JSON-escaped, an empty one says unknown") {
    CHECK(json::parse(ferry::device_status_board::payload(
              false, 5, "port lost: \"x\"\n"))["reason"] == "port lost: \"x\"\n");
    CHECK(json::parse(ferry::device_status_board::payload(false, 5, ""))["reason"] == "unknown");
    CHECK(ferry::device_status_board::payload(true, 5, "ignored") ==
          R"({"state":"online","since":5})");
}

TEST_CASE("device status: a reload clears removed devices; a stop turns online ones offline") {
    published out;
    ferry::device_status_board board("gw", {"a", "b", "c"}, out.fn());
    board.report("a", true, "");
    board.report("b", false, "timeout");
    board.report("c", true, "");
    out.all.clear();

    board.reconfigure({"a", "b", "d"});  // c removed, d added
    REQUIRE(out.all.size() == 1);
    CHECK(out.all[0] == std::make_pair(std::string("ferry/gw/device/c/status"), std::string()));
    board.report("c", false, "timeout");  // late report of the removed one
    board.report("a", true, "");          // kept: its state and since stay
    CHECK(out.all.size() == 1);

    out.all.clear();
    board.stopped();
    // a was online: offline, stopped. b was offline: keeps its reason. d never reported.
    REQUIRE(out.all.size() == 1);
    CHECK(out.all[0].first == "ferry/gw/device/a/status");
    const auto a = json::parse(out.all[0].second);
    CHECK(a["state"] == "offline");
    CHECK(a["reason"] == "stopped");
}
