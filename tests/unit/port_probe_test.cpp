// The broker uri -> host and port reading of the port probe (upstream/port_probe.hpp): the port
// must be the one Paho connects to, or the probe watches the wrong port. The probe itself, on
// sockets, is tested in integration_publisher.
#include <doctest/doctest.h>

#include "upstream/port_probe.hpp"

using ferry::upstream::parse_broker_uri;

namespace {

void check_endpoint(const std::string& uri, const std::string& host, std::uint16_t port) {
    CAPTURE(uri);
    const auto ep = parse_broker_uri(uri);
    REQUIRE(ep);
    CHECK(ep->host == host);
    CHECK(ep->port == port);
}

}  // namespace

TEST_CASE("a broker uri's host and port, with Paho's default ports") {
    check_endpoint("tcp://127.0.0.1:1884", "127.0.0.1", 1884);
    check_endpoint("tcp://broker.local", "broker.local", 1883);
    check_endpoint("mqtt://broker", "broker", 1883);
    check_endpoint("ssl://broker", "broker", 8883);
    check_endpoint("mqtts://broker:9883", "broker", 9883);
    check_endpoint("ws://broker/mqtt", "broker", 80);
    check_endpoint("ws://broker:8080/mqtt", "broker", 8080);
    check_endpoint("wss://broker/mqtt", "broker", 443);
    check_endpoint("tcp://[::1]:1883", "::1", 1883);
    check_endpoint("ssl://[fe80::1]", "fe80::1", 8883);
}

TEST_CASE("a uri the probe cannot read is not probed") {
    CHECK_FALSE(parse_broker_uri("http://broker:1883"));
    CHECK_FALSE(parse_broker_uri("tcp://"));
    CHECK_FALSE(parse_broker_uri("tcp://:1883"));
    CHECK_FALSE(parse_broker_uri("tcp://broker:0"));
    CHECK_FALSE(parse_broker_uri("tcp://broker:65536"));
    CHECK_FALSE(parse_broker_uri("tcp://broker:18x3"));
    CHECK_FALSE(parse_broker_uri("tcp://[::1"));
    CHECK_FALSE(parse_broker_uri("tcp://[::1]1883"));
}
