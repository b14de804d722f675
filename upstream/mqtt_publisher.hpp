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
// Threading: start() spawns one sender thread; Paho runs its own. stop() is idempotent.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

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

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry::upstream
