// The MQTT publisher (see mqtt_publisher.hpp and docs/DELIVERY.md).
//
// Design note. One sender thread owns the connection life cycle and the spool cursor:
//   disconnected -> (backoff) -> connect over all uris -> publish "online" -> cursor = 0
//   -> fill the in-flight window from spool.peek(cursor) -> ... -> connection lost -> forget
//   every outstanding token, bump the generation, replace the Paho client (its queue of
//   unwritten publishes would otherwise overtake the resend) -> disconnected.
// Paho's callback thread only completes deliveries: it removes the entry from `outstanding_`,
// acks the spool and wakes the sender. Each publish carries a never-reused sequence number as
// its user context, so a late callback from an earlier connection finds nothing and is ignored.
// Paho's own persistence, offline buffering and automatic reconnect are all off: the spool is
// the only store, and our reconnect loop decides when and from where to resend.
// Two answers that are not a lost connection (docs/DELIVERY.md): no PUBACK within ack_timeout
// (the sender resets the connection, as if lost), and a refusal (MQTT 5 reason >= 0x80): the
// sender stops filling the window until every publish in it has its answer, settles the
// refused ones (drop or keep, never letting an older batch follow a newer one on its topic) and
// goes on from the oldest message in the spool, one at a time until the broker accepts one.
// Dead letters (issue 14): before a spooled message is published it is checked
// (dead_letter.hpp: topic, QoS, payload shape, bytes column, packet size against the broker's
// Maximum Packet Size from the CONNACK or the config). One that fails can never be delivered:
// it is moved into the spool's dead_letters table, counted, announced on the dead-letter topic
// (QoS 1, apart from the spool), and the window goes on with the next message, in order.
#include "upstream/mqtt_publisher.hpp"

#include <mqtt/async_client.h>
#include <mqtt/connect_options.h>
#include <mqtt/create_options.h>
#include <mqtt/iaction_listener.h>
#include <mqtt/message.h>
#include <mqtt/ssl_options.h>
#include <mqtt/will_options.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "core/conservation.hpp"
#include "core/log.hpp"
#include "core/topic.hpp"
#include "upstream/dead_letter.hpp"
#include "upstream/spool.hpp"

namespace ferry::upstream {

namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

constexpr auto k_connect_timeout = 3s;        // per uri, enforced by Paho (see DELIVERY.md)
constexpr auto k_backoff_min = 100ms;         // first retry delay, doubled per failure
constexpr auto k_backoff_max = 30000ms;       // cap
constexpr double k_jitter = 0.2;              // +-20 %
constexpr auto k_healthy_after = 5s;          // a connection this old resets the backoff
constexpr auto k_idle_wait = 100ms;           // longest sleep without re-checking state
constexpr auto k_status_timeout = 500ms;      // wait for the "offline" PUBACK on stop
constexpr auto k_disconnect_timeout = 300ms;  // let Paho finish work before DISCONNECT
constexpr int k_result_room = 16;             // command results in flight beside the window
constexpr std::uint32_t k_min_packet_limit =
    1024;  // a CONNACK's Maximum Packet Size below: ignored
constexpr const char* k_component = "mqtt";

// A refused connect in words: Paho says "MQTT error [135]: CONNACK return code"; the broker's
// MQTT 5 reason code (or the 3.1.1 CONNACK code) says why.
std::string refusal(const mqtt::exception& e) {
    // Paho puts a refusing CONNACK's MQTT 5 reason code in the return code.
    const int reason = e.get_reason_code() >= 0x80 ? e.get_reason_code() : e.get_return_code();
    if (reason >= 0x80 && reason <= 0xff) {
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
    if (code >= 1 && code <= 5 &&
        std::string_view(e.what()).find("CONNACK") != std::string_view::npos)
        return std::string(v311[code]) + " (CONNACK code " + std::to_string(code) + ")";
    return e.what();
}

std::int64_t unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string ms_string(std::chrono::milliseconds d) {
    return std::to_string(d.count());
}

// ferry_mqtt_errors_total{reason}.
prometheus::Counter& mqtt_error(prometheus::Registry& registry, const char* reason) {
    return prometheus::BuildCounter()
        .Name("ferry_mqtt_errors_total")
        .Help("Publisher errors by reason")
        .Register(registry)
        .Add({{"reason", reason}});
}

// Return codes with which Paho fails a publish because the connection is (being) closed.
bool cancelled(int rc) {
    return rc == MQTTASYNC_DISCONNECTED || rc == MQTTASYNC_OPERATION_INCOMPLETE;
}

}  // namespace

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
    };
    // A publish the broker refused (MQTT 5 reason >= 0x80), waiting for the rest of its window.
    struct refused_publish {
        std::string topic;
        std::uint64_t batch = 0;
        int reason = 0;
    };

    impl(const config::mqtt_settings& settings, std::string gateway_id, spool& sp,
         prometheus::Registry& registry, const std::string& dead_letter_topic);
    ~impl();

    void start();
    void stop(std::chrono::milliseconds drain);

    void run();
    bool should_exit();
    bool try_connect(std::uint64_t attempt);
    void reset_connection(const std::string& why, bool lost = true);
    void fill_window(std::int64_t& cursor);
    bool ack_overdue();
    bool refusals_settled();
    void settle_refusals(std::int64_t& cursor);
    bool publish_one(spooled_message& m);
    bool dead_lettered(const spooled_message& m);
    std::uint64_t packet_limit() const;
    void wait_backoff(std::chrono::milliseconds delay);
    void shutdown();
    void on_delivered(const mqtt::token& tok, bool ok);
    void on_connection_lost(std::uint64_t epoch, const std::string& cause);
    void make_client();
    bool publish_result(const std::string& topic, const std::string& payload);

    // Settings.
    config::mqtt_settings settings_;
    std::string gateway_id_;
    std::string status_topic_;
    std::size_t inflight_max_;  // from the config
    spool& spool_;
    mqtt::connect_options conn_opts_;
    mqtt::create_options create_opts_;

    // Metrics.
    prometheus::Gauge& m_connected_;
    prometheus::Gauge& m_inflight_;
    prometheus::Counter& m_published_ok_;
    prometheus::Counter& m_published_error_;
    prometheus::Counter& m_connects_ok_;
    prometheus::Counter& m_connects_error_;
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
    // the broker accepted per topic, and per topic the newest id whose outcome a lost
    // connection hid while a refusal was pending (it may have been accepted).
    std::map<std::int64_t, refused_publish> refused_;
    std::unordered_map<std::string, std::int64_t> newest_acked_;
    std::unordered_map<std::string, std::int64_t> maybe_acked_;
    bool probe_ = false;  // after a refusal: one message at a time until one is accepted
    std::unordered_map<std::int64_t, int> refusals_;  // spool id -> times refused so far

    std::atomic<bool> connected_{false};
    std::atomic<std::uint64_t> acks_this_connection_{0};
    // The broker's Maximum Packet Size from the last MQTT 5 CONNACK (0: not announced).
    std::atomic<std::uint64_t> broker_max_packet_{0};

    // Sender thread only.
    std::int64_t highest_taken_ = 0;
    std::chrono::milliseconds backoff_ = k_backoff_min;
    steady::time_point connected_at_{};
    std::mt19937 rng_{std::random_device{}()};

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

    // Declared after everything its callbacks touch, so it is destroyed first.
    delivery_listener listener_;
    std::unique_ptr<mqtt::async_client> client_;
};

mqtt_publisher::impl::impl(const config::mqtt_settings& settings, std::string gateway_id, spool& sp,
                           prometheus::Registry& registry, const std::string& dead_letter_topic)
    : settings_(settings),
      gateway_id_(std::move(gateway_id)),
      status_topic_("ferry/" + gateway_id_ + "/status"),
      inflight_max_(static_cast<std::size_t>(std::max(1, settings.inflight))),
      spool_(sp),
      m_connected_(prometheus::BuildGauge()
                       .Name("ferry_mqtt_connected")
                       .Help("1 while connected to an MQTT broker")
                       .Register(registry)
                       .Add({})),
      m_inflight_(prometheus::BuildGauge()
                      .Name("ferry_mqtt_inflight")
                      .Help("Messages published and not yet acknowledged by the broker")
                      .Register(registry)
                      .Add({})),
      m_published_ok_(prometheus::BuildCounter()
                          .Name("ferry_mqtt_published_total")
                          .Help("Spool messages published, by broker acknowledgement result")
                          .Register(registry)
                          .Add({{"result", "ok"}})),
      m_published_error_(prometheus::BuildCounter()
                             .Name("ferry_mqtt_published_total")
                             .Help("Spool messages published, by broker acknowledgement result")
                             .Register(registry)
                             .Add({{"result", "error"}})),
      m_connects_ok_(prometheus::BuildCounter()
                         .Name("ferry_mqtt_connects_total")
                         .Help("Connection attempts (each over the whole uris list)")
                         .Register(registry)
                         .Add({{"result", "ok"}})),
      m_connects_error_(prometheus::BuildCounter()
                            .Name("ferry_mqtt_connects_total")
                            .Help("Connection attempts (each over the whole uris list)")
                            .Register(registry)
                            .Add({{"result", "error"}})),
      m_received_(prometheus::BuildCounter()
                      .Name("ferry_mqtt_received_total")
                      .Help("Distinct spool messages taken for sending")
                      .Register(registry)
                      .Add({})),
      m_sent_(prometheus::BuildCounter()
                  .Name("ferry_mqtt_sent_total")
                  .Help("Spool messages acknowledged by the broker and removed from the spool")
                  .Register(registry)
                  .Add({})),
      m_err_connect_(mqtt_error(registry, "connect")),
      m_err_publish_(mqtt_error(registry, "publish")),
      m_err_lost_(mqtt_error(registry, "connection_lost")),
      m_err_status_(mqtt_error(registry, "status")),
      m_err_subscribe_(mqtt_error(registry, "subscribe")),
      m_err_result_(mqtt_error(registry, "command_result")),
      m_err_ack_timeout_(mqtt_error(registry, "ack_timeout")),
      m_err_refused_(mqtt_error(registry, "refused")),
      m_dropped_refused_(events_dropped(registry, drop::refused)),
      m_events_delivered_(
          prometheus::BuildCounter()
              .Name("ferry_events_delivered_total")
              .Help("Events in spool messages the broker acknowledged, counted once "
                    "per message removed from the spool")
              .Register(registry)
              .Add({})),
      m_dropped_too_large_(events_dropped(registry, drop::too_large)),
      m_dropped_corrupt_(events_dropped(registry, drop::corrupt)),
      m_err_notice_(mqtt_error(registry, "dead_letter_notice")),
      m_latency_(prometheus::BuildHistogram()
                     .Name("ferry_delivery_latency_seconds")
                     .Help("From entering the spool to broker acknowledgement")
                     .Register(registry)
                     .Add({}, prometheus::Histogram::BucketBoundaries{
                                  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                                  5.0, 10.0, 30.0, 60.0})) {
    listener_.owner = this;
    auto& dead = prometheus::BuildCounter()
                     .Name("ferry_upstream_dead_letters_total")
                     .Help("Spooled messages moved out of the stream as undeliverable, by reason")
                     .Register(registry);
    for (std::size_t r = 1; r < m_dead_.size(); ++r)
        m_dead_[r] = &dead.Add({{"reason", std::string(to_string(static_cast<dead_reason>(r)))}});
    // {device}, {tag} and {rule} of the template have no value for a spooled message.
    if (auto t = topic_template::compile(dead_letter_topic))
        dead_letter_topic_ = t->expand({gateway_id_, "upstream", "upstream", "upstream"});

    const int version = settings_.version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    if (settings_.uris.empty()) throw std::runtime_error("mqtt publisher: uris is empty");

    conn_opts_.set_mqtt_version(version);
    if (version == MQTTVERSION_5) {
        // Paho rejects cleansession=1 on a v5 connect; v5 says clean_start instead.
        conn_opts_.set_clean_session(false);
        conn_opts_.set_clean_start(true);
    } else {
        conn_opts_.set_clean_start(false);
        conn_opts_.set_clean_session(true);
    }
    conn_opts_.set_keep_alive_interval(
        std::chrono::duration_cast<std::chrono::seconds>(settings_.keepalive));
    conn_opts_.set_connect_timeout(k_connect_timeout);
    conn_opts_.set_automatic_reconnect(false);
    // Room for the window plus the status message, plus answers to downlink commands
    // (publish_result), which do not count against the spool's window.
    conn_opts_.set_max_inflight(static_cast<int>(inflight_max_) + 2 + k_result_room);
    if (!settings_.username.empty()) conn_opts_.set_user_name(settings_.username);
    if (!settings_.password.empty()) conn_opts_.set_password(settings_.password);
    conn_opts_.set_will(mqtt::will_options(status_topic_, std::string("offline"), 1, true));
    if (settings_.tls) {
        mqtt::ssl_options ssl;
        if (!settings_.tls->ca_file.empty()) ssl.set_trust_store(settings_.tls->ca_file);
        if (!settings_.tls->cert_file.empty()) ssl.set_key_store(settings_.tls->cert_file);
        if (!settings_.tls->key_file.empty()) ssl.set_private_key(settings_.tls->key_file);
        ssl.set_enable_server_cert_auth(true);
        ssl.set_verify(settings_.tls->verify_hostname);
        conn_opts_.set_ssl(std::move(ssl));
    }
    conn_opts_.set_servers(std::make_shared<mqtt::string_collection>(settings_.uris));

    // No offline buffering: publish fails fast when disconnected.
    create_opts_ = mqtt::create_options(version);
    // Paho caps commands queued but not yet written (default 100) even while connected; a
    // window larger than that would fail publishes.
    create_opts_.set_max_buffered_messages(std::max(100, static_cast<int>(inflight_max_) + 16));
    make_client();
}

void mqtt_publisher::impl::make_client() {
    std::uint64_t epoch = 0;
    {
        std::lock_guard lk(mu_);
        epoch = ++client_epoch_;
    }
    // nullptr: no Paho persistence; the spool is the only store.
    client_ = std::make_unique<mqtt::async_client>(settings_.uris.front(), settings_.client_id,
                                                   create_opts_, nullptr);
    if (sub_handler_) {
        client_->set_message_callback([this](mqtt::const_message_ptr msg) {
            if (msg) sub_handler_(msg->get_topic(), msg->get_payload_str(), msg->is_retained());
        });
    }
    client_->set_connection_lost_handler(
        [this, epoch](const std::string& cause) { on_connection_lost(epoch, cause); });
    client_->set_disconnected_handler([this, epoch](const mqtt::properties&, mqtt::ReasonCode rc) {
        on_connection_lost(epoch,
                           "server disconnect, reason " + std::to_string(static_cast<int>(rc)));
    });
}

mqtt_publisher::impl::~impl() {
    stop(0ms);
    // Destroy the client before the members its callbacks use (declaration order does this
    // too; being explicit keeps it true if members move).
    client_.reset();
}

void mqtt_publisher::impl::start() {
    std::lock_guard lk(mu_);
    if (started_ || stopped_) return;
    started_ = true;
    thread_ = std::thread([this] { run(); });
}

void mqtt_publisher::impl::stop(std::chrono::milliseconds drain) {
    {
        std::lock_guard lk(mu_);
        if (stopped_) return;
        stopped_ = true;
        stop_requested_ = true;
        deadline_ = steady::now() + drain;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

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

void mqtt_publisher::impl::on_delivered(const mqtt::token& tok, bool ok) {
    const auto pub =
        static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(tok.get_user_context()));
    pending p;
    bool current = false;
    // The broker said no (MQTT 5 PUBACK/PUBREC reason >= 0x80): not a broken connection but
    // an answer about this message, settled by the refusal policy (settle_refusals).
    const int reason = static_cast<int>(tok.get_reason_code());
    const bool refused = !ok && reason >= 0x80 && !cancelled(tok.get_return_code());
    // An acknowledged message leaves the spool before its slot in the window frees: freed
    // first, the sender could publish one more while this row is still in the file, and a
    // crash then would resend one message beyond the window (the fault campaign saw 17 back
    // with a window of 16). The broker has it: removing it is right even if the connection has
    // dropped since. A resent duplicate acked again finds no row and counts 0 events, so each
    // event is counted as delivered once.
    std::uint32_t delivered_events = 0;
    if (ok) {
        std::int64_t id = 0;
        {
            std::lock_guard lk(mu_);
            auto it = outstanding_.find(pub);
            if (it == outstanding_.end()) return;  // from a connection we already gave up on
            id = it->second.id;
        }
        delivered_events = spool_.ack(id);
    }
    {
        std::lock_guard lk(mu_);
        auto it = outstanding_.find(pub);
        if (it == outstanding_.end()) {
            // Forgotten by a reconnect meanwhile; the row is gone from the spool all the same.
            m_events_delivered_.Increment(static_cast<double>(delivered_events));
            return;
        }
        p = std::move(it->second);
        outstanding_.erase(it);
        current = p.gen == gen_ && !lost_;
        // Paho cancels what was queued or in flight when the connection closes; the loss
        // itself is handled once, by the connection-lost path, and everything is resent.
        if (!ok && cancelled(tok.get_return_code())) current = false;
        if (refused) {
            refused_[p.id] = refused_publish{p.topic, p.batch, reason};
        } else if (!ok && current) {
            publish_failed_ = true;
        }
        if (ok) {
            auto& newest = newest_acked_[p.topic];
            newest = std::max(newest, p.id);
            probe_ = false;  // the broker takes messages again: open the window
            refusals_.erase(p.id);
        }
        m_inflight_.Set(static_cast<double>(outstanding_.size()));
    }
    if (refused) {
        m_published_error_.Increment();
        m_err_refused_.Increment();
        log::warn(
            k_component, "publish refused",
            {{"id", std::to_string(p.id)},
             {"topic", p.topic},
             {"batch", std::to_string(p.batch)},
             {"reason", std::to_string(reason)},
             {"words", mqtt::exception::reason_code_str(reason)},
             {"policy", settings_.refused == config::refused_policy::block ? "block" : "drop"}});
    } else if (ok) {
        m_events_delivered_.Increment(static_cast<double>(delivered_events));
        if (log::enabled(config::log_level::debug)) {
            log::debug(k_component, "acked",
                       {{"id", std::to_string(p.id)},
                        {"mid", std::to_string(tok.get_message_id())},
                        {"generation", std::to_string(p.gen)},
                        {"current", current ? "true" : "false"}});
        }
        acks_this_connection_.fetch_add(1, std::memory_order_relaxed);
        m_published_ok_.Increment();
        m_sent_.Increment();
        const auto age_ms = std::max<std::int64_t>(0, unix_ms() - p.created_ms);
        m_latency_.Observe(static_cast<double>(age_ms) / 1000.0);
    } else if (current) {
        m_published_error_.Increment();
        m_err_publish_.Increment();
        log::warn(k_component, "publish failed",
                  {{"id", std::to_string(p.id)},
                   {"rc", std::to_string(tok.get_return_code())},
                   {"reason", std::to_string(static_cast<int>(tok.get_reason_code()))},
                   {"action", "reconnect_and_resend"}});
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

void mqtt_publisher::impl::wait_backoff(std::chrono::milliseconds delay) {
    const auto until = steady::now() + delay;
    std::unique_lock lk(mu_);
    while (steady::now() < until) {
        if (stop_requested_ && steady::now() >= deadline_) return;
        auto wake = stop_requested_ ? std::min(until, deadline_) : until;
        cv_.wait_until(lk, wake);
        if (stop_requested_) {
            // The drain may have nothing left to deliver: let should_exit() decide now.
            lk.unlock();
            if (should_exit()) return;
            lk.lock();
        }
    }
}

bool mqtt_publisher::impl::try_connect(std::uint64_t attempt) {
    // One attempt walks the uris in order, one server list of one uri at a time: the same
    // failover as handing Paho the whole list, but we know (and log) which uri answered.
    for (std::size_t i = 0; i < settings_.uris.size(); ++i) {
        const auto& uri = settings_.uris[i];
        const bool last = i + 1 == settings_.uris.size();
        const auto begin = steady::now();
        try {
            auto opts = conn_opts_;
            opts.set_servers(
                std::make_shared<mqtt::string_collection>(std::vector<std::string>{uri}));
            auto tok = client_->connect(opts);
            // Paho enforces the connect timeout; poll so that stop() is not held up by it.
            while (!tok->wait_for(50ms)) {
                std::lock_guard lk(mu_);
                if (stop_requested_ && steady::now() >= deadline_) {
                    log::warn(k_component, "connect abandoned",
                              {{"uri", uri}, {"why", "stopping"}});
                    return false;
                }
            }
            bool session_present = false;
            std::size_t window = inflight_max_;
            broker_max_packet_ = 0;  // this broker's, if its CONNACK says
            try {
                const auto rsp = tok->get_connect_response();
                session_present = rsp.is_session_present();
                // More in flight than the broker's Receive Maximum only queues inside Paho,
                // where it waits for Paho's timer tick: 400 msg/s instead of 14,000 in the test.
                const auto& props = rsp.get_properties();
                if (props.contains(mqtt::property::RECEIVE_MAXIMUM)) {
                    const auto rm =
                        mqtt::get<std::uint16_t>(props, mqtt::property::RECEIVE_MAXIMUM);
                    if (rm > 0) window = std::min<std::size_t>(window, rm);
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
                outstanding_.clear();
                lost_ = false;
                publish_failed_ = false;
            }
            m_inflight_.Set(0);
            acks_this_connection_ = 0;
            connected_at_ = steady::now();
            connected_ = true;
            m_connected_.Set(1);
            m_connects_ok_.Increment();
            log::info(k_component, "connected",
                      {{"uri", uri},
                       {"client_id", settings_.client_id},
                       {"version", settings_.version == 5 ? "5" : "3.1.1"},
                       {"session_present", session_present ? "true" : "false"},
                       {"window", std::to_string(window)},
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
            subscribe_after_connect();
            return true;
        } catch (const mqtt::exception& e) {
            m_connects_error_.Increment();
            m_err_connect_.Increment();
            log::warn(k_component, "connect failed",
                      {{"uri", uri},
                       {"attempt", std::to_string(attempt)},
                       {"error", refusal(e)},
                       {"next", last ? "retry in " + ms_string(backoff_) + "ms" : "next uri"}});
        }
        std::lock_guard lk(mu_);
        if (stop_requested_ && steady::now() >= deadline_) return false;
    }
    return false;
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
                auto& maybe = maybe_acked_[p.topic];
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
    // Destroying the client discards its queue. Its late callbacks are ignored from here on.
    {
        std::lock_guard lk(mu_);
        ++client_epoch_;
    }
    {
        std::lock_guard ck(client_mu_);
        client_.reset();
        make_client();
    }
    log::warn(k_component, "disconnected",
              {{"cause", why},
               {"unacked", std::to_string(forgotten)},
               {"action", "resend_from_oldest"},
               {"retry_in_ms", ms_string(backoff_)}});
}

bool mqtt_publisher::impl::publish_one(spooled_message& m) {
    std::uint64_t pub = 0;
    {
        std::lock_guard lk(mu_);
        pub = next_pub_++;
        outstanding_[pub] =
            pending{gen_, m.id, m.created_ms, steady::now(), m.topic, batch_of(m.payload)};
        m_inflight_.Set(static_cast<double>(outstanding_.size()));
    }
    if (m.id > highest_taken_) {
        highest_taken_ = m.id;
        m_received_.Increment();
    }
    try {
        auto msg =
            mqtt::make_message(m.topic, mqtt::binary_ref(std::move(m.payload)), m.qos, m.retain);
        client_->publish(msg, reinterpret_cast<void*>(static_cast<std::uintptr_t>(pub)), listener_);
        return true;
    } catch (const mqtt::exception& e) {
        bool live = false;
        {
            std::lock_guard lk(mu_);
            outstanding_.erase(pub);
            if (cancelled(e.get_return_code())) {
                // The connection dropped under us; Paho's lost callback may still be coming.
                if (!lost_) lost_cause_ = "client disconnected";
                lost_ = true;
            } else {
                live = !lost_;
                publish_failed_ = true;
            }
        }
        if (live) {
            m_published_error_.Increment();
            m_err_publish_.Increment();
            log::warn(k_component, "publish failed",
                      {{"id", std::to_string(m.id)}, {"error", e.what()}});
        }
        cv_.notify_all();
        return false;
    }
}

void mqtt_publisher::impl::fill_window(std::int64_t& cursor) {
    std::size_t room = 0;
    // Acked rows the spool could not delete yet (disk errors) keep their slot: a crash now
    // would resend them, and resends must stay within the window (the 31-min fault campaign,
    // seed 3290849218, saw 17 back with a window of 16 after write errors and a kill -9).
    const std::size_t unsettled = spool_.unsettled_acks();
    // The window also slides: no message newer than the oldest unacknowledged one plus the
    // window goes out (spool ids), so a resend never reaches further back than the window
    // even when the broker acknowledges later messages but not an earlier one (the campaign,
    // seed 1336295787: PUBACKs withheld, then passed again, a resend 17 back with 12 in flight).
    std::int64_t last_allowed = std::numeric_limits<std::int64_t>::max();
    {
        std::unique_lock lk(mu_);
        // After a refusal nothing new is taken until the window has settled, then one message
        // at a time until the broker accepts one (see settle_refusals).
        const std::size_t window = !refused_.empty() ? 0 : probe_ ? 1 : window_;
        const auto slide_room = [&]() -> std::size_t {
            if (outstanding_.empty() || window == 0) return window;
            std::int64_t oldest = std::numeric_limits<std::int64_t>::max();
            for (const auto& [pub, p] : outstanding_)
                oldest = std::min(oldest, p.id);
            last_allowed = oldest + static_cast<std::int64_t>(window) - 1;
            return cursor >= last_allowed ? 0 : static_cast<std::size_t>(last_allowed - cursor);
        };
        const std::size_t busy = outstanding_.size() + unsettled;
        room = std::min(window - std::min(window, busy), slide_room());
        if (room == 0) {
            if (unsettled != 0 && outstanding_.size() < window) {
                // Only the spool holds the window: nothing here will signal, so re-check soon.
                cv_.wait_for(lk, k_idle_wait,
                             [&] { return lost_ || publish_failed_ || stop_requested_; });
                return;
            }
            // Window full: wait for an ack (or loss, or stop).
            cv_.wait_for(lk, k_idle_wait, [&] {
                return (refused_.empty() && outstanding_.size() < window && slide_room() > 0) ||
                       (!refused_.empty() && outstanding_.empty()) || lost_ || publish_failed_ ||
                       stop_requested_;
            });
            return;
        }
    }
    auto msgs = spool_.peek(cursor, room);
    if (msgs.empty()) {
        spool_.wait_for_messages(cursor, k_idle_wait);
        return;
    }
    for (auto& m : msgs) {
        if (m.id > last_allowed) return;  // beyond the sliding window (ids may have gaps)
        if (dead_lettered(m)) {
            cursor = m.id;
            continue;
        }
        if (!publish_one(m)) return;
        cursor = m.id;
    }
}

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
    const auto reason = check_spooled(m, packet_limit(), settings_.version == 5, &detail);
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

// The oldest outstanding publish has waited longer than ack_timeout. A broker (or anything in
// between) that keeps the connection alive, answering pings, but never acks would otherwise
// hold the window full forever; a reconnect makes the resend from the oldest happen.
bool mqtt_publisher::impl::ack_overdue() {
    std::int64_t id = 0;
    steady::duration waited{};
    std::size_t unacked = 0;
    {
        std::lock_guard lk(mu_);
        if (outstanding_.empty()) return false;
        const auto oldest = std::min_element(
            outstanding_.begin(), outstanding_.end(),
            [](const auto& a, const auto& b) { return a.second.sent < b.second.sent; });
        id = oldest->second.id;
        waited = steady::now() - oldest->second.sent;
        unacked = outstanding_.size();
    }
    if (waited < settings_.ack_timeout) return false;
    m_err_ack_timeout_.Increment();
    log::warn(
        k_component, "no PUBACK in time",
        {{"id", std::to_string(id)},
         {"waited_ms", ms_string(std::chrono::duration_cast<std::chrono::milliseconds>(waited))},
         {"ack_timeout_ms", ms_string(settings_.ack_timeout)},
         {"unacked", std::to_string(unacked)},
         {"action", "reconnect_and_resend"}});
    return true;
}

// Every publish of the window that held a refusal has its answer (or was forgotten with a
// lost connection).
bool mqtt_publisher::impl::refusals_settled() {
    std::lock_guard lk(mu_);
    return !refused_.empty() && outstanding_.empty();
}

// Settles the refused publishes of a window once nothing is outstanding (fill_window takes
// nothing new meanwhile). Per refused message, oldest first:
//  - a later message on its topic was accepted (or may have been: its answer was lost with
//    the connection): delivering this one now would show a consumer an older batch after a
//    newer one on that topic, so it is dropped, whatever the policy;
//  - policy `drop` and refused `refused_attempts` times: dropped;
//  - else it stays in the spool. The stream resumes from the oldest message in the spool, one
//    message at a time until the broker accepts one, after a backoff that doubles with each
//    refusal of the same message: nothing newer overtakes it, and `block` does not creep.
// Messages the broker accepted in the window were acked as usual: the consumer has them.
void mqtt_publisher::impl::settle_refusals(std::int64_t& cursor) {
    struct verdict {
        std::int64_t id;
        refused_publish r;
        int times;
        bool overtaken;
    };
    std::vector<verdict> verdicts;
    {
        std::lock_guard lk(mu_);
        for (auto& [id, r] : refused_) {
            std::int64_t newer = 0;
            if (auto it = newest_acked_.find(r.topic); it != newest_acked_.end())
                newer = it->second;
            if (auto it = maybe_acked_.find(r.topic); it != maybe_acked_.end())
                newer = std::max(newer, it->second);
            verdicts.push_back({id, std::move(r), ++refusals_[id], newer > id});
        }
        refused_.clear();
        maybe_acked_.clear();
    }
    int kept_times = 0;  // refusals of the oldest message kept
    for (auto& v : verdicts) {
        const bool exhausted = settings_.refused == config::refused_policy::drop &&
                               v.times >= settings_.refused_attempts;
        if (!v.overtaken && !exhausted) {
            if (kept_times == 0) kept_times = v.times;
            continue;
        }
        {
            std::lock_guard lk(mu_);
            refusals_.erase(v.id);
        }
        const auto events = spool_.drop(v.id);
        m_dropped_refused_.Increment(static_cast<double>(events));
        log::error(k_component, "refused message dropped",
                   {{"id", std::to_string(v.id)},
                    {"topic", v.r.topic},
                    {"batch", std::to_string(v.r.batch)},
                    {"reason", std::to_string(v.r.reason)},
                    {"refusals", std::to_string(v.times)},
                    {"events", std::to_string(events)},
                    {"why", v.overtaken ? "a later message on the topic was accepted"
                                        : "refused_attempts reached"}});
    }
    cursor = 0;  // every publish has its answer: go on from the oldest message in the spool
    if (kept_times == 0) return;
    {
        std::lock_guard lk(mu_);
        probe_ = true;
    }
    auto delay = k_backoff_min;
    for (int i = 1; i < kept_times && delay < k_backoff_max; ++i)
        delay *= 2;
    wait_backoff(std::min(delay, k_backoff_max));
}

void mqtt_publisher::impl::run() {
    std::int64_t cursor = 0;
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
                std::uniform_real_distribution<double> jitter(1.0 - k_jitter, 1.0 + k_jitter);
                wait_backoff(std::chrono::milliseconds(static_cast<std::int64_t>(
                    static_cast<double>(backoff_.count()) * jitter(rng_))));
                backoff_ = std::min(backoff_ * 2, k_backoff_max);
                if (should_exit()) break;
            }
            first = false;
            ++attempt;
            if (try_connect(attempt)) {
                attempt = 0;
                cursor = 0;  // resend everything still in the spool, oldest first
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
        fill_window(cursor);
    }
    shutdown();
}

void mqtt_publisher::impl::shutdown() {
    const bool was_connected = connected_ && client_->is_connected();
    if (was_connected) {
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

// The session starts clean on every connect, so the command subscription is made again each
// time. A refused subscription is logged and counted; telemetry goes on without commands.
void mqtt_publisher::impl::subscribe_after_connect() {
    if (sub_filter_.empty()) return;
    std::string error;
    try {
        auto tok = client_->subscribe(sub_filter_, 1);
        if (!tok->wait_for(k_connect_timeout)) {
            error = "no SUBACK within " + ms_string(k_connect_timeout);
        } else {
            const auto rsp = tok->get_subscribe_response();
            for (auto rc : rsp.get_reason_codes()) {
                const auto code = static_cast<int>(rc);
                if (code >= 0x80) error = "refused by the broker, reason " + std::to_string(code);
            }
        }
    } catch (const mqtt::exception& e) {
        error = e.what();
    }
    if (error.empty()) {
        log::info(k_component, "subscribed", {{"filter", sub_filter_}, {"qos", "1"}});
        return;
    }
    m_err_subscribe_.Increment();
    log::error(k_component, "subscribe failed; downlink commands will not arrive",
               {{"filter", sub_filter_}, {"error", error}});
}

bool mqtt_publisher::impl::publish_result(const std::string& topic, const std::string& payload) {
    std::string error;
    {
        std::lock_guard ck(client_mu_);
        if (!connected_ || !client_) {
            error = "not connected";
        } else {
            try {
                client_->publish(topic, payload.data(), payload.size(), 1, false);
            } catch (const mqtt::exception& e) {
                error = e.what();
            }
        }
    }
    if (error.empty()) return true;
    m_err_result_.Increment();
    log::warn(k_component, "command result not published", {{"topic", topic}, {"error", error}});
    return false;
}

mqtt_publisher::mqtt_publisher(const config::mqtt_settings& settings, std::string gateway_id,
                               spool& sp, prometheus::Registry& registry,
                               const std::string& dead_letter_topic)
    : impl_(std::make_unique<impl>(settings, std::move(gateway_id), sp, registry,
                                   dead_letter_topic)) {}

std::uint64_t mqtt_publisher::max_packet_size() const {
    return impl_->packet_limit();
}

mqtt_publisher::~mqtt_publisher() = default;

void mqtt_publisher::start() {
    impl_->start();
}

void mqtt_publisher::stop(std::chrono::milliseconds drain) {
    impl_->stop(drain);
}

bool mqtt_publisher::connected() const {
    return impl_->connected_;
}

void mqtt_publisher::set_subscription(std::string filter, message_handler handler,
                                      std::uint32_t max_packet) {
    impl_->sub_filter_ = std::move(filter);
    impl_->sub_handler_ = std::move(handler);
    // MQTT 5: the broker must not send this client a larger packet (it drops the message for
    // us instead), so a huge message never reaches Paho's buffers. MQTT 3.1.1 has no such
    // property: there the handler gets what the broker accepted and must drop it early.
    if (max_packet > 0 && impl_->settings_.version == 5) {
        mqtt::properties props = impl_->conn_opts_.get_properties();
        props.add(mqtt::property(mqtt::property::MAXIMUM_PACKET_SIZE, max_packet));
        impl_->conn_opts_.set_properties(props);
    }
    impl_->make_client();  // the current client gets the message callback too
}

bool mqtt_publisher::publish_result(const std::string& topic, const std::string& payload) {
    return impl_->publish_result(topic, payload);
}

}  // namespace ferry::upstream
