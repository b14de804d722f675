// The command-id store (see store.hpp): commands.db, aged by Ferry's running time.
#include "commands/store.hpp"

#include <algorithm>
#include <stdexcept>

#include "commands/internal.hpp"
#include "core/log.hpp"
#include "core/sqlite.hpp"

namespace ferry::commands {

// commands(id TEXT PRIMARY KEY, device, point, state, error, at_ms): state 0 = in progress,
// 1 = ok, 2 = failed. WAL with synchronous=FULL: every commit is fsynced, so an id recorded
// "in progress" is on disk before its write is queued.

namespace {

using sqlite::statement;

enum class state : int { in_progress = 0, ok = 1, failed = 2 };

}  // namespace

// Ages are measured on the store's own clock: Ferry's accumulated running time in ms
// (`meta.runtime_ms`, persisted with every recorded id and at close, plus the monotonic time
// since this open), never the wall clock. A wall clock that NTP steps by hours (an RTC-less
// box) therefore neither expires an id early (a step forward) nor keeps rows recorded while
// it was behind from ageing (a step back): a retried id is never written twice (issue 13).
// Time while Ferry is not running does not count, so an id may be kept longer than `ttl` in
// wall time, never shorter; a kill -9 loses at most the running time since the last recorded
// id (ids then live longer). `at_ms` keeps the wall-clock time of the write, for people.
struct store::impl {
    std::string path;
    options opt;
    sqlite3* db = nullptr;
    statement find_st, insert_st, finish_st, forget_st, evict_age_st, evict_count_st, count_st,
        runtime_st;
    std::int64_t runtime_base = 0;  // meta.runtime_ms at open
    std::chrono::steady_clock::time_point opened = std::chrono::steady_clock::now();

    std::int64_t now() const {
        return runtime_base + std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::steady_clock::now() - opened)
                                  .count();
    }

    // "<path>: <what>: <sqlite3_errmsg>" (sqlite::error is a std::runtime_error).
    [[noreturn]] void fail(int rc, const std::string& what) const {
        throw sqlite::error(db, rc, path + ": " + what);
    }
    void exec(const char* sql) {
        if (const int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr); rc != SQLITE_OK)
            fail(rc, sql);
    }
    void prepare(statement& st, const std::string& sql) {
        if (const int rc = st.prepare(db, sql); rc != SQLITE_OK)
            fail(rc, "not a Ferry command store");
    }
    // Runs a statement to completion; the caller bound its parameters.
    void run(statement& st, const char* what) {
        if (const int rc = sqlite::step_done(st); rc != SQLITE_OK) fail(rc, what);
    }
    // Copied: the text need not outlive the call.
    void bind(statement& st, int i, std::string_view text) {
        sqlite::bind_text(st.get(), i, text, SQLITE_TRANSIENT);
    }

    impl(std::string p, options o) : path(std::move(p)), opt(o) {
        if (sqlite3_open_v2(path.c_str(), &db,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                            nullptr) != SQLITE_OK) {
            const std::string why = db ? sqlite3_errmsg(db) : "out of memory";
            sqlite3_close(db);
            db = nullptr;
            throw std::runtime_error(path + ": cannot open: " + why);
        }
        try {
            sqlite3_busy_timeout(db, 1000);
            exec("PRAGMA journal_mode=WAL");
            exec("PRAGMA synchronous=FULL");
            exec(
                "CREATE TABLE IF NOT EXISTS commands(id TEXT PRIMARY KEY, device TEXT NOT NULL, "
                "point TEXT NOT NULL, state INTEGER NOT NULL, error TEXT NOT NULL DEFAULT '', "
                "at_ms INTEGER NOT NULL)");
            // Version 1 files aged ids by at_ms (the wall clock); their ids start at running
            // time 0 here, so they are kept for a full ttl of running time from now on.
            if (!has_column("commands", "run_ms"))
                exec("ALTER TABLE commands ADD COLUMN run_ms INTEGER NOT NULL DEFAULT 0");
            exec("CREATE INDEX IF NOT EXISTS commands_run ON commands(run_ms)");
            exec("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)");
            prepare(find_st, "SELECT state, error, run_ms FROM commands WHERE id = ?1");
            prepare(insert_st,
                    "INSERT OR REPLACE INTO commands(id, device, point, state, error, at_ms, "
                    "run_ms) VALUES (?1, ?2, ?3, 0, '', ?4, ?5)");
            prepare(finish_st, "UPDATE commands SET state = ?2, error = ?3 WHERE id = ?1");
            prepare(forget_st, "DELETE FROM commands WHERE id = ?1");
            prepare(evict_age_st, "DELETE FROM commands WHERE run_ms < ?1");
            // Keeps the newest ?1 ids.
            prepare(evict_count_st,
                    "DELETE FROM commands WHERE rowid IN (SELECT rowid FROM commands ORDER BY "
                    "run_ms DESC, rowid DESC LIMIT -1 OFFSET ?1)");
            // Never backwards: a caller-supplied clock (tests) may be ahead of ours.
            prepare(runtime_st,
                    "INSERT INTO meta(key, value) VALUES ('runtime_ms', ?1) ON CONFLICT(key) "
                    "DO UPDATE SET value = max(value, excluded.value)");
            {
                statement base;
                prepare(base,
                        "SELECT max(coalesce((SELECT value FROM meta WHERE key = "
                        "'runtime_ms'), 0), coalesce((SELECT max(run_ms) FROM commands), 0))");
                if (sqlite3_step(base.get()) == SQLITE_ROW)
                    runtime_base = sqlite3_column_int64(base.get(), 0);
            }
            prepare(count_st, "SELECT count(*) FROM commands");
            // Ids a previous run left in progress: ferry stopped between recording and
            // answering; whether the device took the write is unknown.
            statement recover;
            prepare(recover, "UPDATE commands SET state = 2, error = ?1 WHERE state = 0");
            bind(recover, 1, k_unknown_outcome);
            run(recover, "recovering ids in progress");
            const int n = sqlite3_changes(db);
            if (n > 0) {
                log::warn(
                    k_component, "commands were in progress when ferry stopped",
                    {{"count", std::to_string(n)}, {"answer", std::string(k_unknown_outcome)}});
            }
        } catch (...) {
            close();
            throw;
        }
    }
    bool has_column(const char* table, const char* column) {
        statement st;
        prepare(st, "SELECT 1 FROM pragma_table_info('" + std::string(table) + "') WHERE name = '" +
                        column + "'");
        return sqlite3_step(st.get()) == SQLITE_ROW;
    }
    void store_runtime(std::int64_t ms) {
        sqlite3_bind_int64(runtime_st.get(), 1, ms);
        run(runtime_st, "recording the running time");
    }
    void close() {
        if (db && runtime_st.get()) {
            try {
                store_runtime(now());  // the running time of this run counts at the next
            } catch (const std::exception&) {
                // A store that cannot write any more: ids live longer, nothing worse.
            }
        }
        for (auto* st : {&find_st, &insert_st, &finish_st, &forget_st, &evict_age_st,
                         &evict_count_st, &count_st, &runtime_st})
            st->finalize();
        sqlite3_close(db);
        db = nullptr;
    }
    ~impl() { close(); }
};

store::store(const std::string& path, options opt) : impl_(std::make_unique<impl>(path, opt)) {}
store::~store() = default;

std::optional<store::entry> store::find(const std::string& id, std::int64_t now_ms) {
    sqlite::use st(impl_->find_st);
    impl_->bind(impl_->find_st, 1, id);
    std::optional<entry> out;
    const int rc = sqlite3_step(*st);
    if (rc == SQLITE_ROW && sqlite3_column_int64(*st, 2) >= now_ms - impl_->opt.ttl.count()) {
        const auto s = static_cast<state>(sqlite3_column_int(*st, 0));
        out = entry{s == state::in_progress, s == state::ok,
                    std::string(sqlite::column_text(*st, 1))};
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) impl_->fail(rc, "looking up a command id");
    return out;
}

void store::begin(const std::string& id, const std::string& device, const std::string& point,
                  std::int64_t now_ms) {
    impl_->exec("BEGIN IMMEDIATE");
    try {
        sqlite3_bind_int64(impl_->evict_age_st.get(), 1, now_ms - impl_->opt.ttl.count());
        impl_->run(impl_->evict_age_st, "evicting expired ids");
        const auto keep = static_cast<std::int64_t>(std::max<std::size_t>(impl_->opt.max_ids, 1));
        sqlite3_bind_int64(impl_->evict_count_st.get(), 1, keep - 1);  // room for this one
        impl_->run(impl_->evict_count_st, "evicting the oldest ids");
        impl_->bind(impl_->insert_st, 1, id);
        impl_->bind(impl_->insert_st, 2, device);
        impl_->bind(impl_->insert_st, 3, point);
        sqlite3_bind_int64(impl_->insert_st.get(), 4,
                           std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count());
        sqlite3_bind_int64(impl_->insert_st.get(), 5, now_ms);
        impl_->run(impl_->insert_st, "recording a command id");
        impl_->store_runtime(now_ms);
        impl_->exec("COMMIT");
    } catch (...) {
        sqlite3_exec(impl_->db, "ROLLBACK", nullptr, nullptr, nullptr);
        throw;
    }
}

void store::finish(const std::string& id, bool ok, const std::string& error) {
    impl_->bind(impl_->finish_st, 1, id);
    sqlite3_bind_int(impl_->finish_st.get(), 2, static_cast<int>(ok ? state::ok : state::failed));
    impl_->bind(impl_->finish_st, 3, error);
    impl_->run(impl_->finish_st, "recording a command's result");
}

void store::forget(const std::string& id) {
    impl_->bind(impl_->forget_st, 1, id);
    impl_->run(impl_->forget_st, "forgetting a command id");
}

std::int64_t store::now() const {
    return impl_->now();
}

std::size_t store::size() {
    sqlite::use st(impl_->count_st);
    std::size_t n = 0;
    if (sqlite3_step(*st) == SQLITE_ROW) n = static_cast<std::size_t>(sqlite3_column_int64(*st, 0));
    return n;
}

}  // namespace ferry::commands
