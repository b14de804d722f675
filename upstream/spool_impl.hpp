// Inside the spool (not a public header: only upstream/spool*.cpp include it). The design
// note is at the top of spool.cpp; the parts live in
//   spool.cpp               the design note, metrics, error accounting, the small public calls
//   spool_open.cpp          open, schema check, connection setup, recovery at open
//   spool_stream.cpp        append, peek, ack, wait: the message stream and the space it uses
//   spool_state.cpp         the state table (seq mark), clean-close and boot marks
//   spool_salvage.cpp       rebuilding a damaged spool from its readable rows
//   spool_dead_letters.cpp  drop and dead_letter: rows that leave the stream undelivered
// Every member of spool::impl is guarded by mu_ unless it is atomic.
#pragma once

#include <sqlite3.h>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>

#include "core/sqlite.hpp"
#include "upstream/spool.hpp"

namespace ferry::upstream {

using sqlite::statement;
using sqlite::step_done;
using sqlite::use;

constexpr std::string_view component = "spool";
constexpr int application_id = 0x46455259;  // "FERY"
constexpr int schema_version = 3;           // 3: expiry_s (issue 18)
// A row's size as max_bytes counts it, from what the row holds: the `bytes` column is written
// by append but never trusted when reading (a damaged or edited row may lie; summed at open, a
// lie made the spool think it held a terabyte and drop every message at the next append).
// length() of a BLOB column is read from the record header, without loading the payload.
#define FERRY_ROW_BYTES                                                                     \
    "(length(CAST(topic AS BLOB)) + CASE typeof(payload) WHEN 'blob' THEN length(payload) " \
    "ELSE length(CAST(payload AS BLOB)) END)"
// The page size of a new spool: 4 KiB, the file system's block, for plain rows (a 60 KB
// batch spans whole pages); 1 KiB with compress, whose rows are one or two KB: every commit
// writes its touched pages whole to the WAL (the messages leaf, topics, sqlite_sequence, page 1,
// the pointer map), and with 4 KiB pages that was 42 of the bytes written per value against 3
// of payload (issue 16). An existing file keeps the page size it was created with.
constexpr std::int64_t plain_page_size = 4096;
constexpr std::int64_t compressed_page_size = 1024;

inline std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

inline const char* fsync_name(config::fsync_mode m) {
    switch (m) {
        case config::fsync_mode::always:
            return "always";
        case config::fsync_mode::batch:
            return "batch";
        case config::fsync_mode::never:
            return "never";
    }
    return "always";
}

// The bounded set of reasons for ferry_spool_errors_total.
enum class err_reason { disk_full, io, corrupt, other };
inline constexpr const char* err_reason_names[] = {"disk_full", "io", "corrupt", "other"};

inline err_reason classify(int rc) {
    switch (rc & 0xff) {
        case SQLITE_FULL:
            return err_reason::disk_full;
        case SQLITE_IOERR:
            return err_reason::io;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
            return err_reason::corrupt;
        default:
            return err_reason::other;
    }
}

inline bool path_exists(const std::string& p) {
    std::error_code ec;
    return std::filesystem::exists(std::filesystem::symlink_status(p, ec));
}

struct spool::impl {
    impl(const config::spool_settings& s, prometheus::Registry& registry);
    ~impl();

    config::spool_settings settings_;
    sqlite3* db_ = nullptr;

    mutable std::mutex mu_;
    std::condition_variable data_cv_;   // append, close -> wait_for_messages
    std::condition_variable space_cv_;  // ack, close -> append blocked on a full spool
    bool closed_ = false;

    std::atomic<std::uint64_t> bytes_{0};
    std::atomic<std::uint64_t> messages_{0};
    std::atomic<std::uint64_t> corrupt_{0};
    std::int64_t last_id_ = 0;  // highest id ever stored (held or not)
    std::unordered_map<std::string, std::uint64_t> last_batch_;
    std::uint64_t freed_since_vacuum_check_ = 0;
    std::int64_t page_size_ = plain_page_size;  // of the open file (setup_connection)
    std::int64_t vacuum_slack_pages_ = 0;
    // Free space on the file system that appends leave for acks and checkpoints.
    std::uint64_t disk_reserve_ = 0;

    // Error log lines are rate-limited (a full disk would otherwise log every append); the
    // counter still counts every error.
    std::chrono::steady_clock::time_point last_err_log_{};
    std::uint64_t suppressed_errs_ = 0;

    statement begin_, commit_, rollback_, insert_, upsert_topic_, oldest_, delete_upto_, peek_,
        ack_, exists_after_, load_state_, store_state_, freelist_, events_of_, ids_after_;

    // Acked by the broker, but their DELETE failed (disk full, I/O error): kept here, never
    // handed out by peek again, and deleted again at most every 100 ms by retry_acks(), from
    // whichever call comes next (the publisher calls wait_for_messages at least every 100 ms).
    // Lost at a restart: those rows are then sent once more (duplicates, counted as sent).
    std::map<std::int64_t, std::uint32_t> pending_acks_;  // id -> events
    std::chrono::steady_clock::time_point pending_tried_{};

    // Events (readings) in the rows held: what a salvage counts as lost with the rows it
    // could not read (ferry_events_dropped_total{reason="corrupt"}).
    std::uint64_t events_held_ = 0;
    // A damaged page met while running: salvage() rebuilds the spool from what is readable,
    // at most once per 5 s (a card that keeps failing must not rebuild it in a loop).
    std::chrono::steady_clock::time_point salvaged_at_{};
    prometheus::Counter* c_drop_corrupt_;
    prometheus::Counter* c_ev_corrupt_;

    prometheus::Gauge* g_bytes_;
    prometheus::Gauge* g_messages_;
    prometheus::Counter* c_received_;
    prometheus::Counter* c_sent_;
    prometheus::Counter* c_corrupt_;
    prometheus::Counter* c_drop_oldest_;
    prometheus::Counter* c_drop_newest_;
    prometheus::Counter* c_too_large_;
    prometheus::Counter* c_errors_[4];
    // Events (readings) inside the messages dropped above: ferry_events_dropped_total.
    prometheus::Counter* c_ev_spool_full_;
    prometheus::Counter* c_ev_too_large_;

    // open (spool_open.cpp)
    void open_or_recover();
    void open_checked();
    void check_columns(std::int64_t version);
    void setup_connection(bool fresh);
    std::int64_t wal_checkpoint_pages() const;
    void prepare_all();
    void load_totals();
    void close_db();
    std::string move_aside();
    void exec(const char* sql);
    int exec_rc(const char* sql);
    [[noreturn]] void fail(int rc, std::string_view what);

    // running: errors (spool.cpp), the message stream (spool_stream.cpp), state (spool_state.cpp),
    // salvage (spool_salvage.cpp)
    void record_error(int rc, std::string_view op, std::string_view detail = {});
    bool below_disk_reserve(std::uint64_t need);
    void set_gauges() {
        g_bytes_->Set(static_cast<double>(bytes_.load()));
        g_messages_->Set(static_cast<double>(messages_.load()));
    }
    void rollback() {
        if (db_ != nullptr && sqlite3_get_autocommit(db_) == 0) {
            use r(rollback_);
            sqlite3_step(*r);
        }
    }
    int consume_batch_number(const std::string& topic, std::uint64_t batch_no);
    std::uint64_t next_batch(const std::string& topic) const;
    std::uint64_t load_state(const std::string& key, std::uint64_t fallback);
    bool store_state(const std::string& key, std::uint64_t value);
    int set_synchronous(bool full);
    void mark_open();
    void mark_clean_close();
    bool has_after(std::int64_t after_id);
    int delete_row(std::int64_t id, std::int64_t& freed, std::uint32_t& events);
    void on_removed(std::uint64_t freed_bytes, std::uint64_t rows, std::uint64_t events);
    // Accounting after one row left the file undelivered (drop, dead_letter).
    void on_dropped(std::uint64_t freed_bytes, std::uint64_t events) {
        events_held_ -= std::min(events_held_, events);
        bytes_ = bytes_.load() - std::min(bytes_.load(), freed_bytes);
        messages_ = messages_.load() - std::min<std::uint64_t>(messages_.load(), 1);
        set_gauges();
    }
    void retry_acks(bool now = false);
    struct salvage_stats {
        std::uint64_t rows = 0, events = 0;
        std::uint64_t lost_ids = 0;  // ids missing between (and after) the rows read back
        std::unordered_map<std::string, std::uint64_t> topics;
        std::uint64_t seq_high_water = 0;
        bool readable = false;  // the copy opened as a ferry spool at all
    };
    salvage_stats salvage_from(const std::string& from, std::int64_t known_last_id);
    bool salvage(int rc, std::string_view op);
    void store_recovered(const std::unordered_map<std::string, std::uint64_t>& topics,
                         std::uint64_t seq_high_water);
    // record_error() notes SQLITE_CORRUPT here; the public call that met it runs salvage()
    // once its statements are reset (salvage closes the connection and finalizes them).
    int salvage_rc_ = 0;
    // Whether the last failed append failed for want of disk space (a wait on purpose).
    std::atomic<bool> last_append_disk_full_{false};
    void run_deferred_salvage(std::string_view op) {
        if (salvage_rc_ == 0) return;
        const int rc = salvage_rc_;
        salvage_rc_ = 0;
        salvage(rc, op);
    }
    void maybe_vacuum();
    append_result append(const std::string& topic, int qos, bool retain, std::uint32_t events,
                         const encode_fn& encode, std::uint32_t expiry_s);
    std::size_t append_group(std::span<const group_item> items);
    int insert_row(const group_item& m, std::uint64_t batch_no, const std::string& stored,
                   std::int64_t& id);
    void on_stored(const std::string& topic, std::uint64_t batch_no, std::int64_t id,
                   std::uint64_t need, std::uint32_t events);
};

}  // namespace ferry::upstream
