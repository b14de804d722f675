// Session hooks (mqtt_publisher.hpp; Sparkplug B, docs/SPARKPLUG.md): the will of each
// connect, the messages sent first after it, the rewrite before each publish, the inbound
// messages a hook claims, and messages sent beside the spool (send_now). The spool's stream
// and its promises (docs/DELIVERY.md) are untouched: these messages never enter the spool.
//
// A connection has one will. When a hook takes it (Sparkplug's NDEATH), the status topic's
// retained "offline" will rides on a second connection, the status sentinel (client id
// "{client_id}-status", the same broker settings), which sends nothing but a retained
// "online" after each of its connects: a crash or a lost network closes both, and the broker
// publishes both wills (CONTRACT.md: "offline" as the last will). It is (re)connected from the
// sender thread while the main connection is up, at most every 5 s, and disconnected cleanly
// at a stop, after the main connection's own "offline".
#include <limits>

#include "core/log.hpp"
#include "upstream/mqtt_publisher_impl.hpp"

namespace ferry::upstream {

namespace {

// Messages beside the spool written before waiting for the oldest of them: Paho refuses
// publishes beyond its buffer of unwritten commands (create_options, 100 and more).
constexpr std::size_t k_beside_room = 32;
constexpr std::chrono::seconds k_sentinel_retry{5};

}  // namespace

void mqtt_publisher::impl::apply_will(mqtt::connect_options& opts) {
    if (!hooks_.will) return;
    auto w = hooks_.will();
    opts.set_will(mqtt::will_options(w.topic, w.payload.data(), w.payload.size(), w.qos, w.retain));
}

bool mqtt_publisher::impl::publish_beside(mqtt_publisher::outbound& m,
                                          std::vector<mqtt::delivery_token_ptr>& toks) {
    if (hooks_.before_send)
        hooks_.before_send(m.topic, m.payload, std::numeric_limits<std::int64_t>::max());
    if (toks.size() >= k_beside_room) {
        toks.front()->wait_for(k_status_timeout);
        toks.erase(toks.begin());
    }
    try {
        toks.push_back(
            client_->publish(m.topic, m.payload.data(), m.payload.size(), m.qos, m.retain));
        return true;
    } catch (const mqtt::exception& e) {
        m_err_status_.Increment();
        log::warn(k_component, "publish beside the spool failed",
                  {{"topic", m.topic}, {"error", e.what()}});
        return false;
    }
}

void mqtt_publisher::impl::hooks_after_connect() {
    {
        std::lock_guard lk(direct_mu_);
        direct_.clear();  // after_connect says the whole state
        direct_waiting_ = false;
    }
    if (!hooks_.filters.empty()) {
        // QoS 1: the Sparkplug B specification asks it of an edge node's NCMD/DCMD subscription.
        for (const auto& f : hooks_.filters)
            subscribe(f, 1, "session hook messages (Sparkplug NCMD/DCMD)");
    }
    if (!hooks_.after_connect) return;
    auto msgs = hooks_.after_connect();
    std::vector<mqtt::delivery_token_ptr> toks;
    for (auto& m : msgs)
        if (!publish_beside(m, toks)) return;
}

void mqtt_publisher::impl::publish_direct() {
    if (!direct_waiting_.load()) return;
    std::vector<mqtt_publisher::outbound> msgs;
    {
        std::lock_guard lk(direct_mu_);
        msgs.swap(direct_);
        direct_waiting_ = false;
    }
    std::vector<mqtt::delivery_token_ptr> toks;
    for (auto& m : msgs)
        if (!publish_beside(m, toks)) return;
}

void mqtt_publisher::impl::keep_status_will() {
    if (!hooks_.will) return;
    if (sentinel_ && sentinel_->is_connected()) return;
    const auto now = steady::now();
    if (now < sentinel_next_) return;
    sentinel_next_ = now + k_sentinel_retry;
    try {
        // It speaks the version the sender's connection agreed to (a client's is fixed).
        if (sentinel_ && sentinel_version_ != version_) sentinel_.reset();
        if (!sentinel_) {
            sentinel_listener_.owner = this;
            sentinel_version_ = version_;
            sentinel_ = std::make_unique<mqtt::async_client>(settings_.uris.front(),
                                                             settings_.client_id + "-status",
                                                             create_for(version_), nullptr);
        }
        // conn_opts_ carries every uri, the status topic's "offline" will, TLS and credentials.
        sentinel_->connect(options_for(version_), nullptr, sentinel_listener_);
    } catch (const mqtt::exception& e) {
        m_err_status_.Increment();
        log::warn(k_component, "status sentinel connect failed", {{"error", e.what()}});
    }
}

void mqtt_publisher::impl::sentinel_listener::on_success(const mqtt::token&) {
    {
        std::lock_guard lk(owner->mu_);
        if (owner->stop_requested_) return;
    }
    try {
        owner->sentinel_->publish(owner->status_topic_, std::string("online"), 1, true);
        log::info(k_component, "status sentinel connected",
                  {{"client_id", owner->settings_.client_id + "-status"}});
    } catch (const mqtt::exception&) {
    }
}

void mqtt_publisher::impl::drop_status_will() {
    if (!sentinel_) return;
    try {
        // Clean: the broker drops the will; the main connection said "offline" already.
        sentinel_->disconnect(k_disconnect_timeout)->wait_for(k_disconnect_timeout * 2);
    } catch (const mqtt::exception&) {
    }
}

bool mqtt_publisher::impl::gate_open() {
    if (!hooks_.gate) return true;
    auto first = hooks_.gate();
    if (!first) {
        // Held: the spool keeps what comes meanwhile; re-asked within k_idle_wait.
        std::unique_lock lk(mu_);
        cv_.wait_for(lk, k_idle_wait, [&] { return lost_ || publish_failed_ || stop_requested_; });
        return false;
    }
    if (first->empty()) return true;
    {
        std::lock_guard lk(direct_mu_);
        direct_.clear();  // the gate's messages say the whole state
        direct_waiting_ = false;
    }
    std::vector<mqtt::delivery_token_ptr> toks;
    for (auto& m : *first)
        if (!publish_beside(m, toks)) return false;
    return true;
}

void mqtt_publisher::impl::hooks_before_disconnect() {
    if (!hooks_.before_disconnect) return;
    auto msgs = hooks_.before_disconnect();
    std::vector<mqtt::delivery_token_ptr> toks;
    for (auto& m : msgs)
        if (!publish_beside(m, toks)) return;
    for (auto& t : toks)
        t->wait_for(k_status_timeout);
}

void mqtt_publisher::impl::dispatch(const mqtt::const_message_ptr& msg) {
    if (!msg) return;
    const auto& topic = msg->get_topic();
    if (hooks_.inbound && hooks_.inbound(topic, msg->get_payload_str(), msg->is_retained())) return;
    if (sub_handler_) sub_handler_(topic, msg->get_payload_str(), msg->is_retained());
}

void mqtt_publisher::set_session_hooks(session_hooks hooks) {
    impl_->hooks_ = std::move(hooks);
    impl_->make_client();  // the current client gets the message callback too
}

void mqtt_publisher::send_now(std::vector<outbound> messages) {
    {
        std::lock_guard lk(impl_->direct_mu_);
        for (auto& m : messages)
            impl_->direct_.push_back(std::move(m));
        impl_->direct_waiting_ = true;
    }
    impl_->cv_.notify_all();
}

}  // namespace ferry::upstream
