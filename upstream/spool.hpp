// The spool: Ferry's durability boundary (design note in spool.cpp).
//
// A batch counts as accepted once `append` returns `ok`: from then on it survives a broker
// outage, `kill -9` and restart (with fsync `always`, also power loss). The publisher reads
// messages in spool order with `peek` and removes each with `ack` once the broker has
// acknowledged it.
//
// Threading: every method is safe to call from any thread (one internal mutex around one
// SQLite connection). `append` with when_full=block waits for space until `ack` frees some
// or `close()` is called. After `close()`, `append` returns `closed` at once.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"

struct sqlite3;
struct sqlite3_stmt;
namespace prometheus {
class Registry;
}

namespace ferry::upstream {

struct spooled_message {
    std::int64_t id = 0;  // spool order; strictly increasing
    std::string topic;
    std::string payload;
    int qos = 1;
    bool retain = false;
    std::int64_t created_ms = 0;     // Unix ms when it entered the spool
    std::uint32_t events = 0;        // readings the message carries (conservation metrics)
    std::int64_t stored_bytes = -1;  // the row's `bytes` column as stored (checked, never trusted)
    // The payload's length as stored (compressed rows hold less than `payload`, which peek
    // decompressed); -1: the same as payload.size(). What `bytes` and max_bytes count.
    std::int64_t stored_payload_bytes = -1;
    // Why a compressed row did not decompress (empty: it did, or it was not compressed).
    // `payload` then holds the stored bytes; the publisher dead-letters the row.
    std::string decode_error;
    // MQTT 5 Message Expiry Interval in seconds from created_ms (0: never expires); the
    // publisher sends what is left of it and drops the message once it has passed.
    std::uint32_t expiry_s = 0;
};

enum class append_result {
    ok,          // stored
    ok_dropped,  // stored, after dropping the oldest messages to make room (counted)
    dropped,     // not stored: the spool is full and when_full is drop_newest (counted)
    closed,      // not stored: close() was called while waiting for room
    error,       // not stored: I/O error, disk full, ... (counted, logged)
};

// Fills `out` with the payload for batch number `batch_no` on this topic.
using encode_fn = std::function<void(std::uint64_t batch_no, std::string& out)>;

// One message for spool::append_group: what spool::append takes.
struct group_item {
    const std::string& topic;
    int qos = 1;
    bool retain = false;
    std::uint32_t events = 0;
    encode_fn encode;
    std::uint32_t expiry_s = 0;  // spooled_message::expiry_s
};

class spool {
  public:
    // Opens (creating if needed) the spool at settings.path, a file path. A damaged file is
    // moved aside as "<path>.corrupt-<unix time>", logged and counted, and an empty spool is
    // started in its place: never a crash loop. Throws std::runtime_error only when even a
    // fresh spool cannot be created (directory missing, not writable).
    spool(const config::spool_settings& settings, prometheus::Registry& registry);
    ~spool();
    spool(const spool&) = delete;
    spool& operator=(const spool&) = delete;

    // Assigns the next batch number of `topic` (rising by one per message on each topic,
    // persisted), calls encode(batch_no, payload) and stores the message, all in one
    // transaction. Applies when_full if the message does not fit in max_bytes. `events` is
    // the number of readings in the message: stored with it, and what the spool adds to
    // ferry_events_dropped_total{reason="spool_full"|"too_large"} when it drops the message.
    // `expiry_s`: the message's expiry interval, stored with it (spooled_message::expiry_s).
    append_result append(const std::string& topic, int qos, bool retain, std::uint32_t events,
                         const encode_fn& encode, std::uint32_t expiry_s = 0);
    // Appends several messages in one transaction (one commit: one WAL write, one fsync with
    // `fsync: always`),
    // in order, as `append` would one by one, and returns how many of the first were stored:
    // each of those is accepted as if `append` had returned `ok`. It takes only the plain
    // case, where every message fits without dropping anything and nothing fails; it stops
    // before the first message that does not (or returns 0 when the commit fails, nothing
    // stored), and the caller appends that one and the rest with `append`, which applies
    // when_full and reports errors. The rule thread hands it the batches of one pass: with
    // devices polled on one grid, 50 batches close at once (docs/PERFORMANCE.md).
    std::size_t append_group(std::span<const group_item> items);

    // Up to `max` messages with id > after_id, oldest first.
    std::vector<spooled_message> peek(std::int64_t after_id, std::size_t max);
    // Removes a delivered message and returns the events it carried: 0 for an unknown id or
    // one already removed, so a caller that counts what this returns counts each row once.
    // When the delete fails, the row is kept as pending: peek/wait_for_messages skip it and
    // the delete is retried at the next call 100 ms later or more (docs/SPOOL.md, Errors).
    std::uint32_t ack(std::int64_t id);
    // Acked rows whose DELETE has not succeeded yet (retried first, at most every 100 ms).
    // They still hold their slot in the publisher's window: a crash would send them again,
    // and a resend must stay within the window.
    std::size_t unsettled_acks();
    // (publisher, issue 13) Removes a message that will never be delivered (the broker refused
    // it), without counting it as sent. Returns the number of events it held (0 for an unknown
    // id); the caller counts them as dropped with its reason.
    std::uint32_t drop(std::int64_t id);
    // (publisher, issue 14) Moves a message that can never be delivered (too large for the
    // broker, or a damaged row) out of the stream into the bounded `dead_letters` table, with
    // `reason` (docs/SPOOL.md, Dead letters). The caller counts its events as dropped.
    struct dead_letter_result {
        bool removed = false;  // false: unknown id, or the move failed (logged, counted)
        std::uint32_t events = 0;
        std::uint64_t bytes = 0;  // topic + payload, measured
    };
    dead_letter_result dead_letter(std::int64_t id, std::string_view reason);

    // Blocks until a message with id > after_id exists, close() is called, or the timeout
    // passes. Returns true when there is something to peek.
    bool wait_for_messages(std::int64_t after_id, std::chrono::milliseconds timeout);

    // Small persistent key/value state (e.g. the seq high-water mark). Written durably.
    std::uint64_t load_state(const std::string& key, std::uint64_t fallback);
    bool store_state(const std::string& key, std::uint64_t value);  // false: not stored (logged)

    // The highest id ever stored (held now or not): the publisher's boundary between the
    // backlog and live messages at a connect (docs/DELIVERY.md, Live first).
    std::int64_t last_id() const;

    std::uint64_t bytes() const;               // payload+topic bytes held
    std::uint64_t messages() const;            // messages held
    std::uint64_t corrupt_recoveries() const;  // damaged files moved aside and salvaged
    // Whether the last append that returned `error` failed for want of disk space (a wait on
    // purpose) rather than an I/O error or damage that may never heal.
    bool last_append_disk_full() const;

    // Wakes every waiter; later appends return `closed`. Reads and acks still work.
    void close();

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry::upstream
