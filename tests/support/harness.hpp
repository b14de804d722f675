// Test harness for integration and chaos tests: real processes on loopback.
//
// Every process a test starts is owned by an RAII object and stopped by pid in its
// destructor (SIGTERM, then SIGKILL after a grace period), so a failing test leaves nothing
// running. Only 127.0.0.1 is ever used.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/files.hpp"  // read_file, write_file

namespace ferry::test {

using namespace std::chrono_literals;

// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
std::uint16_t free_port();

// A TCP socket listening on 127.0.0.1:port (SO_REUSEADDR, backlog 16); the caller closes it.
// Throws when the port cannot be bound.
int listen_loopback(std::uint16_t port);

// Polls `pred` every 20 ms until it is true or `timeout` passes. Returns pred's last value.
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

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
    // If it already exited on its own, returns that exit code.
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

// `ferry ARGS...` (the binary under test) run to its end, at most `timeout`: its exit code (-1
// when it did not end in time) and what it wrote to stdout and stderr, together.
struct cli_result {
    int code = -1;
    std::string out;
};
cli_result ferry_cli(const std::vector<std::string>& args,
                     std::chrono::milliseconds timeout = 60000ms);

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
    void start();  // (re)start on the same port; waits until it accepts connections
    bool running();
    std::string log_file() const;  // the broker's stdout+stderr (removed with the object)
    pid_t pid() const;             // -1 when not started

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

// Subscribes to `filters` (QoS 1) and records every message in arrival order; the
// constructor returns once the subscription is acknowledged (throws if it is not within 10 s).
// MQTT 5 with a persistent session (clean_start=false, unique client id), so QoS 1 messages
// published while it is briefly disconnected are queued by the broker and not lost.
// Reconnects on its own (every 1-2 s) and subscribes again after every reconnect, since a
// restarted broker (persistence off) has forgotten the session; messages published to the
// new broker before that re-subscription are lost. Retained messages are delivered only for
// a new subscription, and `retained` tells whether the message was published with retain.
// All methods are thread-safe. `mqtt_version` 4 speaks MQTT 3.1.1 instead (RabbitMQ 3.10 knows
// no 5): clean_session=false keeps the session, and every reconnect subscribes again.
class mqtt_recorder {
  public:
    mqtt_recorder(const std::string& uri, std::vector<std::string> filters, int mqtt_version = 5);
    ~mqtt_recorder();
    std::vector<mqtt_message> messages() const;
    // Messages whose topic equals `topic`.
    std::vector<mqtt_message> messages_on(const std::string& topic) const;
    std::size_t count() const;
    // Waits until at least n messages have been recorded.
    bool wait_for_count(std::size_t n, std::chrono::milliseconds timeout) const;
    // Waits until at least n messages on exactly `topic` have been recorded.
    bool wait_for_count(const std::string& topic, std::size_t n,
                        std::chrono::milliseconds timeout) const;
    bool connected() const;
    void clear();

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

// Our libmodbus simulator (tests/tools/modbus_sim.cpp) on 127.0.0.1:port (0: a free port).
// `sets` are "--set" arguments, e.g. "holding:100=f32:abcd:21.5", "holding:0=u16:7".
// `extra_args` are passed as they are, e.g. {"--fail", "10-19"}, {"--silent"}, {"--unit", "3"}.
// The constructor returns once the port accepts connections (throws otherwise).
class modbus_sim {
  public:
    modbus_sim(std::uint16_t port, std::vector<std::string> sets, std::string log_file = {},
               std::vector<std::string> extra_args = {});
    ~modbus_sim();
    std::uint16_t port() const { return port_; }
    void stop();
    void kill9();
    // Number of requests received so far (read from its stats file).
    std::uint64_t requests() const;
    // Everything in the stats file: requests (on arrival), answered (answers written),
    // accepted (connections), connections (open now), fc<N> (requests per function code).
    std::map<std::string, std::uint64_t> stats() const;

  private:
    std::uint16_t port_;
    std::unique_ptr<temp_dir> dir_;
    std::unique_ptr<process> proc_;
};

// pymodbus's server (tests/tools/pymodbus_server.py, run by /usr/bin/python3) on
// 127.0.0.1:port (0: a free port) with the same "--set" syntax: an independent Modbus
// implementation. Answers any unit id. The constructor returns once the port accepts. `extra`
// goes to the server as it is (e.g. {"--log", FILE}: its request log).
class pymodbus_sim {
  public:
    pymodbus_sim(std::uint16_t port, std::vector<std::string> sets, std::string log_file = {},
                 std::vector<std::string> extra = {});
    ~pymodbus_sim();
    std::uint16_t port() const { return port_; }
    void stop();

  private:
    std::uint16_t port_;
    std::unique_ptr<temp_dir> dir_;  // holds the log when no log_file is given
    std::unique_ptr<process> proc_;
};

// Runs tests/tools/modbus_client.py (pymodbus's client, independent of Ferry's code) against
// 127.0.0.1:port with `args` (e.g. "read holding 100 2", "write coil 5 1"), and returns what
// it printed, trailing white space trimmed. Throws std::runtime_error with its output when
// it fails.
std::string pymodbus_client(std::uint16_t port, const std::string& args);
// "read TABLE ADDRESS COUNT" through pymodbus_client: the registers (bits as 0/1).
std::vector<unsigned> pymodbus_read(std::uint16_t port, const std::string& table, int address,
                                    int count);

// A socat pty pair: the driver opens a(), a simulator serves b(). Stopped by pid.
class socat_pair {
  public:
    socat_pair();  // throws if socat does not create both ends within 5 s
    ~socat_pair();
    socat_pair(const socat_pair&) = delete;
    socat_pair& operator=(const socat_pair&) = delete;
    std::string a() const { return dir_.file("a"); }
    std::string b() const { return dir_.file("b"); }
    const temp_dir& dir() const { return dir_; }

  private:
    temp_dir dir_;
    std::unique_ptr<process> socat_;
};

// An RTU server on the b() end of a pty pair at 19200 baud: our simulator (with a stats file)
// or pymodbus. `extra` goes to the simulator as it is (e.g. {"--parity", "E", "--unit", "7"}).
// The constructor returns once it serves (throws otherwise).
class rtu_server {
  public:
    rtu_server(const socat_pair& pty, bool pymodbus, std::vector<std::string> sets,
               std::vector<std::string> extra = {});
    // As modbus_sim::stats() (our simulator only).
    std::map<std::string, std::uint64_t> stats() const;

  private:
    std::string stats_;
    std::string log_;
    std::unique_ptr<process> proc_;
};

// The datagram socket systemd listens on (NOTIFY_SOCKET), bound at `path`: what ferry tells
// systemd with sd_notify, and when. Throws std::runtime_error when it cannot bind.
class notify_socket {
  public:
    explicit notify_socket(std::string path);
    ~notify_socket();
    notify_socket(const notify_socket&) = delete;
    notify_socket& operator=(const notify_socket&) = delete;

    // Collects datagrams until `pred` holds for the collected list or `timeout` passes.
    bool collect_until(const std::function<bool(const std::vector<std::string>&)>& pred,
                       std::chrono::milliseconds timeout);
    // Collects for `d`; the arrival times of the WATCHDOG=1 datagrams among them.
    std::vector<std::chrono::steady_clock::time_point> pings_for(std::chrono::milliseconds d);

    std::vector<std::string> messages;                         // in arrival order
    std::vector<std::chrono::steady_clock::time_point> times;  // when each arrived

  private:
    std::string path_;
    int fd_ = -1;
};

// Waits until something accepts TCP connections on 127.0.0.1:port.
bool wait_for_port(std::uint16_t port, std::chrono::milliseconds timeout);

// A TCP connection to 127.0.0.1:port: the socket, or -1 when refused. rcvbuf > 0 sets
// SO_RCVBUF before connecting (a small window keeps unread data on the sender's side).
int connect_loopback(std::uint16_t port, int rcvbuf = 0);

// The number after `key:` in /proc/PID/status (kB for Vm* fields, a count for
// voluntary_ctxt_switches, ...), nullopt when absent. `pid` may be a thread id: the context
// switch counts there are that thread's alone.
std::optional<std::uint64_t> status_field(pid_t pid, const std::string& key);
// Resident set size of a process in KiB (from /proc/PID/status), 0 if unknown.
std::uint64_t rss_kib(pid_t pid);
// Number of threads of a process (from /proc/PID/status).
int thread_count(pid_t pid);
// CPU time (user + system) a process has used, in seconds (from /proc/PID/stat), 0 if unknown.
double cpu_seconds(pid_t pid);

}  // namespace ferry::test

namespace ferry::test {

struct http_response {
    int status = 0;  // 0: no answer
    std::string body;
};

// A plain HTTP/1.1 GET to 127.0.0.1:port (Connection: close), with a timeout.
http_response http_get(std::uint16_t port, const std::string& path,
                       std::chrono::milliseconds timeout = 5000ms);

// The value of one sample in Prometheus text format, e.g.
// metric(text, "ferry_spool_dropped_total{reason=\"drop_oldest\"}"); nullopt when absent.
// Labels must be given in the order the exposition prints them.
std::optional<double> metric(const std::string& text, const std::string& sample);

}  // namespace ferry::test

// ---- Shared by the chaos tests (and any test that drives `ferry run`) ----------------------

namespace ferry::test {

// mosquitto config lines that keep sessions across a clean broker restart (stop() then
// start()): a persistent subscriber's subscription and the QoS 1 messages queued for it are
// saved at stop and restored at start, so a recorder does not miss what a publisher sent to
// the restarted broker before the recorder reconnected. `dir` holds the database (it is made
// writable for mosquitto, which drops root).
std::string persistence_conf(const temp_dir& dir);

// A throwaway PKI made by openssl(1) in a temp dir (files readable by mosquitto): a CA; a
// server certificate for IP 127.0.0.1 signed by it; one signed by it for another host only
// (DNS:elsewhere.invalid); one for 127.0.0.1 signed by another CA; a client certificate
// signed by the CA. Throws std::runtime_error if openssl fails.
struct test_pki {
    temp_dir dir;
    std::string ca, ca_key, server, server_key, wrong_host_server, wrong_host_key, untrusted_server,
        untrusted_key, other_ca, client, client_key;
    test_pki();
    // mosquitto lines for a TLS listener on 127.0.0.1:port with this certificate and key,
    // requiring a client certificate signed by `ca`.
    std::string tls_listener(std::uint16_t port, const std::string& cert,
                             const std::string& key) const;
};

// `n` holding registers 0..n-1 for modbus_sim, register i holding the value i.
std::vector<std::string> holding_registers(int n);

// GET /metrics of a ferry on 127.0.0.1:port (empty when it does not answer), and one sample.
std::string metrics_text(std::uint16_t port);
// The sample's value, or `fallback` when ferry does not answer or the sample is absent.
double metric_value(std::uint16_t port, const std::string& sample, double fallback = -1);

// The conservation counts ferry logs on its last "stopped" line (gateway/daemon.cpp):
// "produced" and one entry per drop reason ("filtered", "shutdown", ...), plus "dropped", their
// sum. Empty when the log has no such line (ferry did not stop cleanly).
std::map<std::string, std::uint64_t> stop_counts(const std::string& log_file);

// One upstream message (CONTRACT.md: {"gateway","batch","events":[...]}) as it arrived.
struct upstream_event {
    std::uint64_t seq = 0;
    std::string device;
    std::string tag;
    std::string quality;
    std::int64_t ts = 0;  // Unix ms at sampling
};
struct upstream_message {
    std::string topic;
    std::string payload;
    std::string body;     // the payload without a replay mark: what a resend must repeat
    bool replay = false;  // "replay":true, a batch of the backlog (docs/DELIVERY.md, Live first)
    std::uint64_t batch = 0;
    std::vector<upstream_event> events;
};
// The messages on topics starting with `prefix`, in arrival order (the status topic is left
// out by choosing the prefix). Throws on a payload that is not the contract's JSON.
std::vector<upstream_message> parse_upstream(const std::vector<mqtt_message>& msgs,
                                             const std::string& prefix = "plant/");

// What a consumer deduplicating on (gateway, seq) and watching `batch` sees in a stream. With
// live first, order is checked within each stream (live, replay) as the contract promises.
struct delivery_check {
    std::size_t arrived = 0;   // messages, repeats included
    std::size_t replayed = 0;  // distinct messages whose first arrival was marked replay
    std::size_t distinct = 0;  // distinct (topic, batch)
    std::size_t repeats = 0;   // arrivals of a (topic, batch) seen before
    // How many batches behind the newest one on its topic a repeat was (0 if no repeat): a
    // repeat from within the in-flight window is at most `inflight` behind.
    std::uint64_t max_repeat_distance = 0;
    std::size_t conflicting = 0;  // a repeated batch number with different content
    std::size_t reordered = 0;    // first arrivals out of batch order, or out of seq order per
                                  // device/tag after dropping repeated seqs, within a stream
    std::map<std::string, std::uint64_t> first_batch, last_batch;  // per topic
    // Per topic: (last batch before, first batch after) for every hole in the batch numbers.
    std::map<std::string, std::vector<std::pair<std::uint64_t, std::uint64_t>>> batch_gaps;
    std::size_t events = 0;  // distinct seq
    std::uint64_t first_seq = 0, last_seq = 0;
    struct seq_gap {
        std::uint64_t before = 0, after = 0;  // the seqs on either side of the hole
        std::int64_t ts_before = 0, ts_after = 0;
    };
    std::vector<seq_gap> seq_gaps;  // holes in the sorted distinct seqs
    std::string summary() const;    // one line, for MESSAGE()
};
delivery_check check_delivery(const std::vector<upstream_message>& msgs);

// Size of a file in bytes, 0 when it does not exist.
std::uint64_t file_size_or_zero(const std::string& path);

// Unix time in milliseconds.
std::int64_t unix_ms();

}  // namespace ferry::test
