// The upstream payload (CONTRACT.md): one JSON object per batch.
//
//   {"gateway":"plant-a-gw1","batch":42,
//    "events":[{"seq":1001,"device":"boiler1","tag":"temperature","ts":1764236400123,
//               "value":21.5,"quality":"good","unit":"degC"}]}
//
// Encoded straight into a caller-owned buffer (reused across batches): no DOM, no
// allocation per event once the buffer has grown. Doubles use the shortest text that reads
// back to the same value; NaN and infinities, which JSON cannot carry, become null.
// Strings always come out as valid JSON text whatever bytes they hold: `"`, `\` and control
// characters (U+0000..001F, DEL) are escaped, and ill-formed UTF-8 is replaced by U+FFFD
// (utf8.hpp), so no input can make a payload a strict parser rejects.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "core/event.hpp"

namespace ferry::json {

void append_string(std::string& out, std::string_view s);  // quoted, escaped, valid UTF-8
void append_value(std::string& out, const value& v);

// Appends one event object.
void append_event(std::string& out, const event& e, const point_info& p);

// Replaces `out` with the whole batch message.
void encode_batch(std::string& out, std::string_view gateway, std::uint64_t batch,
                  std::span<const event> events, const point_table& points);

// Bytes one event adds to a batch (exact), for max_bytes accounting.
std::size_t event_size(const event& e, const point_info& p);

}  // namespace ferry::json
