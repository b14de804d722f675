// The HTTP endpoints of a running `ferry`: what an operator and Prometheus see.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/support/ferry_run.hpp"

using namespace ferry::test;

namespace {

// The per-run values of tests/configs/http.yaml and http_big.yaml.
ferry_env env_of(const temp_dir& dir, std::uint16_t http_port, std::uint16_t modbus_port,
                 const std::string& broker_uri, const std::string& poll = {}) {
    auto env = ferry_vars(dir.path(), http_port, modbus_port, broker_uri);
    if (!poll.empty()) env["POLL"] = poll;
    return env;
}

// tests/configs/http_big.yaml with its 10,000 coils c0..c9999 appended, as dir/ferry.yaml.
std::string big_device_config(const temp_dir& dir) {
    std::string points;
    for (int i = 0; i < 10000; ++i)
        points += "      - { name: c" + std::to_string(i) +
                  ", table: coil, address: " + std::to_string(i) + ", type: bool }\n";
    return copy_config(dir, "http_big", points);
}

int open_idle_connection(std::uint16_t port) {
    return connect_loopback(port);
}

// A running ferry with one Modbus device, a broker and HTTP on http_port, constructed once
// /readyz answers 200. The device: holding register 0 = 5 (tests/configs/http.yaml), or with
// `big_poll` the 10,000 coils of big_device_config polled at that interval.
struct running_ferry {
    modbus_sim sim;
    mosquitto broker;
    temp_dir dir;
    std::uint16_t http_port = free_port();
    std::unique_ptr<process> ferry;
    explicit running_ferry(std::vector<std::string> registers = {"holding:0=u16:5"},
                           const std::string& big_poll = {})
        : sim(0, std::move(registers)) {
        ferry = ferry_process(big_poll.empty() ? config_path("http") : big_device_config(dir),
                              dir.file("ferry.log"),
                              env_of(dir, http_port, sim.port(), broker.uri(), big_poll));
        wait_ready(*ferry, http_port, 20s);
    }
};

// Sends `request` on a fresh connection and returns everything the server sends until it
// closes the connection, `until` appears in what arrived, or 5 s pass. The client then closes.
std::string send_raw(std::uint16_t port, const std::string& request,
                     const std::string& until = {}) {
    int fd = open_idle_connection(port);
    if (fd < 0) return {};
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (!request.empty()) (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
    std::string got;
    char buf[4096];
    while (until.empty() || got.find(until) == std::string::npos) {
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        got.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return got;
}

int status_of(const std::string& raw) {
    return raw.rfind("HTTP/1.", 0) == 0 && raw.size() >= 12 ? std::atoi(raw.c_str() + 9) : 0;
}

double rejected(std::uint16_t port, const std::string& reason) {
    return metric_value(port,
                        "ferry_input_rejected_total{input=\"http\",reason=\"" + reason + "\"}", 0);
}

}  // namespace

TEST_CASE(
    "/metrics, /healthz, /readyz answer; unknown paths 404; the read API says it is not built") {
    running_ferry f;
    const auto http_port = f.http_port;
    CHECK(http_get(http_port, "/healthz").status == 200);
    // Wait until some batches were delivered, then read the counters.
    std::string m;
    REQUIRE(wait_until(
        [&] {
            m = http_get(http_port, "/metrics").body;
            return metric(m, "ferry_mqtt_published_total{result=\"ok\"}").value_or(0) >= 3;
        },
        10s));
    CHECK(m.find("ferry_build_info{arch=\"") != std::string::npos);
    CHECK(metric(m, "ferry_device_up{device=\"boiler1\"}") == 1.0);
    CHECK(metric(m, "ferry_driver_polls_total{device=\"boiler1\",result=\"ok\"}").value_or(0) >= 3);
    CHECK(metric(m, "ferry_mqtt_connected") == 1.0);
    CHECK(metric(m, "ferry_rule_events_total{outcome=\"passed\",rule=\"all\"}").value_or(0) >= 3);
    CHECK(metric(m, "ferry_spool_dropped_total{reason=\"drop_oldest\"}").value_or(-1) == 0.0);
    CHECK(m.find("ferry_driver_poll_seconds_bucket{device=\"boiler1\",le=\"0.001\"}") !=
          std::string::npos);
    CHECK(http_get(http_port, "/nope").status == 404);
    CHECK(http_get(http_port, "/api/v1/nope").status == 404);
    CHECK(f.ferry->stop() == 0);
}

TEST_CASE(
    "/api/v1/values matches the simulator; /api/v1/devices shows a device down once it stops") {
    auto sim = std::make_unique<modbus_sim>(0, std::vector<std::string>{"holding:0=u16:4242"});
    mosquitto broker;
    temp_dir dir;
    auto http_port = free_port();
    auto ferry_p = ferry_process(config_path("http"), dir.file("ferry.log"),
                                 env_of(dir, http_port, sim->port(), broker.uri()));
    auto& ferry = *ferry_p;
    nlohmann::json values;
    REQUIRE(wait_until(
        [&] {
            auto r = http_get(http_port, "/api/v1/values");
            if (r.status != 200) return false;
            values = nlohmann::json::parse(r.body);
            return values.size() == 1;
        },
        10s));
    CHECK(values[0]["device"] == "boiler1");
    CHECK(values[0]["tag"] == "t");
    CHECK(values[0]["value"] == 4242);
    CHECK(values[0]["quality"] == "good");
    CHECK(values[0]["seq"].get<std::uint64_t>() >= 1);
    auto devices = nlohmann::json::parse(http_get(http_port, "/api/v1/devices").body);
    REQUIRE(devices.size() == 1);
    CHECK(devices[0]["id"] == "boiler1");
    CHECK(devices[0]["driver"] == "modbus_tcp");
    CHECK(devices[0]["state"] == "up");
    CHECK(devices[0]["last_ok_ts"].is_number());
    sim.reset();  // the device goes away
    // The newest value turns bad at once; the device is down (in the API as in
    // ferry_device_up, from the driver's one report) after down_after (3) silent polls of
    // 100 ms (plus their 500 ms timeouts).
    REQUIRE(wait_until(
        [&] {
            auto v = nlohmann::json::parse(http_get(http_port, "/api/v1/values").body);
            return v[0]["quality"] == "bad";
        },
        10s));
    auto after = nlohmann::json::parse(http_get(http_port, "/api/v1/values").body);
    CHECK(after[0]["value"].is_null());
    REQUIRE(wait_until(
        [&] {
            auto d = nlohmann::json::parse(http_get(http_port, "/api/v1/devices").body);
            return d[0]["state"] == "down";
        },
        10s));
    auto d = nlohmann::json::parse(http_get(http_port, "/api/v1/devices").body);
    CHECK(d[0]["errors"].get<int>() >= 1);
    const auto m = http_get(http_port, "/metrics").body;
    CHECK(metric(m, "ferry_device_up{device=\"boiler1\"}") == 0.0);
    CHECK(ferry.stop() == 0);
}

TEST_CASE("idle connections, an oversized head and a 10 MB request do not stop /metrics") {
    running_ferry f;
    const auto http_port = f.http_port;
    // 1,000 idle connections: more than the server keeps (256); the oldest idle ones are
    // closed to make room, so a scrape still gets in.
    std::vector<int> idle;
    for (int i = 0; i < 1000; ++i) {
        int fd = open_idle_connection(http_port);
        if (fd >= 0) idle.push_back(fd);
    }
    CHECK(idle.size() == 1000);
    for (int i = 0; i < 5; ++i)
        CHECK(http_get(http_port, "/metrics").status == 200);
    // A request head far over the limit is refused, and the server goes on.
    int fd = open_idle_connection(http_port);
    REQUIRE(fd >= 0);
    std::string big = "GET /metrics HTTP/1.1\r\nX-Big: " + std::string(1 << 20, 'a') + "\r\n\r\n";
    (void)::send(fd, big.data(), big.size(), MSG_NOSIGNAL);
    char buf[256] = {};
    auto n = ::recv(fd, buf, sizeof buf - 1, 0);
    CHECK(n > 0);
    CHECK(std::string(buf).rfind("HTTP/1.1 413", 0) == 0);
    ::close(fd);
    CHECK(http_get(http_port, "/metrics").status == 200);
    // A 10 MB request (a body far over the 1 KiB limit), pushed as fast as the socket takes
    // it: refused (413 or the connection closed), while /metrics answers and polls go on.
    const auto polls_before =
        metric_value(http_port, "ferry_driver_polls_total{device=\"boiler1\",result=\"ok\"}", 0);
    fd = open_idle_connection(http_port);
    REQUIRE(fd >= 0);
    const std::size_t ten_mb = 10u << 20;
    std::string head =
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(ten_mb) +
        "\r\n\r\n";
    std::size_t pushed = 0;
    std::thread pusher([&] {
        std::string chunk(64 * 1024, 'b');
        if (::send(fd, head.data(), head.size(), MSG_NOSIGNAL) < 0) return;
        while (pushed < ten_mb) {
            auto w = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
            if (w <= 0) return;  // the server closed it
            pushed += static_cast<std::size_t>(w);
        }
    });
    for (int i = 0; i < 5; ++i)
        CHECK(http_get(http_port, "/metrics").status == 200);
    pusher.join();
    std::memset(buf, 0, sizeof buf);
    n = ::recv(fd, buf, sizeof buf - 1, 0);
    MESSAGE("10 MB request: " << pushed << " body bytes taken before the server refused it");
    CHECK(pushed < ten_mb);  // refused before it was all read
    if (n > 0) CHECK(std::string(buf).rfind("HTTP/1.1 413", 0) == 0);
    ::close(fd);
    CHECK(wait_until(
        [&] {
            return metric_value(http_port,
                                "ferry_driver_polls_total{device=\"boiler1\",result=\"ok\"}",
                                0) >= polls_before + 3;
        },
        5s));
    for (int i : idle)
        ::close(i);
    CHECK(f.ferry->stop() == 0);
}

TEST_CASE(
    "slowloris: partial requests are cut off after the request timeout; /metrics answers "
    "meanwhile") {
    running_ferry f;
    const auto http_port = f.http_port;
    std::vector<int> slow;
    for (int i = 0; i < 50; ++i) {
        int fd = open_idle_connection(http_port);
        REQUIRE(fd >= 0);
        std::string part = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        (void)::send(fd, part.data(), part.size(), MSG_NOSIGNAL);
        slow.push_back(fd);
    }
    auto began = std::chrono::steady_clock::now();
    // Trickle one byte per second on each: the request never completes.
    bool all_closed = false;
    while (std::chrono::steady_clock::now() - began < 15s && !all_closed) {
        CHECK(http_get(http_port, "/metrics").status == 200);
        all_closed = true;
        for (int fd : slow) {
            (void)::send(fd, "a", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            char c;
            auto n = ::recv(fd, &c, 1, MSG_DONTWAIT);
            if (!(n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))) all_closed = false;
        }
        std::this_thread::sleep_for(1s);
    }
    auto took = std::chrono::steady_clock::now() - began;
    CHECK(all_closed);  // the server gave up on every one of them
    CHECK(took >= 9s);  // not before the 10 s request timeout (less the setup time)
    CHECK(rejected(http_port, "timeout") >= 50);
    for (int fd : slow)
        ::close(fd);
    CHECK(f.ferry->stop() == 0);
}

TEST_CASE("/api/v1/values holds every point of a 10,000-point device, none dropped") {
    // One poll of this device is one publish of 10,000 events on the bus: the read model's
    // queue must take it whole (it used to hold 8,192 and dropped the oldest of each poll).
    running_ferry f({"coil:9999=bool:1", "coil:0=bool:1"}, "500ms");
    const auto http_port = f.http_port;
    nlohmann::json values;
    const bool all = wait_until(
        [&] {
            auto r = http_get(http_port, "/api/v1/values", 5000ms);
            if (r.status != 200) return false;
            values = nlohmann::json::parse(r.body, nullptr, false);
            return values.is_array() && values.size() == 10000;
        },
        20s);
    CHECK_MESSAGE(all, "values: " << (values.is_array() ? values.size() : 0));
    REQUIRE(wait_until(
        [&] {
            return metric_value(http_port, "ferry_driver_polls_total{device=\"plc\",result=\"ok\"}",
                                0) >= 3;
        },
        20s));
    for (const auto& v : values) {
        if (v["tag"] == "c0" || v["tag"] == "c9999") CHECK(v["value"] == true);
        if (v["tag"] == "c5000") CHECK(v["value"] == false);
    }
    CHECK(metric_value(http_port, "ferry_bus_dropped_total{reason=\"drop_oldest\"}") == 0);
    CHECK(f.ferry->stop() == 0);
}

TEST_CASE(
    "closed connections free their sessions at once: connect-GET-close cycles do not grow RSS") {
    // Issue 14 item 2: every closed connection used to leave its session behind until 256 were
    // open at once (20,000 cycles: +11 MiB). Three ways to end a connection, in turn: the
    // server closes (Connection: close), the client closes after a keep-alive answer, the
    // client closes before sending anything. bench/http_bench.cpp measures 100,000 cycles.
    running_ferry f;
    const auto http_port = f.http_port;
    int failed = 0;
    auto cycles = [&](int n) {
        for (int i = 0; i < n; ++i) {
            switch (i % 3) {
                case 0:
                    if (http_get(http_port, "/healthz").status != 200) ++failed;
                    break;
                case 1:
                    if (status_of(send_raw(http_port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                                           "\r\n\r\nok\n")) != 200)
                        ++failed;
                    break;
                default:
                    if (int fd = open_idle_connection(http_port); fd >= 0)
                        ::close(fd);
                    else
                        ++failed;
            }
        }
    };
    cycles(3000);  // warm-up: the allocator's arenas and the pipeline settle
    const auto before = rss_kib(f.ferry->pid());
    const int n = 20000;
    cycles(n);
    // The server frees a session when its handlers finish; give the last ones a moment.
    std::this_thread::sleep_for(500ms);
    const auto after = rss_kib(f.ferry->pid());
    MESSAGE(n << " connect-GET-close cycles: RSS " << before << " KiB -> " << after << " KiB");
    CHECK(failed == 0);
    CHECK(after < before + 1024);  // < 1 MiB (the leak was ~570 bytes a connection)
    CHECK(http_get(http_port, "/metrics").status == 200);
    CHECK(f.ferry->stop() == 0);
}

TEST_CASE(
    "refused requests are answered and counted: 400, 405, 404, 413, HEAD, the connection limit") {
    running_ferry f;
    const auto http_port = f.http_port;
    REQUIRE(wait_until([&] { return http_get(http_port, "/api/v1/values").body.size() > 2; }, 10s));

    // Not HTTP at all: 400 and closed, counted.
    auto bad = send_raw(http_port, "HELLO THERE\r\n\r\n");
    CHECK(status_of(bad) == 400);
    static constexpr char nul_in_name[] = "GET / HTTP/1.1\r\nHost\0: x\r\n\r\n";
    CHECK(status_of(send_raw(http_port, std::string(nul_in_name, sizeof nul_in_name - 1))) == 400);
    CHECK(rejected(http_port, "bad_request") >= 2);

    // Methods other than GET and HEAD: 405 with Allow, on known and unknown paths alike.
    for (const char* m : {"POST", "DELETE", "BREW", "OPTIONS"}) {
        auto r =
            send_raw(http_port,
                     std::string(m) + " /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        CHECK_MESSAGE(status_of(r) == 405, m);
        CHECK(r.find("\r\nAllow: GET, HEAD\r\n") != std::string::npos);
    }
    CHECK(rejected(http_port, "method_not_allowed") >= 4);
    CHECK(status_of(send_raw(
              http_port,
              "GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 404);
    CHECK(rejected(http_port, "not_found") >= 1);

    // A head over 8 KiB: 413, counted.
    CHECK(status_of(send_raw(http_port, "GET /metrics HTTP/1.1\r\nX-Big: " +
                                            std::string(9000, 'a') + "\r\n\r\n")) == 413);
    CHECK(rejected(http_port, "too_large") >= 1);

    // HEAD answers the GET's length and sends no body.
    auto get =
        send_raw(http_port, "GET /api/v1/values HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    auto head =
        send_raw(http_port, "HEAD /api/v1/values HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    REQUIRE(status_of(get) == 200);
    REQUIRE(status_of(head) == 200);
    const auto body_len = get.size() - (get.find("\r\n\r\n") + 4);
    CHECK(head.find("\r\nContent-Length: " + std::to_string(body_len) + "\r\n") !=
          std::string::npos);
    CHECK(head.substr(head.find("\r\n\r\n") + 4).empty());

    // More connections than the limit (256): the oldest idle ones are closed to make room,
    // counted, and a scrape still gets in.
    std::vector<int> idle;
    for (int i = 0; i < 300; ++i)
        if (int fd = open_idle_connection(http_port); fd >= 0) idle.push_back(fd);
    CHECK(http_get(http_port, "/metrics").status == 200);
    CHECK(rejected(http_port, "too_many_connections") >= 300 + 1 - 256);
    for (int fd : idle)
        ::close(fd);
    CHECK(http_get(http_port, "/healthz").status == 200);
    CHECK(f.ferry->stop() == 0);
}

TEST_CASE(
    "256 clients not reading a 1 MB /api/v1/values share one body; one more connection gets a 503 "
    "at once") {
    // Issue 14 item 8 and the connection budget: every client used to get its own copy of the
    // body (256 x ~0.6 MB held while they did not read), and a connection past the limit with
    // no idle one to evict was closed without an answer.
    // Polled once: the read model does not change while the clients wait.
    running_ferry f({"coil:0=bool:1"}, "1h");
    const auto http_port = f.http_port;
    REQUIRE(wait_until(
        [&] { return http_get(http_port, "/api/v1/values", 5000ms).body.size() > 100000; }, 30s));
    const auto rss_before = rss_kib(f.ferry->pid());
    std::vector<int> slow;
    const std::string req = "GET /api/v1/values HTTP/1.1\r\nHost: x\r\n\r\n";
    for (int i = 0; i < 256; ++i) {
        int fd = connect_loopback(http_port, 4096);  // a small window: the answer stays in ferry
        REQUIRE(fd >= 0);
        (void)::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
        slow.push_back(fd);
    }
    // Every one is being answered (its first bytes arrived) and none reads on.
    CHECK(wait_until(
        [&] {
            for (int fd : slow) {
                char c;
                if (::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) != 1) return false;
            }
            return true;
        },
        5s));
    const auto rss_held = rss_kib(f.ferry->pid());
    const auto refused = send_raw(http_port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    MESSAGE("256 unread answers: RSS " << rss_before << " KiB -> " << rss_held
                                       << " KiB; connection 257: " << refused.substr(0, 12));
    CHECK(status_of(refused) == 503);
    CHECK(rss_held < rss_before + 32 * 1024);
    for (int fd : slow)
        ::close(fd);
    REQUIRE(wait_until([&] { return http_get(http_port, "/healthz").status == 200; }, 10s));
    CHECK(rejected(http_port, "too_many_connections") >= 1);
    CHECK(f.ferry->stop() == 0);
}
