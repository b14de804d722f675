// The broker port probe (see port_probe.hpp).
#include "upstream/port_probe.hpp"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <mutex>
#include <system_error>
#include <thread>

namespace ferry::upstream {

namespace {

constexpr std::size_t k_max_addresses = 4;  // per host: IPv4 and IPv6 of a dual-stack name

struct address {
    sockaddr_storage sa{};
    socklen_t len = 0;
};

std::vector<address> lookup(const broker_endpoint& ep, int flags) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = flags | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    std::vector<address> out;
    if (::getaddrinfo(ep.host.c_str(), std::to_string(ep.port).c_str(), &hints, &res) != 0)
        return out;
    for (auto* ai = res; ai && out.size() < k_max_addresses; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
        address a;
        std::memcpy(&a.sa, ai->ai_addr, ai->ai_addrlen);
        a.len = ai->ai_addrlen;
        out.push_back(a);
    }
    ::freeaddrinfo(res);
    return out;
}

// A name's addresses, written by a resolver thread that may outlive the probe.
struct resolution {
    std::mutex mu;
    bool busy = false;
    std::vector<address> addrs;
};

enum class outcome { pending, open, closed };

// Where a non-blocking connect stands, without waiting.
outcome judge(int fd, short revents) {
    if (!(revents & (POLLOUT | POLLERR | POLLHUP))) return outcome::pending;
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return outcome::closed;
    return err == 0 ? outcome::open : outcome::closed;
}

}  // namespace

std::optional<broker_endpoint> parse_broker_uri(const std::string& uri) {
    static const std::pair<const char*, std::uint16_t> schemes[] = {
        {"tcp://", 1883},   {"mqtt://", 1883}, {"ssl://", 8883},
        {"mqtts://", 8883}, {"ws://", 80},     {"wss://", 443}};
    std::string_view rest;
    std::uint16_t port = 0;
    for (const auto& [prefix, default_port] : schemes) {
        if (std::string_view(uri).starts_with(prefix)) {
            rest = std::string_view(uri).substr(std::strlen(prefix));
            port = default_port;
            break;
        }
    }
    if (port == 0) return std::nullopt;
    rest = rest.substr(0, rest.find('/'));  // a websocket path
    broker_endpoint ep;
    std::string_view port_text;
    if (rest.starts_with('[')) {  // [IPv6]:port
        const auto close = rest.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        ep.host = std::string(rest.substr(1, close - 1));
        rest = rest.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') return std::nullopt;
            port_text = rest.substr(1);
        }
    } else {
        const auto colon = rest.rfind(':');
        ep.host = std::string(rest.substr(0, colon));
        if (colon != std::string_view::npos) port_text = rest.substr(colon + 1);
    }
    if (ep.host.empty()) return std::nullopt;
    if (!port_text.empty()) {
        unsigned value = 0;
        const auto [end, ec] =
            std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
        if (ec != std::errc{} || end != port_text.data() + port_text.size() || value == 0 ||
            value > 65535)
            return std::nullopt;
        port = static_cast<std::uint16_t>(value);
    }
    ep.port = port;
    return ep;
}

struct port_probe::target {
    std::optional<broker_endpoint> ep;
    std::vector<address> numeric;       // a numeric host, looked up once
    std::shared_ptr<resolution> names;  // a host name: the resolver thread's result
    // The round in progress: sockets still connecting, and whether one has connected.
    bool probing = false;
    std::vector<int> sockets;
    bool seen_closed = false;  // since reset()
    bool settled = false;      // seen open without an edge: not probed again until reset()

    ~target() { close_all(); }

    void close_all() {
        for (int fd : sockets)
            ::close(fd);
        sockets.clear();
        probing = false;
    }

    void resolve() {
        if (!ep || !numeric.empty()) return;
        if (!names) {
            numeric = lookup(*ep, AI_NUMERICHOST);
            if (!numeric.empty()) return;
            names = std::make_shared<resolution>();
        }
        {
            std::lock_guard lk(names->mu);
            if (names->busy) return;
            names->busy = true;
        }
        // Detached on purpose: getaddrinfo cannot be interrupted, and the sender thread must
        // not wait for a hung resolver (on stop() neither). The thread holds what it writes.
        try {
            std::thread([r = names, e = *ep] {
                auto found = lookup(e, 0);
                std::lock_guard lk(r->mu);
                if (!found.empty()) r->addrs = std::move(found);
                r->busy = false;
            }).detach();
        } catch (const std::system_error&) {
            std::lock_guard lk(names->mu);
            names->busy = false;
        }
    }

    std::vector<address> addresses() const {
        if (!numeric.empty() || !names) return numeric;
        std::lock_guard lk(names->mu);
        return names->addrs;
    }

    // Starts a round: a connect to each address. Returns false when there is nothing to probe.
    bool start() {
        const auto addrs = addresses();
        if (addrs.empty()) return false;
        probing = true;
        for (const auto& a : addrs) {
            const int fd = ::socket(a.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) continue;
            if (::connect(fd, reinterpret_cast<const sockaddr*>(&a.sa), a.len) == 0 ||
                errno == EINPROGRESS)
                sockets.push_back(fd);
            else
                ::close(fd);  // refused at once, or no route: closed, for this address
        }
        return true;
    }
};

port_probe::port_probe(const std::vector<std::string>& uris) {
    for (const auto& uri : uris) {
        auto t = std::make_unique<target>();
        t->ep = parse_broker_uri(uri);
        targets_.push_back(std::move(t));
    }
}

port_probe::~port_probe() = default;

void port_probe::reset() {
    for (auto& t : targets_) {
        t->close_all();
        t->seen_closed = false;
        t->settled = false;
        t->resolve();
    }
}

std::optional<std::size_t> port_probe::round(std::chrono::milliseconds settle) {
    std::optional<std::size_t> edge;
    // A uri is open when one of its addresses connected, closed when none did and none is
    // still connecting (with `final`: still connecting counts as closed, a silent host).
    auto conclude = [&](std::size_t i, bool final) {
        auto& t = *targets_[i];
        if (!t.probing) return;
        if (!t.sockets.empty() && !final) return;
        t.close_all();
        t.seen_closed = true;
    };
    auto open = [&](std::size_t i) {
        auto& t = *targets_[i];
        t.close_all();
        if (t.seen_closed) {
            if (!edge) edge = i;
        } else {
            // Open from the start: the broker is there and refused us for another reason.
            // Probing it again would only add connections to a broker that says no.
            t.settled = true;
        }
    };
    // Waits up to `timeout` for the sockets still connecting and judges them.
    auto judge_all = [&](std::chrono::milliseconds timeout, bool final) {
        const auto until = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            std::vector<pollfd> fds;
            for (const auto& t : targets_)
                for (int fd : t->sockets)
                    fds.push_back({fd, POLLOUT, 0});
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                until - std::chrono::steady_clock::now());
            int n = 0;
            if (!fds.empty()) {
                do {
                    n = ::poll(fds.data(), fds.size(),
                               static_cast<int>(std::max<std::int64_t>(0, left.count())));
                } while (n < 0 && errno == EINTR);  // else a connected socket would count closed
            }
            std::size_t k = 0;
            for (std::size_t i = 0; i < targets_.size(); ++i) {
                auto& t = *targets_[i];
                bool connected = false;
                std::vector<int> still;
                for (int fd : t.sockets) {
                    const auto o = judge(fd, n > 0 ? fds[k].revents : 0);
                    ++k;
                    if (o == outcome::open) connected = true;
                    if (o == outcome::pending)
                        still.push_back(fd);
                    else
                        ::close(fd);
                }
                t.sockets = std::move(still);
                if (connected)
                    open(i);
                else
                    conclude(i, final);
            }
            const bool waiting = std::any_of(targets_.begin(), targets_.end(),
                                             [](const auto& t) { return !t->sockets.empty(); });
            if (!waiting || final || left.count() <= 0) return;
        }
    };
    // The previous round's stragglers first: connected by now, or closed.
    judge_all(std::chrono::milliseconds(0), true);
    if (edge) return edge;
    bool started = false;
    for (auto& t : targets_) {
        if (t->settled || !t->ep) continue;
        t->close_all();
        started = t->start() || started;
    }
    if (started) judge_all(settle, false);
    return edge;
}

}  // namespace ferry::upstream
