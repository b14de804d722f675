// Test harness for integration and chaos tests: real processes on loopback.
//
// Every process a test starts is owned by an RAII object and stopped by pid in its
// destructor (SIGTERM, then SIGKILL after a grace period), so a failing test leaves nothing
// running. Only 127.0.0.1 is ever used.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ferry::test {

using namespace std::chrono_literals;

// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
std::uint16_t free_port();

// Polls `pred` every 20 ms until it is true or `timeout` passes. Returns pred's last value.
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& content);

// A fresh directory under /tmp, removed with everything in it on destruction.
class temp_dir {
public:
    temp_dir();
    ~temp_dir();
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

// A child process. stdout and stderr go to `log_file` (appended) when given, else /dev/null.
class process {
public:
    process(std::vector<std::string> argv, std::string log_file = {},
            std::map<std::string, std::string> extra_env = {});
    ~process();  // stop() if still running
    process(const process&) = delete;
    process& operator=(const process&) = delete;

    pid_t pid() const { return pid_; }
    bool running();
    // Sends `sig`, waits up to `grace`, then SIGKILL. Returns the exit code (128+signal if
    // killed by a signal), or -1 if it was not running.
    int stop(int sig = 15, std::chrono::milliseconds grace = 5000ms);
    void kill9();  // SIGKILL and reap
    // Waits for exit; returns exit code as for stop(), or nullopt on timeout.
    std::optional<int> wait(std::chrono::milliseconds timeout);
    const std::string& log_file() const { return log_; }

private:
    pid_t pid_ = -1;
    int status_ = -1;
    std::string log_;
};

// A real mosquitto on 127.0.0.1:port, with its own config in a temp dir; persistence off.
// `extra_conf` is appended to its config (e.g. TLS listener settings).
class mosquitto {
public:
    explicit mosquitto(std::uint16_t port = 0, std::string extra_conf = {});
    ~mosquitto();
    std::uint16_t port() const { return port_; }
    std::string uri() const;  // tcp://127.0.0.1:PORT
    void stop();              // SIGTERM and wait
    void kill9();
    void start();             // (re)start on the same port; waits until it accepts connections
    bool running();

private:
    std::uint16_t port_;
    std::string extra_;
    std::unique_ptr<temp_dir> dir_;
    std::unique_ptr<process> proc_;
};

struct mqtt_message {
    std::string topic;
    std::string payload;
    bool retained = false;
    int qos = 0;
};

// Subscribes to `filters` (QoS 1, clean session) and records every message in arrival order.
// Reconnects on its own if the broker restarts (a persistent session is used, so QoS 1
// messages published while it was away are not lost).
class mqtt_recorder {
public:
    mqtt_recorder(const std::string& uri, std::vector<std::string> filters);
    ~mqtt_recorder();
    std::vector<mqtt_message> messages() const;
    std::size_t count() const;
    // Waits until at least n messages (or n matching `topic_filter` exactly by equality when given).
    bool wait_for_count(std::size_t n, std::chrono::milliseconds timeout) const;
    void clear();

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

// Our libmodbus simulator (tests/tools/modbus_sim.cpp) on 127.0.0.1:port.
// `sets` are "--set" arguments, e.g. "holding:100=f32:abcd:21.5", "holding:0=u16:7".
class modbus_sim {
public:
    modbus_sim(std::uint16_t port, std::vector<std::string> sets, std::string log_file = {});
    ~modbus_sim();
    std::uint16_t port() const { return port_; }
    void stop();
    // Number of requests served so far (read from its stats file).
    std::uint64_t requests() const;

private:
    std::uint16_t port_;
    std::unique_ptr<temp_dir> dir_;
    std::unique_ptr<process> proc_;
};

// pymodbus's server (tests/tools/pymodbus_server.py, run by /usr/bin/python3) on
// 127.0.0.1:port with the same "--set" syntax: an independent Modbus implementation.
class pymodbus_sim {
public:
    pymodbus_sim(std::uint16_t port, std::vector<std::string> sets, std::string log_file = {});
    ~pymodbus_sim();
    std::uint16_t port() const { return port_; }
    void stop();

private:
    std::uint16_t port_;
    std::unique_ptr<process> proc_;
};

// Waits until something accepts TCP connections on 127.0.0.1:port.
bool wait_for_port(std::uint16_t port, std::chrono::milliseconds timeout);

// Resident set size of a process in KiB (from /proc/PID/status), 0 if unknown.
std::uint64_t rss_kib(pid_t pid);
// Number of threads of a process (from /proc/PID/status).
int thread_count(pid_t pid);

}  // namespace ferry::test
