// The message stream: append (batch numbers, when_full, the disk reserve), peek, ack with its
// retried deletes, wait_for_messages, and giving freed pages back (design note in spool.cpp,
// "What is fsynced when").
#include "upstream/spool_impl.hpp"

#include <sys/statvfs.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/log.hpp"
#include "upstream/spool_codec.hpp"

namespace ferry::upstream {

// Gives out a batch number without storing a message, so the consumer sees the gap that
// CONTRACT.md promises for a message the spool dropped by policy.
int spool::impl::consume_batch_number(const std::string& topic, std::uint64_t batch_no) {
    int rc = step_done(begin_);
    if (rc != SQLITE_OK) return rc;
    {
        use u(upsert_topic_);
        sqlite::bind_text(*u, 1, topic);
        sqlite3_bind_int64(*u, 2, static_cast<std::int64_t>(batch_no));
        rc = sqlite3_step(*u);
        if (rc != SQLITE_DONE) {
            rollback();
            return rc;
        }
    }
    rc = step_done(commit_);
    if (rc != SQLITE_OK) {
        rollback();
        return rc;
    }
    last_batch_[topic] = batch_no;
    return SQLITE_OK;
}

append_result spool::impl::append(const std::string& topic, int qos, bool retain,
                                  std::uint32_t events, const encode_fn& encode,
                                  std::uint32_t expiry_s) {
    // Buffers per thread, reused: no allocation per append once they have grown. `encoded` is
    // what the encoder wrote, `stored` what goes into the row: one zstd frame of it when that
    // is smaller (spool_codec.hpp). max_bytes and the `bytes` column count what is stored.
    thread_local std::string encoded;
    thread_local std::string stored;
    std::unique_lock lock(mu_);
    if (closed_) return append_result::closed;

    run_deferred_salvage("append");
    retry_acks();
    std::uint64_t encoded_for = 0;  // batch number `stored` was encoded for (0: none yet)
    for (;;) {
        if (db_ == nullptr) return append_result::error;
        const std::uint64_t batch_no = next_batch(topic);
        if (encoded_for != batch_no) {
            encoded.clear();
            try {
                encode(batch_no, encoded);
                if (settings_.compress)
                    spool_codec::encode(encoded, stored);
                else
                    stored.swap(encoded);
            } catch (const std::exception& e) {
                c_errors_[static_cast<int>(err_reason::other)]->Increment();
                last_append_disk_full_ = false;
                log::error(component, "encode failed", {{"topic", topic}, {"error", e.what()}});
                return append_result::error;
            } catch (...) {
                c_errors_[static_cast<int>(err_reason::other)]->Increment();
                last_append_disk_full_ = false;
                log::error(component, "encode failed", {{"topic", topic}});
                return append_result::error;
            }
            encoded_for = batch_no;
        }
        const std::uint64_t need = topic.size() + stored.size();
        const std::uint64_t max = settings_.max_bytes;

        if (need > max) {
            int rc = consume_batch_number(topic, batch_no);
            if (rc != SQLITE_OK) record_error(rc, "append");
            c_too_large_->Increment();
            c_ev_too_large_->Increment(events);
            log::warn(component, "message larger than the whole spool dropped",
                      {{"topic", topic},
                       {"batch", std::to_string(batch_no)},
                       {"bytes", std::to_string(need)},
                       {"max_bytes", std::to_string(max)}});
            return append_result::dropped;
        }
        const bool fits = bytes_.load() + need <= max;
        if (!fits && settings_.full == config::when_full::drop_newest) {
            int rc = consume_batch_number(topic, batch_no);
            if (rc != SQLITE_OK) record_error(rc, "append");
            c_drop_newest_->Increment();
            c_ev_spool_full_->Increment(events);
            return append_result::dropped;
        }
        if (!fits && settings_.full == config::when_full::block) {
            space_cv_.wait(lock, [&] { return closed_ || bytes_.load() + need <= max; });
            if (closed_) return append_result::closed;
            continue;  // another append may have taken this topic's batch number meanwhile
        }

        // A spool that filled the disk itself could no longer ack (a DELETE writes to the WAL)
        // nor checkpoint: it would never drain. Appends stop short of that.
        if (below_disk_reserve(need)) {
            record_error(SQLITE_FULL, "append",
                         "free disk space below the reserve kept for acks and checkpoints");
            return append_result::error;
        }

        // One transaction: drop the oldest (if needed), the batch number, the message.
        int rc = step_done(begin_);
        if (rc != SQLITE_OK) {
            record_error(rc, "append");
            return append_result::error;
        }
        std::uint64_t freed_bytes = 0;
        std::uint64_t freed_msgs = 0;
        std::uint64_t freed_events = 0;
        std::uint64_t freed_delivered = 0;  // rows whose ack is pending: delivered, not dropped
        std::int64_t dropped_upto = 0;
        std::uint64_t freed_events_held = 0;  // every freed row's events, delivered or not
        auto abort = [&](int code) {
            rollback();
            record_error(code, "append");
            return append_result::error;
        };
        if (!fits) {
            const std::uint64_t must_free = bytes_.load() + need - max;
            std::int64_t& upto = dropped_upto;
            {
                use u(oldest_);
                while (freed_bytes < must_free && (rc = sqlite3_step(*u)) == SQLITE_ROW) {
                    upto = sqlite3_column_int64(*u, 0);
                    freed_bytes += static_cast<std::uint64_t>(sqlite3_column_int64(*u, 1));
                    freed_events_held += static_cast<std::uint64_t>(sqlite3_column_int64(*u, 2));
                    ++freed_msgs;
                    if (pending_acks_.count(upto) != 0) {
                        ++freed_delivered;
                        continue;
                    }
                    freed_events += static_cast<std::uint64_t>(sqlite3_column_int64(*u, 2));
                }
                if (rc != SQLITE_ROW && rc != SQLITE_DONE) return abort(rc);
            }
            {
                use u(delete_upto_);
                sqlite3_bind_int64(*u, 1, upto);
                rc = sqlite3_step(*u);
                if (rc != SQLITE_DONE) return abort(rc);
            }
        }
        std::int64_t id = 0;
        rc = insert_row({topic, qos, retain, events, {}, expiry_s}, batch_no, stored, id);
        if (rc != SQLITE_OK) return abort(rc);
        rc = step_done(commit_);
        if (rc != SQLITE_OK) return abort(rc);

        on_stored(topic, batch_no, id, need, events);
        events_held_ = events_held_ - freed_events_held;
        bytes_ = bytes_.load() - freed_bytes;
        messages_ = messages_.load() - freed_msgs;
        set_gauges();
        if (freed_delivered > 0) {
            pending_acks_.erase(pending_acks_.begin(), pending_acks_.upper_bound(dropped_upto));
            c_sent_->Increment(static_cast<double>(freed_delivered));
        }
        if (freed_msgs > 0) {
            c_drop_oldest_->Increment(static_cast<double>(freed_msgs - freed_delivered));
            c_ev_spool_full_->Increment(static_cast<double>(freed_events));
            maybe_vacuum();
        }
        lock.unlock();
        data_cv_.notify_all();
        return freed_msgs > 0 ? append_result::ok_dropped : append_result::ok;
    }
}

// The batch number and the row of one message, inside the caller's transaction.
int spool::impl::insert_row(const group_item& m, std::uint64_t batch_no, const std::string& stored,
                            std::int64_t& id) {
    {
        use u(upsert_topic_);
        sqlite::bind_text(*u, 1, m.topic);
        sqlite3_bind_int64(*u, 2, static_cast<std::int64_t>(batch_no));
        if (const int rc = sqlite3_step(*u); rc != SQLITE_DONE) return rc;
    }
    {
        use u(insert_);
        sqlite::bind_text(*u, 1, m.topic);
        sqlite::bind_blob(*u, 2, stored);
        sqlite3_bind_int(*u, 3, m.qos);
        sqlite3_bind_int(*u, 4, m.retain ? 1 : 0);
        sqlite3_bind_int64(*u, 5, now_ms());
        sqlite3_bind_int64(*u, 6, static_cast<std::int64_t>(m.topic.size() + stored.size()));
        sqlite3_bind_int64(*u, 7, m.events);
        sqlite3_bind_int64(*u, 8, m.expiry_s);
        if (const int rc = sqlite3_step(*u); rc != SQLITE_DONE) return rc;
    }
    id = sqlite3_last_insert_rowid(db_);
    return SQLITE_OK;
}

// Accounting once a stored message committed (the caller sets the gauges).
void spool::impl::on_stored(const std::string& topic, std::uint64_t batch_no, std::int64_t id,
                            std::uint64_t need, std::uint32_t events) {
    // Once per topic and spool: where its batch numbers start (tests check the first
    // message that arrives against it).
    if (last_batch_.find(topic) == last_batch_.end())
        log::info(component, "new topic",
                  {{"topic", topic}, {"first_batch", std::to_string(batch_no)}});
    last_batch_[topic] = batch_no;
    last_id_ = id;
    events_held_ = events_held_ + events;
    bytes_ = bytes_.load() + need;
    messages_ = messages_.load() + 1;
    c_received_->Increment();
}

// A topic the spool knows goes on +1. One it does not know (new, or its spool was lost or
// moved aside) starts at the wall clock in milliseconds: a consumer sees a jump, never a
// batch number that went back (holds while a topic averages < 1000 messages/s).
std::uint64_t spool::impl::next_batch(const std::string& topic) const {
    auto it = last_batch_.find(topic);
    if (it != last_batch_.end()) return it->second + 1;
    return static_cast<std::uint64_t>(std::max<std::int64_t>(now_ms(), 1));
}

// One DELETE (its own transaction). freed = -1 when the row does not exist.
int spool::impl::delete_row(std::int64_t id, std::int64_t& freed, std::uint32_t& events) {
    freed = -1;
    use u(ack_);
    sqlite3_bind_int64(*u, 1, id);
    int rc = sqlite3_step(*u);
    if (rc == SQLITE_ROW) {
        freed = sqlite3_column_int64(*u, 0);
        events = static_cast<std::uint32_t>(sqlite3_column_int64(*u, 1));
        rc = sqlite3_step(*u);  // finish the statement so the delete commits
    }
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

// Accounting after delivered rows left the file.
void spool::impl::on_removed(std::uint64_t freed_bytes, std::uint64_t rows, std::uint64_t events) {
    events_held_ -= std::min(events_held_, events);
    bytes_ = bytes_.load() - freed_bytes;
    messages_ = messages_.load() - rows;
    c_sent_->Increment(static_cast<double>(rows));
    set_gauges();
    // Look at the freelist once enough was freed to matter, or when the spool is empty.
    freed_since_vacuum_check_ += freed_bytes;
    if (freed_since_vacuum_check_ >=
            static_cast<std::uint64_t>(vacuum_slack_pages_ * page_size_) / 2 ||
        messages_.load() == 0) {
        freed_since_vacuum_check_ = 0;
        maybe_vacuum();
    }
}

// Deletes the rows whose ack failed, all in one transaction; at most every 100 ms unless `now`.
void spool::impl::retry_acks(bool now) {
    if (pending_acks_.empty() || db_ == nullptr) return;
    const auto t = std::chrono::steady_clock::now();
    if (!now && t - pending_tried_ < std::chrono::milliseconds(100)) return;
    pending_tried_ = t;
    int rc = step_done(begin_);
    std::uint64_t freed_bytes = 0, rows = 0, freed_events = 0;
    for (auto it = pending_acks_.begin(); rc == SQLITE_OK && it != pending_acks_.end(); ++it) {
        std::int64_t freed = -1;
        std::uint32_t events = 0;
        rc = delete_row(it->first, freed, events);
        if (rc == SQLITE_OK && freed >= 0) {
            freed_bytes += static_cast<std::uint64_t>(freed);
            freed_events += events;
            ++rows;
        }
    }
    if (rc == SQLITE_OK) rc = step_done(commit_);
    if (rc != SQLITE_OK) {
        rollback();
        record_error(rc, "ack");
        return;
    }
    log::info(component, "failed acks retried: delivered messages removed",
              {{"messages", std::to_string(pending_acks_.size())}});
    pending_acks_.clear();
    on_removed(freed_bytes, rows, freed_events);
    space_cv_.notify_all();
}

bool spool::impl::has_after(std::int64_t after_id) {
    run_deferred_salvage("wait");
    if (db_ == nullptr || messages_.load() == 0 || last_id_ <= after_id) return false;
    retry_acks();
    if (!pending_acks_.empty()) {
        // Agrees with peek: rows whose ack is pending do not count.
        use u(ids_after_);
        sqlite3_bind_int64(*u, 1, after_id);
        sqlite3_bind_int64(*u, 2, static_cast<std::int64_t>(pending_acks_.size()) + 1);
        int rc;
        while ((rc = sqlite3_step(*u)) == SQLITE_ROW)
            if (pending_acks_.count(sqlite3_column_int64(*u, 0)) == 0) return true;
        if (rc != SQLITE_DONE) record_error(rc, "wait");
        return false;
    }
    use u(exists_after_);
    sqlite3_bind_int64(*u, 1, after_id);
    int rc = sqlite3_step(*u);
    if (rc == SQLITE_ROW) return true;
    if (rc != SQLITE_DONE) record_error(rc, "wait");
    return false;
}

// True when the file system would keep less than disk_reserve_ free after storing `need`
// bytes. Free pages inside the file count as free: appends reuse them without growing it.
bool spool::impl::below_disk_reserve(std::uint64_t need) {
    auto dir = std::filesystem::path(settings_.path).parent_path();
    if (dir.empty()) dir = ".";
    struct statvfs v {};
    if (::statvfs(dir.c_str(), &v) != 0) return false;  // cannot tell: let SQLite find out
    std::uint64_t free = static_cast<std::uint64_t>(v.f_bavail) * v.f_frsize;
    if (free >= disk_reserve_ + need * 2) return false;  // the common case: no query
    use u(freelist_);
    if (sqlite3_step(*u) == SQLITE_ROW)
        free += static_cast<std::uint64_t>(sqlite3_column_int64(*u, 0)) *
                static_cast<std::uint64_t>(page_size_);
    return free < disk_reserve_ + need * 2;
}

// Gives free pages beyond the slack back to the file system, now and then.
void spool::impl::maybe_vacuum() {
    std::int64_t free_pages = 0;
    {
        use u(freelist_);
        if (sqlite3_step(*u) != SQLITE_ROW) return;
        free_pages = sqlite3_column_int64(*u, 0);
    }
    // Keeping a slack avoids shrinking and regrowing the file on every append/ack cycle.
    if (free_pages <= vacuum_slack_pages_ * 2) return;
    // Giving pages back moves the live pages at the end of the file into free ones, and every
    // page moved is written again (WAL, then checkpoint): during a drain that rewrote the
    // backlog over and over (issue 16: about 1,160 bytes written per value drained). Free
    // pages do not grow the file (appends reuse them), so wait until they outnumber the live
    // pages 4 to 1, or the spool is empty: a vacuum then moves at most a quarter of what it
    // gives back.
    const auto live_pages =
        static_cast<std::int64_t>(bytes_.load() / static_cast<std::uint64_t>(page_size_)) + 1;
    if (messages_.load() != 0 && free_pages < live_pages * 4) return;
    std::int64_t release = free_pages - vacuum_slack_pages_;
    std::string sql = "PRAGMA incremental_vacuum(";
    sql += std::to_string(release);
    sql += ")";
    int rc = exec_rc(sql.c_str());
    if (rc != SQLITE_OK) record_error(rc, "vacuum");
}

append_result spool::append(const std::string& topic, int qos, bool retain, std::uint32_t events,
                            const encode_fn& encode, std::uint32_t expiry_s) {
    try {
        auto r = impl_->append(topic, qos, retain, events, encode, expiry_s);
        if (r == append_result::error) {
            // A damaged page: rebuild from what is readable now; the caller retries.
            std::lock_guard lock(impl_->mu_);
            impl_->run_deferred_salvage("append");
        }
        return r;
    } catch (const std::exception& e) {
        log::error(component, "append failed", {{"error", e.what()}});
        return append_result::error;
    } catch (...) {
        return append_result::error;
    }
}

std::vector<spooled_message> spool::peek(std::int64_t after_id, std::size_t max) {
    std::vector<spooled_message> out;
    try {
        std::lock_guard lock(impl_->mu_);
        // A damaged page met here is salvaged and the read done again on the rebuilt spool,
        // so peek and wait_for_messages agree and the publisher never spins.
        for (int attempt = 0; attempt < 2; ++attempt) {
            out.clear();
            impl_->run_deferred_salvage("peek");
            if (impl_->db_ == nullptr || max == 0) return out;
            impl_->retry_acks();
            const auto& pending = impl_->pending_acks_;
            int rc = SQLITE_DONE;
            {
                use u(impl_->peek_);
                sqlite3_bind_int64(*u, 1, after_id);
                sqlite3_bind_int64(*u, 2,
                                   static_cast<std::int64_t>(
                                       std::min<std::uint64_t>(max + pending.size(), INT64_MAX)));
                while (out.size() < max && (rc = sqlite3_step(*u)) == SQLITE_ROW) {
                    spooled_message m;
                    m.id = sqlite3_column_int64(*u, 0);
                    if (pending.count(m.id) != 0) continue;  // delivered; its delete is retried
                    m.topic = sqlite::column_text(*u, 1);
                    const void* p = sqlite3_column_blob(*u, 2);
                    auto n = static_cast<std::size_t>(sqlite3_column_bytes(*u, 2));
                    const std::string_view stored(p != nullptr ? static_cast<const char*>(p) : "",
                                                  p != nullptr ? n : 0);
                    // Decompressed here, so the publisher checks and sends what CONTRACT.md
                    // says; a row that does not decode keeps its stored bytes and the reason,
                    // and the publisher dead-letters it (dead_letter.hpp).
                    if (spool_codec::is_compressed(stored)) {
                        m.stored_payload_bytes = static_cast<std::int64_t>(stored.size());
                        if (!spool_codec::decode(stored, m.payload, m.decode_error))
                            m.payload.assign(stored);
                    } else {
                        m.payload.assign(stored);
                    }
                    // Raw, for the publisher's check (a flipped bit must not pass as 1).
                    const auto qos = sqlite3_column_int64(*u, 3);
                    m.qos = static_cast<int>(std::clamp<std::int64_t>(qos, -1, 256));
                    m.retain = sqlite3_column_int(*u, 4) != 0;
                    m.created_ms = sqlite3_column_int64(*u, 5);
                    m.events = static_cast<std::uint32_t>(
                        std::clamp<std::int64_t>(sqlite3_column_int64(*u, 6), 0, UINT32_MAX));
                    m.stored_bytes = sqlite3_column_int64(*u, 7);
                    m.expiry_s = static_cast<std::uint32_t>(
                        std::clamp<std::int64_t>(sqlite3_column_int64(*u, 8), 0, UINT32_MAX));
                    out.push_back(std::move(m));
                }
            }
            if (out.size() >= max || rc == SQLITE_DONE) break;
            impl_->record_error(rc, "peek");
            if (impl_->salvage_rc_ == 0) break;  // not damage: what was read so far
        }
    } catch (const std::exception& e) {
        log::error(component, "peek failed", {{"error", e.what()}});
    }
    return out;
}

std::size_t spool::unsettled_acks() {
    try {
        std::unique_lock lock(impl_->mu_);
        if (impl_->pending_acks_.empty()) return 0;
        impl_->retry_acks();
        return impl_->pending_acks_.size();
    } catch (const std::exception& e) {
        log::error(component, "ack retry failed", {{"error", e.what()}});
        return 0;
    }
}

std::uint32_t spool::ack(std::int64_t id) {
    try {
        std::unique_lock lock(impl_->mu_);
        if (impl_->db_ == nullptr) return 0;
        // Its events were counted when its first ack failed.
        if (impl_->pending_acks_.count(id) != 0) return 0;
        impl_->retry_acks();
        std::int64_t freed = -1;
        std::uint32_t events = 0;
        int rc = impl_->delete_row(id, freed, events);
        if (rc != SQLITE_OK && classify(rc) == err_reason::corrupt) {
            impl_->rollback();
            impl_->record_error(rc, "ack");
            impl_->run_deferred_salvage("ack");
            if (impl_->db_ == nullptr) return 0;
            rc = impl_->delete_row(id, freed, events);  // on the rebuilt spool
        }
        if (rc != SQLITE_OK) {
            impl_->rollback();
            impl_->record_error(rc, "ack");
            // The broker has it: it must not be sent again, and it must go. Kept as pending
            // (peek skips it) and deleted again soon; its events count as delivered now.
            {
                use u(impl_->events_of_);
                sqlite3_bind_int64(*u, 1, id);
                if (sqlite3_step(*u) != SQLITE_ROW) return 0;  // not there (or unreadable)
                events = static_cast<std::uint32_t>(sqlite3_column_int64(*u, 0));
            }
            if (impl_->pending_acks_.empty())
                impl_->pending_tried_ = std::chrono::steady_clock::now();
            impl_->pending_acks_.emplace(id, events);
            return events;
        }
        if (freed < 0) return 0;  // unknown id
        impl_->on_removed(static_cast<std::uint64_t>(freed), 1, events);
        lock.unlock();
        impl_->space_cv_.notify_all();
        return events;
    } catch (const std::exception& e) {
        log::error(component, "ack failed", {{"error", e.what()}});
    }
    return 0;
}

bool spool::wait_for_messages(std::int64_t after_id, std::chrono::milliseconds timeout) {
    std::unique_lock lock(impl_->mu_);
    impl_->data_cv_.wait_for(lock, timeout,
                             [&] { return impl_->closed_ || impl_->has_after(after_id); });
    return impl_->has_after(after_id);  // runs a salvage the wait noted, then looks again
}

}  // namespace ferry::upstream
