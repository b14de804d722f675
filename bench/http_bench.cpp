// The HTTP server's memory and CPU budget, measured on a running `ferry` (issue 14):
//   churn   — RSS growth over N connect–GET–close cycles after a warm-up (the acceptance
//             figure: 100,000 closed connections grow RSS by < 1 MiB);
//   values  — ferry's CPU time per GET and per HEAD of /api/v1/values with `points` points
//             (a device that polls rarely, so the read model does not change meanwhile);
//   unread  — RSS growth while `clients` connections each asked for /api/v1/values and read
//             nothing (their answers wait in the server: one shared body, or one copy each).
//
// usage: bench_http [cycles=100000] [points=10000] [requests=200] [clients=200]
// Not a test: ./scripts/bench runs it and prints the numbers.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <thread>

#include "tests/support/harness.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;

namespace {

// One request on its own connection; reads the answer to the end (the server closes).
std::size_t request(std::uint16_t port, const std::string& method, const std::string& path) {
    int fd = connect_loopback(port);
    if (fd < 0) return 0;
    std::string req = method + " " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    (void)::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    std::size_t total = 0;
    char buf[65536];
    for (;;) {
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        total += static_cast<std::size_t>(n);
    }
    ::close(fd);
    return total;
}

double mib(std::int64_t kib) {
    return static_cast<double>(kib) / 1024.0;
}

}  // namespace

int main(int argc, char** argv) {
    const int cycles = argc > 1 ? std::atoi(argv[1]) : 100000;
    const int points = argc > 2 ? std::atoi(argv[2]) : 10000;
    const int requests = argc > 3 ? std::atoi(argv[3]) : 200;
    const int clients = argc > 4 ? std::atoi(argv[4]) : 200;

    temp_dir dir;
    mosquitto broker;
    modbus_sim sim(0, {"coil:0=bool:1"});
    const auto http_port = free_port();
    std::string cfg = "gateway: { id: bench-http, data_dir: " + dir.path() +
                      " }\nhttp: { listen: 127.0.0.1:" + std::to_string(http_port) +
                      " }\ndevices:\n  - id: plc\n    driver: modbus_tcp\n    host: 127.0.0.1\n"
                      "    port: " +
                      std::to_string(sim.port()) + "\n    poll_interval: 1h\n    points:\n";
    for (int i = 0; i < points; ++i)
        cfg += "      - { name: c" + std::to_string(i) +
               ", table: coil, address: " + std::to_string(i) + ", type: bool }\n";
    cfg += "rules: [ { name: all, match: \"#\" } ]\nupstream: { mqtt: { uris: [\"" + broker.uri() +
           "\"] }, spool: { fsync: never } }\n";
    write_file(dir.file("ferry.yaml"), cfg);
    process ferry({FERRY_BINARY, "run", "-c", dir.file("ferry.yaml")}, dir.file("ferry.log"));
    if (!wait_until(
            [&] {
                auto r = http_get(http_port, "/api/v1/values", 10000ms);
                return r.status == 200 && r.body.size() > 2;
            },
            60s)) {
        std::fprintf(stderr, "no values; see %s\n", dir.file("ferry.log").c_str());
        return 3;
    }
    const auto pid = ferry.pid();
    const std::size_t body = http_get(http_port, "/api/v1/values", 10000ms).body.size();

    // churn
    for (int i = 0; i < 5000; ++i)
        (void)http_get(http_port, "/healthz");
    const auto rss0 = static_cast<std::int64_t>(rss_kib(pid));
    const auto t0 = std::chrono::steady_clock::now();
    int failed = 0;
    for (int i = 0; i < cycles; ++i)
        if (http_get(http_port, "/healthz").status != 200) ++failed;
    const double churn_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::this_thread::sleep_for(1s);
    const auto rss1 = static_cast<std::int64_t>(rss_kib(pid));
    std::printf("http: %d points, /api/v1/values body %zu bytes\n", points, body);
    std::printf(
        "  churn: %d connect-GET-close cycles in %.1f s (%d failed): RSS %.2f -> %.2f MiB, "
        "%+.2f MiB (%.1f bytes a connection)\n",
        cycles, churn_s, failed, mib(rss0), mib(rss1), mib(rss1 - rss0),
        1024.0 * static_cast<double>(rss1 - rss0) / cycles);

    // values: CPU per request
    for (const char* method : {"GET", "HEAD"}) {
        const auto c0 = cpu_seconds(pid);
        std::size_t bytes = 0;
        for (int i = 0; i < requests; ++i)
            bytes += request(http_port, method, "/api/v1/values");
        const auto c1 = cpu_seconds(pid);
        std::printf("  values: %d x %-4s: ferry CPU %.1f us a request, %zu bytes a response\n",
                    requests, method, 1e6 * (c1 - c0) / requests,
                    bytes / static_cast<std::size_t>(requests));
    }

    // unread: many clients asking for the values and reading nothing
    const auto rss2 = static_cast<std::int64_t>(rss_kib(pid));
    // A small receive window keeps the kernel from taking the whole answer off the server's
    // hands: what the client does not read stays in ferry.
    std::vector<int> fds;
    const std::string req = "GET /api/v1/values HTTP/1.1\r\nHost: x\r\n\r\n";
    for (int i = 0; i < clients; ++i) {
        int fd = connect_loopback(http_port, 4096);
        if (fd < 0) continue;
        (void)::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
        fds.push_back(fd);
    }
    std::this_thread::sleep_for(3s);
    const auto rss3 = static_cast<std::int64_t>(rss_kib(pid));
    int answered = 0;
    for (int fd : fds) {
        char c;
        if (::recv(fd, &c, 1, MSG_DONTWAIT) == 1) ++answered;
        ::close(fd);
    }
    std::printf(
        "  unread: %zu clients wait for /api/v1/values (%d got a first byte): RSS %.2f -> "
        "%.2f MiB, %+.2f MiB\n",
        fds.size(), answered, mib(rss2), mib(rss3), mib(rss3 - rss2));
    return 0;
}
