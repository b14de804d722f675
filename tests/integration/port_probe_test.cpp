// The broker port probe (upstream/port_probe.hpp) on loopback sockets: an edge only when a
// port seen closed accepts again; a port open from the start is left alone; a host name is
// resolved on the side and probed once it has addresses. The publisher's use of it (the
// backoff cut short, the broker that refuses us not hammered) is tested in
// integration_publisher.
#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include "tests/support/harness.hpp"
#include "upstream/port_probe.hpp"

namespace {

using namespace std::chrono_literals;
using ferry::upstream::port_probe;

// A listening socket on 127.0.0.1:port (nothing accepts: the kernel completes the handshakes).
struct listener {
    int fd;
    explicit listener(std::uint16_t port) : fd(ferry::test::listen_loopback(port)) {}
    ~listener() { ::close(fd); }
};

// Rounds every 50 ms until one reports an edge or `rounds` have passed.
std::optional<std::size_t> rounds_until_edge(port_probe& p, int rounds) {
    for (int i = 0; i < rounds; ++i) {
        if (auto e = p.round(100ms)) return e;
        std::this_thread::sleep_for(50ms);
    }
    return std::nullopt;
}

}  // namespace

TEST_CASE("a port seen closed that accepts again is an edge, on the uri that opened") {
    const auto closed = ferry::test::free_port();
    const auto reopened = ferry::test::free_port();
    port_probe p({"tcp://127.0.0.1:" + std::to_string(closed),
                  "ws://127.0.0.1:" + std::to_string(reopened) + "/mqtt"});
    p.reset();
    CHECK_FALSE(rounds_until_edge(p, 3));  // both closed
    listener l(reopened);
    const auto edge = rounds_until_edge(p, 3);
    REQUIRE(edge);
    CHECK(*edge == 1);
}

TEST_CASE("a port open from the start of a wait is no edge, even when it closes and opens") {
    const auto port = ferry::test::free_port();
    port_probe p({"tcp://127.0.0.1:" + std::to_string(port)});
    auto l = std::make_unique<listener>(port);
    p.reset();
    CHECK_FALSE(rounds_until_edge(p, 2));
    // Left alone for the rest of the wait: a broker that refuses us is not probed again.
    l.reset();
    CHECK_FALSE(rounds_until_edge(p, 2));
    l = std::make_unique<listener>(port);
    CHECK_FALSE(rounds_until_edge(p, 2));
    // A new wait probes again: closed, then open, is an edge.
    l.reset();
    p.reset();
    CHECK_FALSE(rounds_until_edge(p, 2));
    l = std::make_unique<listener>(port);
    CHECK(rounds_until_edge(p, 3));
}

TEST_CASE(
    "a host name is resolved on the side, then probed (localhost: ::1 refused, 127.0.0.1 "
    "open counts as open)") {
    const auto port = ferry::test::free_port();
    port_probe p({"tcp://localhost:" + std::to_string(port)});
    p.reset();
    // Until the resolver thread answers the uri is not probed; give it a few rounds.
    CHECK_FALSE(rounds_until_edge(p, 10));
    listener l(port);
    CHECK(rounds_until_edge(p, 5));
}
