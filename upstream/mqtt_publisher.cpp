// The MQTT publisher (see mqtt_publisher.hpp and docs/DELIVERY.md).
//
// Design note. One sender thread owns the connection life cycle and the spool cursor:
//   disconnected -> (backoff; a long one ends early when a broker port seen closed accepts
//   again, port_probe.hpp) -> connect over all uris -> publish "online" -> cursor = 0
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
//
// The code: this file holds the note, options and metrics, the Paho client, downlink and the
// public calls; mqtt_publisher_impl.hpp lists the other parts (connection, window, dead letters).
#include "upstream/mqtt_publisher_impl.hpp"

#include <mqtt/ssl_options.h>
#include <mqtt/will_options.h>
#include <prometheus/family.h>
#include <prometheus/registry.h>

#include <algorithm>

#include "core/conservation.hpp"
#include "core/log.hpp"
#include "core/topic.hpp"

namespace ferry::upstream {

namespace {

// ferry_mqtt_errors_total{reason}.
prometheus::Counter& mqtt_error(prometheus::Registry& registry, const char* reason) {
    return prometheus::BuildCounter()
        .Name("ferry_mqtt_errors_total")
        .Help("Publisher errors by reason")
        .Register(registry)
        .Add({{"reason", reason}});
}

}  // namespace

using namespace std::chrono_literals;

mqtt_publisher::impl::impl(const config::mqtt_settings& settings, std::string gateway_id, spool& sp,
                           prometheus::Registry& registry, const std::string& dead_letter_topic,
                           const config::replay_settings& replay)
    : settings_(settings),
      replay_(replay),
      pacer_(replay.rate, replay.bytes_per_second),
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
      m_replayed_(prometheus::BuildCounter()
                      .Name("ferry_upstream_replayed_total")
                      .Help("Spool messages sent as replay: the backlog a connect found, beside "
                            "the live stream (resends included)")
                      .Register(registry)
                      .Add({})),
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
      m_dropped_expired_(events_dropped(registry, drop::expired)),
      m_err_notice_(mqtt_error(registry, "dead_letter_notice")),
      m_latency_(
          prometheus::BuildHistogram()
              .Name("ferry_delivery_latency_seconds")
              .Help("From entering the spool to broker acknowledgement")
              .Register(registry)
              .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025,
                                                               0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                                               10.0, 30.0, 60.0})),
      ports_(settings.uris) {
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

    if (settings_.uris.empty()) throw std::runtime_error("mqtt publisher: uris is empty");
    agreed_.assign(settings_.uris.size(), 0);
    // The first client speaks what the first uri will be offered; try_connect makes another
    // when a uri needs the other version (options_for).
    version_ = settings_.version == 4 ? 4 : 5;

    conn_opts_.set_keep_alive_interval(
        std::chrono::duration_cast<std::chrono::seconds>(settings_.keepalive));
    conn_opts_.set_connect_timeout(k_connect_timeout);
    conn_opts_.set_automatic_reconnect(false);
    // Room for the window plus the status message, plus answers to downlink commands
    // (publish_result) and retained states (device status), which do not count against the
    // spool's window.
    conn_opts_.set_max_inflight(static_cast<int>(inflight_max_ + 2 + k_result_room + k_state_room));
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

    make_client();
}

// Paho fixes a client's MQTT version when it is made: a v5 client cannot send a 3.1.1 CONNECT.
mqtt::create_options mqtt_publisher::impl::create_for(int version) const {
    // No offline buffering: publish fails fast when disconnected.
    mqtt::create_options o(version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1);
    // Paho caps commands queued but not yet written (default 100) even while connected; a
    // window larger than that would fail publishes.
    o.set_max_buffered_messages(std::max(100, static_cast<int>(inflight_max_) + 16));
    return o;
}

mqtt::connect_options mqtt_publisher::impl::options_for(int version) const {
    auto o = conn_opts_;
    if (version == 5) {
        o.set_mqtt_version(MQTTVERSION_5);
        // Paho rejects cleansession=1 on a v5 connect; v5 says clean_start instead.
        o.set_clean_session(false);
        o.set_clean_start(true);
        // MQTT 5: the broker must not send this client a larger packet (it drops the message
        // for us instead), so a huge command never reaches Paho's buffers. 3.1.1 has no such
        // property: there the downlink handler drops it early.
        if (inbound_max_packet_ > 0) {
            mqtt::properties props;
            props.add(mqtt::property(mqtt::property::MAXIMUM_PACKET_SIZE, inbound_max_packet_));
            o.set_properties(props);
        }
    } else {
        o.set_mqtt_version(MQTTVERSION_3_1_1);
        o.set_clean_start(false);
        o.set_clean_session(true);
    }
    return o;
}

void mqtt_publisher::impl::make_client() {
    // Paho initialises OpenSSL at its first client unless told not to: loading its config,
    // providers and error strings touched ~3 MiB of libcrypto pages (RSS) in a Ferry that
    // never speaks TLS. OpenSSL 3 initialises itself when a TLS connection first needs it.
    static std::once_flag paho_init;
    std::call_once(paho_init, [] {
        MQTTAsync_init_options init = MQTTAsync_init_options_initializer;
        init.do_openssl_init = 0;
        MQTTAsync_global_init(&init);
    });
    std::uint64_t epoch = 0;
    {
        std::lock_guard lk(mu_);
        epoch = ++client_epoch_;
    }
    // nullptr: no Paho persistence; the spool is the only store.
    client_ = std::make_unique<mqtt::async_client>(settings_.uris.front(), settings_.client_id,
                                                   create_for(version_), nullptr);
    if (sub_handler_ || hooks_.inbound) {
        client_->set_message_callback(
            [this](const mqtt::const_message_ptr& msg) { dispatch(msg); });
    }
    client_->set_connection_lost_handler(
        [this, epoch](const std::string& cause) { on_connection_lost(epoch, cause); });
    client_->set_disconnected_handler([this, epoch](const mqtt::properties&, mqtt::ReasonCode rc) {
        // The broker's MQTT 5 DISCONNECT says why in its reason code: put it in words too.
        const auto code = static_cast<int>(rc);
        const auto words = mqtt::exception::reason_code_str(code);
        on_connection_lost(epoch, "the broker disconnected us: " +
                                      (words.empty() ? std::string("reason") : words) +
                                      " (reason code " + std::to_string(code) + ")");
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

// Subscriptions are made again after every connect (the session starts clean). A refused one
// is logged and counted, and telemetry goes on without it. A broker that closes the connection
// over a failed subscribe (RabbitMQ 3.x when the node that holds a QoS 1 subscription's queue is
// down: every other node then refuses to declare it) would keep the gateway from publishing at
// all, reconnect after reconnect: after that, connects go without subscriptions for
// k_subscribe_pause (telemetry first), then try again.
bool mqtt_publisher::impl::subscribe(const std::string& filter, int qos, const char* lost) {
    const auto now = steady::now();
    if (now < subscribe_paused_until_) {
        log::warn(k_component, "not subscribed: paused",
                  {{"filter", filter},
                   {"lost", lost},
                   {"retry_in_s", std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                                     subscribe_paused_until_ - now)
                                                     .count())}});
        return false;
    }
    std::string error;
    try {
        auto tok = client_->subscribe(filter, qos);
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
        log::info(k_component, "subscribed", {{"filter", filter}, {"qos", std::to_string(qos)}});
        return true;
    }
    m_err_subscribe_.Increment();
    const bool closed = !client_->is_connected();
    if (closed) subscribe_paused_until_ = steady::now() + k_subscribe_pause;
    log::error(k_component, "subscribe failed",
               {{"filter", filter},
                {"error", error},
                {"lost", lost},
                {"action", closed ? "the broker closed the connection: connects go without "
                                    "subscriptions for " +
                                        std::to_string(k_subscribe_pause.count()) + "s"
                                  : std::string("go on without it")}});
    return false;
}

// Downlink commands at QoS 0: the session is clean, so nothing waits for Ferry while it is away
// and QoS 1 would cover only the last hop of a live connection; a command is answered (or,
// lost, sent again by the operator) and never applied twice (its id). RabbitMQ 3.x keeps a QoS 0
// subscription in a queue of the node the gateway is on, which goes with it: after a node loss
// the next node takes the subscription again (cluster_rabbitmq_failover).
void mqtt_publisher::impl::subscribe_after_connect() {
    if (sub_filter_.empty()) return;
    subscribe(sub_filter_, 0, "downlink commands");
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
                               const std::string& dead_letter_topic,
                               const config::replay_settings& replay)
    : impl_(std::make_unique<impl>(settings, std::move(gateway_id), sp, registry, dead_letter_topic,
                                   replay)) {}

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
    // Asked for on MQTT 5 connections only (options_for).
    if (impl_->settings_.version != 4) impl_->inbound_max_packet_ = max_packet;
    impl_->make_client();  // the current client gets the message callback too
}

bool mqtt_publisher::publish_result(const std::string& topic, const std::string& payload) {
    return impl_->publish_result(topic, payload);
}

}  // namespace ferry::upstream
