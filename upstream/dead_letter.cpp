#include "upstream/dead_letter.hpp"

#include <array>

#include "core/json.hpp"

namespace ferry::upstream {

std::string_view to_string(dead_reason r) {
    // In the order of the enum.
    constexpr std::array<std::string_view, static_cast<std::size_t>(dead_reason::count_)> names{
        "none", "too_large", "bad_topic", "bad_qos", "bad_payload", "bad_bytes"};
    const auto i = static_cast<std::size_t>(r);
    return i < names.size() ? names[i] : "unknown";
}

std::uint64_t publish_packet_size(std::size_t topic_bytes, std::size_t payload_bytes, int qos,
                                  bool mqtt5) {
    const std::uint64_t rest = 2 + static_cast<std::uint64_t>(topic_bytes) + (qos > 0 ? 2 : 0) +
                               (mqtt5 ? 1 : 0) + static_cast<std::uint64_t>(payload_bytes);
    std::uint64_t length_bytes = 1;
    for (std::uint64_t n = rest; n >= 128; n /= 128)
        ++length_bytes;
    return 1 + length_bytes + rest;
}

bool valid_utf8(std::string_view s) {
    std::size_t i = 0;
    const std::size_t n = s.size();
    while (i < n) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            ++i;
            continue;
        }
        std::size_t len = 0;
        std::uint32_t cp = 0;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
            cp = c & 0x1fu;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            cp = c & 0x0fu;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            cp = c & 0x07u;
        } else {
            return false;  // a continuation byte, an overlong lead (c0 c1) or past f4
        }
        if (n - i < len) return false;
        for (std::size_t k = 1; k < len; ++k) {
            const auto cc = static_cast<unsigned char>(s[i + k]);
            if ((cc & 0xc0u) != 0x80u) return false;
            cp = (cp << 6) | (cc & 0x3fu);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

dead_reason check_spooled(const spooled_message& m, std::uint64_t max_packet, bool mqtt5,
                          std::string* detail) {
    auto fails = [&](dead_reason r, std::string text) {
        if (detail != nullptr) *detail = std::move(text);
        return r;
    };
    if (m.topic.empty()) return fails(dead_reason::bad_topic, "empty topic");
    if (m.topic.size() > 65535)
        return fails(dead_reason::bad_topic, "topic longer than 65535 bytes");
    if (m.topic.find_first_of(std::string_view("+#\0", 3)) != std::string::npos)
        return fails(dead_reason::bad_topic, "wildcard or NUL in topic");
    if (!valid_utf8(m.topic)) return fails(dead_reason::bad_topic, "topic is not UTF-8");
    if (m.qos < 0 || m.qos > 2) return fails(dead_reason::bad_qos, "qos " + std::to_string(m.qos));
    if (!m.decode_error.empty()) return fails(dead_reason::bad_payload, m.decode_error);
    // Sparkplug B payloads are protobuf (docs/SPARKPLUG.md): their shape is not JSON's.
    const bool sparkplug = m.topic.starts_with("spBv1.0/");
    if (!sparkplug && (m.payload.size() < 2 || m.payload.front() != '{' || m.payload.back() != '}'))
        return fails(dead_reason::bad_payload, "payload is not a JSON object");
    // What the row holds: a compressed row stores fewer bytes than the payload it decodes to.
    const auto stored_payload = m.stored_payload_bytes >= 0
                                    ? static_cast<std::uint64_t>(m.stored_payload_bytes)
                                    : static_cast<std::uint64_t>(m.payload.size());
    const auto bytes = static_cast<std::int64_t>(m.topic.size() + stored_payload);
    if (m.stored_bytes != bytes)
        return fails(dead_reason::bad_bytes, "bytes column " + std::to_string(m.stored_bytes) +
                                                 ", row holds " + std::to_string(bytes));
    const auto packet = publish_packet_size(m.topic.size(), m.payload.size(), m.qos, mqtt5);
    if (max_packet != 0 && packet > max_packet)
        return fails(dead_reason::too_large, "packet " + std::to_string(packet) +
                                                 " bytes, broker maximum " +
                                                 std::to_string(max_packet));
    return dead_reason::none;
}

std::uint64_t batch_of(std::string_view payload) {
    const auto at = payload.find("\"batch\":");
    if (at == std::string_view::npos) return 0;
    std::uint64_t v = 0;
    for (auto i = at + 8; i < payload.size() && payload[i] >= '0' && payload[i] <= '9'; ++i)
        v = v * 10 + static_cast<std::uint64_t>(payload[i] - '0');
    return v;
}

std::string dead_letter_notice(std::string_view gateway, const spooled_message& m,
                               dead_reason reason, std::string_view detail, std::int64_t now_ms) {
    std::string out = "{\"gateway\":";
    json::append_string(out, gateway);
    out += ",\"dead_letter\":true";
    if (valid_utf8(m.topic)) {
        out += ",\"topic\":";
        json::append_string(out, m.topic);
    } else {
        static constexpr char digits[] = "0123456789abcdef";
        out += ",\"topic_hex\":\"";
        for (unsigned char c : m.topic) {
            out += digits[c >> 4];
            out += digits[c & 15];
        }
        out += '"';
    }
    // Only from a payload that passed as a JSON object: the number is then Ferry's own.
    if (reason != dead_reason::bad_payload) {
        if (const auto b = batch_of(m.payload); b != 0) out += ",\"batch\":" + std::to_string(b);
    }
    out += ",\"reason\":";
    json::append_string(out, to_string(reason));
    out += ",\"detail\":";
    json::append_string(out, detail);
    out += ",\"bytes\":" + std::to_string(m.topic.size() + m.payload.size());
    out += ",\"events\":" + std::to_string(m.events);
    out += ",\"spool_id\":" + std::to_string(m.id);
    out += ",\"ts\":" + std::to_string(now_ms);
    out += '}';
    return out;
}

}  // namespace ferry::upstream
