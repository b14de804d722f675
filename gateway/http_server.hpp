// The HTTP server (Boost.Beast): /metrics, /healthz, /readyz, and JSON routes added with
// add_json() (the read API, /api/v1/*).
//
// It runs on its own io_context and thread, apart from the pipeline: a slow, idle or
// hostile client can only cost this thread's time, never hold up polling or delivery.
// Bounds: request head at most 8 KiB, body at most 1 KiB (larger → 413 and close), 10 s
// to send a whole request (slowloris), at most 256 open connections: when a new one arrives
// at the limit, the oldest connection still waiting for its request is closed to make room,
// so idle or slow clients cannot lock out a scrape. Keep-alive honoured.
//
// Lifetime: start() binds (throws std::runtime_error naming the address if it cannot) and
// spawns the thread; stop() closes everything and joins. Handlers run on that thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace prometheus {
class Registry;
}

namespace ferry {

struct readiness {
    bool ready = false;
    std::string reason;  // why not, for the 503 body
};

class http_server {
  public:
    http_server(std::string host, std::uint16_t port, prometheus::Registry& registry,
                std::function<readiness()> ready);
    ~http_server();
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;

    // Serves GET `path` with the JSON `body()` returns (called on the server's thread).
    // Call before start().
    void add_json(std::string path, std::function<std::string()> body);

    // Called on the server's thread before each /metrics collection, so counters that mirror
    // counts kept elsewhere (the bus's atomics) are exact at every scrape. Call before start().
    void on_scrape(std::function<void()> f);

    void start();
    void stop();
    std::uint16_t port() const;  // the bound port (useful with port 0)

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry
