// The HTTP server's request handling without a socket (http_server::respond, the fuzz seam)
// and the read model's shared JSON snapshots.
#include <doctest/doctest.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <memory>
#include <string>

#include "gateway/http_server.hpp"
#include "gateway/read_model.hpp"

using namespace ferry;

namespace {

struct server_fixture {
    prometheus::Registry registry;
    http_server server{"127.0.0.1", 0, registry, [] { return readiness{false, "starting"}; }};
    http_server::body_ptr values = std::make_shared<const std::string>(R"([{"tag":"t"}])");
    int built = 0;
    server_fixture() {
        server.add_json("/api/v1/values", [this] {
            ++built;
            return values;
        });
    }
    std::string metrics() { return prometheus::TextSerializer().Serialize(registry.Collect()); }
    bool counted(const std::string& reason, int n) {
        return metrics().find("ferry_input_rejected_total{input=\"http\",reason=\"" + reason +
                              "\"} " + std::to_string(n)) != std::string::npos;
    }
};

std::string body_of(const std::string& answer) {
    return answer.substr(answer.find("\r\n\r\n") + 4);
}

}  // namespace

TEST_CASE("GET and HEAD: HEAD answers the GET's length and no body") {
    server_fixture f;
    auto get = f.server.respond("GET /api/v1/values HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(get.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    CHECK(get.find("\r\nContent-Type: application/json\r\n") != std::string::npos);
    CHECK(body_of(get) == *f.values);
    auto head = f.server.respond("HEAD /api/v1/values?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(head.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    CHECK(head.find("\r\nContent-Length: " + std::to_string(f.values->size()) + "\r\n") !=
          std::string::npos);
    CHECK(body_of(head).empty());
    CHECK(f.server.respond("GET /readyz HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 503", 0) == 0);
}

TEST_CASE("pipelined requests are answered in order until one closes the connection") {
    server_fixture f;
    auto out = f.server.respond(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        "HEAD /api/v1/values HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(out.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    const auto second = out.find("HTTP/1.1 200 OK\r\n", 1);
    REQUIRE(second != std::string::npos);
    CHECK(out.find("HTTP/1.1", second + 1) == std::string::npos);  // the third is not answered
    CHECK(f.built == 1);
}

TEST_CASE("refusals: 405, 404, 400, 413, an incomplete request; each counted by reason") {
    server_fixture f;
    auto m = f.server.respond("BREW /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(m.rfind("HTTP/1.1 405 Method Not Allowed\r\n", 0) == 0);
    CHECK(m.find("\r\nAllow: GET, HEAD\r\n") != std::string::npos);
    CHECK(f.server.respond("GET /etc/passwd HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404", 0) == 0);
    CHECK(f.server.respond("HELLO THERE\r\n\r\n").rfind("HTTP/1.1 400", 0) == 0);
    CHECK(f.server.respond("GET / HTTP/1.1\r\nX: " + std::string(9000, 'a') + "\r\n\r\n")
              .rfind("HTTP/1.1 413", 0) == 0);
    CHECK(f.server.respond("POST /metrics HTTP/1.1\r\nContent-Length: 1025\r\n\r\n")
              .rfind("HTTP/1.1 413", 0) == 0);
    CHECK(f.server.respond("GET /metrics HTTP/1.1\r\nHost: x").empty());  // waits for more
    CHECK(f.counted("method_not_allowed", 1));
    CHECK(f.counted("not_found", 1));
    CHECK(f.counted("bad_request", 1));
    CHECK(f.counted("too_large", 2));
    CHECK(f.counted("timeout", 0));
}

TEST_CASE("the read model builds its JSON once per change and shares it") {
    point_table points;
    auto t = points.intern("boiler1", "t", "degC");
    read_model model(points, {{"boiler1", "modbus_tcp"}});
    auto empty = model.values_json();
    CHECK(*empty == "[]");
    event e;
    e.seq = 7;
    e.point = t;
    e.value = std::int64_t{21};
    model.apply({&e, 1});
    auto a = model.values_json();
    auto b = model.values_json();
    CHECK(a.get() == b.get());  // no change in between: the same string
    CHECK(a->find("\"seq\":7") != std::string::npos);
    CHECK(model.devices_json().get() == model.devices_json().get());
    e.seq = 8;
    model.apply({&e, 1});
    auto c = model.values_json();
    CHECK(c.get() != a.get());
    CHECK(c->find("\"seq\":8") != std::string::npos);
    CHECK(a->find("\"seq\":7") != std::string::npos);  // a holder's snapshot stays as it was
}

TEST_CASE("the read model's device state is the driver's report once there is one") {
    point_table points;
    auto t = points.intern("boiler1", "t", "degC");
    read_model model(points, {{"boiler1", "modbus_tcp"}});
    const auto state = [&] {
        const auto& j = *model.devices_json();
        const auto at = j.find("\"state\":\"");
        REQUIRE(at != std::string::npos);
        return j.substr(at + 9, j.find('"', at + 9) - at - 9);
    };
    CHECK(state() == "down");  // nothing known yet
    event e;
    e.seq = 1;
    e.point = t;
    e.value = std::int64_t{21};
    model.apply({&e, 1});
    CHECK(state() == "up");  // no report yet: the newest values say so
    model.report("boiler1", true);
    // A bad value: the driver has not given up on the device (down_after polls): still up.
    e.seq = 2;
    e.ts += std::chrono::seconds(1);
    e.value = std::monostate{};
    e.quality = quality::bad;
    model.apply({&e, 1});
    CHECK(state() == "up");
    const auto before = model.devices_json();
    model.report("boiler1", false);  // now it has
    CHECK(state() == "down");
    CHECK(model.devices_json().get() != before.get());  // a new snapshot for the change
    model.report("nobody", false);                      // not configured: ignored
    e.seq = 3;
    e.ts += std::chrono::seconds(1);
    e.value = std::int64_t{22};
    e.quality = quality::good;
    model.apply({&e, 1});
    CHECK(state() == "down");  // until the driver says it is back
    model.report("boiler1", true);
    CHECK(state() == "up");
}
