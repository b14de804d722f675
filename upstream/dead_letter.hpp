// Dead letters (issue 14, docs/DELIVERY.md "Dead letters"): the checks a spooled message must
// pass before it is published, the size of the MQTT packet that carries it, and the notice
// that announces one that failed.
//
// A message that fails can never be delivered as it is: resending it would stop the stream
// behind it for good (a broker disconnects a client that sends a packet over its Maximum
// Packet Size, reason 0x95; Paho refuses a topic with a wildcard or a QoS of 3). The publisher
// moves it out of the stream (spool::dead_letter), counts it and goes on in order.
//
// Pure functions: no I/O, no state, safe from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "upstream/spool.hpp"

namespace ferry::upstream {

enum class dead_reason {
    none,
    too_large,    // the PUBLISH packet exceeds the broker's Maximum Packet Size
    bad_topic,    // empty, not UTF-8, a NUL, a wildcard (+ #), or longer than 65535 bytes
    bad_qos,      // not 0, 1 or 2
    bad_payload,  // not a JSON object (does not start with '{' and end with '}'; Sparkplug
                  // topics, spBv1.0/..., carry protobuf and are not checked so), or a
                  // compressed row that does not decompress (damaged: its checksum differs)
    bad_bytes,    // the row's `bytes` column differs from topic + payload as read
    count_
};

// The label value of ferry_upstream_dead_letters_total{reason} (and of the notice).
std::string_view to_string(dead_reason r);

// The size in bytes of the PUBLISH packet that carries `payload` on `topic`: fixed header,
// remaining length, topic, packet id (QoS > 0) and, with MQTT 5, an empty property block.
std::uint64_t publish_packet_size(std::size_t topic_bytes, std::size_t payload_bytes, int qos,
                                  bool mqtt5);

// Whether `s` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, at most
// U+10FFFF).
bool valid_utf8(std::string_view s);

// The first check `m` fails, or none; `detail` (when given) says what was found. A
// `max_packet` of 0 means no limit is known. Only the outside of the payload is checked: a
// full JSON parse would cost as much as the encoding, and a flipped bit inside it still passes.
dead_reason check_spooled(const spooled_message& m, std::uint64_t max_packet, bool mqtt5,
                          std::string* detail = nullptr);

// The small JSON notice published on the dead-letter topic: the gateway, the original topic
// (as "topic_hex" when it is not UTF-8), its batch (when the payload has one), the reason and
// detail, the bytes and events it carried, the spool id. Never the payload.
std::string dead_letter_notice(std::string_view gateway, const spooled_message& m,
                               dead_reason reason, std::string_view detail, std::int64_t now_ms);

// The "batch" of a payload in the contract's JSON; 0 when it has none.
std::uint64_t batch_of(std::string_view payload);

}  // namespace ferry::upstream
