// Spool design note (the durability boundary; read before changing anything here).
//
// File format. One SQLite database (docs/SPOOL.md has the details), page size 4096, WAL
// journal, auto_vacuum=INCREMENTAL (set when the file is created; it cannot be changed later
// without a full VACUUM), application_id 0x46455259 ("FERY"), user_version 2:
//   messages(id INTEGER PRIMARY KEY AUTOINCREMENT, topic, payload BLOB, qos, retain,
//            created_ms, bytes, events) one row per MQTT message; AUTOINCREMENT so an id is
//                                      never reused, even after the table was emptied (the
//                                      publisher reads "id > last sent"); `events` = the
//                                      readings it carries (conservation metrics)
//   topics(topic PRIMARY KEY, last_batch)   last batch number given out per topic
//   state(key PRIMARY KEY, value)           small persistent key/value (seq high-water mark)
// `bytes` = topic + payload length, the unit max_bytes is counted in. A version-1 file
// (no `events` column) is migrated at open by one ALTER TABLE (its rows count 0 events). The
// connection runs in locking_mode=EXCLUSIVE: a second process cannot open the same spool (it gets
// SQLITE_BUSY and the constructor throws; a busy file is never mistaken for a corrupt one), and the
// WAL index lives in heap memory, so there is no -shm file.
//
// What is fsynced when. Every append is one transaction (BEGIN IMMEDIATE ... COMMIT), which
// also holds the batch-number update and any drop_oldest deletions, so a crash never leaves
// a message without its batch number or a half-applied drop.
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
#include "upstream/spool.hpp"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <string_view>
#include <unordered_map>

#include "core/conservation.hpp"
#include "core/log.hpp"
#include "core/sqlite.hpp"

namespace ferry::upstream {

using sqlite::statement;
using sqlite::step_done;
using sqlite::use;

namespace {

constexpr std::string_view component = "spool";
constexpr int application_id = 0x46455259;  // "FERY"
constexpr int schema_version = 2;
// A row's size as max_bytes counts it, from what the row holds: the `bytes` column is written
// by append but never trusted when reading (a damaged or edited row may lie; summed at open, a
// lie made the spool think it held a terabyte and drop every message at the next append).
// length() of a BLOB column is read from the record header, without loading the payload.
#define FERRY_ROW_BYTES                                                                     \
    "(length(CAST(topic AS BLOB)) + CASE typeof(payload) WHEN 'blob' THEN length(payload) " \
    "ELSE length(CAST(payload AS BLOB)) END)"
// Dead letters kept for inspection (docs/SPOOL.md): the newest this many rows and bytes of
// payload; a payload larger than the byte bound is kept without its payload.
constexpr std::int64_t dead_letters_max_rows = 100;
constexpr std::int64_t dead_letters_max_bytes = 4 * 1024 * 1024;
constexpr std::int64_t page_size = 4096;

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::int64_t now_s() {
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

const char* fsync_name(config::fsync_mode m) {
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

// The bounded set of reasons for ferry_spool_errors_total.
enum class err_reason { disk_full, io, corrupt, other };
constexpr const char* err_reason_names[] = {"disk_full", "io", "corrupt", "other"};

err_reason classify(int rc) {
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

// Something found at open that means "this file is not a usable spool": move it aside.
struct damaged : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Open-time errors that are not about the file's content (directory missing, no
// permission, locked by another process): moving the file aside would be wrong.
bool environmental(int rc) {
    switch (rc & 0xff) {
        case SQLITE_CANTOPEN:
        case SQLITE_PERM:
        case SQLITE_READONLY:
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
        case SQLITE_NOMEM:
        case SQLITE_FULL:
        case SQLITE_AUTH:
            return true;
        default:
            return false;
    }
}

bool path_exists(const std::string& p) {
    std::error_code ec;
    return std::filesystem::exists(std::filesystem::symlink_status(p, ec));
}

void fsync_parent_dir(const std::string& path) {
    auto dir = std::filesystem::path(path).parent_path();
    if (dir.empty()) dir = ".";
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}

}  // namespace

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

    // open
    void open_or_recover();
    void open_checked();
    void check_columns(std::int64_t version);
    void setup_connection(bool fresh);
    void prepare_all();
    void load_totals();
    void close_db();
    std::string move_aside();
    void exec(const char* sql);
    int exec_rc(const char* sql);
    [[noreturn]] void fail(int rc, std::string_view what);

    // runtime
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
                         const encode_fn& encode);
};

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

    // Pages kept on the freelist for reuse when incremental_vacuum gives the rest back (which
    // it does once twice this many are free): 1/16 of max_bytes, within [8 pages, 4 MiB].
    vacuum_slack_pages_ = std::clamp<std::int64_t>(
        static_cast<std::int64_t>(settings_.max_bytes / 16) / page_size, 8, 1024);
    // Room for the WAL to reach its checkpoint size and for the checkpoint to grow the main
    // file by as much (the WAL size as in setup_connection), plus a margin.
    disk_reserve_ =
        2 *
            static_cast<std::uint64_t>(std::clamp<std::int64_t>(
                static_cast<std::int64_t>(settings_.max_bytes / 16) / page_size, 32, 1000)) *
            static_cast<std::uint64_t>(page_size) +
        64 * 1024;

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

void spool::impl::close_db() {
    for (statement* s : {&begin_, &commit_, &rollback_, &insert_, &upsert_topic_, &oldest_,
                         &delete_upto_, &peek_, &ack_, &exists_after_, &load_state_, &store_state_,
                         &freelist_, &events_of_, &ids_after_}) {
        s->finalize();
    }
    if (db_ != nullptr) {
        // Checkpoints the WAL into the main file and removes it.
        sqlite3_close_v2(db_);
        db_ = nullptr;
    }
}

[[noreturn]] void spool::impl::fail(int rc, std::string_view what) {
    std::string msg(what);
    msg += ": ";
    msg += sqlite::message(db_, rc);
    if (environmental(rc)) throw std::runtime_error(msg);
    throw damaged(msg);
}

int spool::impl::exec_rc(const char* sql) {
    return sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
}

void spool::impl::exec(const char* sql) {
    int rc = exec_rc(sql);
    if (rc != SQLITE_OK) fail(rc, sql);
}

void spool::impl::open_or_recover() {
    std::string moved, why;
    try {
        open_checked();
        return;
    } catch (const damaged& e) {
        close_db();
        moved = move_aside();
        corrupt_.fetch_add(1);
        c_corrupt_->Increment();
        log::warn(component, "damaged spool moved aside, salvaging its readable rows",
                  {{"path", settings_.path}, {"moved_to", moved}, {"error", e.what()}});
        why = e.what();
    } catch (...) {
        close_db();
        throw;
    }
    try {
        open_checked();
    } catch (const damaged& e) {
        close_db();
        throw std::runtime_error("spool: cannot create a fresh spool at " + settings_.path + ": " +
                                 e.what());
    } catch (...) {
        close_db();
        throw;
    }
    // The moved-aside file stays as it was; every row that can still be read goes on. Damage
    // found at open may come from a power cut (fsync never) that also lost the last appends:
    // the topics jump to the wall clock, as after any power cut (mark_open), so no batch
    // number is given out twice; the gap it leaves is what the consumer should see anyway.
    auto st = salvage_from(moved, 0);
    const auto floor = static_cast<std::uint64_t>(now_ms());
    for (auto& [topic, last] : st.topics)
        last = std::max(last, floor - 1);
    store_recovered(st.topics, st.seq_high_water);
    load_totals();
    // The ids missing between (and after) the rows read back: an upper bound of the messages
    // lost (an id can be missing because it was delivered). Their events are not known: the
    // rows cannot be read, and they belong to an earlier run's count.
    c_drop_corrupt_->Increment(static_cast<double>(st.lost_ids));
    log::warn(component,
              st.readable ? "damaged spool salvaged: readable rows kept"
                          : "damaged spool had nothing readable: starting an empty spool",
              {{"moved_to", moved},
               {"kept_messages", std::to_string(st.rows)},
               {"lost_messages_at_most", std::to_string(st.lost_ids)},
               {"error", why}});
}

std::string spool::impl::move_aside() {
    const std::string& path = settings_.path;
    std::string base = path + ".corrupt-" + std::to_string(now_s());
    std::string target = base;
    for (int n = 1;
         path_exists(target) || path_exists(target + "-wal") || path_exists(target + "-shm"); ++n) {
        target = base + "." + std::to_string(n);
    }
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
        std::string from = path + suffix;
        if (!path_exists(from)) continue;
        if (::rename(from.c_str(), (target + suffix).c_str()) != 0) {
            throw std::runtime_error("spool: cannot move damaged " + from +
                                     " aside: " + std::strerror(errno));
        }
    }
    fsync_parent_dir(path);
    return target;
}

void spool::impl::open_checked() {
    // SQLite would open an empty file as a new database. A spool is never empty on disk: its
    // schema is written when it is created (into the WAL first, so a zero-byte main file
    // with a non-empty WAL is a spool that was never checkpointed, and is fine). An empty
    // file alone means its content was lost (a truncation, a write lost in a power cut):
    // say so and count it, as for any other damage.
    std::error_code size_ec;
    if (path_exists(settings_.path) && std::filesystem::file_size(settings_.path, size_ec) == 0 &&
        !size_ec) {
        const auto wal = settings_.path + "-wal";
        std::error_code wal_ec;
        if (!path_exists(wal) || std::filesystem::file_size(wal, wal_ec) == 0 || wal_ec)
            throw damaged("zero-byte file");
    }
    int rc =
        sqlite3_open_v2(settings_.path.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK) {
        std::string msg = "spool: cannot open " + settings_.path + ": " + sqlite::message(db_, rc);
        if (environmental(rc)) {
            close_db();
            throw std::runtime_error(msg);
        }
        throw damaged(msg);
    }
    sqlite3_extended_result_codes(db_, 1);
    // A previous ferry that is still shutting down holds the lock for a moment.
    sqlite3_busy_timeout(db_, 500);
    // Must come before the first read: the WAL index then lives in heap memory (no -shm) and
    // the lock is held for the life of the connection.
    exec("PRAGMA locking_mode=EXCLUSIVE");

    // The header's file format versions (bytes 18 and 19: 1 legacy, 2 WAL). A write version
    // above 2 makes SQLite open the file read-only: every append and ack would fail for good
    // while the file itself is writable (found by fuzzing: one changed byte). That is damage.
    {
        std::ifstream in(settings_.path, std::ios::binary);
        char header[20] = {};
        if (in.read(header, sizeof header) &&
            std::string_view(header, 16) == std::string_view("SQLite format 3\0", 16) &&
            (header[18] < 1 || header[18] > 2 || header[19] < 1 || header[19] > 2))
            throw damaged("file format version bytes " + std::to_string(int{header[18]}) + "/" +
                          std::to_string(int{header[19]}) + " (a readable spool has 1 or 2)");
    }

    // Structure first: a file that is not a database fails here (SQLITE_NOTADB), a damaged
    // page shows up as a quick_check row other than "ok".
    {
        statement qc;
        rc = qc.prepare(db_, "PRAGMA quick_check");
        if (rc != SQLITE_OK) fail(rc, "quick_check");
        std::string first;
        int rows = 0;
        while ((rc = sqlite3_step(qc.get())) == SQLITE_ROW) {
            if (rows++ == 0) first = sqlite::column_text(qc.get(), 0);
        }
        if (rc != SQLITE_DONE) fail(rc, "quick_check");
        if (rows != 1 || first != "ok") throw damaged("quick_check: " + first);
    }

    auto pragma_int = [&](const char* sql) -> std::int64_t {
        statement st;
        int prc = st.prepare(db_, sql);
        if (prc != SQLITE_OK) fail(prc, sql);
        prc = sqlite3_step(st.get());
        if (prc != SQLITE_ROW) fail(prc, sql);
        return sqlite3_column_int64(st.get(), 0);
    };
    std::int64_t objects = pragma_int("SELECT count(*) FROM sqlite_schema");
    bool fresh = objects == 0;
    std::int64_t version = schema_version;
    if (!fresh) {
        if (pragma_int("PRAGMA application_id") != application_id) {
            throw damaged("not a ferry spool (application_id differs)");
        }
        version = pragma_int("PRAGMA user_version");
        if (version != 1 && version != schema_version) {
            throw damaged("unknown spool schema version " + std::to_string(version));
        }
        if (pragma_int("PRAGMA auto_vacuum") != 2) throw damaged("auto_vacuum is not incremental");
        for (const char* probe :
             {version == 1 ? "SELECT id, topic, payload, qos, retain, created_ms, bytes FROM "
                             "messages LIMIT 0"
                           : "SELECT id, topic, payload, qos, retain, created_ms, bytes, events"
                             " FROM messages LIMIT 0",
              "SELECT topic, last_batch FROM topics LIMIT 0",
              "SELECT key, value FROM state LIMIT 0"}) {
            statement st;
            if (st.prepare(db_, probe) != SQLITE_OK) {
                throw damaged(std::string("schema differs: ") + sqlite3_errmsg(db_));
            }
        }
        check_columns(version);
    }
    setup_connection(fresh);
    if (version == 1) {
        // Version 1 had no per-row event count: its rows count 0 (their events were produced
        // by a Ferry that did not count them either).
        rc = exec_rc(
            "BEGIN IMMEDIATE;"
            "ALTER TABLE messages ADD COLUMN events INTEGER NOT NULL DEFAULT 0;"
            "PRAGMA user_version=2;"
            "COMMIT;");
        if (rc != SQLITE_OK) {
            exec_rc("ROLLBACK");
            fail(rc, "migrate schema 1 -> 2");
        }
        log::info(component, "spool schema migrated", {{"from", "1"}, {"to", "2"}});
    }
    prepare_all();
    load_totals();
}

// The columns must be ours, not only present: a damaged schema text that still parses can turn
// `id` into a plain column (found by fuzzing, tests/fuzz/spool_fuzz.cpp: every id then reads
// NULL, so peek and new appends never see a message again, while the spool counts them).
void spool::impl::check_columns(std::int64_t version) {
    struct column {
        const char* name;
        const char* type;
        int pk;
    };
    static constexpr column messages[] = {{"id", "INTEGER", 1},     {"topic", "TEXT", 0},
                                          {"payload", "BLOB", 0},   {"qos", "INTEGER", 0},
                                          {"retain", "INTEGER", 0}, {"created_ms", "INTEGER", 0},
                                          {"bytes", "INTEGER", 0},  {"events", "INTEGER", 0}};
    static constexpr column topics[] = {{"topic", "TEXT", 1}, {"last_batch", "INTEGER", 0}};
    static constexpr column state[] = {{"key", "TEXT", 1}, {"value", "INTEGER", 0}};
    auto check = [&](const char* table, const column* want, std::size_t n) {
        statement st;
        int rc = st.prepare(db_, std::string("PRAGMA table_info(") + table + ")");
        if (rc != SQLITE_OK) fail(rc, "table_info");
        std::size_t i = 0;
        while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
            auto text = [&](int c) { return sqlite::column_text(st.get(), c); };
            if (i >= n || text(1) != want[i].name || text(2) != want[i].type ||
                sqlite3_column_int(st.get(), 5) != want[i].pk)
                throw damaged(std::string("schema differs: ") + table + " column " +
                              std::string(text(1)) + " " + std::string(text(2)));
            ++i;
        }
        if (rc != SQLITE_DONE) fail(rc, "table_info");
        if (i != n) throw damaged(std::string("schema differs: columns of ") + table);
    };
    check("messages", messages, version == 1 ? 7 : 8);
    check("topics", topics, 2);
    check("state", state, 2);
}

void spool::impl::setup_connection(bool fresh) {
    if (fresh) {
        // Only possible before the first table exists.
        exec("PRAGMA page_size=4096");
        exec("PRAGMA auto_vacuum=INCREMENTAL");
    }
    {
        statement jm;
        int rc = jm.prepare(db_, "PRAGMA journal_mode=WAL");
        if (rc != SQLITE_OK) fail(rc, "journal_mode");
        rc = sqlite3_step(jm.get());
        if (rc != SQLITE_ROW) fail(rc, "journal_mode");
        if (sqlite::column_text(jm.get(), 0) != "wal") {
            throw std::runtime_error("spool: cannot switch " + settings_.path + " to WAL mode");
        }
    }
    switch (settings_.fsync) {
        case config::fsync_mode::always:
            exec("PRAGMA synchronous=FULL");
            break;
        case config::fsync_mode::batch:
            exec("PRAGMA synchronous=NORMAL");
            break;
        case config::fsync_mode::never:
            exec("PRAGMA synchronous=OFF");
            break;
    }
    // Checkpoint when the WAL holds max_bytes/16 (within [32 pages, 1000 pages = 4 MiB]) and
    // truncate it to that size afterwards: the WAL is part of the on-disk bound.
    std::int64_t ckpt = std::clamp<std::int64_t>(
        static_cast<std::int64_t>(settings_.max_bytes / 16) / page_size, 32, 1000);
    std::string sql = "PRAGMA wal_autocheckpoint=";
    sql += std::to_string(ckpt);
    exec(sql.c_str());
    sql = "PRAGMA journal_size_limit=";
    sql += std::to_string(ckpt * (page_size + 24));
    exec(sql.c_str());
    exec("PRAGMA foreign_keys=OFF");

    if (fresh) {
        std::string ddl =
            "BEGIN IMMEDIATE;"
            "CREATE TABLE messages(id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,"
            " created_ms INTEGER NOT NULL, bytes INTEGER NOT NULL,"
            " events INTEGER NOT NULL DEFAULT 0);"
            "CREATE TABLE topics(topic TEXT PRIMARY KEY, last_batch INTEGER NOT NULL)"
            " WITHOUT ROWID;"
            "CREATE TABLE state(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
            "PRAGMA application_id=" +
            std::to_string(application_id) +
            ";"
            "PRAGMA user_version=" +
            std::to_string(schema_version) +
            ";"
            "COMMIT;";
        int rc = exec_rc(ddl.c_str());
        if (rc != SQLITE_OK) {
            exec_rc("ROLLBACK");
            fail(rc, "create schema");
        }
    }
}

void spool::impl::prepare_all() {
    struct item {
        statement* s;
        const char* sql;
    };
    const item items[] = {
        {&begin_, "BEGIN IMMEDIATE"},
        {&commit_, "COMMIT"},
        {&rollback_, "ROLLBACK"},
        {&insert_,
         "INSERT INTO messages(topic, payload, qos, retain, created_ms, bytes, events)"
         " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"},
        {&upsert_topic_,
         "INSERT INTO topics(topic, last_batch) VALUES(?1, ?2)"
         " ON CONFLICT(topic) DO UPDATE SET last_batch = excluded.last_batch"},
        {&oldest_, "SELECT id, " FERRY_ROW_BYTES ", events FROM messages ORDER BY id"},
        {&delete_upto_, "DELETE FROM messages WHERE id <= ?1"},
        {&peek_,
         "SELECT id, topic, payload, qos, retain, created_ms, events, bytes FROM messages"
         " WHERE id > ?1 ORDER BY id LIMIT ?2"},
        {&ack_, "DELETE FROM messages WHERE id = ?1 RETURNING " FERRY_ROW_BYTES ", events"},
        {&exists_after_, "SELECT 1 FROM messages WHERE id > ?1 LIMIT 1"},
        {&events_of_, "SELECT events FROM messages WHERE id = ?1"},
        {&ids_after_, "SELECT id FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2"},
        {&load_state_, "SELECT value FROM state WHERE key = ?1"},
        {&store_state_,
         "INSERT INTO state(key, value) VALUES(?1, ?2)"
         " ON CONFLICT(key) DO UPDATE SET value = excluded.value"},
        {&freelist_, "PRAGMA freelist_count"},
    };
    for (const auto& it : items) {
        int rc = it.s->prepare(db_, it.sql);
        if (rc != SQLITE_OK) fail(rc, it.sql);
    }
}

void spool::impl::load_totals() {
    {
        statement st;
        int rc = st.prepare(db_, "SELECT count(*), coalesce(sum(" FERRY_ROW_BYTES
                                 "), 0), coalesce(sum(events), 0) FROM messages");
        if (rc != SQLITE_OK) fail(rc, "totals");
        rc = sqlite3_step(st.get());
        if (rc != SQLITE_ROW) fail(rc, "totals");
        messages_ = static_cast<std::uint64_t>(sqlite3_column_int64(st.get(), 0));
        bytes_ = static_cast<std::uint64_t>(sqlite3_column_int64(st.get(), 1));
        events_held_ = static_cast<std::uint64_t>(sqlite3_column_int64(st.get(), 2));
    }
    {
        // The AUTOINCREMENT high-water mark, not max(id): ids of acked messages count too.
        statement st;
        int rc = st.prepare(db_,
                            "SELECT coalesce(max(seq), 0) FROM sqlite_sequence"
                            " WHERE name = 'messages'");
        if (rc != SQLITE_OK) fail(rc, "sequence");
        rc = sqlite3_step(st.get());
        if (rc != SQLITE_ROW) fail(rc, "sequence");
        last_id_ = sqlite3_column_int64(st.get(), 0);
    }
    {
        statement st;
        int rc = st.prepare(db_, "SELECT topic, last_batch FROM topics");
        if (rc != SQLITE_OK) fail(rc, "topics");
        last_batch_.clear();
        while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
            last_batch_[std::string(sqlite::column_text(st.get(), 0))] =
                static_cast<std::uint64_t>(sqlite3_column_int64(st.get(), 1));
        }
        if (rc != SQLITE_DONE) fail(rc, "topics");
    }
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
                                  std::uint32_t events, const encode_fn& encode) {
    // One buffer per thread, reused: no allocation per append once it has grown.
    thread_local std::string payload;
    std::unique_lock lock(mu_);
    if (closed_) return append_result::closed;

    run_deferred_salvage("append");
    retry_acks();
    std::uint64_t encoded_for = 0;  // batch number `payload` was encoded for (0: none yet)
    for (;;) {
        if (db_ == nullptr) return append_result::error;
        const std::uint64_t batch_no = next_batch(topic);
        if (encoded_for != batch_no) {
            payload.clear();
            try {
                encode(batch_no, payload);
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
        const std::uint64_t need = topic.size() + payload.size();
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
        {
            use u(upsert_topic_);
            sqlite::bind_text(*u, 1, topic);
            sqlite3_bind_int64(*u, 2, static_cast<std::int64_t>(batch_no));
            rc = sqlite3_step(*u);
            if (rc != SQLITE_DONE) return abort(rc);
        }
        {
            use u(insert_);
            sqlite::bind_text(*u, 1, topic);
            sqlite::bind_blob(*u, 2, payload);
            sqlite3_bind_int(*u, 3, qos);
            sqlite3_bind_int(*u, 4, retain ? 1 : 0);
            sqlite3_bind_int64(*u, 5, now_ms());
            sqlite3_bind_int64(*u, 6, static_cast<std::int64_t>(need));
            sqlite3_bind_int64(*u, 7, events);
            rc = sqlite3_step(*u);
            if (rc != SQLITE_DONE) return abort(rc);
        }
        const std::int64_t id = sqlite3_last_insert_rowid(db_);
        rc = step_done(commit_);
        if (rc != SQLITE_OK) return abort(rc);

        // Once per topic and spool: where its batch numbers start (tests check the first
        // message that arrives against it).
        if (last_batch_.find(topic) == last_batch_.end())
            log::info(component, "new topic",
                      {{"topic", topic}, {"first_batch", std::to_string(batch_no)}});
        last_batch_[topic] = batch_no;
        last_id_ = id;
        events_held_ = events_held_ + events - freed_events_held;
        bytes_ = bytes_.load() + need - freed_bytes;
        messages_ = messages_.load() + 1 - freed_msgs;
        c_received_->Increment();
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

// A topic the spool knows goes on +1. One it does not know (new, or its spool was lost or
// moved aside) starts at the wall clock in milliseconds: a consumer sees a jump, never a
// batch number that went back (holds while a topic averages < 1000 messages/s).
std::uint64_t spool::impl::next_batch(const std::string& topic) const {
    auto it = last_batch_.find(topic);
    if (it != last_batch_.end()) return it->second + 1;
    return static_cast<std::uint64_t>(std::max<std::int64_t>(now_ms(), 1));
}

std::uint64_t spool::impl::load_state(const std::string& key, std::uint64_t fallback) {
    if (db_ == nullptr) return fallback;
    use u(load_state_);
    sqlite::bind_text(*u, 1, key);
    int rc = sqlite3_step(*u);
    if (rc == SQLITE_ROW) return static_cast<std::uint64_t>(sqlite3_column_int64(*u, 0));
    if (rc != SQLITE_DONE) record_error(rc, "load_state");
    return fallback;
}

// Not prepared statements: SQLite applies `PRAGMA synchronous` when it compiles the
// statement, so merely preparing "=NORMAL" at open switched every mode to NORMAL (found with
// faultvfs: `fsync: always` did not fsync at commit).
int spool::impl::set_synchronous(bool full) {
    if (full) return exec_rc("PRAGMA synchronous=FULL");
    switch (settings_.fsync) {
        case config::fsync_mode::always:
            return exec_rc("PRAGMA synchronous=FULL");
        case config::fsync_mode::batch:
            return exec_rc("PRAGMA synchronous=NORMAL");
        case config::fsync_mode::never:
            return exec_rc("PRAGMA synchronous=OFF");
    }
    return SQLITE_OK;
}

bool spool::impl::store_state(const std::string& key, std::uint64_t value) {
    if (db_ == nullptr) return false;
    // In `batch` mode this one commit is fsynced anyway (see the design note).
    const bool sync = settings_.fsync == config::fsync_mode::batch;
    if (sync) set_synchronous(true);
    int rc;
    {
        use u(store_state_);
        sqlite::bind_text(*u, 1, key);
        sqlite3_bind_int64(*u, 2, static_cast<std::int64_t>(value));
        rc = sqlite3_step(*u);
    }
    if (sync) set_synchronous(false);
    if (rc != SQLITE_DONE) {
        record_error(rc, "store_state");
        return false;
    }
    return true;
}

// This boot's id (/proc/sys/kernel/random/boot_id) as a number for the state table. Test
// hook: env FERRY_TEST_BOOT_ID, when set, replaces it, so a test can simulate a reboot.
static std::uint64_t boot_id_hash() {
    std::string id;
    if (const char* fake = std::getenv("FERRY_TEST_BOOT_ID"); fake != nullptr && *fake != '\0') {
        id = fake;
    } else {
        std::ifstream in("/proc/sys/kernel/random/boot_id");
        std::getline(in, id);
    }
    if (id.empty()) return 0;
    std::uint64_t h = 14695981039346656037ull;  // FNV-1a
    for (unsigned char c : id) {
        h ^= c;
        h *= 1099511628211ull;
    }
    return (h >> 2) | 1;  // positive as an SQLite integer, never 0 ("unknown")
}

// Marks the spool open (clean_close = 0) with this boot's id, fsynced in every mode (one
// fsync per start). Before that: if the last run did not close cleanly AND the machine
// rebooted since AND fsync is not `always`, the last appends may have been lost with the
// power, and their batch numbers with them; reusing those numbers for new content would hide
// the loss, so every known topic jumps to the wall clock in ms (a visible gap). A kill -9 in
// the same boot lost nothing (the kernel had the writes): batch numbers go on +1.
void spool::impl::mark_open() {
    if (db_ == nullptr) return;
    const std::uint64_t boot = boot_id_hash();
    const bool was_clean = load_state("clean_close", 1) != 0;
    const std::uint64_t last_boot = load_state("boot_id", 0);
    const bool bump = !was_clean && last_boot != 0 && boot != 0 && last_boot != boot &&
                      settings_.fsync != config::fsync_mode::always;
    const auto floor = static_cast<std::uint64_t>(now_ms());
    set_synchronous(true);
    int rc = step_done(begin_);
    auto put = [&](statement& st, const std::string& key, std::uint64_t value) {
        if (rc != SQLITE_OK) return;
        use u(st);
        sqlite::bind_text(*u, 1, key, SQLITE_TRANSIENT);
        sqlite3_bind_int64(*u, 2, static_cast<std::int64_t>(value));
        int r = sqlite3_step(*u);
        if (r != SQLITE_DONE) rc = r;
    };
    std::unordered_map<std::string, std::uint64_t> bumped = last_batch_;
    if (bump) {
        for (auto& [topic, last] : bumped) {
            last = std::max(last, floor - 1);
            put(upsert_topic_, topic, last);
        }
    }
    put(store_state_, "clean_close", 0);
    put(store_state_, "boot_id", boot);
    if (rc == SQLITE_OK) rc = step_done(commit_);
    if (rc != SQLITE_OK) {
        rollback();
        record_error(rc, "mark_open");
    } else if (bump) {
        last_batch_ = std::move(bumped);
    }
    set_synchronous(false);
    if (bump) {
        log::warn(component,
                  "the last run did not close the spool and the machine rebooted since: "
                  "appends not yet fsynced may be lost; batch numbers jump to show it",
                  {{"fsync", fsync_name(settings_.fsync)},
                   {"topics", std::to_string(last_batch_.size())},
                   {"next_batch_at_least", std::to_string(floor)},
                   {"stored", rc == SQLITE_OK ? "true" : "false"}});
    }
}

void spool::impl::mark_clean_close() {
    if (db_ == nullptr) return;
    set_synchronous(true);
    use u(store_state_);
    static const std::string key = "clean_close";
    sqlite::bind_text(*u, 1, key);
    sqlite3_bind_int64(*u, 2, 1);
    int rc = sqlite3_step(*u);
    if (rc != SQLITE_DONE) record_error(rc, "close");
}

// ---- Salvage: a damaged spool costs at most the damaged messages ---------------------------

namespace {

// The first `"key":<digits>` in a contract payload (CONTRACT.md); 0 when absent. Only for the
// log of what a salvage lost: the spool does not otherwise look inside payloads.
std::uint64_t json_number(std::string_view payload, std::string_view key, bool last = false) {
    std::string pat = "\"";
    pat += key;
    pat += "\":";
    auto at = last ? payload.rfind(pat) : payload.find(pat);
    if (at == std::string_view::npos) return 0;
    std::uint64_t v = 0;
    for (auto i = at + pat.size(); i < payload.size() && payload[i] >= '0' && payload[i] <= '9';
         ++i)
        v = v * 10 + static_cast<std::uint64_t>(payload[i] - '0');
    return v;
}

// What is known of one row on either side of a hole.
struct row_mark {
    std::int64_t id = 0;
    std::string topic;
    std::uint64_t batch = 0, seq_first = 0, seq_last = 0;
};

row_mark mark_of(std::int64_t id, std::string topic, std::string_view payload) {
    return {id, std::move(topic), json_number(payload, "batch"), json_number(payload, "seq"),
            json_number(payload, "seq", true)};
}

}  // namespace

// Copies every readable row, topic and state entry of the damaged copy `from` into the open
// (fresh) spool, keeping ids. Rows are read in id order; a read that fails on a damaged page
// skips ahead (probing ids at growing distance, then narrowing back to the first readable
// one), and each hole is logged with what the rows around it say (ids, batch, seq). The copy
// is not modified (no checkpoint at close), so it stays as it was for a post-mortem.
spool::impl::salvage_stats spool::impl::salvage_from(const std::string& from,
                                                     std::int64_t known_last_id) {
    salvage_stats out;
    sqlite3* src = nullptr;
    // With a WAL beside it, SQLite must replay it (read-write open, no checkpoint at close);
    // without one, immutable: nothing is created beside the copy.
    const bool has_wal = path_exists(from + "-wal");
    const std::string uri = has_wal ? from : "file:" + from + "?immutable=1";
    const int flags = has_wal ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX
                              : SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(uri.c_str(), &src, flags, nullptr) != SQLITE_OK) {
        sqlite3_close(src);
        return out;
    }
    sqlite3_db_config(src, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
    sqlite3_exec(src, "PRAGMA locking_mode=EXCLUSIVE; PRAGMA query_only=1", nullptr, nullptr,
                 nullptr);
    // One-off statements on the copy: finalized before it is closed (0: not kept).
    auto one_int = [&](const char* sql, std::int64_t fallback) {
        statement st;
        std::int64_t v = fallback;
        if (st.prepare(src, sql, 0) == SQLITE_OK && sqlite3_step(st.get()) == SQLITE_ROW)
            v = sqlite3_column_int64(st.get(), 0);
        return v;
    };
    const std::int64_t version = one_int("PRAGMA user_version", -1);
    if (one_int("PRAGMA application_id", 0) != application_id || (version != 1 && version != 2)) {
        sqlite3_close(src);
        return out;  // not ours, or a layout this Ferry does not know: nothing to read
    }
    out.readable = true;
    known_last_id = std::max(known_last_id,
                             one_int("SELECT seq FROM sqlite_sequence WHERE name = 'messages'", 0));

    // topics and state: whatever rows can be read.
    {
        statement st;
        if (st.prepare(src, "SELECT topic, last_batch FROM topics", 0) == SQLITE_OK) {
            while (sqlite3_step(st.get()) == SQLITE_ROW) {
                const auto* t = sqlite3_column_text(st.get(), 0);
                if (t == nullptr) continue;
                out.topics[reinterpret_cast<const char*>(t)] =
                    static_cast<std::uint64_t>(sqlite3_column_int64(st.get(), 1));
            }
        }
        out.seq_high_water = static_cast<std::uint64_t>(
            one_int("SELECT value FROM state WHERE key = 'seq_high_water'", 0));
    }

    // By rowid, which is `id` in our schema and still the row's key when a damaged schema text
    // no longer makes `id` its alias (then `id` reads NULL).
    const char* scan_sql =
        version == 1
            ? "SELECT rowid, topic, payload, qos, retain, created_ms, bytes, 0 FROM messages"
              " WHERE rowid > ?1 ORDER BY rowid"
            : "SELECT rowid, topic, payload, qos, retain, created_ms, bytes, events FROM messages"
              " WHERE rowid > ?1 ORDER BY rowid";
    statement scan_st, probe_st, ins_st;
    scan_st.prepare(src, scan_sql, 0);
    probe_st.prepare(src, "SELECT rowid FROM messages WHERE rowid >= ?1 ORDER BY rowid LIMIT 1", 0);
    ins_st.prepare(db_,
                   "INSERT INTO messages(id, topic, payload, qos, retain, created_ms, bytes,"
                   " events) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                   0);
    sqlite3_stmt* scan = scan_st.get();
    sqlite3_stmt* probe = probe_st.get();
    sqlite3_stmt* ins = ins_st.get();
    // The first id >= `at` that can be read, or -1 (none, or unreadable).
    auto first_id_from = [&](std::int64_t at) -> std::int64_t {
        sqlite3_reset(probe);
        sqlite3_bind_int64(probe, 1, at);
        int rc = sqlite3_step(probe);
        if (rc == SQLITE_ROW) return sqlite3_column_int64(probe, 0);
        return rc == SQLITE_DONE ? std::numeric_limits<std::int64_t>::max() : -1;
    };

    // Where reads failed: the ids from `from` up to the next row read back, with what the rows
    // on either side say. Ids missing where nothing failed were delivered before (acked).
    struct hole {
        std::int64_t from = 0, to = 0;
        row_mark before, after;
    };
    std::vector<hole> holes;
    row_mark prev;
    std::int64_t failed_from = 0;  // != 0: reads failed since `prev`, from this id on
    std::int64_t after = 0;
    int in_txn = 0;
    bool done = scan == nullptr || probe == nullptr || ins == nullptr;
    while (!done) {
        sqlite3_reset(scan);
        sqlite3_bind_int64(scan, 1, after);
        int rc;
        while ((rc = sqlite3_step(scan)) == SQLITE_ROW) {
            const std::int64_t id = sqlite3_column_int64(scan, 0);
            const auto* topic = sqlite3_column_text(scan, 1);
            const void* payload = sqlite3_column_blob(scan, 2);
            const int payload_n = sqlite3_column_bytes(scan, 2);
            if (topic == nullptr) {
                rc = SQLITE_CORRUPT;
                break;
            }
            const std::string_view body(
                static_cast<const char*>(payload),
                payload != nullptr ? static_cast<std::size_t>(payload_n) : 0);
            if (in_txn == 0) exec_rc("BEGIN IMMEDIATE");
            sqlite3_reset(ins);
            sqlite3_bind_int64(ins, 1, id);
            sqlite3_bind_text(ins, 2, reinterpret_cast<const char*>(topic), -1, SQLITE_TRANSIENT);
            sqlite3_bind_blob(ins, 3, body.data(), static_cast<int>(body.size()), SQLITE_TRANSIENT);
            for (int c = 3; c < 8; ++c)
                sqlite3_bind_int64(ins, c + 1, sqlite3_column_int64(scan, c));
            if (sqlite3_step(ins) != SQLITE_DONE) {
                record_error(sqlite3_errcode(db_), "salvage");
            } else {
                ++out.rows;
                out.events += static_cast<std::uint64_t>(sqlite3_column_int64(scan, 7));
            }
            if (++in_txn >= 500) {
                exec_rc("COMMIT");
                in_txn = 0;
            }
            auto here = mark_of(id, reinterpret_cast<const char*>(topic), body);
            if (failed_from != 0) {
                holes.push_back({failed_from, id - 1, prev, here});
                out.lost_ids +=
                    static_cast<std::uint64_t>(std::max<std::int64_t>(0, id - failed_from));
                failed_from = 0;
            }
            prev = std::move(here);
            after = id;
        }
        if (rc == SQLITE_DONE) break;
        if (failed_from == 0) failed_from = after + 1;
        // A damaged page: find the first readable id beyond it. Probe at growing distance...
        constexpr std::int64_t none = std::numeric_limits<std::int64_t>::max();
        std::int64_t bad = after, step = 1, hit = -1, hit_at = 0;
        const std::int64_t limit = std::max<std::int64_t>(known_last_id, after + (1 << 24));
        for (std::int64_t at = after + 1; at <= limit; at = bad + step) {
            hit = first_id_from(at);
            if (hit >= 0) {
                hit_at = at;
                break;
            }
            bad = at;
            step *= 2;
        }
        if (hit < 0) break;  // nothing readable past it: the rest is lost
        // ... then narrow back to the first position that reads (damage is one contiguous run).
        std::int64_t lo = bad + 1, hi = hit_at;
        while (lo < hi) {
            const std::int64_t mid = lo + (hi - lo) / 2;
            if (first_id_from(mid) >= 0)
                hi = mid;
            else
                lo = mid + 1;
        }
        const std::int64_t next = first_id_from(lo);
        if (next < 0 || next == none) break;
        // Always move on: the row the scan failed on may itself be the damaged one.
        after = std::max(next - 1, after + 1);
    }
    if (in_txn > 0) exec_rc("COMMIT");
    if (failed_from != 0) {  // reads failed up to the end
        const std::int64_t to = std::max(known_last_id, failed_from);
        holes.push_back({failed_from, to, prev, row_mark{}});
        out.lost_ids += static_cast<std::uint64_t>(to - failed_from + 1);
    }
    scan_st.finalize();
    probe_st.finalize();
    ins_st.finalize();
    sqlite3_close(src);

    // One line per hole (the first 20): what a consumer will miss.
    std::size_t logged = 0;
    // ids: the range that could not be read (delivered ids in it were never there). On a
    // topic, batch numbers between batch_before and batch_after are lost (0: unknown), and
    // seq numbers between seq_lost_after and seq_lost_before.
    for (const auto& h : holes) {
        if (++logged > 20) break;
        log::warn(component, "damaged spool: messages lost",
                  {{"ids", std::to_string(h.from) + ".." + std::to_string(h.to)},
                   {"topic_before", h.before.topic},
                   {"batch_before", std::to_string(h.before.batch)},
                   {"topic_after", h.after.topic},
                   {"batch_after", std::to_string(h.after.batch)},
                   {"seq_lost_after", std::to_string(h.before.seq_last)},
                   {"seq_lost_before", std::to_string(h.after.seq_first)}});
    }
    return out;
}

// Writes the batch numbers and seq mark recovered from a damaged spool into the new one.
void spool::impl::store_recovered(const std::unordered_map<std::string, std::uint64_t>& topics,
                                  std::uint64_t seq_high_water) {
    if (step_done(begin_) != SQLITE_OK) return;
    for (const auto& [topic, last] : topics) {
        use u(upsert_topic_);
        sqlite::bind_text(*u, 1, topic);
        sqlite3_bind_int64(*u, 2, static_cast<std::int64_t>(last));
        sqlite3_step(*u);
    }
    if (seq_high_water > 0) {
        use u(store_state_);
        static const std::string key = "seq_high_water";
        sqlite::bind_text(*u, 1, key);
        sqlite3_bind_int64(*u, 2, static_cast<std::int64_t>(seq_high_water));
        sqlite3_step(*u);
    }
    if (step_done(commit_) != SQLITE_OK) rollback();
}

// A damaged page met while running (rc is SQLITE_CORRUPT/NOTADB): the file is moved aside
// and a fresh spool is built from every row that can still be read, keeping ids (the
// publisher's cursor stays valid) and this run's batch numbers. What could not be read is
// counted: messages in ferry_spool_dropped_total{reason="corrupt"}, their events in
// ferry_events_dropped_total{reason="corrupt"}. Called with mu_ held. True when a usable spool
// is open afterwards.
bool spool::impl::salvage(int rc, std::string_view op) {
    if (classify(rc) != err_reason::corrupt || db_ == nullptr) return false;
    const auto t = std::chrono::steady_clock::now();
    if (salvaged_at_ != std::chrono::steady_clock::time_point{} &&
        t - salvaged_at_ < std::chrono::seconds(5))
        return false;
    salvaged_at_ = t;
    const std::uint64_t held = messages_.load();
    std::uint64_t held_events = events_held_;
    std::uint64_t pending_rows = pending_acks_.size();
    for (const auto& [id, ev] : pending_acks_)
        held_events -= std::min<std::uint64_t>(held_events, ev);
    const auto batches = last_batch_;
    const std::int64_t known_last = last_id_;
    rollback();
    close_db();
    std::string moved;
    try {
        moved = move_aside();
        open_checked();
    } catch (const std::exception& e) {
        close_db();
        log::error(component, "damaged spool found while running and no fresh spool could be made",
                   {{"path", settings_.path}, {"error", e.what()}});
        return false;
    }
    auto st = salvage_from(moved, known_last);
    // This run's batch numbers are the truth (the damaged topics table may be unreadable).
    for (const auto& [topic, last] : st.topics)
        last_batch_[topic] = std::max(last_batch_[topic], last);
    for (const auto& [topic, last] : batches)
        last_batch_[topic] = std::max(last_batch_[topic], last);
    store_recovered(last_batch_, st.seq_high_water);
    pending_acks_.clear();  // delivered rows were not copied
    const auto topics = last_batch_;
    try {
        load_totals();
    } catch (const std::exception&) {
    }
    last_batch_ = topics;
    mark_open();  // the new file: open, this boot
    last_id_ = std::max(last_id_, known_last);
    const std::uint64_t lost = held > pending_rows + st.rows ? held - pending_rows - st.rows : 0;
    const std::uint64_t lost_events = held_events > st.events ? held_events - st.events : 0;
    corrupt_.fetch_add(1);
    c_corrupt_->Increment();
    c_drop_corrupt_->Increment(static_cast<double>(lost));
    c_ev_corrupt_->Increment(static_cast<double>(lost_events));
    set_gauges();
    log::warn(component, "damaged spool found while running: rebuilt from its readable rows",
              {{"op", std::string(op)},
               {"moved_to", moved},
               {"kept_messages", std::to_string(st.rows)},
               {"lost_messages", std::to_string(lost)},
               {"lost_events", std::to_string(lost_events)},
               {"error", sqlite3_errstr(rc)}});
    space_cv_.notify_all();
    data_cv_.notify_all();
    return true;
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
            static_cast<std::uint64_t>(vacuum_slack_pages_ * page_size) / 2 ||
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
                static_cast<std::uint64_t>(page_size);
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
    std::int64_t release = free_pages - vacuum_slack_pages_;
    std::string sql = "PRAGMA incremental_vacuum(";
    sql += std::to_string(release);
    sql += ")";
    int rc = exec_rc(sql.c_str());
    if (rc != SQLITE_OK) record_error(rc, "vacuum");
}

spool::spool(const config::spool_settings& settings, prometheus::Registry& registry)
    : impl_(std::make_unique<impl>(settings, registry)) {}

spool::~spool() {
    close();
}

append_result spool::append(const std::string& topic, int qos, bool retain, std::uint32_t events,
                            const encode_fn& encode) {
    try {
        auto r = impl_->append(topic, qos, retain, events, encode);
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
                    if (p != nullptr) m.payload.assign(static_cast<const char*>(p), n);
                    // Raw, for the publisher's check (a flipped bit must not pass as 1).
                    const auto qos = sqlite3_column_int64(*u, 3);
                    m.qos = static_cast<int>(std::clamp<std::int64_t>(qos, -1, 256));
                    m.retain = sqlite3_column_int(*u, 4) != 0;
                    m.created_ms = sqlite3_column_int64(*u, 5);
                    m.events = static_cast<std::uint32_t>(
                        std::clamp<std::int64_t>(sqlite3_column_int64(*u, 6), 0, UINT32_MAX));
                    m.stored_bytes = sqlite3_column_int64(*u, 7);
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

std::uint64_t spool::load_state(const std::string& key, std::uint64_t fallback) {
    std::lock_guard lock(impl_->mu_);
    auto v = impl_->load_state(key, fallback);
    impl_->run_deferred_salvage("load_state");
    return v;
}

bool spool::store_state(const std::string& key, std::uint64_t value) {
    std::lock_guard lock(impl_->mu_);
    bool ok = impl_->store_state(key, value);
    impl_->run_deferred_salvage("store_state");
    return ok;
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

// ---- Publisher helper (issue 13): removing a message the broker refused -------------------
// Kept apart from ack(): a dropped message is not "sent" and is rare (refused publishes), so
// it prepares its statement on each call instead of holding one.
namespace ferry::upstream {

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
