// The MQTT publisher: sends what the spool holds, in spool order, and removes each message
// from the spool only once the broker acknowledged it (PUBACK for QoS 1; for QoS 0 once
// written to the socket).
//
// Paho's async client with its own persistence off (the spool is the only source of truth).
// At most `inflight` messages are outstanding; on reconnect every unacknowledged message is
// sent again, so duplicates appear only within the in-flight window. Live first (the
// default, upstream.replay): after a connect, what the spool held then is the backlog, replayed
// from the oldest (paced, when configured; JSON marked "replay":true) beside the live stream of
// everything newer, which goes out at once; each stream is in order. `order: strict`: one
// stream, oldest first.
// Reconnects with exponential backoff and jitter, failing over across `uris` in order.
// A publish not acknowledged within `ack_timeout` resets the connection (resend from the oldest).
// A publish the broker refuses follows `refused` (block | drop after `refused_attempts`) and
// never reorders a topic. Events of acknowledged messages count in ferry_events_delivered_total
// once each; events of dropped refused ones in ferry_events_dropped_total{reason="refused"}.
// A spooled message that can never be delivered (larger than the broker's Maximum Packet
// Size, or a damaged row) is dead-lettered before it is sent: moved into the spool's
// dead_letters table, counted, announced on the dead-letter topic; the stream goes on in order.
// MQTT 5 (docs/DELIVERY.md, "MQTT 5 properties"): each JSON batch carries the user properties
// gateway, batch, first_seq, last_seq and, when its rule set message_expiry, what is left of
// it; a spooled message whose expiry passed is dropped before it is sent, its events counted
// in ferry_events_dropped_total{reason="expired"}. The window is capped by the CONNACK's
// Receive Maximum.
// Publishes a retained "online" on ferry/{gateway}/status after each connect, with a retained
// last will "offline".
// Retained states (set_retained: device status) are kept apart from the spool, newest payload
// per topic, and published after that "online" at every connect and on every change.
//
// Downlink (commands): with set_subscription(), the publisher subscribes to one topic filter
// at QoS 1 after every connect (sessions start clean, so also after every reconnect) and
// hands each message to the handler. publish_result() sends a message straight to the broker
// at QoS 1, apart from the spool and its ordering: answers to commands are not telemetry.
//
// Session hooks (set_session_hooks; Sparkplug B, docs/SPARKPLUG.md): a protocol that lives on
// top of the stream gets a narrow say, nothing more: the will of each connect, the messages to
// send first after each connect, a rewrite of every payload just before it goes out (also a
// resend), the inbound messages it claims, and send_now() for messages beside the spool. The
// delivery promises of the spool's stream do not change.
//
// Threading: start() spawns one sender thread; Paho runs its own. stop() is idempotent.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/config.hpp"

namespace prometheus {
class Registry;
}

namespace ferry::upstream {

class spool;

class mqtt_publisher {
  public:
    // `dead_letter_topic`: the template (config `dead_letter.topic`) where notices of
    // dead-lettered spool messages go; {device}, {tag} and {rule} expand to "upstream".
    // `replay`: how the backlog goes out after a connect (docs/DELIVERY.md, Live first).
    mqtt_publisher(const config::mqtt_settings& settings, std::string gateway_id, spool& sp,
                   prometheus::Registry& registry,
                   const std::string& dead_letter_topic = "ferry/{gateway}/dead-letter",
                   const config::replay_settings& replay = {});
    ~mqtt_publisher();
    mqtt_publisher(const mqtt_publisher&) = delete;
    mqtt_publisher& operator=(const mqtt_publisher&) = delete;

    void start();
    // Gives the publisher up to `drain` to deliver what the spool holds, then publishes the
    // retained "offline" status, disconnects and joins. What is left stays in the spool.
    void stop(std::chrono::milliseconds drain);

    bool connected() const;
    // The largest MQTT packet the broker takes, as far as known: the smaller of the last MQTT 5
    // CONNACK's Maximum Packet Size and upstream.mqtt.max_packet_size; 0 when neither is known.
    // Thread-safe (the rule thread cuts batches below it).
    std::uint64_t max_packet_size() const;

    // ---- Downlink (commands) ----
    // `retained`: the broker delivered a retained message (a replay at subscribe time).
    using message_handler =
        std::function<void(const std::string& topic, const std::string& payload, bool retained)>;
    // Call before start(). `handler` runs on Paho's callback thread: it must return quickly
    // and must not call back into the publisher. `max_packet` (bytes, 0: none): with MQTT 5
    // the broker is told at every connect (Maximum Packet Size) not to send larger packets.
    void set_subscription(std::string filter, message_handler handler,
                          std::uint32_t max_packet = 0);
    // Publishes at QoS 1, not retained, without the spool. Thread-safe. False (and logged)
    // when not connected or Paho refuses it: the message is then dropped.
    bool publish_result(const std::string& topic, const std::string& payload);

    // ---- Retained states (device status) ----
    // Makes `payload` the retained message of `topic` (QoS 1), apart from the spool: the
    // sender thread publishes it within ~0.1 s while connected, and again after every connect
    // (only the newest payload of a topic). An empty payload clears the topic's retained
    // message on the broker once (now or at the next connect) and forgets the topic. States set
    // before stop() are published before the "offline" status. Thread-safe.
    void set_retained(const std::string& topic, std::string payload);

    // ---- Session hooks (Sparkplug B) ----
    struct outbound {
        std::string topic;
        std::string payload;
        int qos = 0;
        bool retain = false;
    };
    struct session_hooks {
        // Asked before each connect attempt: the will, instead of the retained "offline".
        std::function<outbound()> will;
        // After each connect, after "online" and before retained states and the spool: sent
        // first, in order.
        std::function<std::vector<outbound>()> after_connect;
        // Called on the sender thread for every message just before it is published (spool
        // messages, also each resend, after_connect and send_now ones); may rewrite the
        // payload (not the topic). `created_ms`: when a spool message entered the spool;
        // INT64_MAX for the others.
        std::function<void(const std::string& topic, std::string& payload, std::int64_t created_ms)>
            before_send;
        // Inbound messages (Paho's callback thread; quick, no calls back into the publisher
        // but send_now): true when taken; others go to set_subscription's handler.
        std::function<bool(const std::string& topic, const std::string& payload, bool retained)>
            inbound;
        // At a clean stop, after the retained states and before the "offline" status: a clean
        // DISCONNECT does not fire the will, so what the will would say is sent here.
        std::function<std::vector<outbound>()> before_disconnect;
        // Asked by the sender thread while connected, before messages of send_now and of the
        // spool go out: nullopt holds both (the spool keeps its messages; Sparkplug: the
        // primary host is offline); otherwise the messages to send first (they say the whole
        // state, so send_now messages queued until then are dropped), then the stream flows.
        std::function<std::optional<std::vector<outbound>>()> gate;
        // Filters subscribed to at QoS 1 after each connect, for `inbound`.
        std::vector<std::string> filters;
    };
    // Call before start().
    void set_session_hooks(session_hooks hooks);
    // Queues messages beside the spool; the sender thread publishes them in order, before the
    // next spool messages, while connected. Queued while disconnected, they are dropped at the
    // next connect: after_connect says the whole state then. Thread-safe.
    void send_now(std::vector<outbound> messages);

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry::upstream
