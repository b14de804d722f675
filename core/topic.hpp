// Topic patterns and templates.
//
// A pattern matches bus addresses "device/tag" level by level, MQTT-style: `+` matches one
// whole level, `#` (last level only) matches the rest including nothing, and `*` inside a
// level matches any run of characters within that level ("meter*"). Compiled once; matching
// allocates nothing.
//
// A template expands `{gateway}`, `{device}`, `{tag}` and `{rule}` into an MQTT topic.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry {

// What a replayed JSON batch carries after its opening brace (docs/DELIVERY.md, Live first).
constexpr std::string_view k_replay_mark = "\"replay\":true,";

// The MQTT 5 properties a batch carries (docs/DELIVERY.md, "MQTT 5 properties"), at most:
// Message Expiry Interval (1 + 4) and the user properties gateway, batch, first_seq and
// last_seq (each 1 + 2 + name + 2 + value; numbers up to 20 digits).
constexpr std::size_t mqtt5_properties_bytes(std::size_t gateway_bytes) {
    return (1 + 4) + (1 + 2 + 7 + 2 + gateway_bytes) + (1 + 2 + 5 + 2 + 20) + (1 + 2 + 9 + 2 + 20) +
           (1 + 2 + 8 + 2 + 20);
}

// The most bytes an MQTT PUBLISH on a topic of `topic_bytes` adds around its payload, whatever
// its QoS and protocol version: fixed header (1), remaining length (up to 4), topic length (2)
// and topic, packet id (2), MQTT 5 property length (up to 4) and properties (for a gateway id
// of `gateway_bytes`), and the replay mark a batch may get when it is sent as part of a
// backlog. Batches are cut so that payload + this stays within the broker's Maximum Packet
// Size.
constexpr std::size_t publish_overhead(std::size_t topic_bytes, std::size_t gateway_bytes = 0) {
    return 1 + 4 + 2 + topic_bytes + 2 + 4 + mqtt5_properties_bytes(gateway_bytes) +
           k_replay_mark.size();
}

class topic_pattern {
  public:
    // Returns the pattern, or nullopt with `why` set when the text is not a valid pattern.
    static std::optional<topic_pattern> compile(std::string_view text, std::string* why = nullptr);

    bool matches(std::string_view address) const;
    const std::string& text() const { return text_; }

  private:
    std::string text_;
    std::vector<std::string> levels_;
};

struct template_vars {
    std::string_view gateway;
    std::string_view device;
    std::string_view tag;
    std::string_view rule;
};

class topic_template {
  public:
    static std::optional<topic_template> compile(std::string_view text, std::string* why = nullptr);

    void expand(const template_vars& vars, std::string& out) const;
    std::string expand(const template_vars& vars) const;
    bool uses_device() const { return uses_device_; }
    bool uses_tag() const { return uses_tag_; }
    const std::string& text() const { return text_; }

  private:
    enum class part_kind { literal, gateway, device, tag, rule };
    struct part {
        part_kind kind;
        std::string literal;
    };
    std::string text_;
    std::vector<part> parts_;
    bool uses_device_ = false;
    bool uses_tag_ = false;
};

}  // namespace ferry
