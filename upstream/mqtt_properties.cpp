// MQTT 5 properties of the batches the window sends, and spooled messages whose expiry passed
// (docs/DELIVERY.md, "MQTT 5 properties"). With MQTT 3.1.1 nothing is added and nothing
// expires: 3.1.1 has no expiry to honour, and the spool keeps its promise to deliver.
#include <mqtt/properties.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "core/log.hpp"
#include "upstream/dead_letter.hpp"
#include "upstream/mqtt5_properties.hpp"
#include "upstream/mqtt_publisher_impl.hpp"

namespace ferry::upstream {

std::uint32_t expiry_left_s(std::int64_t created_ms, std::uint32_t expiry_s, std::int64_t now_ms) {
    const std::int64_t left_ms = created_ms + std::int64_t{expiry_s} * 1000 - now_ms;
    if (left_ms <= 0) return 0;
    return static_cast<std::uint32_t>(std::min<std::int64_t>((left_ms + 999) / 1000, expiry_s));
}

seq_range seq_range_of(std::string_view payload) {
    constexpr std::string_view key = "{\"seq\":";
    const auto number = [&](std::size_t at) {
        std::uint64_t v = 0;
        for (auto i = at + key.size(); i < payload.size() && payload[i] >= '0' && payload[i] <= '9';
             ++i)
            v = v * 10 + static_cast<std::uint64_t>(payload[i] - '0');
        return v;
    };
    seq_range r;
    const auto first = payload.find(key);
    if (first == std::string_view::npos) return r;
    r.first = number(first);
    r.last = number(payload.rfind(key));
    r.found = true;
    return r;
}

// Dropped from the spool instead of sent: a consumer would get a value already declared stale
// (a broker would not hand it on either). Counted per event, logged at most once a second with
// the count since (a long outage can expire thousands of messages).
bool mqtt_publisher::impl::expired(const spooled_message& m) {
    if (m.expiry_s == 0 || version_ != 5) return false;
    if (expiry_left_s(m.created_ms, m.expiry_s, unix_ms()) > 0) return false;
    const auto events = spool_.drop(m.id);
    m_dropped_expired_.Increment(static_cast<double>(events));
    ++expired_unlogged_;
    const auto now = steady::now();
    if (now - expired_logged_ >= std::chrono::seconds(1)) {
        log::warn(k_component, "expired messages dropped",
                  {{"messages", std::to_string(expired_unlogged_)},
                   {"last_id", std::to_string(m.id)},
                   {"topic", m.topic},
                   {"batch", std::to_string(batch_of(m.payload))},
                   {"expiry_s", std::to_string(m.expiry_s)},
                   {"age_ms", std::to_string(unix_ms() - m.created_ms)}});
        expired_unlogged_ = 0;
        expired_logged_ = now;
    }
    return true;
}

// The expiry left, then gateway, batch, first_seq and last_seq for a JSON batch. A batch
// spooled before the broker's limit was known was cut without room for them: if with them the
// packet would pass the limit (the broker would close the connection, and the resend would
// meet it again, for good), the user properties are left out, and then the expiry too:
// delivered without them rather than dead-lettered.
mqtt::properties mqtt_publisher::impl::properties_for(const spooled_message& m) {
    mqtt::properties props;
    if (version_ != 5) return props;
    const auto seqs = seq_range_of(m.payload);
    std::vector<std::pair<const char*, std::string>> user;
    if (seqs.found)
        user = {{"gateway", gateway_id_},
                {"batch", std::to_string(batch_of(m.payload))},
                {"first_seq", std::to_string(seqs.first)},
                {"last_seq", std::to_string(seqs.last)}};
    std::size_t user_bytes = 0;
    for (const auto& [name, value] : user)
        user_bytes += 1 + 2 + std::string_view(name).size() + 2 + value.size();
    const std::size_t expiry_bytes = m.expiry_s != 0 ? 5 : 0;
    const auto limit = packet_limit();
    // +3: a property length longer than the one byte publish_packet_size counts.
    const auto fits = [&](std::size_t props_bytes) {
        return limit == 0 || publish_packet_size(m.topic.size(), m.payload.size() + props_bytes + 3,
                                                 m.qos, true) <= limit;
    };
    if (!fits(expiry_bytes + user_bytes)) user.clear();
    if (expiry_bytes != 0 && fits(expiry_bytes)) {
        // Paho takes an int32_t and stores it in Paho C's unsigned four-byte integer: the bits
        // go through as they are, so an interval past 2^31 s arrives intact.
        const auto left =
            std::max<std::uint32_t>(1, expiry_left_s(m.created_ms, m.expiry_s, unix_ms()));
        props.add({mqtt::property::MESSAGE_EXPIRY_INTERVAL, static_cast<std::int32_t>(left)});
    }
    for (const auto& [name, value] : user)
        props.add({mqtt::property::USER_PROPERTY, name, value});
    return props;
}

}  // namespace ferry::upstream
