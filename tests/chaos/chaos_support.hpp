// Helpers only the chaos tests need: reading a spool file after ferry has stopped, and the
// common start of a chaos test (a simulator, a broker whose sessions survive a restart, a
// recorder, a ferry).
#pragma once

#include <doctest/doctest.h>
#include <sqlite3.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "tests/support/harness.hpp"

namespace ferry::test {

// What a spool file holds (read from a copy, so the original is not touched).
struct spool_file_state {
    std::int64_t messages = -1;                       // -1: could not read
    std::map<std::string, std::uint64_t> last_batch;  // topics.last_batch
    std::uint64_t seq_high_water = 0;
};

inline spool_file_state read_spool_file(const std::string& path) {
    spool_file_state out;
    temp_dir copy;
    const auto db = copy.file("spool.db");
    std::error_code ec;
    std::filesystem::copy_file(path, db, ec);
    if (ec) return out;
    if (std::filesystem::exists(path + "-wal"))
        std::filesystem::copy_file(path + "-wal", db + "-wal", ec);
    sqlite3* h = nullptr;
    if (sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
        sqlite3_close(h);
        return out;
    }
    auto each = [&](const char* sql, auto&& row) {
        sqlite3_stmt* st = nullptr;
        if (sqlite3_prepare_v2(h, sql, -1, &st, nullptr) != SQLITE_OK) return false;
        while (sqlite3_step(st) == SQLITE_ROW)
            row(st);
        sqlite3_finalize(st);
        return true;
    };
    std::int64_t n = -1;
    each("SELECT count(*) FROM messages",
         [&](sqlite3_stmt* st) { n = sqlite3_column_int64(st, 0); });
    each("SELECT topic, last_batch FROM topics", [&](sqlite3_stmt* st) {
        out.last_batch[reinterpret_cast<const char*>(sqlite3_column_text(st, 0))] =
            static_cast<std::uint64_t>(sqlite3_column_int64(st, 1));
    });
    each("SELECT value FROM state WHERE key = 'seq_high_water'", [&](sqlite3_stmt* st) {
        out.seq_high_water = static_cast<std::uint64_t>(sqlite3_column_int64(st, 0));
    });
    sqlite3_close(h);
    out.messages = n;
    return out;
}

// Where a run's numbers start, from its log (a run starts seq above the wall clock in µs and
// a new topic's batch numbers at the wall clock in ms, docs/SPOOL.md): the first seq it gives
// out is seq_start_logged + 1, the first batch on `topic` first_batch_logged. 0 when absent.
inline std::uint64_t logged_number(const std::string& log, const std::string& line_has,
                                   const std::string& key) {
    std::string text;
    try {
        text = read_file(log);
    } catch (...) {
        return 0;
    }
    for (std::size_t at = text.find(line_has); at != std::string::npos;
         at = text.find(line_has, at + 1)) {
        const auto eol = text.find('\n', at);
        const auto line = text.substr(at, eol == std::string::npos ? eol : eol - at);
        const auto k = line.find(" " + key + "=");
        if (k != std::string::npos) return std::stoull(line.substr(k + key.size() + 2));
    }
    return 0;
}
inline std::uint64_t seq_start_logged(const std::string& log) {
    return logged_number(log, "msg=\"seq starts\"", "after");
}
inline std::uint64_t first_batch_logged(const std::string& log, const std::string& topic) {
    return logged_number(log, "msg=\"new topic\" topic=" + topic + " ", "first_batch");
}

// Starts `ferry run` on `config_path` (written from `o`), logging to `log`, and waits for
// /readyz 200; REQUIREs it (printing the log's tail otherwise).
inline std::unique_ptr<process> start_ferry(const ferry_options& o, const std::string& config_path,
                                            const std::string& log) {
    write_file(config_path, ferry_yaml(o));
    auto p = std::make_unique<process>(
        std::vector<std::string>{FERRY_BINARY, "run", "-c", config_path}, log);
    const bool ready =
        wait_until([&] { return !p->running() || http_get(o.http_port, "/readyz").status == 200; },
                   15000ms) &&
        p->running();
    if (!ready) {
        std::string text;
        try {
            text = read_file(log);
        } catch (...) {
        }
        if (text.size() > 3000) text = text.substr(text.size() - 3000);
        FAIL("ferry did not become ready; log:\n" << text);
    }
    return p;
}

}  // namespace ferry::test
