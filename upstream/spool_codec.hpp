// How a batch body is stored in the spool (docs/SPOOL.md, "Compressed rows"): the payload
// column holds either the payload as published (a JSON object, so its first byte is '{') or
// one zstd frame of it (its first four bytes are the zstd magic 28 b5 2f fd, with the content
// size and a content checksum in the frame). The first bytes say which, so rows written
// before compression existed, and spools of earlier versions, are read as they are.
//
// Pure functions with one zstd context per thread: safe from any thread, no shared state.
#pragma once

#include <string>
#include <string_view>

namespace ferry::upstream::spool_codec {

// Whether `stored` starts with the zstd frame magic.
bool is_compressed(std::string_view stored);

// The bytes to store for `payload`: one zstd frame (level 1, with content size and checksum)
// when that is smaller, else `payload` itself. Throws std::runtime_error if zstd fails.
void encode(std::string_view payload, std::string& stored);

// The payload a stored body holds, into `out`. A plain body is copied. A compressed one is
// decompressed; false (with `error` saying why, `out` unspecified) when it does not decode:
// not a complete frame, a content size that is missing or above `max_payload`, a checksum
// that differs (a flipped bit), trailing bytes.
bool decode(std::string_view stored, std::string& out, std::string& error,
            std::size_t max_payload = 256u << 20);

}  // namespace ferry::upstream::spool_codec
