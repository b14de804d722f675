// Retained states beside the spool (design note in mqtt_publisher.cpp): the newest payload of
// each state topic (device status), sent by the sender thread at QoS 1 with retain, and all of
// them again after every connect. They never enter the spool: a state is not telemetry, only
// its newest value matters, and a reconnect sends that one again anyway.
//
// At most state_room_ are in flight at once (k_state_room, less where the broker's Receive
// Maximum is tight; Paho's max_inflight has room for them beside the window and the command
// results), so a line of 300 devices going down together never makes a publish of the window
// fail.
#include <algorithm>

#include "core/log.hpp"
#include "upstream/mqtt_publisher_impl.hpp"

namespace ferry::upstream {

void mqtt_publisher::impl::set_retained(const std::string& topic, std::string payload) {
    {
        std::lock_guard lk(states_mu_);
        auto& s = states_[topic];
        s.payload = std::move(payload);
        s.dirty = true;
        states_dirty_ = true;
    }
    cv_.notify_all();
}

void mqtt_publisher::impl::states_after_connect() {
    state_tokens_.clear();  // the old connection's: they may never complete
    {
        std::lock_guard lk(states_mu_);
        for (auto& [topic, s] : states_)
            s.dirty = true;
        states_dirty_ = !states_.empty();
    }
    publish_states();
}

void mqtt_publisher::impl::publish_states(bool all) {
    if (!states_dirty_.load()) return;
    std::erase_if(state_tokens_,
                  [](const mqtt::delivery_token_ptr& t) { return t->is_complete(); });
    std::lock_guard lk(states_mu_);
    for (auto it = states_.begin(); it != states_.end();) {
        auto& [topic, s] = *it;
        if (!s.dirty) {
            ++it;
            continue;
        }
        if (!all && state_tokens_.size() >= state_room_) return;
        try {
            state_tokens_.push_back(
                client_->publish(topic, s.payload.data(), s.payload.size(), 1, true));
        } catch (const mqtt::exception& e) {
            // The connection is going: the next connect sends every state again.
            m_err_status_.Increment();
            log::warn(k_component, "status publish failed",
                      {{"topic", topic}, {"error", e.what()}});
            return;
        }
        s.dirty = false;
        // An empty payload cleared the topic on the broker; there is nothing left to resend.
        if (s.payload.empty())
            it = states_.erase(it);
        else
            ++it;
    }
    states_dirty_ = false;
}

void mqtt_publisher::set_retained(const std::string& topic, std::string payload) {
    impl_->set_retained(topic, std::move(payload));
}

}  // namespace ferry::upstream
