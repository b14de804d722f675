// Test harness: processes, ports, a broker, an MQTT recorder, Modbus simulators.
//
// Children are started with fork/execvp in their own session (setsid), so a signal meant
// for the test runner's terminal does not reach them and they can be stopped alone, by pid.
// Each child also asks the kernel for SIGKILL when the test runner dies
// (PR_SET_PDEATHSIG), so a crashed test leaves nothing running. Note: that signal fires
// when the *thread* that forked exits; start processes from the test's main thread.
#include "tests/support/harness.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mqtt/async_client.h>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <tuple>

#include "core/topic.hpp"
#include "tests/support/paths.hpp"

namespace ferry::test {

namespace {

std::string tail_of(const std::string& path, std::size_t max = 2000) {
    std::string s = read_file_if_exists(path);
    if (s.size() > max) s = s.substr(s.size() - max);
    return s;
}

int exit_code_of(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

// Starts a server process and waits for its port; throws (with the log's tail) if it
// exits or does not listen in time.
std::unique_ptr<process> start_server(const std::vector<std::string>& argv, const std::string& log,
                                      std::uint16_t port, std::chrono::milliseconds timeout) {
    auto p = std::make_unique<process>(argv, log);
    const bool up = wait_until([&] { return !p->running() || wait_for_port(port, 50ms); }, timeout);
    if (!up || !p->running()) {
        p->stop(SIGTERM, 1000ms);
        throw std::runtime_error(argv[0] + " did not start on 127.0.0.1:" + std::to_string(port) +
                                 "; log:\n" + tail_of(log));
    }
    return p;
}

}  // namespace

cli_result ferry_cli(const std::vector<std::string>& args, std::chrono::milliseconds timeout) {
    temp_dir dir;
    std::vector<std::string> argv{FERRY_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    process p(argv, dir.file("out"));
    const auto code = p.wait(timeout);
    return {code.value_or(-1), read_file_if_exists(dir.file("out"))};
}

std::uint16_t free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::runtime_error("free_port: socket: " + std::string(strerror(errno)));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        const std::string why = strerror(errno);
        ::close(fd);
        throw std::runtime_error("free_port: " + why);
    }
    ::close(fd);
    return ntohs(addr.sin_port);
}

int listen_loopback(std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        throw std::runtime_error("listen_loopback: socket: " + std::string(strerror(errno)));
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 16) != 0) {
        const std::string why = strerror(errno);
        ::close(fd);
        throw std::runtime_error("listen_loopback " + std::to_string(port) + ": " + why);
    }
    return fd;
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        if (pred()) return true;
        if (std::chrono::steady_clock::now() >= deadline) return pred();
        std::this_thread::sleep_for(20ms);
    }
}

// ---- temp_dir ------------------------------------------------------------------------------

temp_dir::temp_dir() {
    char tmpl[] = "/tmp/ferry-test-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp: " + std::string(strerror(errno)));
    path_ = tmpl;
}

temp_dir::~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

// ---- process -------------------------------------------------------------------------------

process::process(std::vector<std::string> argv, std::string log_file,
                 std::map<std::string, std::string> extra_env)
    : log_(std::move(log_file)) {
    if (argv.empty()) throw std::invalid_argument("process: empty argv");
    // Everything the child needs is prepared before fork: the test runner has threads (Paho),
    // so the child may only make async-signal-safe calls until exec (no malloc, no setenv).
    std::vector<char*> args;
    for (auto& a : argv)
        args.push_back(a.data());
    args.push_back(nullptr);
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
        const std::string entry = *e;
        const auto eq = entry.find('=');
        if (eq != std::string::npos && extra_env.count(entry.substr(0, eq))) continue;
        env_strings.push_back(entry);
    }
    for (const auto& [k, v] : extra_env)
        env_strings.push_back(k + "=" + v);
    std::vector<char*> envp;
    for (auto& e : env_strings)
        envp.push_back(e.data());
    envp.push_back(nullptr);
    const std::string out = log_.empty() ? std::string("/dev/null") : log_;
    const pid_t parent = ::getpid();

    // Block every signal across fork: a stop() right after the constructor must not run the
    // test runner's own handlers (doctest installs some) in the child before it has reset
    // them; the child unblocks once every disposition is back to default.
    sigset_t all, old;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    const pid_t pid = ::fork();
    if (pid == 0) {
        for (int s = 1; s < NSIG; ++s)
            ::signal(s, SIG_DFL);  // fails harmlessly for KILL/STOP
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::setsid();
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
        const int in = ::open("/dev/null", O_RDONLY);
        const int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (in >= 0) ::dup2(in, 0);
        if (fd >= 0) {
            ::dup2(fd, 1);
            ::dup2(fd, 2);
        }
        ::execvpe(args[0], args.data(), envp.data());
        const char msg[] = "process: execvp failed\n";
        [[maybe_unused]] auto n = ::write(2, msg, sizeof msg - 1);
        ::_exit(127);
    }
    const int fork_errno = errno;
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (pid < 0) throw std::runtime_error("fork: " + std::string(strerror(fork_errno)));
    pid_ = pid;
}

process::~process() {
    if (running()) stop(SIGTERM, 5000ms);
}

bool process::running() {
    if (pid_ <= 0 || status_ != -1) return false;
    int st = 0;
    const pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == 0) return true;
    status_ = r == pid_ ? st : 0;  // r < 0: already reaped elsewhere; treat as gone
    return false;
}

std::optional<int> process::wait(std::chrono::milliseconds timeout) {
    if (pid_ <= 0) return -1;
    if (!wait_until([&] { return !running(); }, timeout)) return std::nullopt;
    return exit_code_of(status_);
}

int process::stop(int sig, std::chrono::milliseconds grace) {
    if (pid_ <= 0) return -1;
    if (!running()) return exit_code_of(status_);  // exited on its own: report how
    ::kill(pid_, sig);
    if (auto code = wait(grace)) return *code;
    kill9();
    return exit_code_of(status_);
}

void process::kill9() {
    if (pid_ <= 0 || !running()) return;
    ::kill(pid_, SIGKILL);
    int st = 0;
    if (::waitpid(pid_, &st, 0) == pid_) {
        status_ = st;
    } else {
        status_ = 0;
    }
}

// ---- port ----------------------------------------------------------------------------------

bool wait_for_port(std::uint16_t port, std::chrono::milliseconds timeout) {
    return wait_until(
        [port] {
            const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0) return false;
            sockaddr_in addr{};
            addr.sin_family = AF_INET;
            addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            addr.sin_port = htons(port);
            const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
            ::close(fd);
            return ok;
        },
        timeout);
}

// ---- mosquitto -----------------------------------------------------------------------------

mosquitto::mosquitto(std::uint16_t port, std::string extra_conf)
    : port_(port ? port : free_port()),
      extra_(std::move(extra_conf)),
      dir_(std::make_unique<temp_dir>()) {
    write_file(dir_->file("mosquitto.conf"), "listener " + std::to_string(port_) +
                                                 " 127.0.0.1\n"
                                                 "allow_anonymous true\n"
                                                 "persistence false\n" +
                                                 extra_ + "\n");
    start();
}

mosquitto::~mosquitto() {
    if (proc_) proc_->stop(SIGTERM, 5000ms);
}

std::string mosquitto::log_file() const {
    return dir_->file("mosquitto.log");
}

std::string mosquitto::uri() const {
    return "tcp://127.0.0.1:" + std::to_string(port_);
}

void mosquitto::start() {
    if (proc_ && proc_->running()) return;
    proc_.reset();
    // On a restart the port was just released by the previous broker (mosquitto sets
    // SO_REUSEADDR); retry a few times in case the old socket lingers.
    for (int attempt = 1;; ++attempt) {
        try {
            proc_ = start_server({"/usr/sbin/mosquitto", "-c", dir_->file("mosquitto.conf")},
                                 dir_->file("mosquitto.log"), port_, 10000ms);
            return;
        } catch (const std::exception&) {
            if (attempt == 3) throw;
            std::this_thread::sleep_for(500ms);
        }
    }
}

void mosquitto::stop() {
    if (proc_) proc_->stop(SIGTERM, 5000ms);
}

void mosquitto::kill9() {
    if (proc_) proc_->kill9();
}

bool mosquitto::running() {
    return proc_ && proc_->running();
}

pid_t mosquitto::pid() const {
    return proc_ ? proc_->pid() : -1;
}

// ---- mqtt_recorder -------------------------------------------------------------------------

struct mqtt_recorder::impl : public virtual mqtt::callback, public virtual mqtt::iaction_listener {
    std::vector<std::string> filters;
    int version = MQTTVERSION_5;
    mutable std::mutex mu;
    mutable std::condition_variable cv;
    std::vector<mqtt_message> messages;
    bool subscribed = false;
    std::size_t acked = 0;  // SUBSCRIBEs acknowledged since the last connect
    std::string last_error;
    std::unique_ptr<mqtt::async_client> client;  // last: destroyed first, before what it calls

    // Called for the first connect and after every automatic reconnect. The session may
    // be gone (a restarted broker without persistence), so subscribe again each time. MQTT 5
    // retain handling "send retained only for a new subscription" keeps a reconnect to a
    // broker that kept the session from delivering retained messages twice.
    // One SUBSCRIBE per filter: Paho C++ 1.2.0 crashes in MQTTAsync_subscribeMany when
    // several filters are given with subscribe options.
    void connected(const std::string&) override {
        {
            std::lock_guard lk(mu);
            acked = 0;
        }
        try {
            for (const auto& f : filters) {
                if (version != MQTTVERSION_5)
                    client->subscribe(f, 1, nullptr, *this);
                else
                    client->subscribe(
                        f, 1, nullptr, *this,
                        mqtt::subscribe_options(false, true,
                                                mqtt::subscribe_options::SEND_RETAINED_ON_NEW));
            }
        } catch (const std::exception& e) {
            std::lock_guard lk(mu);
            last_error = e.what();
        }
    }
    void connection_lost(const std::string&) override {}
    void message_arrived(mqtt::const_message_ptr msg) override {
        mqtt_message m;
        m.topic = msg->get_topic();
        m.payload = msg->to_string();
        m.retained = msg->is_retained();
        m.qos = msg->get_qos();
        {
            std::lock_guard lk(mu);
            messages.push_back(std::move(m));
        }
        cv.notify_all();
    }
    // iaction_listener, for the subscribe.
    void on_success(const mqtt::token&) override {
        {
            std::lock_guard lk(mu);
            if (++acked >= filters.size()) subscribed = true;
        }
        cv.notify_all();
    }
    void on_failure(const mqtt::token& tok) override {
        {
            std::lock_guard lk(mu);
            last_error = "subscribe failed, rc=" + std::to_string(tok.get_return_code());
        }
        cv.notify_all();
    }
};

mqtt_recorder::mqtt_recorder(const std::string& uri, std::vector<std::string> filters,
                             int mqtt_version)
    : impl_(std::make_unique<impl>()) {
    static std::atomic<int> counter{0};
    std::random_device rd;
    const std::string id = "ferry-rec-" + std::to_string(::getpid()) + "-" +
                           std::to_string(counter++) + "-" + std::to_string(rd() % 100000);
    impl_->filters = std::move(filters);
    impl_->version = mqtt_version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    impl_->client = std::make_unique<mqtt::async_client>(
        uri, id, mqtt::create_options(impl_->version), nullptr /* no client persistence */);
    impl_->client->set_callback(*impl_);

    // A persistent session (clean_start=false, kept for an hour) so QoS 1 messages published
    // while we are briefly disconnected are queued by the broker for us.
    auto builder = mqtt::connect_options_builder();
    if (impl_->version == MQTTVERSION_5)
        builder.mqtt_version(MQTTVERSION_5)
            .clean_start(false)
            .properties({{mqtt::property::SESSION_EXPIRY_INTERVAL, 3600}});
    else
        builder.mqtt_version(MQTTVERSION_3_1_1).clean_session(false);
    auto opts = builder.keep_alive_interval(std::chrono::seconds(5))
                    .connect_timeout(std::chrono::seconds(5))
                    .automatic_reconnect(std::chrono::seconds(1), std::chrono::seconds(2))
                    .finalize();
    try {
        impl_->client->connect(opts)->wait_for(std::chrono::seconds(10));
    } catch (const std::exception& e) {
        throw std::runtime_error("mqtt_recorder: connect to " + uri + ": " + e.what());
    }
    std::unique_lock lk(impl_->mu);
    const bool ok = impl_->cv.wait_for(
        lk, 10s, [&] { return impl_->subscribed || !impl_->last_error.empty(); });
    if (!ok || !impl_->subscribed) {
        const std::string why = impl_->last_error.empty() ? "timeout" : impl_->last_error;
        lk.unlock();
        try {
            impl_->client->disconnect()->wait_for(std::chrono::seconds(2));
        } catch (...) {
        }
        throw std::runtime_error("mqtt_recorder: subscribe on " + uri + ": " + why);
    }
}

mqtt_recorder::~mqtt_recorder() {
    try {
        impl_->client->disable_callbacks();
        if (impl_->client->is_connected()) {
            impl_->client->disconnect()->wait_for(std::chrono::seconds(2));
        }
    } catch (...) {
    }
}

std::vector<mqtt_message> mqtt_recorder::messages() const {
    std::lock_guard lk(impl_->mu);
    return impl_->messages;
}

std::vector<mqtt_message> mqtt_recorder::messages_on(const std::string& topic) const {
    std::lock_guard lk(impl_->mu);
    std::vector<mqtt_message> out;
    for (const auto& m : impl_->messages) {
        if (m.topic == topic) out.push_back(m);
    }
    return out;
}

std::size_t mqtt_recorder::count() const {
    std::lock_guard lk(impl_->mu);
    return impl_->messages.size();
}

bool mqtt_recorder::wait_for_count(std::size_t n, std::chrono::milliseconds timeout) const {
    std::unique_lock lk(impl_->mu);
    return impl_->cv.wait_for(lk, timeout, [&] { return impl_->messages.size() >= n; });
}

bool mqtt_recorder::wait_for_count(const std::string& topic, std::size_t n,
                                   std::chrono::milliseconds timeout) const {
    std::unique_lock lk(impl_->mu);
    return impl_->cv.wait_for(lk, timeout, [&] {
        std::size_t k = 0;
        for (const auto& m : impl_->messages)
            k += m.topic == topic ? 1 : 0;
        return k >= n;
    });
}

bool mqtt_recorder::connected() const {
    return impl_->client->is_connected();
}

void mqtt_recorder::clear() {
    std::lock_guard lk(impl_->mu);
    impl_->messages.clear();
}

// ---- modbus_sim ----------------------------------------------------------------------------

modbus_sim::modbus_sim(std::uint16_t port, std::vector<std::string> sets, std::string log_file,
                       std::vector<std::string> extra_args)
    : port_(port ? port : free_port()), dir_(std::make_unique<temp_dir>()) {
    std::vector<std::string> argv{FERRY_MODBUS_SIM, "--port", std::to_string(port_), "--stats",
                                  dir_->file("stats")};
    for (auto& s : sets) {
        argv.push_back("--set");
        argv.push_back(std::move(s));
    }
    for (auto& a : extra_args)
        argv.push_back(std::move(a));
    if (log_file.empty()) log_file = dir_->file("modbus_sim.log");
    proc_ = start_server(argv, log_file, port_, 10000ms);
}

modbus_sim::~modbus_sim() {
    stop();
}

void modbus_sim::stop() {
    if (proc_) proc_->stop(SIGTERM, 5000ms);
}

void modbus_sim::kill9() {
    if (proc_) proc_->kill9();
}

std::uint64_t modbus_sim::requests() const {
    std::ifstream in(dir_->file("stats"));
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("requests=", 0) == 0) return std::stoull(line.substr(9));
    }
    return 0;
}

namespace {
// A simulator's stats file: name=value lines.
std::map<std::string, std::uint64_t> read_stats(const std::string& path) {
    std::map<std::string, std::uint64_t> out;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        const auto eq = line.find('=');
        if (eq == std::string::npos) continue;
        out[line.substr(0, eq)] = std::stoull(line.substr(eq + 1));
    }
    return out;
}
}  // namespace

std::map<std::string, std::uint64_t> modbus_sim::stats() const {
    return read_stats(dir_->file("stats"));
}

// ---- pymodbus_client ------------------------------------------------------------------------

std::string pymodbus_client(std::uint16_t port, const std::string& args) {
    const std::string cmd = "/usr/bin/python3 " + std::string(FERRY_SOURCE_DIR) +
                            "/tests/tools/modbus_client.py --port " + std::to_string(port) + " " +
                            args + " 2>&1";
    std::FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) throw std::runtime_error("cannot run " + cmd);
    std::string out;
    char buf[256];
    while (std::fgets(buf, sizeof buf, p))
        out += buf;
    if (::pclose(p) != 0) throw std::runtime_error(cmd + " failed: " + out);
    while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
        out.pop_back();
    return out;
}

std::vector<unsigned> pymodbus_read(std::uint16_t port, const std::string& table, int address,
                                    int count) {
    const auto text = pymodbus_client(
        port, "read " + table + " " + std::to_string(address) + " " + std::to_string(count));
    std::istringstream in(text);
    std::vector<unsigned> out;
    unsigned v = 0;
    while (in >> v)
        out.push_back(v);
    if (out.size() != static_cast<std::size_t>(count))
        throw std::runtime_error("modbus_client.py printed '" + text + "'");
    return out;
}

// ---- socat_pair, rtu_server ------------------------------------------------------------------

socat_pair::socat_pair() {
    socat_ = std::make_unique<process>(
        std::vector<std::string>{"socat", "-d", "-d", "pty,raw,echo=0,link=" + a(),
                                 "pty,raw,echo=0,link=" + b()},
        dir_.file("socat.log"));
    if (!wait_until([&] { return std::filesystem::exists(a()) && std::filesystem::exists(b()); },
                    5000ms))
        throw std::runtime_error("socat did not create the pty pair");
}

socat_pair::~socat_pair() {
    socat_->stop();
}

rtu_server::rtu_server(const socat_pair& pty, bool pymodbus, std::vector<std::string> sets,
                       std::vector<std::string> extra)
    : stats_(pty.dir().file("stats")), log_(pty.dir().file(pymodbus ? "py.log" : "sim.log")) {
    std::vector<std::string> argv;
    if (pymodbus) {
        argv = {
            "/usr/bin/python3", std::string(FERRY_SOURCE_DIR) + "/tests/tools/pymodbus_server.py",
            "--serial",         pty.b(),
            "--baud",           "19200"};
    } else {
        argv = {FERRY_MODBUS_SIM, "--rtu", pty.b(), "--baud", "19200", "--stats", stats_};
    }
    for (auto& s : sets) {
        argv.push_back("--set");
        argv.push_back(std::move(s));
    }
    for (auto& e : extra)
        argv.push_back(std::move(e));
    proc_ = std::make_unique<process>(argv, log_);
    auto serving = [&] {
        return read_file_if_exists(log_).find("serving RTU") != std::string::npos;
    };
    if (!wait_until(serving, 20000ms))
        throw std::runtime_error("RTU server did not start:\n" + read_file(log_));
}

std::map<std::string, std::uint64_t> rtu_server::stats() const {
    return read_stats(stats_);
}

// ---- pymodbus_sim --------------------------------------------------------------------------

pymodbus_sim::pymodbus_sim(std::uint16_t port, std::vector<std::string> sets, std::string log_file,
                           std::vector<std::string> extra)
    : port_(port ? port : free_port()), dir_(std::make_unique<temp_dir>()) {
    std::vector<std::string> argv{"/usr/bin/python3",
                                  std::string(FERRY_SOURCE_DIR) + "/tests/tools/pymodbus_server.py",
                                  "--port", std::to_string(port_)};
    for (auto& s : sets) {
        argv.push_back("--set");
        argv.push_back(std::move(s));
    }
    for (auto& e : extra)
        argv.push_back(std::move(e));
    if (log_file.empty()) log_file = dir_->file("pymodbus_server.log");
    proc_ = start_server(argv, log_file, port_, 20000ms);  // Python imports take a while
}

pymodbus_sim::~pymodbus_sim() {
    stop();
}

void pymodbus_sim::stop() {
    if (proc_) proc_->stop(SIGTERM, 5000ms);
}

// ---- /proc ---------------------------------------------------------------------------------

std::optional<std::uint64_t> status_field(pid_t pid, const std::string& key) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(key + ":", 0) == 0) {
            try {
                return std::stoull(line.substr(key.size() + 1));
            } catch (...) {
                return std::nullopt;
            }
        }
    }
    return std::nullopt;
}

std::uint64_t rss_kib(pid_t pid) {
    return status_field(pid, "VmRSS").value_or(0);
}

int thread_count(pid_t pid) {
    return static_cast<int>(status_field(pid, "Threads").value_or(0));
}

double cpu_seconds(pid_t pid) {
    const std::string all = read_file_if_exists("/proc/" + std::to_string(pid) + "/stat");
    auto close = all.rfind(')');
    if (close == std::string::npos) return 0;
    std::istringstream rest(all.substr(close + 2));
    std::string field;
    unsigned long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
        if (i == 14) utime = std::stoul(field);
        if (i == 15) stime = std::stoul(field);
    }
    return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

}  // namespace ferry::test

namespace ferry::test {

namespace {

// Connects `fd` to 127.0.0.1:port; closes it and returns false when refused.
bool connect_to(int fd, std::uint16_t port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return true;
    ::close(fd);
    return false;
}

}  // namespace

int connect_loopback(std::uint16_t port, int rcvbuf) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (rcvbuf > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    return connect_to(fd, port) ? fd : -1;
}

http_response http_get(std::uint16_t port, const std::string& path,
                       std::chrono::milliseconds timeout) {
    http_response out;
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return out;
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (!connect_to(fd, port)) return out;
    std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
        ::close(fd);
        return out;
    }
    std::string raw;
    char buf[16384];
    for (;;) {
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        raw.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    // "HTTP/1.1 200 OK\r\n...\r\n\r\nbody"
    if (raw.rfind("HTTP/1.", 0) != 0 || raw.size() < 12) return out;
    out.status = std::atoi(raw.c_str() + 9);
    auto head_end = raw.find("\r\n\r\n");
    if (head_end != std::string::npos) out.body = raw.substr(head_end + 4);
    return out;
}

std::optional<double> metric(const std::string& text, const std::string& sample) {
    std::size_t pos = 0;
    while ((pos = text.find(sample, pos)) != std::string::npos) {
        bool line_start = pos == 0 || text[pos - 1] == '\n';
        std::size_t after = pos + sample.size();
        if (line_start && after < text.size() && text[after] == ' ') {
            return std::strtod(text.c_str() + after + 1, nullptr);
        }
        pos = after;
    }
    return std::nullopt;
}

}  // namespace ferry::test

// ---- Shared by the chaos tests -------------------------------------------------------------

namespace ferry::test {

std::string persistence_conf(const temp_dir& dir) {
    ::chmod(dir.path().c_str(), 0777);
    return "persistence true\npersistence_location " + dir.path() + "/\n";
}

test_pki::test_pki() {
    const auto d = dir.path();
    ca = d + "/ca.pem";
    ca_key = d + "/ca.key";
    server = d + "/server.pem";
    server_key = d + "/server.key";
    wrong_host_server = d + "/wrong-host.pem";
    wrong_host_key = d + "/wrong-host.key";
    untrusted_server = d + "/untrusted.pem";
    untrusted_key = d + "/untrusted.key";
    other_ca = d + "/other-ca.pem";
    client = d + "/client.pem";
    client_key = d + "/client.key";
    write_file(d + "/ip.ext", "subjectAltName=IP:127.0.0.1\n");
    write_file(d + "/dns.ext", "subjectAltName=DNS:elsewhere.invalid\n");
    // One leaf: key + CSR, signed by `ca_file`/`ca_key_file`, with the SAN extension file.
    auto leaf = [&](const std::string& cn, const std::string& cert, const std::string& key,
                    const std::string& by, const std::string& by_key, const std::string& ext) {
        std::vector<std::string> out{"openssl req -newkey rsa:2048 -nodes -subj /CN=" + cn +
                                         " -keyout " + key + " -out " + cert + ".csr",
                                     "openssl x509 -req -in " + cert + ".csr -CA " + by +
                                         " -CAkey " + by_key + " -CAcreateserial -days 2" +
                                         (ext.empty() ? "" : " -extfile " + ext) + " -out " + cert};
        return out;
    };
    std::vector<std::string> cmds{
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ferry-test-ca -keyout " +
            ca_key + " -out " + ca,
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca -keyout " + d +
            "/other-ca.key -out " + other_ca,
    };
    for (auto& c : leaf("127.0.0.1", server, server_key, ca, ca_key, d + "/ip.ext"))
        cmds.push_back(c);
    for (auto& c :
         leaf("elsewhere.invalid", wrong_host_server, wrong_host_key, ca, ca_key, d + "/dns.ext"))
        cmds.push_back(c);
    for (auto& c : leaf("127.0.0.1", untrusted_server, untrusted_key, other_ca, d + "/other-ca.key",
                        d + "/ip.ext"))
        cmds.push_back(c);
    for (auto& c : leaf("gw1", client, client_key, ca, ca_key, ""))
        cmds.push_back(c);
    // mosquitto drops root to its own user: let it read the files.
    cmds.push_back("chmod 755 " + d + " && chmod 644 " + d + "/*");
    for (const auto& c : cmds) {
        process p({"/bin/sh", "-c", c}, d + "/openssl.log");
        auto rc = p.wait(30000ms);
        if (!rc || *rc != 0) {
            throw std::runtime_error("test_pki: failed: " + c + "\n" + tail_of(d + "/openssl.log"));
        }
    }
}

std::string test_pki::tls_listener(std::uint16_t port, const std::string& cert,
                                   const std::string& key) const {
    return "listener " + std::to_string(port) + " 127.0.0.1\ncafile " + ca + "\ncertfile " + cert +
           "\nkeyfile " + key + "\nrequire_certificate true\n";
}

std::vector<std::string> holding_registers(int n) {
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i)
        out.push_back("holding:" + std::to_string(i) + "=u16:" + std::to_string(i));
    return out;
}

std::string metrics_text(std::uint16_t port) {
    auto r = http_get(port, "/metrics", 3000ms);
    return r.status == 200 ? r.body : std::string();
}

double metric_value(std::uint16_t port, const std::string& sample, double fallback) {
    return metric(metrics_text(port), sample).value_or(fallback);
}

std::map<std::string, std::uint64_t> stop_counts(const std::string& log_file) {
    std::map<std::string, std::uint64_t> out;
    std::string line, last;
    std::istringstream in(read_file(log_file));
    while (std::getline(in, line)) {
        if (line.find("msg=stopped") != std::string::npos &&
            line.find("events_produced=") != std::string::npos)
            last = line;
    }
    if (last.empty()) return out;
    auto field = [&](const std::string& key) {
        auto at = last.find(" " + key + "=");
        if (at == std::string::npos) return std::string();
        at += key.size() + 2;
        return last.substr(at, last.find(' ', at) - at);
    };
    out["produced"] = std::stoull(field("events_produced"));
    // events_dropped=filtered:1,deduped:2,...
    std::istringstream reasons(field("events_dropped"));
    std::string item;
    std::uint64_t sum = 0;
    while (std::getline(reasons, item, ',')) {
        const auto colon = item.find(':');
        const auto n = std::stoull(item.substr(colon + 1));
        out[item.substr(0, colon)] = n;
        sum += n;
    }
    out["dropped"] = sum;
    return out;
}

std::vector<upstream_message> parse_upstream(const std::vector<mqtt_message>& msgs,
                                             const std::string& prefix) {
    std::vector<upstream_message> out;
    for (const auto& m : msgs) {
        if (m.topic.rfind(prefix, 0) != 0) continue;
        auto j = nlohmann::json::parse(m.payload);
        upstream_message u;
        u.topic = m.topic;
        u.payload = m.payload;
        u.replay = j.value("replay", false);
        u.body = m.payload;
        if (u.replay && u.body.compare(1, k_replay_mark.size(), k_replay_mark) == 0)
            u.body.erase(1, k_replay_mark.size());
        u.batch = j.at("batch").get<std::uint64_t>();
        for (const auto& e : j.at("events")) {
            upstream_event ev;
            ev.seq = e.at("seq").get<std::uint64_t>();
            ev.device = e.at("device").get<std::string>();
            ev.tag = e.at("tag").get<std::string>();
            ev.quality = e.at("quality").get<std::string>();
            ev.ts = e.at("ts").get<std::int64_t>();
            u.events.push_back(std::move(ev));
        }
        out.push_back(std::move(u));
    }
    return out;
}

std::string delivery_check::summary() const {
    std::string s =
        "arrived=" + std::to_string(arrived) + " distinct=" + std::to_string(distinct) +
        " replayed=" + std::to_string(replayed) + " repeats=" + std::to_string(repeats) +
        " max_repeat_distance=" + std::to_string(max_repeat_distance) +
        " conflicting=" + std::to_string(conflicting) + " reordered=" + std::to_string(reordered) +
        " events=" + std::to_string(events) + " seq=" + std::to_string(first_seq) + ".." +
        std::to_string(last_seq);
    for (const auto& [topic, first] : first_batch) {
        s += " " + topic + ":batch=" + std::to_string(first) + ".." +
             std::to_string(last_batch.at(topic));
        auto g = batch_gaps.find(topic);
        s += " batch_gaps=" + std::to_string(g == batch_gaps.end() ? 0 : g->second.size());
        if (g != batch_gaps.end()) {
            for (const auto& [a, b] : g->second)
                s += " (" + std::to_string(a) + "->" + std::to_string(b) + ")";
        }
    }
    s += " seq_gaps=" + std::to_string(seq_gaps.size());
    for (const auto& g : seq_gaps) {
        s += " (" + std::to_string(g.before) + "->" + std::to_string(g.after) + ", " +
             std::to_string(g.ts_after - g.ts_before) + "ms)";
    }
    return s;
}

delivery_check check_delivery(const std::vector<upstream_message>& msgs) {
    delivery_check c;
    std::map<std::pair<std::string, std::uint64_t>, const upstream_message*> seen;
    // Highest batch seen per topic and stream.
    std::map<std::pair<std::string, bool>, std::uint64_t> newest;
    // Per device/tag and stream.
    std::map<std::tuple<std::string, std::string, bool>, std::uint64_t> last_seq_of;
    std::map<std::uint64_t, std::int64_t> seqs;  // seq -> ts
    for (const auto& m : msgs) {
        ++c.arrived;
        auto key = std::make_pair(m.topic, m.batch);
        const std::pair<std::string, bool> stream{m.topic, m.replay};
        if (auto it = seen.find(key); it != seen.end()) {
            ++c.repeats;
            if (it->second->body != m.body) ++c.conflicting;
            const auto nw = newest[stream];
            c.max_repeat_distance =
                std::max(c.max_repeat_distance, nw > m.batch ? nw - m.batch : 0);
            continue;
        }
        seen.emplace(key, &m);
        ++c.distinct;
        if (m.replay) ++c.replayed;
        auto nw = newest.find(stream);
        if (nw != newest.end() && m.batch < nw->second) ++c.reordered;
        if (nw == newest.end() || m.batch > nw->second) newest[stream] = m.batch;
        for (const auto& e : m.events) {
            if (!seqs.emplace(e.seq, e.ts).second) continue;  // a seq seen before (dedupe)
            auto& last = last_seq_of[{e.device, e.tag, m.replay}];
            if (e.seq <= last) ++c.reordered;
            last = std::max(last, e.seq);
        }
    }
    std::map<std::string, std::set<std::uint64_t>> batches;
    for (const auto& [key, m] : seen)
        batches[key.first].insert(key.second);
    for (const auto& [topic, set] : batches) {
        c.first_batch[topic] = *set.begin();
        c.last_batch[topic] = *set.rbegin();
        std::uint64_t prev = 0;
        bool first = true;
        for (auto b : set) {
            if (!first && b != prev + 1) c.batch_gaps[topic].emplace_back(prev, b);
            prev = b;
            first = false;
        }
    }
    c.events = seqs.size();
    if (!seqs.empty()) {
        c.first_seq = seqs.begin()->first;
        c.last_seq = seqs.rbegin()->first;
        auto prev = seqs.begin();
        for (auto it = std::next(seqs.begin()); it != seqs.end(); prev = it++) {
            if (it->first != prev->first + 1)
                c.seq_gaps.push_back({prev->first, it->first, prev->second, it->second});
        }
    }
    return c;
}

std::uint64_t file_size_or_zero(const std::string& path) {
    std::error_code ec;
    auto n = std::filesystem::file_size(path, ec);
    return ec ? 0 : static_cast<std::uint64_t>(n);
}

std::int64_t unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

notify_socket::notify_socket(std::string path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path_.c_str());
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
        throw std::runtime_error("notify_socket: cannot bind " + path_);
    timeval tv{0, 100000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

notify_socket::~notify_socket() {
    ::close(fd_);
}

bool notify_socket::collect_until(const std::function<bool(const std::vector<std::string>&)>& pred,
                                  std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
        char buf[4096];
        auto n = ::recv(fd_, buf, sizeof buf, 0);
        if (n > 0) {
            messages.emplace_back(buf, static_cast<std::size_t>(n));
            times.push_back(std::chrono::steady_clock::now());
        }
        if (pred(messages)) return true;
    }
    return pred(messages);
}

std::vector<std::chrono::steady_clock::time_point> notify_socket::pings_for(
    std::chrono::milliseconds d) {
    const auto from = messages.size();
    collect_until([](const std::vector<std::string>&) { return false; }, d);
    std::vector<std::chrono::steady_clock::time_point> out;
    for (auto i = from; i < messages.size(); ++i) {
        if (messages[i].find("WATCHDOG=1") != std::string::npos) out.push_back(times[i]);
    }
    return out;
}

}  // namespace ferry::test
