// The state table: small durable values (the seq high-water mark), the clean-close flag and the
// boot id that tell a power cut from a kill -9 at the next open (design note in spool.cpp,
// "Power cut").
#include "upstream/spool_impl.hpp"

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include "core/log.hpp"

namespace ferry::upstream {

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

}  // namespace ferry::upstream
