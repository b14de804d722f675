// Spool design note (the durability boundary; read before changing anything here).
//
// File format. One SQLite database (docs/SPOOL.md has the details), page size 4096, WAL
// journal, auto_vacuum=INCREMENTAL (set when the file is created; it cannot be changed later
// without a full VACUUM), application_id 0x46455259 ("FERY"), user_version 3:
//   messages(id INTEGER PRIMARY KEY AUTOINCREMENT, topic, payload BLOB, qos, retain,
//            created_ms, bytes, events, expiry_s) one row per MQTT message; AUTOINCREMENT so an id
//            is
//                                      never reused, even after the table was emptied (the
//                                      publisher reads "id > last sent"); `events` = the
//                                      readings it carries (conservation metrics); `expiry_s`
//                                      the MQTT 5 message expiry from created_ms (0: none)
//   topics(topic PRIMARY KEY, last_batch)   last batch number given out per topic
//   state(key PRIMARY KEY, value)           small persistent key/value (seq high-water mark)
// `payload` is the body as encoded (JSON, first byte '{') or one zstd frame of it (magic
// 28 b5 2f fd; spool_codec.hpp): the first bytes say which, so older plain rows still read.
// `bytes` = topic + payload length as stored, the unit max_bytes is counted in. A version-1 file
// (no `events` column) is migrated at open by one ALTER TABLE (its rows count 0 events), a
// version-1 or -2 file (no `expiry_s`) likewise (its rows never expire). An older Ferry does not
// open a version-3 file (unknown version: moved aside as damaged), so a downgrade loses the
// spooled backlog to the side file. The
// connection runs in locking_mode=EXCLUSIVE: a second process cannot open the same spool (it gets
// SQLITE_BUSY and the constructor throws; a busy file is never mistaken for a corrupt one), and the
// WAL index lives in heap memory, so there is no -shm file.
//
// What is fsynced when. Every append is one transaction (BEGIN IMMEDIATE ... COMMIT), which
// also holds the batch-number update and any drop_oldest deletions, so a crash never leaves
// a message without its batch number or a half-applied drop. append_group puts the batches
// of one rule pass (only when all fit) in one transaction: accepted together at its COMMIT.
//   always: synchronous=FULL   the WAL is fsynced at every COMMIT: once append() returned
//                              ok, the message survives power loss.
//   batch:  synchronous=NORMAL the WAL is written (write(2)) at every COMMIT and fsynced
//                              only at checkpoints: survives kill -9 and process crashes
//                              (the data is in the kernel), the last transactions before
//                              a power cut may be lost (never a corrupt file).
//   never:  synchronous=OFF    nothing is fsynced; power loss may lose or corrupt data.
// store_state() is fsynced in `always` and `batch` (synchronous=FULL around that one
// commit), because a lost seq high-water mark would make seq go backwards.
// Power cut: the open writes clean_close=0 and the boot id (fsynced, every mode), a clean
// close writes clean_close=1. Opening after an unclean close in another boot with fsync
// batch/never makes every known topic jump to the wall clock in ms (appends lost with the
// power must not have their batch numbers given to new content). A topic the spool does not
// know starts at the wall clock in ms too.
// Checkpoints copy the WAL into the main file when the WAL exceeds wal_autocheckpoint pages
// (sized from max_bytes); journal_size_limit truncates the WAL afterwards, so the WAL stays
// small. acks free pages onto SQLite's freelist, which later appends reuse; beyond a slack
// the free pages are given back with `PRAGMA incremental_vacuum`, so the file shrinks after
// a drain and stays within max_bytes plus overhead while full (numbers in docs/SPOOL.md).
// Appends stop while the file system's free space (plus the file's free pages) is below a
// reserve of two WAL checkpoints: an ack is a DELETE that needs WAL space, and a spool that
// filled the disk itself could otherwise never ack, checkpoint or drain again.
//
// Recovery. At open, SQLite replays the WAL (rolling back any transaction cut short by a
// crash). Then `PRAGMA quick_check` checks the b-tree structure, and the schema is checked
// to be ours (application_id, auto_vacuum, the three tables and their columns). A file that
// fails (not a database, truncated, random bytes, a damaged page, a foreign database) is
// closed and renamed aside with its -wal/-shm as "<path>.corrupt-<unix seconds>[.N]", logged
// (warn) and counted (corrupt_recoveries(), ferry_spool_corrupt_total); a new spool starts
// in its place and every row of the moved copy that can still be read is salvaged into it
// (salvage_from: ids kept, holes logged and counted). A zero-byte file without a WAL is
// damaged too (ferry writes the schema at creation, so only a lost write or a truncation
// leaves one). quick_check does not see a flipped bit inside a payload (SQLite pages carry
// no checksums). SQLITE_CORRUPT/NOTADB met while running does the same (salvage(), at most
// every 5 s), from the call that met it once its statements are reset; that call then goes
// on with the new spool, so peek and wait_for_messages agree. Running totals (bytes,
// messages, events, last id, batch numbers) are kept in memory and recomputed at open.
//
// The code. This file holds the note, the metrics, error accounting and the small public
// calls; the rest is split along the same lines as this note (spool_impl.hpp lists the files):
// opening and recovery at open, the message stream, the state table, salvage, dead letters.
#include "upstream/spool_impl.hpp"

#include <prometheus/family.h>
#include <prometheus/registry.h>

#include <algorithm>

#include "core/conservation.hpp"
#include "core/log.hpp"

namespace ferry::upstream {

namespace {

const char* when_full_name(config::when_full w) {
    switch (w) {
        case config::when_full::drop_oldest:
            return "drop_oldest";
        case config::when_full::drop_newest:
            return "drop_newest";
        case config::when_full::block:
            return "block";
    }
    return "drop_oldest";
}

}  // namespace

spool::impl::impl(const config::spool_settings& s, prometheus::Registry& registry) : settings_(s) {
    auto& bytes = prometheus::BuildGauge()
                      .Name("ferry_spool_bytes")
                      .Help("Topic+payload bytes held in the spool")
                      .Register(registry);
    auto& msgs = prometheus::BuildGauge()
                     .Name("ferry_spool_messages")
                     .Help("Messages held in the spool")
                     .Register(registry);
    auto& received = prometheus::BuildCounter()
                         .Name("ferry_spool_received_total")
                         .Help("Messages stored in the spool")
                         .Register(registry);
    auto& sent = prometheus::BuildCounter()
                     .Name("ferry_spool_sent_total")
                     .Help("Messages removed from the spool after the broker acknowledged them")
                     .Register(registry);
    auto& dropped = prometheus::BuildCounter()
                        .Name("ferry_spool_dropped_total")
                        .Help("Messages dropped by the spool, by reason")
                        .Register(registry);
    auto& errors = prometheus::BuildCounter()
                       .Name("ferry_spool_errors_total")
                       .Help("Spool operations that failed, by reason")
                       .Register(registry);
    auto& corrupt = prometheus::BuildCounter()
                        .Name("ferry_spool_corrupt_total")
                        .Help("Damaged spool files moved aside at open")
                        .Register(registry);
    g_bytes_ = &bytes.Add({});
    g_messages_ = &msgs.Add({});
    c_received_ = &received.Add({});
    c_sent_ = &sent.Add({});
    c_corrupt_ = &corrupt.Add({});
    c_drop_oldest_ = &dropped.Add({{"reason", "drop_oldest"}});
    c_drop_newest_ = &dropped.Add({{"reason", "drop_newest"}});
    c_too_large_ = &dropped.Add({{"reason", "too_large"}});
    for (std::size_t i = 0; i < 4; ++i) {
        c_errors_[i] = &errors.Add({{"reason", err_reason_names[i]}});
    }
    c_ev_spool_full_ = &events_dropped(registry, drop::spool_full);
    c_ev_corrupt_ = &events_dropped(registry, drop::corrupt);
    c_drop_corrupt_ = &dropped.Add({{"reason", "corrupt"}});
    c_ev_too_large_ = &events_dropped(registry, drop::too_large);

    // vacuum_slack_pages_ and disk_reserve_ follow from max_bytes and the file's page size:
    // setup_connection sets them.
    open_or_recover();
    mark_open();
    set_gauges();
    log::info(component, "spool opened",
              {{"path", settings_.path},
               {"messages", std::to_string(messages_.load())},
               {"bytes", std::to_string(bytes_.load())},
               {"max_bytes", std::to_string(settings_.max_bytes)},
               {"when_full", when_full_name(settings_.full)},
               {"fsync", fsync_name(settings_.fsync)}});
}

spool::impl::~impl() {
    retry_acks(true);
    mark_clean_close();
    close_db();
}

void spool::impl::record_error(int rc, std::string_view op, std::string_view detail) {
    err_reason r = classify(rc);
    if (r == err_reason::corrupt) salvage_rc_ = rc;
    if (op == "append") last_append_disk_full_ = r == err_reason::disk_full;
    c_errors_[static_cast<int>(r)]->Increment();
    auto now = std::chrono::steady_clock::now();
    if (last_err_log_ != std::chrono::steady_clock::time_point{} &&
        now - last_err_log_ < std::chrono::seconds(10)) {
        ++suppressed_errs_;
        return;
    }
    last_err_log_ = now;
    std::string suppressed = std::to_string(suppressed_errs_);
    suppressed_errs_ = 0;
    log::error(component, "spool operation failed",
               {{"op", std::string(op)},
                {"reason", err_reason_names[static_cast<int>(r)]},
                {"error", !detail.empty() ? std::string(detail) : sqlite::message(db_, rc)},
                {"code", std::to_string(rc)},
                {"suppressed_since_last", suppressed}});
}

spool::spool(const config::spool_settings& settings, prometheus::Registry& registry)
    : impl_(std::make_unique<impl>(settings, registry)) {}

spool::~spool() {
    close();
}

std::int64_t spool::last_id() const {
    std::lock_guard lock(impl_->mu_);
    return impl_->last_id_;
}

std::uint64_t spool::bytes() const {
    return impl_->bytes_.load();
}
std::uint64_t spool::messages() const {
    return impl_->messages_.load();
}
bool spool::last_append_disk_full() const {
    return impl_->last_append_disk_full_.load();
}
std::uint64_t spool::corrupt_recoveries() const {
    return impl_->corrupt_.load();
}

void spool::close() {
    {
        std::lock_guard lock(impl_->mu_);
        impl_->closed_ = true;
    }
    impl_->data_cv_.notify_all();
    impl_->space_cv_.notify_all();
}

}  // namespace ferry::upstream
