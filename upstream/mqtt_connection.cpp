// The sender thread's connection life cycle (design note in mqtt_publisher.cpp): connect over
// the uris in order, backoff with jitter (cut short when a probed port opens again), reset
// after a loss, a failed publish or an ack timeout (a fresh Paho client, resend from the
// oldest), and the shutdown with "offline". Retained states (mqtt_states.cpp) go after each
// connect's "online" and before the shutdown's "offline".
#include "upstream/mqtt_publisher_impl.hpp"

#include <algorithm>

#include "core/log.hpp"

namespace ferry::upstream {

namespace {

// A refused or dropped connect in words: Paho says "MQTT error [135]: CONNACK return code" or
// "MQTT error [-1]: TCP connect completion failure"; the broker's MQTT 5 reason code (or the
// 3.1.1 CONNACK code), or that it hung up without answering, says why. `version_refused`: the
// broker turned down the protocol version (a reason or code that says so, or a broker that
// accepted TCP, read the CONNECT and closed the connection without a CONNACK, as RabbitMQ's
// MQTT plugin before 3.13 does to MQTT 5).
std::string refusal(const mqtt::exception& e, bool& version_refused) {
    version_refused = false;
    const std::string_view what = e.what();
    // Paho C's words when the socket fails while it waits for the CONNACK; a closed port or a
    // failed TLS handshake is "TCP/TLS connect failure" instead.
    if (what.find("TCP connect completion failure") != std::string_view::npos) {
        version_refused = true;
        return "the broker closed the connection after the CONNECT without answering it";
    }
    // Paho puts a refusing CONNACK's MQTT 5 reason code in the return code.
    const int reason = e.get_reason_code() >= 0x80 ? e.get_reason_code() : e.get_return_code();
    if (reason >= 0x80 && reason <= 0xff) {
        version_refused = reason == 0x84;  // Unsupported Protocol Version
        auto words = mqtt::exception::reason_code_str(reason);
        if (!words.empty()) return words + " (reason code " + std::to_string(reason) + ")";
    }
    static const char* const v311[] = {nullptr,
                                       "unacceptable protocol version",
                                       "client identifier rejected",
                                       "server unavailable",
                                       "bad user name or password",
                                       "not authorized"};
    const int code = e.get_return_code();
    if (code >= 1 && code <= 5 && what.find("CONNACK") != std::string_view::npos) {
        version_refused = code == 1;
        return std::string(v311[code]) + " (CONNACK code " + std::to_string(code) + ")";
    }
    return std::string(what);
}

const char* version_name(int version) {
    return version == 5 ? "5" : "3.1.1";
}

}  // namespace

using namespace std::chrono_literals;

void mqtt_publisher::impl::on_connection_lost(std::uint64_t epoch, const std::string& cause) {
    {
        std::lock_guard lk(mu_);
        // A late report from a client we already replaced must not tear down a newer one.
        if (epoch != client_epoch_) return;
        connected_ = false;
        m_connected_.Set(0);
        lost_ = true;
        lost_cause_ = cause.empty() ? "unknown" : cause;
    }
    cv_.notify_all();
}

bool mqtt_publisher::impl::should_exit() {
    {
        std::lock_guard lk(mu_);
        if (!stop_requested_) return false;
        if (steady::now() >= deadline_) return true;
        if (!outstanding_.empty()) return false;
    }
    return spool_.messages() == 0;
}

std::chrono::milliseconds mqtt_publisher::impl::jittered(std::chrono::milliseconds d) {
    std::uniform_real_distribution<double> jitter(1.0 - k_jitter, 1.0 + k_jitter);
    return std::chrono::milliseconds(
        static_cast<std::int64_t>(static_cast<double>(d.count()) * jitter(rng_)));
}

void mqtt_publisher::impl::wait_backoff(std::chrono::milliseconds delay, bool reconnect) {
    const auto begin = steady::now();
    const auto until = begin + delay;
    // A long wait asks the brokers' ports meanwhile: the first probe at once (just after the
    // failed attempt, so a broker that is down is seen closed), then every k_probe_interval.
    // A port that was closed and accepts again ends the wait; a real connect that then fails
    // doubles the backoff as before. The next attempt walks the uris in order as always.
    const bool probing = reconnect && delay > k_probe_after;
    if (probing) ports_.reset();
    bool renewed = false;
    auto next_probe = begin;
    std::unique_lock lk(mu_);
    for (;;) {
        const auto now = steady::now();
        if (now >= until) return;
        if (stop_requested_) {
            if (now >= deadline_) return;
            // The drain may have nothing left to deliver: let should_exit() decide now.
            lk.unlock();
            if (should_exit()) return;
            lk.lock();
        }
        if (probing && now >= next_probe) {
            lk.unlock();
            const auto back = ports_.round(k_probe_settle);
            if (back) {
                log::info(
                    k_component, "broker port open again",
                    {{"uri", settings_.uris[*back]},
                     {"waited_ms", ms_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                       steady::now() - begin))},
                     {"backoff_ms", ms_string(delay)},
                     {"action", "connect now"}});
                return;
            }
            if (!renewed) {
                // Paho's shared threads, once they have seen a socket, wait for the next one in
                // a 1 s poll() that a connect completing does not wake: a connect after failures
                // took ~1 s (docs/DELIVERY.md, Paho notes). Destroying the only client stops
                // those threads (100 ms in the tests, spent in a wait anyway, after the first
                // probe saw the port); the next connect starts them afresh with a 10 ms first poll.
                renew_client();
                renewed = true;
            }
            next_probe = steady::now() + jittered(k_probe_interval);
            lk.lock();
            continue;  // stop() may have come during the round
        }
        auto wake = until;
        if (stop_requested_) wake = std::min(wake, deadline_);
        if (probing) wake = std::min(wake, next_probe);
        cv_.wait_until(lk, wake);
    }
}

bool mqtt_publisher::impl::try_connect(std::uint64_t attempt) {
    // One attempt walks the uris in order, one server list of one uri at a time: the same
    // failover as handing Paho the whole list, but we know (and log) which uri answered.
    // With no `version` configured, a uri is offered MQTT 5 until it has agreed to a version;
    // one that turns 5 down is offered 3.1.1 at once, and what it accepted is kept for its
    // reconnects (docs/DELIVERY.md, MQTT version and session).
    for (std::size_t i = 0; i < settings_.uris.size(); ++i) {
        const auto& uri = settings_.uris[i];
        const bool last = i + 1 == settings_.uris.size();
        const bool negotiate = settings_.version == 0;
        int version = negotiate ? (agreed_[i] != 0 ? agreed_[i] : 5) : settings_.version;
        std::string answer;
        auto result = connect_to(i, version, attempt, answer);
        if (result == connect_result::version_refused && negotiate && version == 5) {
            log::info(k_component, "MQTT 5 refused; offering 3.1.1",
                      {{"uri", uri}, {"answer", answer}});
            version = 4;
            result = connect_to(i, version, attempt, answer);
        }
        if (result == connect_result::connected) return true;
        if (result == connect_result::stopping) return false;
        // A broker that now refuses what it agreed to (replaced, upgraded) negotiates again.
        if (result == connect_result::version_refused && negotiate) agreed_[i] = 0;
        m_connects_error_.Increment();
        m_err_connect_.Increment();
        log::warn(k_component, "connect failed",
                  {{"uri", uri},
                   {"version", version_name(version)},
                   {"attempt", std::to_string(attempt)},
                   {"error", answer},
                   {"next", last ? "retry in " + ms_string(backoff_) + "ms" : "next uri"}});
        std::lock_guard lk(mu_);
        if (stop_requested_ && steady::now() >= deadline_) return false;
    }
    return false;
}

mqtt_publisher::impl::connect_result mqtt_publisher::impl::connect_to(std::size_t i, int version,
                                                                      std::uint64_t attempt,
                                                                      std::string& answer) {
    const auto& uri = settings_.uris[i];
    if (version != version_) {
        version_ = version;
        renew_client();
    }
    const auto begin = steady::now();
    try {
        auto opts = options_for(version);
        apply_will(opts);  // a session hook's will (Sparkplug NDEATH), if any
        opts.set_servers(std::make_shared<mqtt::string_collection>(std::vector<std::string>{uri}));
        auto tok = client_->connect(opts);
        // Paho enforces the connect timeout; poll so that stop() is not held up by it.
        while (!tok->wait_for(50ms)) {
            std::lock_guard lk(mu_);
            if (stop_requested_ && steady::now() >= deadline_) {
                log::warn(k_component, "connect abandoned", {{"uri", uri}, {"why", "stopping"}});
                return connect_result::stopping;
            }
        }
        bool session_present = false;
        std::size_t window = inflight_max_;
        std::size_t state_room = k_state_room;
        broker_max_packet_ = 0;  // this broker's, if its CONNACK says
        try {
            const auto rsp = tok->get_connect_response();
            session_present = rsp.is_session_present();
            // More in flight than the broker's Receive Maximum only queues inside Paho,
            // where it waits for Paho's timer tick: 400 msg/s instead of 14,000 in the test.
            const auto& props = rsp.get_properties();
            if (props.contains(mqtt::property::RECEIVE_MAXIMUM)) {
                const auto rm = mqtt::get<std::uint16_t>(props, mqtt::property::RECEIVE_MAXIMUM);
                // Retained states (device status, retain_last) go beside the window on the
                // same budget, so that neither waits inside Paho (HiveMQ's default is 10,
                // mosquitto's max_inflight_messages can be 1): the window takes what it needs
                // but one slot, the states what is left (at least that one; they coalesce to
                // the newest per topic while they wait, so no backlog builds up).
                if (rm > 0) {
                    window = std::min<std::size_t>(window, std::max<std::size_t>(1, rm - 1));
                    state_room = std::clamp<std::size_t>(rm - window, 1, k_state_room);
                }
            }
            // A packet over it makes the broker disconnect us (reason 0x95): such a
            // message is dead-lettered instead, and the batcher cuts new batches below it.
            // Below 1 KiB (the config's floor) no batch fits: dead-lettering everything on a
            // broker's word would empty the spool, so such a value is ignored (logged) and
            // the messages wait in the spool instead.
            if (props.contains(mqtt::property::MAXIMUM_PACKET_SIZE)) {
                const auto mps =
                    mqtt::get<std::uint32_t>(props, mqtt::property::MAXIMUM_PACKET_SIZE);
                if (mps >= k_min_packet_limit)
                    broker_max_packet_ = mps;
                else
                    log::warn(k_component, "broker's Maximum Packet Size ignored",
                              {{"uri", uri},
                               {"max_packet_size", std::to_string(mps)},
                               {"minimum", std::to_string(k_min_packet_limit)}});
            }
        } catch (const std::exception&) {
        }
        {
            std::lock_guard lk(mu_);
            ++gen_;
            window_ = window;
            state_room_ = state_room;
            outstanding_.clear();
            lost_ = false;
            publish_failed_ = false;
        }
        m_inflight_.Set(0);
        acks_this_connection_ = 0;
        connected_at_ = steady::now();
        if (settings_.version == 0 && agreed_[i] != version) {
            agreed_[i] = version;
            if (answer.empty())
                log::info(k_component, "MQTT version agreed",
                          {{"uri", uri}, {"version", version_name(version)}});
            else  // the 3.1.1 offer after a refused 5
                log::info(
                    k_component, "MQTT version agreed",
                    {{"uri", uri}, {"version", version_name(version)}, {"refused_5", answer}});
        }
        connected_ = true;
        m_connected_.Set(1);
        m_connects_ok_.Increment();
        log::info(k_component, "connected",
                  {{"uri", uri},
                   {"client_id", settings_.client_id},
                   {"version", version_name(version)},
                   {"session_present", session_present ? "true" : "false"},
                   {"window", std::to_string(window)},
                   {"states_in_flight", std::to_string(state_room)},
                   {"max_packet", std::to_string(packet_limit())},
                   {"attempt", std::to_string(attempt)},
                   {"took_ms", ms_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   steady::now() - begin))}});
        try {
            client_->publish(status_topic_, std::string("online"), 1, true);
        } catch (const mqtt::exception& e) {
            m_err_status_.Increment();
            log::warn(k_component, "status publish failed",
                      {{"topic", status_topic_}, {"error", e.what()}});
        }
        hooks_after_connect();  // session hooks: Sparkplug births, before anything else
        // Every device's status again, after the gateway's: the broker may have lost them
        // (a restart without persistence), or missed a change while we were away.
        states_after_connect();
        subscribe_after_connect();
        return connect_result::connected;
    } catch (const mqtt::exception& e) {
        bool version_refused = false;
        answer = refusal(e, version_refused);
        return version_refused ? connect_result::version_refused : connect_result::failed;
    }
}

void mqtt_publisher::impl::reset_connection(const std::string& why, bool lost) {
    std::size_t forgotten = 0;
    {
        std::lock_guard lk(mu_);
        forgotten = outstanding_.size();
        // With a refusal pending, a forgotten publish may have been accepted before the loss:
        // settle_refusals treats it as accepted, so the refused message never follows it.
        if (!refused_.empty()) {
            for (const auto& [pub, p] : outstanding_) {
                auto& maybe = maybe_acked_[{p.topic, p.replay}];
                maybe = std::max(maybe, p.id);
            }
        }
        outstanding_.clear();
        ++gen_;
        lost_ = false;
        publish_failed_ = false;
    }
    connected_ = false;
    m_connected_.Set(0);
    m_inflight_.Set(0);
    if (lost) m_err_lost_.Increment();
    if (client_->is_connected()) {
        // A publish failed on a live connection: drop it so that the resend starts clean.
        try {
            client_->disconnect(k_disconnect_timeout)->wait_for(k_disconnect_timeout * 2);
        } catch (const mqtt::exception&) {
        }
    }
    // A fresh client: Paho keeps publishes that were queued but not yet written across a
    // reconnect and sends them first on the new connection. Those would overtake the resend
    // of older messages lost with the old socket, which broke the order in the restart test.
    // Destroying the client discards its queue.
    renew_client();
    log::warn(k_component, "disconnected",
              {{"cause", why},
               {"unacked", std::to_string(forgotten)},
               {"action", "resend_from_oldest"},
               {"retry_in_ms", ms_string(backoff_)}});
}

void mqtt_publisher::impl::renew_client() {
    {
        std::lock_guard lk(mu_);
        ++client_epoch_;  // the old client's late callbacks are ignored from here on
    }
    std::lock_guard ck(client_mu_);
    client_.reset();
    make_client();
}

void mqtt_publisher::impl::run() {
    cursors cursor;
    std::uint64_t attempt = 0;
    bool first = true;
    while (!should_exit()) {
        std::string why;
        {
            std::lock_guard lk(mu_);
            if (lost_)
                why = "connection lost: " + lost_cause_;
            else if (publish_failed_)
                why = "publish failed";
        }
        if (!why.empty()) {
            reset_connection(why);
            continue;
        }
        if (!connected_) {
            if (!first) {
                wait_backoff(jittered(backoff_), true);
                backoff_ = std::min(backoff_ * 2, k_backoff_max);
                if (should_exit()) break;
            }
            first = false;
            ++attempt;
            if (try_connect(attempt)) {
                attempt = 0;
                cursor = start_streams();  // resend everything still in the spool
            }
            continue;
        }

        // The backoff goes back to the minimum only once a connection proves useful, so a
        // broker that accepts and then drops us at once is not hammered.
        if (backoff_ != k_backoff_min &&
            (acks_this_connection_ > 0 || steady::now() - connected_at_ >= k_healthy_after)) {
            backoff_ = k_backoff_min;
        }
        if (ack_overdue()) {
            reset_connection("no PUBACK within " + ms_string(settings_.ack_timeout) + "ms", false);
            continue;
        }
        if (refusals_settled()) {
            settle_refusals(cursor);
            continue;
        }
        publish_states();
        keep_status_will();          // session hooks: the status will's own connection
        if (!gate_open()) continue;  // session hooks: Sparkplug's primary host is offline
        publish_direct();
        fill_window(cursor);
    }
    shutdown();
}

void mqtt_publisher::impl::shutdown() {
    const bool was_connected = connected_ && client_->is_connected();
    if (was_connected) {
        // States set during the stop (devices "offline"), before the gateway's own "offline".
        publish_states(true);
        hooks_before_disconnect();  // session hooks: Sparkplug NDEATH
        // A clean DISCONNECT does not fire the will, so say "offline" ourselves.
        try {
            auto tok = client_->publish(status_topic_, std::string("offline"), 1, true);
            if (!tok->wait_for(k_status_timeout)) m_err_status_.Increment();
        } catch (const mqtt::exception& e) {
            m_err_status_.Increment();
            log::warn(k_component, "status publish failed",
                      {{"topic", status_topic_}, {"error", e.what()}});
        }
    }
    try {
        // Also aborts a connect still in progress.
        client_->disconnect(k_disconnect_timeout)->wait_for(k_disconnect_timeout * 2);
    } catch (const mqtt::exception&) {
    }
    drop_status_will();
    std::size_t unacked = 0;
    {
        std::lock_guard lk(mu_);
        unacked = outstanding_.size();
        outstanding_.clear();
    }
    connected_ = false;
    m_connected_.Set(0);
    m_inflight_.Set(0);
    log::info(k_component, "stopped",
              {{"was_connected", was_connected ? "true" : "false"},
               {"unacked", std::to_string(unacked)},
               {"left_in_spool", std::to_string(spool_.messages())}});
}

}  // namespace ferry::upstream
