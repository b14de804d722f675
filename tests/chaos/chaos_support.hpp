// Helpers only the chaos tests need: reading a spool file after ferry has stopped, and the
// common start of a chaos test (a simulator, a broker whose sessions survive a restart, a
// recorder, a ferry).
#pragma once

#include <doctest/doctest.h>
#include <sqlite3.h>

#include <filesystem>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "tests/support/ferry_run.hpp"

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

// The common start of a chaos test: our simulator with `registers` holding registers (register
// i holds i), a broker whose sessions survive a clean restart (so the recorder misses nothing
// ferry publishes to the restarted broker before the recorder is back), a recorder on
// plant/#, a data directory, and ferry_options pointing at them all; the test adjusts `o`
// and starts ferry.
struct chaos_rig {
    modbus_sim sim;
    temp_dir broker_db;
    mosquitto broker;
    mqtt_recorder rec;
    temp_dir dir;
    ferry_options o;
    explicit chaos_rig(int registers, int inflight = 16)
        : sim(0, holding_registers(registers)),
          broker(0, persistence_conf(broker_db)),
          rec(broker.uri(), {"plant/#"}) {
        o.data_dir = dir.path();
        o.http_port = free_port();
        o.modbus_port = sim.port();
        o.registers = registers;
        o.uris = {broker.uri()};
        o.inflight = inflight;
    }
};

// Starts `ferry run` on `config_path` (written from `o`), logging to `log`, and waits for
// /readyz 200; REQUIREs it (printing the log's tail otherwise).
inline std::unique_ptr<process> start_ferry(const ferry_options& o, const std::string& config_path,
                                            const std::string& log) {
    write_file(config_path, ferry_yaml(o));
    auto p = ferry_process(config_path, log);
    wait_ready(*p, o.http_port, 15000ms);
    return p;
}

// The fields of ferry's last log line with msg="<msg>" (key=value, values maybe quoted), e.g.
// the `stopped` line's produced=N and dropped_<reason>=N; empty when there is none.
inline std::map<std::string, std::string> log_fields(const std::string& log,
                                                     const std::string& msg) {
    std::map<std::string, std::string> out;
    std::string text;
    try {
        text = read_file(log);
    } catch (...) {
        return out;
    }
    std::istringstream in(text);
    std::string line, last;
    const std::string needle = "msg=\"" + msg + "\"";
    const std::string bare = "msg=" + msg + " ";
    while (std::getline(in, line)) {
        if (line.find(needle) != std::string::npos || line.find(bare) != std::string::npos)
            last = line;
    }
    std::size_t i = 0;
    while (i < last.size()) {
        auto eq = last.find('=', i);
        if (eq == std::string::npos) break;
        std::string key = last.substr(i, eq - i);
        std::string value;
        std::size_t j = eq + 1;
        if (j < last.size() && last[j] == '"') {
            auto end = last.find('"', j + 1);
            value = last.substr(j + 1, end - j - 1);
            j = end == std::string::npos ? last.size() : end + 1;
        } else {
            auto end = last.find(' ', j);
            value = last.substr(j, end == std::string::npos ? std::string::npos : end - j);
            j = end == std::string::npos ? last.size() : end;
        }
        out[key] = value;
        i = j + 1;
    }
    return out;
}

inline std::uint64_t field_u64(const std::map<std::string, std::string>& f,
                               const std::string& key) {
    auto it = f.find(key);
    return it == f.end() || it->second.empty() ? 0 : std::stoull(it->second);
}

// After ferry stopped: the spool file at `spool_path` is empty and knows `topic`, and that
// topic's last batch number reached `rec` within `timeout`. Returns that batch number (0 when
// the spool does not know the topic).
inline std::uint64_t check_spool_drained(const std::string& spool_path, const mqtt_recorder& rec,
                                         const std::string& topic,
                                         std::chrono::milliseconds timeout = 20000ms) {
    const auto st = read_spool_file(spool_path);
    CHECK(st.messages == 0);
    REQUIRE(st.last_batch.count(topic) == 1);
    const auto last = st.last_batch.at(topic);
    CHECK(wait_until(
        [&] { return check_delivery(parse_upstream(rec.messages())).last_batch[topic] >= last; },
        timeout));
    return last;
}

// What a consumer deduplicating on (gateway, seq) must see on `topic` after a fault: every
// batch up to `last` with no hole in batch or seq (consecutive from the first seen), nothing
// out of order or conflicting, at most `allowed_repeats` repeats, each from within `window`.
inline void check_consumer_view(delivery_check& c, const std::string& topic, std::uint64_t last,
                                std::size_t allowed_repeats, std::uint64_t window) {
    CHECK(c.last_batch[topic] == last);
    CHECK(c.batch_gaps.empty());
    CHECK(c.seq_gaps.empty());
    CHECK(c.events == c.last_seq - c.first_seq + 1);
    CHECK(c.reordered == 0);
    CHECK(c.conflicting == 0);
    CHECK(c.repeats <= allowed_repeats);
    CHECK(c.max_repeat_distance <= window);
}

}  // namespace ferry::test
