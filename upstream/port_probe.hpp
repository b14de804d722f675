// Whether a broker's TCP port accepts connections again, asked cheaply while the MQTT publisher
// waits out a long reconnect backoff (docs/DELIVERY.md, "Reconnect, backoff and failover").
//
// One round: for each uri, the sockets of the previous round that were still connecting are
// judged (connected: open; anything else, including still pending: closed) and closed; then
// a fresh non-blocking connect() goes to each address of the uri's host and port (the port
// Paho would use: 1883, 8883 for ssl:// and mqtts://, 80 for ws://, 443 for wss://), and the
// round waits up to `settle` for them. A socket that connects is closed at once: no byte is
// sent, no TLS, no MQTT. One still connecting when `settle` ends is judged at the next round,
// so a link slower than `settle` is still seen.
//
// round() answers true on an edge only: a uri seen closed since the last reset() is open now.
// A broker that accepts TCP but refuses us (CONNACK refused, TLS error) never makes an edge
// (its port is open throughout), so its backoff keeps growing; one that went away and came
// back does.
//
// Host names are resolved on a helper thread, so that a hung resolver never holds up the
// caller (the publisher's sender thread, which must wake promptly on stop()). A name is
// resolved again at every reset(), its last addresses used meanwhile; until a name has
// addresses its uri is not probed. Numeric hosts are used as they are.
//
// Not thread-safe: one caller. The destructor closes every socket and does not wait for a
// resolver thread (it holds its own state, shared).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ferry::upstream {

struct broker_endpoint {
    std::string host;  // without the brackets of an IPv6 literal
    std::uint16_t port = 0;
};

// The host and TCP port of a broker uri as Paho reads it (scheme://host[:port][/path]);
// nullopt when it has none (an unknown scheme, no host, a bad port).
std::optional<broker_endpoint> parse_broker_uri(const std::string& uri);

class port_probe {
  public:
    // Touches nothing: names are first resolved at the first reset().
    explicit port_probe(const std::vector<std::string>& uris);
    ~port_probe();
    port_probe(const port_probe&) = delete;
    port_probe& operator=(const port_probe&) = delete;

    // Forgets what was seen (a new wait begins), closes the sockets of a round in progress and
    // resolves host names again.
    void reset();
    // One round (see above). Returns the index in `uris` of a uri that was seen closed since
    // reset() and accepts now, or nullopt.
    std::optional<std::size_t> round(std::chrono::milliseconds settle);

  private:
    struct target;
    std::vector<std::unique_ptr<target>> targets_;
};

}  // namespace ferry::upstream
