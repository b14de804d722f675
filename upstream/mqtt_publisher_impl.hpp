// Inside the MQTT publisher (not a public header: only upstream/mqtt_*.cpp include it). The
// design note is at the top of mqtt_publisher.cpp; the parts live in
//   mqtt_publisher.cpp     the note, options and metrics, the client, downlink, public calls
//   mqtt_connection.cpp    the sender thread: connect and failover, backoff, reset, shutdown
//   mqtt_window.cpp        the in-flight window: publish, deliveries, ack timeout, refusals
//   mqtt_dead_letters.cpp  spooled messages that can never be delivered
//   mqtt_states.cpp        retained states beside the spool (device status)
//   mqtt_hooks.cpp         session hooks (Sparkplug B): will, births, rewrite, inbound
//   mqtt_properties.cpp    MQTT 5 properties of a batch, expired spooled messages
// Members are guarded as the comments in impl say (mu_, client_mu_, or the sender thread).
#pragma once

#include <mqtt/async_client.h>
#include <mqtt/connect_options.h>
#include <mqtt/create_options.h>
#include <mqtt/iaction_listener.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "upstream/dead_letter.hpp"
#include "upstream/mqtt_publisher.hpp"
#include "upstream/port_probe.hpp"
#include "upstream/replay_pacer.hpp"
#include "upstream/spool.hpp"

namespace ferry::upstream {

using steady = std::chrono::steady_clock;

// Per uri, enforced by Paho (see DELIVERY.md).
constexpr std::chrono::seconds k_connect_timeout{3};
// Reconnect delay: the first retry, doubled per failure up to the cap, +-20 % jitter.
constexpr std::chrono::milliseconds k_backoff_min{100};
constexpr std::chrono::milliseconds k_backoff_max{30000};
constexpr double k_jitter = 0.2;
// In a wait longer than k_probe_after, the brokers' TCP ports are probed every k_probe_interval
// (jittered like the backoff), each probe given k_probe_settle to connect; a port that was
// closed and accepts again ends the wait (port_probe.hpp, docs/DELIVERY.md).
constexpr std::chrono::milliseconds k_probe_after{1000};
constexpr std::chrono::milliseconds k_probe_interval{1000};
constexpr std::chrono::milliseconds k_probe_settle{200};
// A connection this old resets the backoff.
constexpr std::chrono::seconds k_healthy_after{5};
// The longest sleep without re-checking state.
constexpr std::chrono::milliseconds k_idle_wait{100};
// How long stop waits for the "offline" PUBACK, and Paho's work before DISCONNECT.
constexpr std::chrono::milliseconds k_status_timeout{500};
constexpr std::chrono::milliseconds k_disconnect_timeout{300};
// How long connects go without subscriptions after a broker closed the connection over one.
constexpr std::chrono::seconds k_subscribe_pause{300};
constexpr int k_result_room = 16;         // command results in flight beside the window
constexpr std::size_t k_state_room = 16;  // retained states in flight beside both (at most)
constexpr std::uint32_t k_min_packet_limit =
    1024;  // a CONNACK's Maximum Packet Size below: ignored
constexpr const char* k_component = "mqtt";

inline std::int64_t unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

inline std::string ms_string(std::chrono::milliseconds d) {
    return std::to_string(d.count());
}

struct mqtt_publisher::impl {
    // Completion of one publish: Paho calls it on its callback thread.
    struct delivery_listener final : mqtt::iaction_listener {
        impl* owner = nullptr;
        void on_success(const mqtt::token& tok) override { owner->on_delivered(tok, true); }
        void on_failure(const mqtt::token& tok) override { owner->on_delivered(tok, false); }
    };

    struct pending {
        std::uint64_t gen = 0;
        std::int64_t id = 0;
        std::int64_t created_ms = 0;
        steady::time_point sent{};  // for ack_timeout
        std::string topic;          // for the refusal rules (order per topic)
        std::uint64_t batch = 0;    // for log lines
        bool replay = false;        // sent as part of the backlog's replay
    };
    // A publish the broker refused (MQTT 5 reason >= 0x80), waiting for the rest of its window.
    struct refused_publish {
        std::string topic;
        std::uint64_t batch = 0;
        int reason = 0;
        bool replay = false;
    };
    // Where the sender is in the spool (docs/DELIVERY.md, Live first): ids up to `boundary`
    // (the highest id stored when the connection came up) are the backlog, replayed from
    // `replay`; newer ones are live, sent from `live`. strict: boundary 0, one stream.
    struct cursors {
        std::int64_t live = 0;
        std::int64_t replay = 0;
        std::int64_t boundary = 0;
        bool replaying() const { return replay < boundary; }
    };

    impl(const config::mqtt_settings& settings, std::string gateway_id, spool& sp,
         prometheus::Registry& registry, const std::string& dead_letter_topic,
         const config::replay_settings& replay);
    ~impl();

    void start();
    void stop(std::chrono::milliseconds drain);

    void run();
    bool should_exit();
    bool try_connect(std::uint64_t attempt);
    void reset_connection(const std::string& why, bool lost = true);
    cursors start_streams();  // after a connect, or once refusals are settled
    void fill_window(cursors& c);
    bool ack_overdue();
    bool refusals_settled();
    void settle_refusals(cursors& c);
    bool publish_one(spooled_message& m, bool replay);
    bool dead_lettered(const spooled_message& m);
    bool expired(const spooled_message& m);  // dropped and counted (mqtt_properties.cpp)
    mqtt::properties properties_for(const spooled_message& m);
    std::uint64_t packet_limit() const;
    // `reconnect`: a wait for the next connect attempt (disconnected), which may probe the
    // brokers' ports and renew the client; never while connected (the refusal backoff).
    void wait_backoff(std::chrono::milliseconds delay, bool reconnect = false);
    std::chrono::milliseconds jittered(std::chrono::milliseconds d);
    void shutdown();
    void on_delivered(const mqtt::token& tok, bool ok);
    void on_connection_lost(std::uint64_t epoch, const std::string& cause);
    void make_client();
    void renew_client();  // the sender thread only
    bool publish_result(const std::string& topic, const std::string& payload);
    // Retained states (mqtt_states.cpp).
    void set_retained(const std::string& topic, std::string payload);
    void publish_states(bool all = false);  // the sender thread, connected
    void states_after_connect();            // the sender thread

    // Settings.
    config::mqtt_settings settings_;
    config::replay_settings replay_;
    replay_pacer pacer_;  // sender thread only
    std::string gateway_id_;
    std::string status_topic_;
    std::size_t inflight_max_;  // from the config
    spool& spool_;
    mqtt::connect_options conn_opts_;       // what every connect shares; options_for adds the rest
    std::uint32_t inbound_max_packet_ = 0;  // MQTT 5 Maximum Packet Size asked of the broker
    // The MQTT version of the current client (4: 3.1.1) and, with no `version` configured, the
    // one each uri agreed to (0: not yet known; offered 5 first). The sender thread only (and
    // set_subscription before start).
    int version_ = 5;
    std::vector<int> agreed_;
    mqtt::create_options create_for(int version) const;
    mqtt::connect_options options_for(int version) const;
    enum class connect_result { connected, failed, version_refused, stopping };
    // One CONNECT to uris[i] with `version`; `answer`: what went wrong, in words (on entry:
    // why the broker refused MQTT 5, when this is the 3.1.1 offer that follows).
    connect_result connect_to(std::size_t i, int version, std::uint64_t attempt,
                              std::string& answer);

    // Metrics.
    prometheus::Gauge& m_connected_;
    prometheus::Gauge& m_inflight_;
    prometheus::Counter& m_published_ok_;
    prometheus::Counter& m_published_error_;
    prometheus::Counter& m_connects_ok_;
    prometheus::Counter& m_connects_error_;
    prometheus::Counter& m_replayed_;
    prometheus::Counter& m_received_;
    prometheus::Counter& m_sent_;
    prometheus::Counter& m_err_connect_;
    prometheus::Counter& m_err_publish_;
    prometheus::Counter& m_err_lost_;
    prometheus::Counter& m_err_status_;
    prometheus::Counter& m_err_subscribe_;
    prometheus::Counter& m_err_result_;
    prometheus::Counter& m_err_ack_timeout_;
    prometheus::Counter& m_err_refused_;
    prometheus::Counter& m_dropped_refused_;   // ferry_events_dropped_total{reason="refused"}
    prometheus::Counter& m_events_delivered_;  // ferry_events_delivered_total
    // Dead letters: ferry_upstream_dead_letters_total{reason}, indexed by dead_reason; their
    // events in ferry_events_dropped_total{reason="too_large"|"corrupt"}.
    std::array<prometheus::Counter*, static_cast<std::size_t>(dead_reason::count_)> m_dead_{};
    prometheus::Counter& m_dropped_too_large_;
    prometheus::Counter& m_dropped_corrupt_;
    prometheus::Counter& m_dropped_expired_;  // ferry_events_dropped_total{reason="expired"}
    prometheus::Counter& m_err_notice_;
    std::string dead_letter_topic_;  // expanded: where dead-letter notices go
    prometheus::Histogram& m_latency_;

    // Shared between the sender thread, Paho's threads and stop(); guarded by mu_.
    std::mutex mu_;
    std::condition_variable cv_;
    std::unordered_map<std::uint64_t, pending> outstanding_;  // by publish sequence number
    std::uint64_t next_pub_ = 1;
    std::uint64_t gen_ = 0;
    std::uint64_t client_epoch_ = 0;  // which async_client instance is current
    std::size_t window_ = 1;          // inflight_max_, capped by the broker's v5 Receive Maximum
    bool lost_ = false;               // Paho reported connection loss
    std::string lost_cause_;
    bool publish_failed_ = false;  // a publish failed on a live connection: resync
    bool stop_requested_ = false;
    steady::time_point deadline_{};
    // Refusals (see settle_refusals): refused publishes not yet settled, the newest spool id
    // the broker accepted per topic and stream (stream_key), and per topic and stream the
    // newest id whose outcome a lost connection hid while a refusal was pending (it may have
    // been accepted).
    std::map<std::int64_t, refused_publish> refused_;
    using stream_key = std::pair<std::string, bool>;  // topic, replay
    std::map<stream_key, std::int64_t> newest_acked_;
    std::map<stream_key, std::int64_t> maybe_acked_;
    bool probe_ = false;  // after a refusal: one message at a time until one is accepted
    std::unordered_map<std::int64_t, int> refusals_;  // spool id -> times refused so far

    std::atomic<bool> connected_{false};
    std::atomic<std::uint64_t> acks_this_connection_{0};
    // The broker's Maximum Packet Size from the last MQTT 5 CONNACK (0: not announced).
    std::atomic<std::uint64_t> broker_max_packet_{0};

    // Sender thread only.
    std::int64_t highest_taken_ = 0;
    std::chrono::milliseconds backoff_ = k_backoff_min;
    std::size_t state_room_ = k_state_room;  // retained states in flight: the broker's share
    steady::time_point connected_at_{};
    std::mt19937 rng_{std::random_device{}()};
    port_probe ports_;                    // asked during long backoff waits
    std::uint64_t expired_unlogged_ = 0;  // expired messages dropped since the last log line
    steady::time_point expired_logged_{};

    std::thread thread_;
    bool started_ = false;
    bool stopped_ = false;

    // Downlink (commands). The filter and handler are set before start(). client_mu_ guards
    // replacing client_ (sender thread) against publish_result() from other threads; the
    // sender thread itself reads client_ without it, being its only writer.
    std::string sub_filter_;
    mqtt_publisher::message_handler sub_handler_;
    std::mutex client_mu_;
    void subscribe_after_connect();
    // One subscription after a connect (the sender thread); false: not made (logged, counted).
    bool subscribe(const std::string& filter, int qos, const char* lost);
    steady::time_point subscribe_paused_until_{};  // the sender thread

    // Retained states (device status), newest payload per topic: set from any thread under
    // states_mu_, published by the sender thread (`dirty`: not yet on this connection).
    struct retained_state {
        std::string payload;
        bool dirty = true;
    };
    std::mutex states_mu_;
    std::map<std::string, retained_state> states_;
    std::atomic<bool> states_dirty_{false};  // some state waits: spares the loop the lock
    std::vector<mqtt::delivery_token_ptr> state_tokens_;  // sender thread: states in flight

    // Session hooks (mqtt_hooks.cpp), set before start(); the queue of send_now().
    mqtt_publisher::session_hooks hooks_;
    std::mutex direct_mu_;
    std::vector<mqtt_publisher::outbound> direct_;
    std::atomic<bool> direct_waiting_{false};
    void apply_will(mqtt::connect_options& opts);  // the sender thread, before a connect
    void hooks_after_connect();                    // the sender thread, connected
    void publish_direct();                         // the sender thread, connected
    void hooks_before_disconnect();                // the sender thread, at a clean stop
    bool gate_open();                              // the sender thread, connected
    // The status sentinel (mqtt_hooks.cpp): with a hook's will, a second connection carries
    // the retained "offline" will of the status topic. The sender thread only.
    void keep_status_will();
    void drop_status_will();
    struct sentinel_listener final : mqtt::iaction_listener {
        impl* owner = nullptr;
        void on_success(const mqtt::token&) override;
        void on_failure(const mqtt::token&) override {}
    };
    sentinel_listener sentinel_listener_;
    steady::time_point sentinel_next_{};
    int sentinel_version_ = 5;
    // Publishes one message beside the spool after before_send; false: the connection is going.
    bool publish_beside(mqtt_publisher::outbound& m, std::vector<mqtt::delivery_token_ptr>& toks);
    void dispatch(const mqtt::const_message_ptr& msg);  // Paho's callback thread

    // Declared after everything its callbacks touch, so it is destroyed first.
    delivery_listener listener_;
    std::unique_ptr<mqtt::async_client> client_;
    std::unique_ptr<mqtt::async_client> sentinel_;  // destroyed first: its callbacks use the rest
};

}  // namespace ferry::upstream
