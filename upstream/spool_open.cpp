// Opening the spool: the file checks (zero-byte file, format bytes, quick_check, schema and
// columns), the connection's pragmas, the schema, the kept statements and the running totals;
// a damaged file is moved aside and salvaged (design note in spool.cpp, "Recovery").
#include "upstream/spool_impl.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "core/log.hpp"

namespace ferry::upstream {

namespace {

// Something found at open that means "this file is not a usable spool": move it aside.
struct damaged : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::int64_t now_s() {
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

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

void fsync_parent_dir(const std::string& path) {
    auto dir = std::filesystem::path(path).parent_path();
    if (dir.empty()) dir = ".";
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}

}  // namespace

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
        if (version < 1 || version > schema_version) {
            throw damaged("unknown spool schema version " + std::to_string(version));
        }
        if (pragma_int("PRAGMA auto_vacuum") != 2) throw damaged("auto_vacuum is not incremental");
        for (const char* probe :
             {version == 1   ? "SELECT id, topic, payload, qos, retain, created_ms, bytes FROM "
                               "messages LIMIT 0"
              : version == 2 ? "SELECT id, topic, payload, qos, retain, created_ms, bytes, events"
                               " FROM messages LIMIT 0"
                             : "SELECT id, topic, payload, qos, retain, created_ms, bytes, events,"
                               " expiry_s FROM messages LIMIT 0",
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
    if (version < schema_version) {
        // Version 1 had no per-row event count: its rows count 0 (their events were produced
        // by a Ferry that did not count them either). Versions 1 and 2 had no message expiry:
        // their rows never expire (expiry_s 0), as they were spooled.
        std::string ddl = "BEGIN IMMEDIATE;";
        if (version == 1)
            ddl += "ALTER TABLE messages ADD COLUMN events INTEGER NOT NULL DEFAULT 0;";
        ddl +=
            "ALTER TABLE messages ADD COLUMN expiry_s INTEGER NOT NULL DEFAULT 0;"
            "PRAGMA user_version=" +
            std::to_string(schema_version) + ";COMMIT;";
        rc = exec_rc(ddl.c_str());
        const auto from = std::to_string(version), to = std::to_string(schema_version);
        if (rc != SQLITE_OK) {
            exec_rc("ROLLBACK");
            fail(rc, ("migrate schema " + from + " -> " + to).c_str());
        }
        log::info(component, "spool schema migrated", {{"from", from}, {"to", to}});
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
    static constexpr column messages[] = {
        {"id", "INTEGER", 1},    {"topic", "TEXT", 0},     {"payload", "BLOB", 0},
        {"qos", "INTEGER", 0},   {"retain", "INTEGER", 0}, {"created_ms", "INTEGER", 0},
        {"bytes", "INTEGER", 0}, {"events", "INTEGER", 0}, {"expiry_s", "INTEGER", 0}};
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
    check("messages", messages, static_cast<std::size_t>(version) + 6);
    check("topics", topics, 2);
    check("state", state, 2);
}

std::int64_t spool::impl::wal_checkpoint_pages() const {
    return std::clamp<std::int64_t>(static_cast<std::int64_t>(settings_.max_bytes / 16), 32 * 4096,
                                    1000 * 4096) /
           page_size_;
}

void spool::impl::setup_connection(bool fresh) {
    if (fresh) {
        // Only possible before the first table exists.
        const std::string ps =
            "PRAGMA page_size=" +
            std::to_string(settings_.compress ? compressed_page_size : plain_page_size);
        exec(ps.c_str());
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
    {
        statement ps;
        if (ps.prepare(db_, "PRAGMA page_size") == SQLITE_OK &&
            sqlite3_step(ps.get()) == SQLITE_ROW)
            page_size_ = std::max<std::int64_t>(512, sqlite3_column_int64(ps.get(), 0));
    }
    // Pages kept on the freelist for reuse when incremental_vacuum gives the rest back (which
    // it does once twice this many are free): 1/16 of max_bytes, within [32 KiB, 4 MiB].
    vacuum_slack_pages_ =
        std::clamp<std::int64_t>(static_cast<std::int64_t>(settings_.max_bytes / 16), 32 * 1024,
                                 4 * 1024 * 1024) /
        page_size_;
    // Checkpoint when the WAL holds max_bytes/16 (within [128 KiB, 4,096,000 bytes]) and
    // truncate it to that size afterwards: the WAL is part of the on-disk bound.
    const std::int64_t ckpt = wal_checkpoint_pages();
    // Room for the WAL to reach its checkpoint size and for the checkpoint to grow the main
    // file by as much, plus a margin.
    disk_reserve_ = 2 * static_cast<std::uint64_t>(ckpt * page_size_) + 64 * 1024;
    std::string sql = "PRAGMA wal_autocheckpoint=";
    sql += std::to_string(ckpt);
    exec(sql.c_str());
    sql = "PRAGMA journal_size_limit=";
    sql += std::to_string(ckpt * (page_size_ + 24));
    exec(sql.c_str());
    exec("PRAGMA foreign_keys=OFF");
    // Debian builds SQLite with SECURE_DELETE: every ack then wrote the deleted row's pages
    // again as zeros (WAL, then checkpoint), as many bytes as the append had written (issue 16).
    // FAST still clears what sits on b-tree pages that are written anyway; freed overflow pages
    // keep their old bytes until an append reuses them. Durability does not depend on it.
    exec("PRAGMA secure_delete=FAST");

    if (fresh) {
        std::string ddl =
            "BEGIN IMMEDIATE;"
            "CREATE TABLE messages(id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,"
            " created_ms INTEGER NOT NULL, bytes INTEGER NOT NULL,"
            " events INTEGER NOT NULL DEFAULT 0, expiry_s INTEGER NOT NULL DEFAULT 0);"
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
         "INSERT INTO messages(topic, payload, qos, retain, created_ms, bytes, events, expiry_s)"
         " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"},
        {&upsert_topic_,
         "INSERT INTO topics(topic, last_batch) VALUES(?1, ?2)"
         " ON CONFLICT(topic) DO UPDATE SET last_batch = excluded.last_batch"},
        {&oldest_, "SELECT id, " FERRY_ROW_BYTES ", events FROM messages ORDER BY id"},
        {&delete_upto_, "DELETE FROM messages WHERE id <= ?1"},
        {&peek_,
         "SELECT id, topic, payload, qos, retain, created_ms, events, bytes, expiry_s FROM"
         " messages WHERE id > ?1 ORDER BY id LIMIT ?2"},
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

}  // namespace ferry::upstream
