// Rows that leave the stream undelivered: drop (a message the broker refused, issue 13) and
// dead_letter (one that can never be delivered, issue 14; docs/SPOOL.md "Dead letters").
#include "upstream/spool_impl.hpp"

#include <algorithm>

namespace ferry::upstream {

namespace {

// Dead letters kept for inspection (docs/SPOOL.md): the newest this many rows and bytes of
// payload; a payload larger than the byte bound is kept without its payload.
constexpr std::int64_t dead_letters_max_rows = 100;
constexpr std::int64_t dead_letters_max_bytes = 4 * 1024 * 1024;

}  // namespace

// ---- Publisher helper (issue 13): removing a message the broker refused -------------------
// Kept apart from ack(): a dropped message is not "sent" and is rare (refused publishes), so
// it prepares its statement on each call instead of holding one.
std::uint32_t spool::drop(std::int64_t id) {
    std::unique_lock lock(impl_->mu_);
    if (impl_->db_ == nullptr) return 0;
    statement st;
    int rc = st.prepare(impl_->db_,
                        "DELETE FROM messages WHERE id = ?1 RETURNING " FERRY_ROW_BYTES ", events");
    std::int64_t freed = -1;
    std::uint32_t events = 0;
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(st.get(), 1, id);
        rc = sqlite3_step(st.get());
        if (rc == SQLITE_ROW) {
            freed = sqlite3_column_int64(st.get(), 0);
            events = static_cast<std::uint32_t>(sqlite3_column_int64(st.get(), 1));
            rc = sqlite3_step(st.get());
        }
    }
    if (rc != SQLITE_DONE) {
        impl_->rollback();
        impl_->record_error(rc, "drop");
        return 0;
    }
    if (freed < 0) return 0;
    impl_->on_dropped(static_cast<std::uint64_t>(freed), events);
    lock.unlock();
    impl_->space_cv_.notify_all();
    return events;
}

// A row that must leave the stream (issue 14, docs/SPOOL.md "Dead letters"): copied into
// dead_letters and deleted from messages in one transaction, then dead_letters is trimmed to
// its bounds, oldest first.
spool::dead_letter_result spool::dead_letter(std::int64_t id, std::string_view reason) {
    dead_letter_result out;
    std::unique_lock lock(impl_->mu_);
    if (impl_->db_ == nullptr) return out;
    auto* db = impl_->db_;
    int rc = step_done(impl_->begin_);
    auto run = [&](const char* sql, auto&& bind, auto&& row) {
        if (rc != SQLITE_OK) return;
        statement st;
        rc = st.prepare(db, sql);
        if (rc != SQLITE_OK) return;
        bind(st.get());
        while ((rc = sqlite3_step(st.get())) == SQLITE_ROW)
            row(st.get());
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    };
    auto none = [](sqlite3_stmt*) {};
    // Made by the first dead letter (issue 14, no version bump: an older Ferry ignores the
    // table). Not part of the schema check, nor of a salvage; a spool that never needs it keeps
    // the page layout it always had.
    run("CREATE TABLE IF NOT EXISTS dead_letters(id INTEGER PRIMARY KEY, topic BLOB NOT NULL,"
        " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,"
        " created_ms INTEGER NOT NULL, events INTEGER NOT NULL, bytes INTEGER NOT NULL,"
        " reason TEXT NOT NULL, dead_ms INTEGER NOT NULL)",
        none, none);
    run(
        "INSERT OR REPLACE INTO dead_letters(id, topic, payload, qos, retain, created_ms, events,"
        " bytes, reason, dead_ms) SELECT id, CAST(topic AS BLOB), CASE WHEN length(payload) > ?2"
        " THEN X'' ELSE payload END, qos, retain, created_ms, events, " FERRY_ROW_BYTES
        ", ?3, ?4 FROM messages WHERE id = ?1",
        [&](sqlite3_stmt* st) {
            sqlite3_bind_int64(st, 1, id);
            sqlite3_bind_int64(st, 2, dead_letters_max_bytes);
            sqlite::bind_text(st, 3, reason, SQLITE_TRANSIENT);
            sqlite3_bind_int64(st, 4, now_ms());
        },
        none);
    std::int64_t freed = -1;
    run(
        "DELETE FROM messages WHERE id = ?1 RETURNING " FERRY_ROW_BYTES ", events",
        [&](sqlite3_stmt* st) { sqlite3_bind_int64(st, 1, id); },
        [&](sqlite3_stmt* st) {
            freed = sqlite3_column_int64(st, 0);
            out.events = static_cast<std::uint32_t>(
                std::clamp<std::int64_t>(sqlite3_column_int64(st, 1), 0, UINT32_MAX));
        });
    run(
        "DELETE FROM dead_letters WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER w AS n,"
        " sum(length(payload)) OVER w AS b FROM dead_letters WINDOW w AS (ORDER BY id DESC))"
        " WHERE n > ?1 OR b > ?2)",
        [&](sqlite3_stmt* st) {
            sqlite3_bind_int64(st, 1, dead_letters_max_rows);
            sqlite3_bind_int64(st, 2, dead_letters_max_bytes);
        },
        none);
    if (rc == SQLITE_OK) rc = step_done(impl_->commit_);
    if (rc != SQLITE_OK) {
        impl_->rollback();
        impl_->record_error(rc, "dead_letter");
        out.events = 0;
        return out;
    }
    if (freed < 0) return out;  // already gone
    out.removed = true;
    out.bytes = static_cast<std::uint64_t>(freed);
    impl_->on_dropped(out.bytes, out.events);
    lock.unlock();
    impl_->space_cv_.notify_all();
    return out;
}

}  // namespace ferry::upstream
