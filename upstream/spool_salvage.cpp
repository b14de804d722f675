// Salvage: a damaged spool costs at most the damaged messages. Every readable row of the file
// moved aside is copied into a fresh spool, keeping ids; holes are logged and counted (design
// note in spool.cpp, "Recovery").
#include "upstream/spool_impl.hpp"

#include <algorithm>
#include <limits>
#include <vector>

#include "core/conservation.hpp"
#include "core/log.hpp"
#include "upstream/spool_codec.hpp"

namespace ferry::upstream {

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

row_mark mark_of(std::int64_t id, std::string topic, std::string_view stored) {
    // A compressed row is read through its frame; one that does not decode marks nothing.
    thread_local std::string plain;
    std::string error;
    std::string_view payload = stored;
    if (spool_codec::is_compressed(stored))
        payload = spool_codec::decode(stored, plain, error) ? std::string_view(plain) : "";
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
    if (one_int("PRAGMA application_id", 0) != application_id || (version < 1 || version > 3)) {
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
            ? "SELECT rowid, topic, payload, qos, retain, created_ms, bytes, 0, 0 FROM messages"
              " WHERE rowid > ?1 ORDER BY rowid"
        : version == 2
            ? "SELECT rowid, topic, payload, qos, retain, created_ms, bytes, events, 0 FROM"
              " messages WHERE rowid > ?1 ORDER BY rowid"
            : "SELECT rowid, topic, payload, qos, retain, created_ms, bytes, events, expiry_s FROM"
              " messages WHERE rowid > ?1 ORDER BY rowid";
    statement scan_st, probe_st, ins_st;
    scan_st.prepare(src, scan_sql, 0);
    probe_st.prepare(src, "SELECT rowid FROM messages WHERE rowid >= ?1 ORDER BY rowid LIMIT 1", 0);
    ins_st.prepare(db_,
                   "INSERT INTO messages(id, topic, payload, qos, retain, created_ms, bytes,"
                   " events, expiry_s) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
            for (int c = 3; c < 9; ++c)
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

}  // namespace ferry::upstream
