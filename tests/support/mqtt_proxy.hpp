// tests/tools/mqtt_proxy.py driven from C++: an MQTT-aware TCP proxy between Ferry and a
// broker that can black-hole, withhold PUBACKs, delay, slow the acks, cut connections and
// refuse new ones (the control protocol is in the script's docstring and tests/tools/README.md).
//
// The constructor starts the proxy on free loopback ports and returns once it listens; the
// destructor stops it by pid (SIGTERM, then SIGKILL). Each command opens a control connection,
// sends one line and returns the answer; a command that is not answered `ok` throws
// std::runtime_error. Thread-safe as far as the proxy is: commands are serialized there.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "tests/support/harness.hpp"

namespace ferry::test {

// What `stats` answers (see mqtt_proxy.py).
struct mqtt_proxy_stats {
    std::uint64_t connections = 0;  // accepted so far (refused ones included)
    std::uint64_t open = 0;         // open now
    std::string mode;
    std::map<std::string, std::uint64_t> to_broker, to_client;  // packets by type name
    std::uint64_t pubacks_withheld = 0;
    std::uint64_t pubacks_refused = 0;  // PUBACK/PUBREC with reason >= 0x80 seen from the broker
    std::uint64_t inflight = 0;         // QoS>0 publishes not yet acked to the client (open conns)
    std::uint64_t inflight_max = 0;     // the largest `inflight` seen
    std::uint64_t cuts = 0;
    std::uint64_t publishes_refused = 0;  // by refuse_publish
    std::uint64_t mqtt5_refused = 0;      // MQTT 5 CONNECTs met by `mqtt5 close|refuse`
    std::uint64_t subscribes_closed = 0;  // SUBSCRIBEs met by `subscribe close`
    std::string json;                     // the line as answered
};

class mqtt_proxy {
  public:
    // Forwards 127.0.0.1:port() to 127.0.0.1:upstream_port. `log_file`: the proxy's stderr
    // (one line per connection and command); empty: a file in a temp dir.
    explicit mqtt_proxy(std::uint16_t upstream_port, std::string log_file = {});
    ~mqtt_proxy();
    mqtt_proxy(const mqtt_proxy&) = delete;
    mqtt_proxy& operator=(const mqtt_proxy&) = delete;

    std::uint16_t port() const { return port_; }
    std::uint16_t control_port() const { return control_port_; }
    std::string uri() const;  // tcp://127.0.0.1:port()
    pid_t pid() const { return proc_ ? proc_->pid() : -1; }
    const std::string& log_file() const { return log_; }

    // Sends one control line (e.g. "delay 200") and returns the answer without its newline.
    // Throws when the proxy does not answer within 5 s or answers anything but `ok`
    // (`stats` answers JSON and is accepted as it is).
    std::string command(const std::string& line);
    void pass() { command("pass"); }
    void blackhole() { command("blackhole"); }
    void withhold_puback() { command("withhold_puback"); }
    void delay(std::chrono::milliseconds d) { command("delay " + std::to_string(d.count())); }
    void slow_ack(std::chrono::milliseconds d) { command("slow_ack " + std::to_string(d.count())); }
    void cut() { command("cut"); }
    void refuse() { command("refuse"); }
    // The next n QoS 1 publishes (MQTT 5) are answered PUBACK 0x97 by the proxy, not forwarded.
    void refuse_publish(int n) { command("refuse_publish " + std::to_string(n)); }
    // How an MQTT 5 CONNECT is met: "pass", "close" (no answer) or "refuse" (CONNACK 0x84).
    void mqtt5(const std::string& answer) { command("mqtt5 " + answer); }
    // How a SUBSCRIBE is met: "pass" or "close" (the connection, without an answer).
    void on_subscribe(const std::string& answer) { command("subscribe " + answer); }
    mqtt_proxy_stats stats();

    void stop();  // SIGTERM and wait (also done by the destructor)

  private:
    std::uint16_t upstream_;
    std::uint16_t port_;
    std::uint16_t control_port_;
    std::unique_ptr<temp_dir> dir_;
    std::string log_;
    std::unique_ptr<process> proc_;
};

}  // namespace ferry::test
