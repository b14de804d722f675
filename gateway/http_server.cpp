#include "gateway/http_server.hpp"

#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <list>
#include <map>
#include <stdexcept>
#include <thread>

#include "gateway/log.hpp"

namespace ferry {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr std::uint32_t k_header_limit = 8 * 1024;
constexpr std::uint64_t k_body_limit = 1024;
constexpr auto k_request_timeout = std::chrono::seconds(10);
constexpr int k_max_connections = 256;

}  // namespace

struct http_server::impl {
    std::string host;
    std::uint16_t port;
    prometheus::Registry& registry;
    std::function<readiness()> ready;
    std::atomic<int> connections{0};  // declared before io: sessions die with io's handlers
    std::map<std::string, std::function<std::string()>, std::less<>> json_routes;
    std::function<void()> before_scrape;
    asio::io_context io;
    tcp::acceptor acceptor{io};
    std::thread thread;
    std::uint16_t bound_port = 0;

    impl(std::string h, std::uint16_t p, prometheus::Registry& r, std::function<readiness()> rd)
        : host(std::move(h)), port(p), registry(r), ready(std::move(rd)) {}

    http::response<http::string_body> answer(const http::request<http::string_body>& req) {
        http::response<http::string_body> res;
        res.version(req.version());
        res.keep_alive(req.keep_alive());
        res.set(http::field::server, "ferry");
        res.set(http::field::content_type, "text/plain; charset=utf-8");
        auto target = std::string_view(req.target().data(), req.target().size());
        if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
        if (req.method() != http::verb::get && req.method() != http::verb::head) {
            res.result(http::status::method_not_allowed);
            res.set(http::field::allow, "GET, HEAD");
            res.body() = "method not allowed\n";
        } else if (target == "/metrics") {
            res.result(http::status::ok);
            res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
            if (before_scrape) before_scrape();
            res.body() = prometheus::TextSerializer().Serialize(registry.Collect());
        } else if (target == "/healthz") {
            res.result(http::status::ok);
            res.body() = "ok\n";
        } else if (target == "/readyz") {
            auto r = ready();
            res.result(r.ready ? http::status::ok : http::status::service_unavailable);
            res.body() = r.ready ? "ready\n" : "not ready: " + r.reason + "\n";
        } else if (auto route = json_routes.find(target); route != json_routes.end()) {
            res.result(http::status::ok);
            res.set(http::field::content_type, "application/json");
            res.body() = route->second();
        } else {
            res.result(http::status::not_found);
            res.body() = "not found\n";
        }
        if (req.method() == http::verb::head) {
            res.content_length(res.body().size());
            res.body().clear();
        }
        res.prepare_payload();
        return res;
    }

    struct session : std::enable_shared_from_this<session> {
        impl* server;  // outlives every session: sessions live in handlers of server->io
        beast::tcp_stream stream;
        beast::flat_buffer buffer{k_header_limit + k_body_limit};
        std::optional<http::request_parser<http::string_body>> parser;
        http::response<http::string_body> res;
        bool waiting = false;  // waiting for a request: may be evicted at the connection limit

        session(impl* s, tcp::socket sock) : server(s), stream(std::move(sock)) {
            ++server->connections;
        }
        ~session() { --server->connections; }

        void read() {
            waiting = true;
            parser.emplace();
            parser->header_limit(k_header_limit);
            parser->body_limit(k_body_limit);
            stream.expires_after(k_request_timeout);
            http::async_read(stream, buffer, *parser,
                             [self = shared_from_this()](beast::error_code ec, std::size_t) {
                                 self->on_read(ec);
                             });
        }

        void on_read(beast::error_code ec) {
            waiting = false;
            if (ec == http::error::body_limit || ec == http::error::header_limit) {
                res = {};
                res.result(http::status::payload_too_large);
                res.body() = "request too large\n";
                res.keep_alive(false);
                res.prepare_payload();
                write();
                return;
            }
            if (ec) {
                close();
                return;
            }
            res = server->answer(parser->get());
            write();
        }

        void write() {
            stream.expires_after(k_request_timeout);
            http::async_write(stream, res,
                              [self = shared_from_this()](beast::error_code ec, std::size_t) {
                                  if (ec || !self->res.keep_alive()) {
                                      self->close();
                                      return;
                                  }
                                  self->read();
                              });
        }

        void close() {
            beast::error_code ignored;
            stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
            stream.close();
        }
    };

    // Sessions in accept order (only touched on the server's thread).
    std::list<std::weak_ptr<session>> sessions;

    // At the limit, closes the oldest connection that is still waiting for its request.
    bool evict_one() {
        for (auto it = sessions.begin(); it != sessions.end();) {
            auto s = it->lock();
            if (!s) {
                it = sessions.erase(it);
                continue;
            }
            if (s->waiting) {
                sessions.erase(it);
                s->close();
                return true;
            }
            ++it;
        }
        return false;
    }

    void accept() {
        acceptor.async_accept([self = this](beast::error_code ec, tcp::socket sock) {
            if (!self->acceptor.is_open()) return;
            if (!ec) {
                if (self->connections.load() >= k_max_connections && !self->evict_one()) {
                    beast::error_code ignored;
                    sock.close(ignored);
                } else {
                    auto s = std::make_shared<session>(self, std::move(sock));
                    self->sessions.push_back(s);
                    s->read();
                }
            }
            self->accept();
        });
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

void http_server::add_json(std::string path, std::function<std::string()> body) {
    impl_->json_routes.emplace(std::move(path), std::move(body));
}

std::uint16_t http_server::port() const {
    return impl_->bound_port;
}

}  // namespace ferry
