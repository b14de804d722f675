// MQTT 5 properties of a spooled batch (docs/DELIVERY.md, "MQTT 5 properties"): what is left of
// its Message Expiry Interval, and the user properties gateway, batch, first_seq and last_seq,
// read from the JSON batch when it is sent (nothing extra is stored). Pure functions: the
// publisher (mqtt_properties.cpp) turns them into Paho properties and drops expired messages.
#pragma once

#include <cstdint>
#include <string_view>

namespace ferry::upstream {

// The seconds left of an expiry of `expiry_s` counted from `created_ms`, at `now_ms` (Unix ms),
// rounded up and at most expiry_s (a clock set back gives no more than the whole interval):
// 0 once it has passed. `expiry_s` 0 (no expiry) is never called for.
std::uint32_t expiry_left_s(std::int64_t created_ms, std::uint32_t expiry_s, std::int64_t now_ms);

// The seq of the first and of the last event of a JSON batch ({"gateway":..,"events":[{"seq":..
// ..}]}); found false when the payload holds no event (a dead-letter batch, another format).
// An event object always starts with {"seq": (core/json.cpp); inside a JSON string that text
// would have its quotes escaped, so a value can never be mistaken for it.
struct seq_range {
    std::uint64_t first = 0;
    std::uint64_t last = 0;
    bool found = false;
};
seq_range seq_range_of(std::string_view payload);

}  // namespace ferry::upstream
