#include "gateway/http_server.hpp"

#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <list>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <unordered_map>

#include "core/log.hpp"

namespace ferry {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using body_ptr = http_server::body_ptr;

// Answers point into a shared body (a JSON route's cached one, or a fixed text): sending one
// to many clients copies nothing.
using response = http::response<http::span_body<const char>>;
using request_parser = http::request_parser<http::string_body>;

body_ptr text(std::string s) {
    return std::make_shared<const std::string>(std::move(s));
}

void limit(request_parser& p) {
    p.header_limit(http_server::k_header_limit);
    p.body_limit(http_server::k_body_limit);
}

// Why a request failed to parse, as the client is answered: too large (413), not HTTP (400),
// or nothing to answer (the client went away or stopped sending: the connection just closes).
enum class parse_failure { too_large, bad_request, none };

parse_failure classify(const beast::error_code& ec) {
    if (ec == http::error::header_limit || ec == http::error::body_limit ||
        ec == http::error::buffer_overflow)
        return parse_failure::too_large;
    if (ec.category() == http::make_error_code(http::error::bad_method).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message &&
        ec != http::error::need_more)
        return parse_failure::bad_request;
    return parse_failure::none;
}

}  // namespace

struct http_server::impl {
    // An answer and the body it points into. Moving one throws nothing: the fields move
    // noexcept (static_assert below), the span body copies a pointer and a size (Beast does
    // not declare that noexcept); clang-tidy follows Beast's copying branch for allocators
    // that do not propagate, which std::allocator never takes.
    // NOLINTNEXTLINE(bugprone-exception-escape)
    struct reply {
        response res;
        body_ptr body;
    };
    static_assert(std::is_nothrow_move_assignable_v<http::fields>);

    struct session;

    std::string host;
    std::uint16_t port;
    prometheus::Registry& registry;
    std::function<readiness()> ready;
    std::map<std::string, std::function<body_ptr()>, std::less<>> json_routes;
    std::function<void()> before_scrape;
    prometheus::Family<prometheus::Counter>& rejected_family;
    prometheus::Counter& rejected_too_large;
    prometheus::Counter& rejected_too_many_connections;
    prometheus::Counter& rejected_timeout;
    prometheus::Counter& rejected_bad_request;
    prometheus::Counter& rejected_method;
    prometheus::Counter& rejected_not_found;
    prometheus::Counter& rejected_response_budget;
    const body_ptr ok_body = text("ok\n"), ready_body = text("ready\n"),
                   method_body = text("method not allowed\n"), not_found_body = text("not found\n"),
                   too_large_body = text("request too large\n"),
                   bad_request_body = text("bad request\n"), busy_body = text("busy\n");

    // Declared before io: sessions die with io's handlers and take themselves off these.
    int connections = 0;
    std::list<session*> sessions;  // open, in accept order (only touched on the server's thread)
    struct held_body {
        std::size_t bytes;
        int holders;
    };
    std::unordered_map<const std::string*, held_body> held;  // bodies of unfinished answers
    std::size_t held_bytes = 0;

    asio::io_context io;
    tcp::acceptor acceptor{io};
    std::thread thread;
    std::uint16_t bound_port = 0;

    impl(std::string h, std::uint16_t p, prometheus::Registry& r, std::function<readiness()> rd)
        : host(std::move(h)),
          port(p),
          registry(r),
          ready(std::move(rd)),
          rejected_family(prometheus::BuildCounter()
                              .Name("ferry_input_rejected_total")
                              .Help("Inputs refused by a budget or a check, by input and reason")
                              .Register(r)),
          rejected_too_large(rejected("too_large")),
          rejected_too_many_connections(rejected("too_many_connections")),
          rejected_timeout(rejected("timeout")),
          rejected_bad_request(rejected("bad_request")),
          rejected_method(rejected("method_not_allowed")),
          rejected_not_found(rejected("not_found")),
          rejected_response_budget(rejected("response_budget")) {}

    prometheus::Counter& rejected(const std::string& reason) {
        return rejected_family.Add({{"input", "http"}, {"reason", reason}});
    }

    static reply make(unsigned version, bool keep_alive, http::status status,
                      std::string_view content_type, body_ptr body, bool head) {
        reply r;
        r.res.version(version);
        r.res.result(status);
        r.res.keep_alive(keep_alive);
        r.res.set(http::field::server, "ferry");
        r.res.set(http::field::content_type,
                  beast::string_view(content_type.data(), content_type.size()));
        // HEAD: the GET's length, no body (the body already exists: a route's cached one).
        r.res.content_length(body->size());
        if (!head) r.res.body() = {body->data(), body->size()};
        r.body = std::move(body);
        return r;
    }

    // The answer to a request that failed to parse with `f` (too_large or bad_request), counted.
    reply refuse(parse_failure f, unsigned version) {
        auto& counter = f == parse_failure::too_large ? rejected_too_large : rejected_bad_request;
        counter.Increment();
        return make(version == 10 ? 10 : 11, false,
                    f == parse_failure::too_large ? http::status::payload_too_large
                                                  : http::status::bad_request,
                    "text/plain; charset=utf-8",
                    f == parse_failure::too_large ? too_large_body : bad_request_body, false);
    }

    reply answer(const http::request<http::string_body>& req) {
        const bool head = req.method() == http::verb::head;
        auto target = std::string_view(req.target().data(), req.target().size());
        if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
        auto plain = [&](http::status s, body_ptr body) {
            return make(req.version(), req.keep_alive(), s, "text/plain; charset=utf-8",
                        std::move(body), head);
        };
        if (req.method() != http::verb::get && !head) {
            rejected_method.Increment();
            auto r = plain(http::status::method_not_allowed, method_body);
            r.res.set(http::field::allow, "GET, HEAD");
            return r;
        }
        if (target == "/metrics") {
            if (before_scrape) before_scrape();
            return make(req.version(), req.keep_alive(), http::status::ok,
                        "text/plain; version=0.0.4; charset=utf-8",
                        text(prometheus::TextSerializer().Serialize(registry.Collect())), head);
        }
        if (target == "/healthz") return plain(http::status::ok, ok_body);
        if (target == "/readyz") {
            auto r = ready();
            if (r.ready) return plain(http::status::ok, ready_body);
            return plain(http::status::service_unavailable, text("not ready: " + r.reason + "\n"));
        }
        if (auto route = json_routes.find(target); route != json_routes.end())
            return make(req.version(), req.keep_alive(), http::status::ok, "application/json",
                        route->second(), head);
        rejected_not_found.Increment();
        return plain(http::status::not_found, not_found_body);
    }

    // Takes `body` into the response budget for an answer about to be written; false (nothing
    // taken) when it would go over. A body already held by another answer costs nothing more.
    bool hold(const body_ptr& body) {
        auto it = held.find(body.get());
        if (it != held.end()) {
            ++it->second.holders;
            return true;
        }
        if (held_bytes + body->size() > k_response_budget) return false;
        held.emplace(body.get(), held_body{body->size(), 1});
        held_bytes += body->size();
        return true;
    }

    void release(const body_ptr& body) {
        auto it = held.find(body.get());
        if (it == held.end()) return;
        if (--it->second.holders == 0) {
            held_bytes -= it->second.bytes;
            held.erase(it);
        }
    }

    struct session : std::enable_shared_from_this<session> {
        impl* server;  // outlives every session: sessions live in handlers of server->io
        std::list<session*>::iterator place;
        beast::tcp_stream stream;
        // Head and body of one request fit; more is a 413 (buffer_overflow) like the limits.
        beast::flat_buffer buffer{k_header_limit + k_body_limit};
        std::optional<request_parser> parser;
        reply out;
        bool held = false;     // out.body counts in the response budget
        bool waiting = false;  // waiting for a request: may be evicted at the connection limit
        int answered = 0;      // requests answered on this connection

        session(impl* s, tcp::socket sock) : server(s), stream(std::move(sock)) {
            ++server->connections;
            place = server->sessions.insert(server->sessions.end(), this);
        }
        ~session() {
            // Only the budget: `out` goes with the session. (drop_answer's `out = {}` here
            // would be an assignment that may throw, as far as Beast declares it, in a
            // destructor.)
            if (held) server->release(out.body);
            server->sessions.erase(place);
            --server->connections;
        }

        void drop_answer() {
            if (held) server->release(out.body);
            held = false;
            out = {};
        }

        void read() {
            waiting = true;
            parser.emplace();
            limit(*parser);
            stream.expires_after(k_request_timeout);
            http::async_read(stream, buffer, *parser,
                             [self = shared_from_this()](beast::error_code ec, std::size_t) {
                                 self->on_read(ec);
                             });
        }

        void on_read(beast::error_code ec) {
            const bool was_waiting = std::exchange(waiting, false);
            if (ec == beast::error::timeout) {
                // Counted unless it was an idle keep-alive connection after an answer.
                if (parser->got_some() || answered == 0) server->rejected_timeout.Increment();
                return;  // tcp_stream closed the socket
            }
            if (!was_waiting || ec == asio::error::operation_aborted) return;  // evicted
            if (ec) {
                auto f = classify(ec);
                if (f == parse_failure::none) {
                    close();
                    return;
                }
                write(server->refuse(f, parser->get().version()));
                return;
            }
            write(server->answer(parser->get()));
        }

        void write(reply r) {
            drop_answer();
            held = server->hold(r.body);
            if (!held) {
                server->rejected_response_budget.Increment();
                r = make(r.res.version(), false, http::status::service_unavailable,
                         "text/plain; charset=utf-8", server->busy_body, false);
                r.res.set(http::field::retry_after, "1");
                held = server->hold(r.body);  // a few bytes, shared by every busy answer
            }
            out = std::move(r);
            ++answered;
            stream.expires_after(k_write_timeout);
            http::async_write(stream, out.res,
                              [self = shared_from_this()](beast::error_code ec, std::size_t) {
                                  const bool again = !ec && self->out.res.keep_alive();
                                  self->drop_answer();
                                  if (again)
                                      self->read();
                                  else
                                      self->close();
                              });
        }

        void close() {
            waiting = false;
            beast::error_code ignored;
            stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
            stream.close();
        }
    };

    // At the limit, closes the oldest connection that is still waiting for its request.
    bool evict_one() {
        for (auto* s : sessions) {
            if (s->waiting) {
                s->close();
                return true;
            }
        }
        return false;
    }

    void accept() {
        acceptor.async_accept([self = this](beast::error_code ec, tcp::socket sock) {
            if (!self->acceptor.is_open()) return;
            if (!ec) self->admit(std::move(sock));
            self->accept();
        });
    }

    void admit(tcp::socket sock) {
        if (connections >= k_max_connections) {
            rejected_too_many_connections.Increment();
            if (!evict_one()) {
                // Every connection is busy answering: refuse this one now, without a session.
                // One try, never blocking: the answer fits any fresh socket's send buffer.
                static constexpr std::string_view busy =
                    "HTTP/1.1 503 Service Unavailable\r\nServer: ferry\r\nRetry-After: 1\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n";
                beast::error_code ignored;
                sock.non_blocking(true, ignored);
                sock.write_some(asio::buffer(busy.data(), busy.size()), ignored);
                sock.close(ignored);
                return;
            }
        }
        // A fixed send buffer: the kernel holds at most this much of an answer a client does
        // not read (autotuning would let it take up to tcp_wmem's 4 MiB per connection).
        beast::error_code ignored;
        sock.set_option(asio::socket_base::send_buffer_size(k_send_buffer), ignored);
        std::make_shared<session>(this, std::move(sock))->read();
    }
};

http_server::http_server(std::string host, std::uint16_t port, prometheus::Registry& registry,
                         std::function<readiness()> ready)
    : impl_(std::make_unique<impl>(std::move(host), port, registry, std::move(ready))) {}

http_server::~http_server() {
    stop();
}

void http_server::start() {
    auto& s = *impl_;
    beast::error_code ec;
    auto address = asio::ip::make_address(s.host, ec);
    if (ec) throw std::runtime_error("http.listen: '" + s.host + "' is not an IP address");
    tcp::endpoint ep(address, s.port);
    s.acceptor.open(ep.protocol(), ec);
    if (!ec) s.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) s.acceptor.bind(ep, ec);
    if (!ec) s.acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
        throw std::runtime_error("http.listen: cannot listen on " + s.host + ":" +
                                 std::to_string(s.port) + ": " + ec.message());
    }
    s.bound_port = s.acceptor.local_endpoint().port();
    s.accept();
    s.thread = std::thread([&s] { s.io.run(); });
    log::info("http", "listening", {{"address", s.host + ":" + std::to_string(s.bound_port)}});
}

void http_server::stop() {
    auto& s = *impl_;
    if (!s.thread.joinable()) return;
    s.io.stop();
    s.thread.join();
    beast::error_code ignored;
    s.acceptor.close(ignored);
}

void http_server::on_scrape(std::function<void()> f) {
    impl_->before_scrape = std::move(f);
}

void http_server::add_json(std::string path, std::function<body_ptr()> body) {
    impl_->json_routes.emplace(std::move(path), std::move(body));
}

std::uint16_t http_server::port() const {
    return impl_->bound_port;
}

std::string http_server::respond(std::string_view raw) {
    auto& s = *impl_;
    std::ostringstream out;
    while (!raw.empty()) {
        request_parser parser;
        limit(parser);
        beast::error_code ec;
        // The whole rest at once: need_more then means the request is incomplete.
        while (!ec && !parser.is_done() && !raw.empty()) {
            auto used = parser.put(asio::buffer(raw.data(), raw.size()), ec);
            raw.remove_prefix(used);
            if (ec == http::error::need_more && used > 0) ec = {};
        }
        if (!ec && !parser.is_done()) break;  // incomplete: a connection waits for the rest
        impl::reply r;
        if (ec) {
            auto f = classify(ec);
            if (f == parse_failure::none) break;
            r = s.refuse(f, parser.get().version());
        } else {
            r = s.answer(parser.get());
        }
        out << r.res;
        if (!r.res.keep_alive()) break;
    }
    return std::move(out).str();
}

}  // namespace ferry
