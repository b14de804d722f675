#include "tests/support/mqtt_proxy.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "tests/support/paths.hpp"

namespace ferry::test {

namespace {

// One line to 127.0.0.1:port and its one-line answer, within `timeout`.
std::string exchange(std::uint16_t port, const std::string& line,
                     std::chrono::milliseconds timeout) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::runtime_error("mqtt_proxy: socket: " + std::string(strerror(errno)));
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } guard{fd};
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        throw std::runtime_error("mqtt_proxy: control port " + std::to_string(port) + ": " +
                                 strerror(errno));
    const std::string out = line + "\n";
    if (::send(fd, out.data(), out.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(out.size()))
        throw std::runtime_error("mqtt_proxy: send failed: " + std::string(strerror(errno)));
    std::string answer;
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (answer.find('\n') == std::string::npos) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            until - std::chrono::steady_clock::now());
        if (left.count() <= 0) throw std::runtime_error("mqtt_proxy: no answer to '" + line + "'");
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
        char buf[4096];
        const auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) throw std::runtime_error("mqtt_proxy: control connection closed");
        answer.append(buf, static_cast<std::size_t>(n));
    }
    return answer.substr(0, answer.find('\n'));
}

}  // namespace

mqtt_proxy::mqtt_proxy(std::uint16_t upstream_port, std::string log_file)
    : upstream_(upstream_port),
      port_(free_port()),
      control_port_(free_port()),
      dir_(std::make_unique<temp_dir>()),
      log_(log_file.empty() ? dir_->file("mqtt_proxy.log") : std::move(log_file)) {
    proc_ = std::make_unique<process>(
        std::vector<std::string>{
            "/usr/bin/python3", std::string(FERRY_SOURCE_DIR) + "/tests/tools/mqtt_proxy.py",
            "--listen", std::to_string(port_), "--upstream", std::to_string(upstream_), "--control",
            std::to_string(control_port_)},
        log_);
    // The control port opens after the listening one. Probing the listening port would count
    // as a client connection in `stats`.
    const bool up = wait_until(
        [&] { return !proc_->running() || wait_for_port(control_port_, 50ms); }, 20000ms);
    if (!up || !proc_->running()) {
        proc_->stop(SIGTERM, 1000ms);
        std::string text;
        try {
            text = read_file(log_);
        } catch (...) {
        }
        throw std::runtime_error("mqtt_proxy did not start on 127.0.0.1:" + std::to_string(port_) +
                                 "; log:\n" + text);
    }
}

mqtt_proxy::~mqtt_proxy() {
    stop();
}

std::string mqtt_proxy::uri() const {
    return "tcp://127.0.0.1:" + std::to_string(port_);
}

std::string mqtt_proxy::command(const std::string& line) {
    auto answer = exchange(control_port_, line, 5000ms);
    const bool json = !answer.empty() && answer.front() == '{';
    if (answer != "ok" && !json)
        throw std::runtime_error("mqtt_proxy: '" + line + "' answered: " + answer);
    return answer;
}

mqtt_proxy_stats mqtt_proxy::stats() {
    mqtt_proxy_stats s;
    s.json = command("stats");
    const auto j = nlohmann::json::parse(s.json);
    s.connections = j.value("connections", 0ULL);
    s.open = j.value("open", 0ULL);
    s.mode = j.value("mode", std::string());
    for (auto& [k, v] : j.at("to_broker").items())
        s.to_broker[k] = v.get<std::uint64_t>();
    for (auto& [k, v] : j.at("to_client").items())
        s.to_client[k] = v.get<std::uint64_t>();
    s.pubacks_withheld = j.value("pubacks_withheld", 0ULL);
    s.pubacks_refused = j.value("pubacks_refused", 0ULL);
    s.inflight = j.value("inflight", 0ULL);
    s.inflight_max = j.value("inflight_max", 0ULL);
    s.cuts = j.value("cuts", 0ULL);
    s.publishes_refused = j.value("publishes_refused", 0ULL);
    s.mqtt5_refused = j.value("mqtt5_refused", 0ULL);
    s.subscribes_closed = j.value("subscribes_closed", 0ULL);
    return s;
}

void mqtt_proxy::stop() {
    if (proc_) proc_->stop(SIGTERM, 5000ms);
}

}  // namespace ferry::test
