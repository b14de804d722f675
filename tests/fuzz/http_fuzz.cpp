// Fuzz target: HTTP request handling (gateway/http_server.cpp) through its socket-free seam,
// http_server::respond(): raw request bytes in, the bytes the server would send out.
//
// Invariants (a violation traps): no exception escapes; every answer starts with a status line
// the server is meant to send (200 400 404 405 413 503) and carries a Content-Length; a GET's
// body is that long; a JSON body is the route's, byte for byte.
#include <prometheus/registry.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "gateway/http_server.hpp"

namespace {

struct fixture {
    prometheus::Registry registry;
    ferry::http_server server{"127.0.0.1", 0, registry, [] {
                                  return ferry::readiness{false, "spool not open"};
                              }};
    std::shared_ptr<const std::string> values = std::make_shared<const std::string>(
        R"([{"device":"boiler1","tag":"t","value":21.5,"quality":"good","ts":1764236400123,"seq":7}])");
    std::shared_ptr<const std::string> devices =
        std::make_shared<const std::string>(R"([{"id":"boiler1","driver":"modbus_tcp"}])");
    fixture() {
        server.add_json("/api/v1/values", [this] { return values; });
        server.add_json("/api/v1/devices", [this] { return devices; });
    }
};

bool known_status(std::string_view line) {
    for (std::string_view s : {" 200 ", " 400 ", " 404 ", " 405 ", " 413 ", " 503 "})
        if (line.substr(8, 5) == s) return true;
    return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static fixture f;
    std::string out;
    try {
        out = f.server.respond(std::string_view(reinterpret_cast<const char*>(data), size));
    } catch (...) {
        __builtin_trap();
    }
    // Walk the answers: each one a status line, headers with a Content-Length, and (unless it
    // answered a HEAD, whose length is not followed by a body) that many bytes.
    std::string_view rest = out;
    while (!rest.empty()) {
        if (rest.size() < 13 ||
            (rest.substr(0, 9) != "HTTP/1.1 " && rest.substr(0, 9) != "HTTP/1.0 ") ||
            !known_status(rest))
            __builtin_trap();
        auto end = rest.find("\r\n\r\n");
        if (end == std::string_view::npos) __builtin_trap();
        auto head = rest.substr(0, end + 2);
        auto cl = head.find("\r\nContent-Length: ");
        if (cl == std::string_view::npos) __builtin_trap();
        std::size_t length = 0;
        for (auto i = cl + 18; i < head.size() && head[i] >= '0' && head[i] <= '9'; ++i)
            length = length * 10 + static_cast<std::size_t>(head[i] - '0');
        rest.remove_prefix(end + 4);
        // No body of ours starts like a status line: when the next answer follows at once,
        // this one answered a HEAD (the length is the GET's, no body follows).
        if (rest.empty() || rest.substr(0, 7) == "HTTP/1.") continue;
        if (rest.size() < length) __builtin_trap();
        // A JSON answer is a route's body, byte for byte.
        const auto body = rest.substr(0, length);
        if (head.find("\r\nContent-Type: application/json\r\n") != std::string_view::npos &&
            body != *f.values && body != *f.devices)
            __builtin_trap();
        rest.remove_prefix(length);
    }
    return 0;
}
