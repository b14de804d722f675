// The HTTP server (Boost.Beast): /metrics, /healthz, /readyz, and JSON routes added with
// add_json() (the read API, /api/v1/*). GET and HEAD only; other methods 405, other paths 404.
//
// It runs on its own io_context and thread, apart from the pipeline: a slow, idle or
// hostile client can only cost this thread's time, never hold up polling or delivery.
//
// Memory budget (docs/SECURITY.md; every refusal counts in
// ferry_input_rejected_total{input="http",reason}):
// - at most k_max_connections open connections. When a new one arrives at the limit, the
//   oldest connection still waiting for its request is closed to make room (idle or slow
//   clients cannot lock out a scrape); when none waits, the new one gets a 503 and is closed
//   at once. Either way: reason too_many_connections.
// - a request is at most k_header_limit of head and k_body_limit of body: larger → 413 and
//   close (too_large). Bytes that are not HTTP → 400 and close (bad_request).
// - k_request_timeout for a whole request, from the moment the server waits for it to its
//   last byte, however slowly it trickles in (slowloris), and for an idle keep-alive
//   connection; then the connection is closed (timeout, unless it was an idle keep-alive one).
//   k_write_timeout for a whole answer, against clients that do not read.
// - a session is freed as soon as its connection closes (nothing per connection remains).
// - answer bodies are shared, not copied, between connections (a JSON route returns a
//   shared_ptr, which the read model caches per version), and the distinct bodies held by
//   unfinished answers total at most k_response_budget: an answer that would go over it is a
//   503 with Retry-After (response_budget). A single body larger than that is never served.
//   Each connection's kernel send buffer is fixed at k_send_buffer (SO_SNDBUF; Linux doubles
//   it), so the kernel too holds little of an answer a client does not read.
//
// Lifetime: start() binds (throws std::runtime_error naming the address if it cannot) and
// spawns the thread; stop() closes everything and joins. Handlers run on that thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

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
    static constexpr int k_max_connections = 256;
    static constexpr std::uint32_t k_header_limit = 8 * 1024;
    static constexpr std::uint64_t k_body_limit = 1024;
    static constexpr std::chrono::seconds k_request_timeout{10};
    static constexpr std::chrono::seconds k_write_timeout{10};
    static constexpr std::size_t k_response_budget = 64u << 20;
    static constexpr int k_send_buffer = 64 * 1024;  // SO_SNDBUF of every connection

    using body_ptr = std::shared_ptr<const std::string>;

    http_server(std::string host, std::uint16_t port, prometheus::Registry& registry,
                std::function<readiness()> ready);
    ~http_server();
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;

    // Serves GET and HEAD of `path` with the JSON `body()` returns (called on the server's
    // thread; it may hand out the same body to many requests). Call before start().
    void add_json(std::string path, std::function<body_ptr()> body);

    // Called on the server's thread before each /metrics collection, so counters that mirror
    // counts kept elsewhere (the bus's atomics) are exact at every scrape. Call before start().
    void on_scrape(std::function<void()> f);

    void start();
    void stop();
    std::uint16_t port() const;  // the bound port (useful with port 0)

    // The seam for tests and the fuzz target (tests/fuzz/http_fuzz.cpp): the bytes a client
    // sent, as one or more pipelined requests, in; every byte the server would send back, out.
    // Same parser limits and answers as a connection, without a socket; stops after an answer
    // that closes the connection, and at an incomplete request (a connection would wait for
    // the rest). Only on a server that is not started (it shares the handlers' state).
    std::string respond(std::string_view raw);

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry
