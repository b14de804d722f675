// Spooled messages that can never be delivered (issue 14, docs/DELIVERY.md "Dead letters"):
// checked before each publish against the broker's Maximum Packet Size; one that fails leaves
// the stream into the spool's dead_letters table and is announced on the dead-letter topic.
#include "upstream/mqtt_publisher_impl.hpp"

#include <algorithm>

#include "core/log.hpp"

namespace ferry::upstream {

std::uint64_t mqtt_publisher::impl::packet_limit() const {
    const std::uint64_t learned = broker_max_packet_.load();
    const std::uint64_t configured = settings_.max_packet_size;
    if (learned == 0 || configured == 0) return std::max(learned, configured);
    return std::min(learned, configured);
}

// A message that fails the checks can never be delivered as it is: resent, it would stop
// every message behind it for good. It leaves the stream (into the spool's dead_letters
// table), is counted and announced, and the caller goes on with the next one, in order. It
// is not a refusal: nothing newer has been sent past it, so no order is at stake.
bool mqtt_publisher::impl::dead_lettered(const spooled_message& m) {
    std::string detail;
    const auto reason = check_spooled(m, packet_limit(), version_ == 5, &detail);
    if (reason == dead_reason::none) return false;
    const auto moved = spool_.dead_letter(m.id, to_string(reason));
    if (moved.removed) {  // once per row, however often a failing move is tried again
        m_dead_[static_cast<std::size_t>(reason)]->Increment();
        (reason == dead_reason::too_large ? m_dropped_too_large_ : m_dropped_corrupt_)
            .Increment(static_cast<double>(moved.events));
    }
    log::error(k_component, moved.removed ? "message dead-lettered" : "message not deliverable",
               {{"id", std::to_string(m.id)},
                {"topic", valid_utf8(m.topic) ? m.topic : "(not UTF-8)"},
                {"batch", std::to_string(batch_of(m.payload))},
                {"reason", std::string(to_string(reason))},
                {"detail", detail},
                {"bytes", std::to_string(m.topic.size() + m.payload.size())},
                {"events", std::to_string(moved.events)},
                {"kept", moved.removed ? "dead_letters" : "no"}});
    if (!moved.removed) {
        // The spool could not move it (an I/O error, logged and counted there): skip it on
        // this connection all the same; a reconnect meets it again and tries again.
        return true;
    }
    if (!dead_letter_topic_.empty()) {
        const auto notice = dead_letter_notice(gateway_id_, m, reason, detail, unix_ms());
        try {
            std::lock_guard ck(client_mu_);
            client_->publish(dead_letter_topic_, notice.data(), notice.size(), 1, false);
        } catch (const mqtt::exception& e) {
            m_err_notice_.Increment();
            log::warn(k_component, "dead-letter notice not published",
                      {{"topic", dead_letter_topic_}, {"error", e.what()}});
        }
    }
    return true;
}

}  // namespace ferry::upstream
