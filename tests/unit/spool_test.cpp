#include <doctest/doctest.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <prometheus/registry.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <memory>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "core/log.hpp"
#include "core/seq.hpp"
#include "core/topic.hpp"
#include "tests/support/files.hpp"
#include "tests/support/paths.hpp"
#include "tests/unit/unit_support.hpp"
#include "upstream/dead_letter.hpp"
#include "upstream/identity.hpp"
#include "upstream/spool.hpp"

using namespace std::chrono_literals;
using ferry::config::fsync_mode;
using ferry::config::when_full;
using ferry::test::read_file;
using ferry::test::write_file;
using ferry::upstream::append_result;
using ferry::upstream::spool;
namespace fs = std::filesystem;

namespace {

// a + b without `const char* + std::string&&`, which trips g++ 12's bogus -Wrestrict at -O3.
std::string cat(std::string_view a, std::string_view b) {
    std::string out(a);
    out += b;
    return out;
}

using ferry::unit::tmp_dir;

ferry::config::spool_settings settings(const std::string& path, std::uint64_t max_bytes = 1 << 20,
                                       when_full full = when_full::drop_oldest,
                                       fsync_mode fsync = fsync_mode::batch) {
    ferry::config::spool_settings s;
    s.path = path;
    s.max_bytes = max_bytes;
    s.full = full;
    s.fsync = fsync;
    // These cases count stored bytes with payloads of repeated characters; compressed rows
    // have their own cases (spool_compress_test.cpp).
    s.compress = false;
    return s;
}

// The batch number the last encoder call was given. A topic's first batch number is the wall
// clock in ms, not 1: tests take `base = g_encoded - 1` after a topic's first append and
// compare batch numbers relative to it with rel().
std::atomic<std::uint64_t> g_encoded{0};

// Payload "<body>#<batch>", so tests see which batch number each message got.
ferry::upstream::encode_fn body(std::string text) {
    return [text = std::move(text)](std::uint64_t batch, std::string& out) {
        g_encoded = batch;
        out = cat(cat(text, "#"), std::to_string(batch));
    };
}

// A payload of exactly `n` bytes whose last bytes carry the batch number.
ferry::upstream::encode_fn sized(std::size_t n) {
    return [n](std::uint64_t batch, std::string& out) {
        g_encoded = batch;
        std::string tail = cat("#", std::to_string(batch));
        out.assign(n - tail.size(), 'x');
        out += tail;
    };
}

// The series with label reason=`reason`; without a reason, the sum of the family's series.
double metric(prometheus::Registry& reg, const std::string& name, const std::string& reason = "") {
    for (const auto& fam : reg.Collect()) {
        if (fam.name != name) continue;
        double sum = 0;
        for (const auto& m : fam.metric) {
            bool match = reason.empty();
            for (const auto& l : m.label) {
                if (l.name == "reason" && l.value == reason) match = true;
            }
            if (!match) continue;
            double v =
                fam.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
            if (!reason.empty()) return v;
            sum += v;
        }
        return reason.empty() ? sum : -1;
    }
    return -1;
}

// `payload` with its batch number N (after the last '#') written as N - base.
std::string rel(const std::string& payload, std::uint64_t base) {
    auto at = payload.rfind('#');
    if (at == std::string::npos) return payload;
    auto n = std::stoull(payload.substr(at + 1));
    return cat(payload.substr(0, at + 1), std::to_string(n - base));
}

// The batch number of the oldest message held, minus one: a base for rel() that makes it 1.
std::uint64_t base_of(spool& sp) {
    auto first = sp.peek(0, 1).at(0).payload;
    return std::stoull(first.substr(first.rfind('#') + 1)) - 1;
}

// The batch number after the first append of a topic, as a base for rel(): that one is 1.
std::uint64_t base_now() {
    return g_encoded.load() - 1;
}

std::vector<std::string> payloads(spool& sp, std::uint64_t base = 0) {
    std::vector<std::string> out;
    for (const auto& m : sp.peek(0, 1000000))
        out.push_back(base == 0 ? m.payload : rel(m.payload, base));
    return out;
}

std::uint64_t file_size_or_zero(const std::string& path) {
    std::error_code ec;
    auto n = fs::file_size(path, ec);
    return ec ? 0 : n;
}

// Files in `dir` whose names start with `prefix`.
std::vector<std::string> files_starting(const std::string& dir, const std::string& prefix) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) {
        std::string n = e.path().filename().string();
        if (n.rfind(prefix, 0) == 0) out.push_back(n);
    }
    std::sort(out.begin(), out.end());
    return out;
}

// A real spool file holding `n` small messages, closed cleanly (WAL checkpointed).
void make_real_spool(const std::string& path, int n) {
    prometheus::Registry reg;
    spool sp(settings(path), reg);
    for (int i = 0; i < n; ++i) {
        REQUIRE(sp.append("dev/t", 1, false, 1, body(cat("message-", std::to_string(i)))) ==
                append_result::ok);
    }
}

struct quiet_logs {
    quiet_logs() { ferry::log::set_level(ferry::config::log_level::error); }
    ~quiet_logs() { ferry::log::set_level(ferry::config::log_level::info); }
};

}  // namespace

TEST_CASE("append, peek and ack keep spool order") {
    tmp_dir dir;
    prometheus::Registry reg;
    spool sp(settings(dir.file("spool.db")), reg);

    const auto before =
        static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::system_clock::now().time_since_epoch())
                                       .count());
    CHECK(sp.append("a", 1, false, 1, body("one")) == append_result::ok);
    const auto a = base_now();
    CHECK(sp.append("b", 0, true, 1, body("two")) == append_result::ok);
    const auto b = base_now();
    CHECK(sp.append("a", 1, false, 1, body("three")) == append_result::ok);
    // A new topic's batch numbers start at the wall clock in ms (never behind an earlier run).
    CHECK(a + 1 >= before);
    CHECK(b >= a);

    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);
    CHECK(all[0].topic == "a");
    CHECK(rel(all[0].payload, a) == "one#1");
    CHECK(all[0].qos == 1);
    CHECK(all[0].retain == false);
    CHECK(all[1].topic == "b");
    CHECK(rel(all[1].payload, b) == "two#1");
    CHECK(all[1].qos == 0);
    CHECK(all[1].retain == true);
    CHECK(all[2].topic == "a");
    CHECK(rel(all[2].payload, a) == "three#2");
    CHECK(all[0].id < all[1].id);
    CHECK(all[1].id < all[2].id);
    auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
    CHECK(all[0].created_ms <= now);
    CHECK(all[0].created_ms > now - 60000);

    auto after_first = sp.peek(all[0].id, 1);
    REQUIRE(after_first.size() == 1);
    CHECK(rel(after_first[0].payload, b) == "two#1");
    CHECK(sp.peek(all[2].id, 10).empty());
    CHECK(sp.peek(0, 0).empty());

    CHECK(sp.messages() == 3);
    auto size = [](const ferry::upstream::spooled_message& m) {
        return m.topic.size() + m.payload.size();
    };
    CHECK(sp.bytes() == size(all[0]) + size(all[1]) + size(all[2]));

    sp.ack(all[1].id);
    sp.ack(all[1].id);  // twice: ignored
    sp.ack(123456);     // unknown: ignored
    CHECK(payloads(sp, a) == std::vector<std::string>{"one#1", "three#2"});
    CHECK(sp.messages() == 2);
    CHECK(sp.bytes() == size(all[0]) + size(all[2]));

    sp.ack(all[0].id);
    sp.ack(all[2].id);
    CHECK(sp.peek(0, 10).empty());
    CHECK(sp.messages() == 0);
    CHECK(sp.bytes() == 0);

    CHECK(metric(reg, "ferry_spool_received_total") == 3);
    CHECK(metric(reg, "ferry_spool_sent_total") == 3);
    CHECK(metric(reg, "ferry_spool_bytes") == 0);
    CHECK(metric(reg, "ferry_spool_messages") == 0);
    CHECK(metric(reg, "ferry_spool_errors_total", "io") == 0);
    CHECK(metric(reg, "ferry_spool_dropped_total", "drop_oldest") == 0);

    // Ids never go back, even after the table was emptied.
    CHECK(sp.append("a", 1, false, 1, body("four")) == append_result::ok);
    auto later = sp.peek(0, 10);
    REQUIRE(later.size() == 1);
    CHECK(later[0].id > all[2].id);
    CHECK(rel(later[0].payload, a) == "four#3");
}

TEST_CASE("rows carry their event count: ack returns it once, drops count it by reason") {
    tmp_dir dir;
    prometheus::Registry reg;
    // Each message: topic "t" (1) + 29 payload bytes = 30 bytes; 3 fit in 100.
    spool sp(settings(dir.file("spool.db"), 100, when_full::drop_oldest), reg);
    REQUIRE(sp.append("t", 1, false, 7, sized(29)) == append_result::ok);
    REQUIRE(sp.append("t", 1, false, 11, sized(29)) == append_result::ok);
    REQUIRE(sp.append("t", 1, false, 13, sized(29)) == append_result::ok);
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);
    CHECK(all[0].events == 7);
    CHECK(all[2].events == 13);
    CHECK(sp.ack(all[1].id) == 11);
    CHECK(sp.ack(all[1].id) == 0);  // already removed: not counted twice
    CHECK(sp.ack(987654) == 0);
    // drop_oldest: the 7 events of the oldest row are dropped to make room.
    REQUIRE(sp.append("t", 1, false, 17, sized(29)) == append_result::ok);
    REQUIRE(sp.append("t", 1, false, 19, sized(29)) == append_result::ok_dropped);
    CHECK(metric(reg, "ferry_events_dropped_total", "spool_full") == 7);
    // Larger than the whole spool: its events count as too_large.
    CHECK(sp.append("t", 1, false, 23, sized(200)) == append_result::dropped);
    CHECK(metric(reg, "ferry_events_dropped_total", "too_large") == 23);
    // Every reason is present from the start.
    CHECK(metric(reg, "ferry_events_dropped_total", "corrupt") == 0);
    CHECK(metric(reg, "ferry_events_dropped_total", "refused") == 0);
}

TEST_CASE("drop_newest counts the refused message's events as spool_full") {
    tmp_dir dir;
    prometheus::Registry reg;
    spool sp(settings(dir.file("spool.db"), 100, when_full::drop_newest), reg);
    for (int i = 0; i < 3; ++i)
        REQUIRE(sp.append("t", 1, false, 5, sized(29)) == append_result::ok);
    CHECK(sp.append("t", 1, false, 9, sized(29)) == append_result::dropped);
    CHECK(metric(reg, "ferry_events_dropped_total", "spool_full") == 9);
}

TEST_CASE("batch numbers rise per topic and persist across reopen") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    std::int64_t last_id = 0;
    std::uint64_t x = 0, y = 0;
    {
        prometheus::Registry reg;
        spool sp(settings(path), reg);
        for (int i = 0; i < 3; ++i) {
            REQUIRE(sp.append("x", 1, false, 1, body("x")) == append_result::ok);
            if (i == 0) x = base_now();
        }
        REQUIRE(sp.append("y", 1, false, 1, body("y")) == append_result::ok);
        y = base_now();
        auto all = sp.peek(0, 10);
        REQUIRE(all.size() == 4);
        // Deliver everything: the batch numbers must survive an empty spool too.
        for (const auto& m : all)
            sp.ack(m.id);
        last_id = all.back().id;
    }
    {
        prometheus::Registry reg;
        spool sp(settings(path), reg);
        CHECK(sp.messages() == 0);
        REQUIRE(sp.append("x", 1, false, 1, body("x")) == append_result::ok);
        REQUIRE(sp.append("y", 1, false, 1, body("y")) == append_result::ok);
        REQUIRE(sp.append("z", 1, false, 1, body("z")) == append_result::ok);
        const auto z = base_now();
        auto all = sp.peek(0, 10);
        REQUIRE(all.size() == 3);
        CHECK(rel(all[0].payload, x) == "x#4");
        CHECK(rel(all[1].payload, y) == "y#2");
        CHECK(rel(all[2].payload, z) == "z#1");
        CHECK(z >= y);
        CHECK(all[0].id > last_id);
    }
}

TEST_CASE("state persists across reopen") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    {
        prometheus::Registry reg;
        spool sp(settings(path), reg);
        CHECK(sp.load_state("seq", 42) == 42);
        sp.store_state("seq", 1000);
        sp.store_state("seq", 2000);
        sp.store_state("max", UINT64_MAX);
        CHECK(sp.load_state("seq", 0) == 2000);
    }
    for (auto mode : {fsync_mode::always, fsync_mode::never}) {
        prometheus::Registry reg;
        spool sp(settings(path, 1 << 20, when_full::drop_oldest, mode), reg);
        CHECK(sp.load_state("seq", 0) == 2000);
        CHECK(sp.load_state("max", 0) == UINT64_MAX);
        CHECK(sp.load_state("other", 7) == 7);
    }
}

TEST_CASE("bytes and messages are recomputed at open") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    std::uint64_t expect_bytes = 0;
    {
        prometheus::Registry reg;
        spool sp(settings(path), reg);
        for (int i = 0; i < 10; ++i) {
            REQUIRE(sp.append(cat("topic/", std::to_string(i)), 1, false, 1, sized(100 + 10 * i)) ==
                    append_result::ok);
            expect_bytes += (i < 10 ? 7 : 8) + 100 + 10 * static_cast<std::uint64_t>(i);
        }
        auto all = sp.peek(0, 100);
        sp.ack(all[3].id);
        expect_bytes -= 7 + 130;
        CHECK(sp.bytes() == expect_bytes);
        CHECK(sp.messages() == 9);
    }
    prometheus::Registry reg;
    spool sp(settings(path), reg);
    CHECK(sp.bytes() == expect_bytes);
    CHECK(sp.messages() == 9);
    CHECK(metric(reg, "ferry_spool_bytes") == static_cast<double>(expect_bytes));
    CHECK(metric(reg, "ferry_spool_messages") == 9);
}

// Issue 14, item 8: a row whose `bytes` column lies must not corrupt the running total (summed
// at open before the fix: a terabyte, and the next drop_oldest append emptied the spool).
TEST_CASE("the bytes column is not trusted: totals come from what the rows hold") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    make_real_spool(path, 3);
    std::uint64_t held = 0;
    {
        prometheus::Registry reg;
        spool sp(settings(path), reg);
        held = sp.bytes();
    }
    sqlite3* h = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &h) == SQLITE_OK);
    REQUIRE(sqlite3_exec(h, "UPDATE messages SET bytes = 1000000000000 WHERE id = 2", nullptr,
                         nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(h);
    prometheus::Registry reg;
    spool sp(settings(path), reg);
    CHECK(sp.bytes() == held);
    REQUIRE(sp.append("dev/t", 1, false, 1, body("new")) == append_result::ok);  // no drops
    CHECK(sp.messages() == 4);
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 4);
    CHECK(all[1].stored_bytes == 1000000000000);
    std::string why;
    CHECK(ferry::upstream::check_spooled(all[1], 0, true, &why) ==
          ferry::upstream::dead_reason::bad_payload);  // "message-1#N" is no JSON object
    sp.ack(all[1].id);
    sp.ack(all[0].id);
    sp.ack(all[2].id);
    sp.ack(all[3].id);
    CHECK(sp.bytes() == 0);
    CHECK(sp.messages() == 0);
}

TEST_CASE("dead_letter moves a row out of the stream into a bounded table (issue 14)") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    {
        prometheus::Registry reg;
        spool sp(settings(path, 64 << 20), reg);
        for (int i = 0; i < 130; ++i)
            REQUIRE(sp.append("dev/t", 1, false, 7, sized(i == 129 ? 5 << 20 : 100)) ==
                    append_result::ok);
        const auto before = sp.bytes();
        auto all = sp.peek(0, 200);
        auto r = sp.dead_letter(all[1].id, "bad_qos");
        CHECK(r.removed);
        CHECK(r.events == 7);
        CHECK(r.bytes == 105);
        CHECK(sp.bytes() == before - 105);
        CHECK(sp.messages() == 129);
        CHECK(sp.peek(all[0].id, 1).at(0).id == all[2].id);         // the stream goes on in order
        CHECK_FALSE(sp.dead_letter(all[1].id, "bad_qos").removed);  // once
        for (std::size_t i = 2; i < all.size(); ++i)
            CHECK(sp.dead_letter(all[i].id, "too_large").removed);
        CHECK(sp.messages() == 1);
        CHECK(sp.bytes() == 105);
    }
    // Kept: the newest 100 rows, the 5 MiB one (over the 4 MiB bound) without its payload.
    sqlite3* h = nullptr;
    REQUIRE(sqlite3_open_v2(path.c_str(), &h, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(h,
                               "SELECT count(*), sum(length(payload)), max(bytes),"
                               " sum(reason = 'bad_qos') FROM dead_letters",
                               -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    CHECK(sqlite3_column_int64(st, 0) == 100);
    CHECK(sqlite3_column_int64(st, 1) == 99 * 100);
    CHECK(sqlite3_column_int64(st, 2) == 5 + (5 << 20));
    CHECK(sqlite3_column_int64(st, 3) == 0);  // the oldest went first
    sqlite3_finalize(st);
    sqlite3_close(h);
}

// A spool opened on an input of tests/fuzz/corpus/spool/ (logs quiet).
struct fuzz_regression {
    quiet_logs q;
    tmp_dir dir;
    prometheus::Registry reg;
    std::unique_ptr<spool> owner;
    spool& sp;
    explicit fuzz_regression(const std::string& name)
        : owner([&] {
              fs::copy_file(
                  cat(std::string(FERRY_SOURCE_DIR) + "/tests/fuzz/regressions/spool/", name),
                  dir.file("spool.db"));
              return std::make_unique<spool>(settings(dir.file("spool.db")), reg);
          }()),
          sp(*owner) {}
};

// Found by tests/fuzz/spool_fuzz.cpp: a schema text damaged so that it still parses ("id
// INTEGER PRIMAsqlite_temp_masEMENT") made `id` a plain column. The spool opened it as
// healthy; every id read NULL, so nothing was ever peeked (nor anything appended after), while
// messages() counted them. Now the columns are checked, the file is moved aside and its rows
// are salvaged by rowid.
TEST_CASE("a schema whose id is no longer the rowid is damaged: moved aside, rows salvaged") {
    fuzz_regression r("regress-id-not-rowid-alias.db");
    auto& sp = r.sp;
    CHECK(sp.corrupt_recoveries() == 1);
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);
    CHECK(sp.messages() == 3);
    for (std::size_t i = 0; i < all.size(); ++i) {
        CHECK(all[i].id == static_cast<std::int64_t>(i + 1));
        CHECK(all[i].payload.find("\"batch\":" + std::to_string(i + 1)) != std::string::npos);
    }
    REQUIRE(sp.append("plant/gw/d1", 1, false, 1, body("{}")) == append_result::ok);
    CHECK(sp.peek(3, 10).size() == 1);
}

// Found by tests/fuzz/spool_fuzz.cpp: byte 18 of the header (the write version) at 0x3f makes
// SQLite open the file read-only. The spool opened it as healthy and every append, ack and
// dead letter failed for good (SQLITE_READONLY) on a writable file. Now it is damaged.
TEST_CASE("a header whose write version makes the file read-only is damaged: moved aside") {
    fuzz_regression r("regress-write-version.db");
    auto& sp = r.sp;
    CHECK(sp.corrupt_recoveries() == 1);
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);  // salvaged: reading works
    for (const auto& m : all)
        CHECK(sp.ack(m.id) == 0);  // the corpus rows carry no event count
    CHECK(sp.messages() == 0);
    REQUIRE(sp.append("plant/gw/d1", 1, false, 1, body("{}")) == append_result::ok);
    CHECK(sp.messages() == 1);
}

TEST_CASE("dead letters: what a spooled message must pass before it is published") {
    using ferry::upstream::check_spooled;
    using ferry::upstream::dead_reason;
    ferry::upstream::spooled_message m;
    m.topic = "plant/gw/d1";
    m.payload = R"({"gateway":"gw","batch":7,"events":[]})";
    m.qos = 1;
    m.stored_bytes = static_cast<std::int64_t>(m.topic.size() + m.payload.size());
    CHECK(check_spooled(m, 0, true) == dead_reason::none);
    const auto packet =
        ferry::upstream::publish_packet_size(m.topic.size(), m.payload.size(), 1, true);
    CHECK(packet == 1 + 1 + 2 + m.topic.size() + 2 + 1 + m.payload.size());
    CHECK(packet <= m.payload.size() + ferry::publish_overhead(m.topic.size()));
    CHECK(check_spooled(m, packet, true) == dead_reason::none);
    CHECK(check_spooled(m, packet - 1, true) == dead_reason::too_large);
    CHECK(check_spooled(m, packet - 1, false) == dead_reason::none);  // no property byte in 3.1.1
    auto with = [&](auto&& change) {
        auto x = m;
        change(x);
        return check_spooled(x, 0, true);
    };
    CHECK(with([](auto& x) { x.topic = "plant/gw+d1"; }) == dead_reason::bad_topic);
    CHECK(with([](auto& x) { x.topic = "plant/#"; }) == dead_reason::bad_topic);
    CHECK(with([](auto& x) { x.topic = ""; }) == dead_reason::bad_topic);
    CHECK(with([](auto& x) {
              x.topic = std::string(
                  "plant/\xe4"
                  "1",
                  8);
          }) == dead_reason::bad_topic);
    CHECK(with([](auto& x) { x.topic = std::string("pl\0nt", 5); }) == dead_reason::bad_topic);
    CHECK(with([](auto& x) { x.qos = 3; }) == dead_reason::bad_qos);
    CHECK(with([](auto& x) { x.qos = -1; }) == dead_reason::bad_qos);
    CHECK(with([](auto& x) { x.payload[0] = 'z'; }) == dead_reason::bad_payload);
    CHECK(with([](auto& x) { x.stored_bytes += 1; }) == dead_reason::bad_bytes);
    CHECK(ferry::upstream::valid_utf8("caf\xc3\xa9 \xf0\x9f\x98\x80"));
    for (const char* bad : {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe4", "\x80"})
        CHECK_FALSE(ferry::upstream::valid_utf8(bad));
    const auto notice =
        ferry::upstream::dead_letter_notice("gw", m, dead_reason::too_large, "packet 9 bytes", 5);
    CHECK(notice == R"({"gateway":"gw","dead_letter":true,"topic":"plant/gw/d1","batch":7,)"
                    R"("reason":"too_large","detail":"packet 9 bytes","bytes":49,"events":0,)"
                    R"("spool_id":0,"ts":5})");
}

TEST_CASE("drop_oldest keeps the newest and counts the drops") {
    tmp_dir dir;
    prometheus::Registry reg;
    // Each message: topic "t" (1) + 29 payload bytes = 30 bytes; 3 fit in 100.
    spool sp(settings(dir.file("spool.db"), 100, when_full::drop_oldest), reg);
    for (int i = 0; i < 3; ++i)
        REQUIRE(sp.append("t", 1, false, 1, sized(29)) == append_result::ok);
    const auto t0 = base_of(sp);
    CHECK(sp.bytes() == 90);
    CHECK(sp.append("t", 1, false, 1, sized(29)) == append_result::ok_dropped);
    CHECK(sp.messages() == 3);
    CHECK(sp.bytes() == 90);
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);
    CHECK(rel(all[0].payload, t0).ends_with("#2"));
    CHECK(rel(all[1].payload, t0).ends_with("#3"));
    CHECK(rel(all[2].payload, t0).ends_with("#4"));
    CHECK(metric(reg, "ferry_spool_dropped_total", "drop_oldest") == 1);

    // A message needing the room of two drops two.
    CHECK(sp.append("t", 1, false, 1, sized(49)) == append_result::ok_dropped);
    all = sp.peek(0, 10);
    REQUIRE(all.size() == 2);
    CHECK(rel(all[0].payload, t0).ends_with("#4"));
    CHECK(rel(all[1].payload, t0).ends_with("#5"));
    CHECK(all[1].payload.size() == 49);
    CHECK(sp.bytes() == 80);
    CHECK(metric(reg, "ferry_spool_dropped_total", "drop_oldest") == 3);
    CHECK(metric(reg, "ferry_spool_dropped_total", "drop_newest") == 0);
    CHECK(metric(reg, "ferry_spool_received_total") == 5);
}

TEST_CASE("drop_newest keeps the oldest, counts, and leaves a batch gap") {
    tmp_dir dir;
    prometheus::Registry reg;
    spool sp(settings(dir.file("spool.db"), 100, when_full::drop_newest), reg);
    for (int i = 0; i < 3; ++i)
        REQUIRE(sp.append("t", 1, false, 1, sized(29)) == append_result::ok);
    const auto t0 = base_of(sp);
    CHECK(sp.append("t", 1, false, 1, sized(29)) == append_result::dropped);
    CHECK(sp.append("t", 1, false, 1, sized(29)) == append_result::dropped);
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);
    CHECK(rel(all[0].payload, t0).ends_with("#1"));
    CHECK(rel(all[2].payload, t0).ends_with("#3"));
    CHECK(sp.bytes() == 90);
    CHECK(metric(reg, "ferry_spool_dropped_total", "drop_newest") == 2);

    sp.ack(all[0].id);
    CHECK(sp.append("t", 1, false, 1, sized(29)) == append_result::ok);
    all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);
    // Batches 4 and 5 were dropped: the consumer sees the gap 3 -> 6.
    CHECK(rel(all[2].payload, t0).ends_with("#6"));
}

TEST_CASE("block waits for an ack") {
    tmp_dir dir;
    prometheus::Registry reg;
    spool sp(settings(dir.file("spool.db"), 100, when_full::block), reg);
    for (int i = 0; i < 3; ++i)
        REQUIRE(sp.append("t", 1, false, 1, sized(29)) == append_result::ok);
    const auto t0 = base_of(sp);

    auto blocked =
        std::async(std::launch::async, [&] { return sp.append("t", 1, false, 1, sized(29)); });
    CHECK(blocked.wait_for(100ms) == std::future_status::timeout);
    CHECK(sp.messages() == 3);

    // Readers and acks are not blocked by a waiting append.
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);
    sp.ack(all[0].id);
    REQUIRE(blocked.wait_for(10s) == std::future_status::ready);
    CHECK(blocked.get() == append_result::ok);
    all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);
    CHECK(rel(all[0].payload, t0).ends_with("#2"));
    CHECK(rel(all[2].payload, t0).ends_with("#4"));
    CHECK(metric(reg, "ferry_spool_dropped_total", "drop_oldest") == 0);
}

TEST_CASE("block is released by close") {
    tmp_dir dir;
    prometheus::Registry reg;
    spool sp(settings(dir.file("spool.db"), 100, when_full::block), reg);
    for (int i = 0; i < 3; ++i)
        REQUIRE(sp.append("t", 1, false, 1, sized(29)) == append_result::ok);
    auto blocked =
        std::async(std::launch::async, [&] { return sp.append("t", 1, false, 1, sized(29)); });
    CHECK(blocked.wait_for(100ms) == std::future_status::timeout);
    sp.close();
    REQUIRE(blocked.wait_for(10s) == std::future_status::ready);
    CHECK(blocked.get() == append_result::closed);
    CHECK(sp.append("t", 1, false, 1, sized(10)) == append_result::closed);
    // Reads and acks still work after close.
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);
    sp.ack(all[0].id);
    CHECK(sp.messages() == 2);
}

TEST_CASE("a message larger than the whole spool is dropped, never blocks") {
    for (auto full : {when_full::block, when_full::drop_oldest, when_full::drop_newest}) {
        tmp_dir dir;
        prometheus::Registry reg;
        spool sp(settings(dir.file("spool.db"), 100, full), reg);
        REQUIRE(sp.append("t", 1, false, 1, sized(50)) == append_result::ok);
        const auto t0 = base_of(sp);
        CHECK(sp.append("t", 1, false, 1, sized(100)) == append_result::dropped);
        CHECK(metric(reg, "ferry_spool_dropped_total", "too_large") == 1);
        CHECK(metric(reg, "ferry_spool_dropped_total", "drop_oldest") == 0);
        CHECK(metric(reg, "ferry_spool_dropped_total", "drop_newest") == 0);
        REQUIRE(sp.append("t", 1, false, 1, sized(20)) == append_result::ok);
        auto all = sp.peek(0, 10);
        REQUIRE(all.size() == 2);
        CHECK(rel(all[0].payload, t0).ends_with("#1"));
        CHECK(rel(all[1].payload, t0).ends_with("#3"));  // batch 2 was the dropped one
        CHECK(sp.bytes() == 51 + 21);
    }
}

TEST_CASE("wait_for_messages") {
    tmp_dir dir;
    prometheus::Registry reg;
    spool sp(settings(dir.file("spool.db")), reg);
    CHECK_FALSE(sp.wait_for_messages(0, 10ms));

    auto waiter = std::async(std::launch::async, [&] { return sp.wait_for_messages(0, 10s); });
    CHECK(waiter.wait_for(50ms) == std::future_status::timeout);
    REQUIRE(sp.append("t", 1, false, 1, body("x")) == append_result::ok);
    REQUIRE(waiter.wait_for(10s) == std::future_status::ready);
    CHECK(waiter.get());

    auto id = sp.peek(0, 1).at(0).id;
    CHECK(sp.wait_for_messages(id - 1, 0ms));
    CHECK_FALSE(sp.wait_for_messages(id, 10ms));

    auto closer = std::async(std::launch::async, [&] { return sp.wait_for_messages(id, 10s); });
    CHECK(closer.wait_for(50ms) == std::future_status::timeout);
    sp.close();
    REQUIRE(closer.wait_for(10s) == std::future_status::ready);
    CHECK_FALSE(closer.get());
}

TEST_CASE("an encoder that throws is an error, not a crash") {
    tmp_dir dir;
    prometheus::Registry reg;
    quiet_logs q;
    spool sp(settings(dir.file("spool.db")), reg);
    auto bad = [](std::uint64_t, std::string&) { throw std::runtime_error("boom"); };
    CHECK(sp.append("t", 1, false, 1, bad) == append_result::error);
    CHECK(sp.append("t", 1, false, 1, body("ok")) == append_result::ok);
    CHECK(payloads(sp, base_of(sp)) == std::vector<std::string>{"ok#1"});
    CHECK(metric(reg, "ferry_spool_errors_total", "other") == 1);
}

namespace {

// Opens a spool over whatever is at `path` and checks that it was moved aside intact and
// that the new spool holds exactly the rows that could be read (`salvageable` of the
// `written` messages make_real_spool wrote: all but the damaged ones), the rest counted.
void check_recovers(const tmp_dir& dir, const std::string& original, bool salvageable = false,
                    int written = 0) {
    const auto path = dir.file("spool.db");
    prometheus::Registry reg;
    quiet_logs q;
    spool sp(settings(path), reg);
    CHECK(sp.corrupt_recoveries() == 1);
    CHECK(metric(reg, "ferry_spool_corrupt_total") == 1);
    const auto kept = sp.messages();
    if (!salvageable) {
        CHECK(kept == 0);
        CHECK(sp.bytes() == 0);
        CHECK(sp.peek(0, 10).empty());
    } else {
        // A damaged page costs the messages on it, not the spool.
        MESSAGE("salvaged " << kept << " of " << written);
        CHECK(kept > 0);
        CHECK(kept < static_cast<std::uint64_t>(written));
        CHECK(metric(reg, "ferry_spool_dropped_total", "corrupt") ==
              static_cast<double>(static_cast<std::uint64_t>(written) - kept));
        auto all = sp.peek(0, 1000000);
        REQUIRE(all.size() == kept);
        for (const auto& m : all)
            CHECK(m.payload.starts_with("message-"));
    }

    auto moved = files_starting(dir.path, "spool.db.corrupt-");
    REQUIRE(moved.size() == 1);
    CHECK(std::regex_match(moved[0], std::regex(R"(spool\.db\.corrupt-[0-9]{10})")));
    CHECK(read_file(dir.file(moved[0])) == original);

    REQUIRE(sp.append("t", 1, false, 1, body("fresh")) == append_result::ok);
    // Batch numbers of a topic new to the spool start at the wall clock in ms.
    auto last = sp.peek(0, 1000000).back().payload;
    CHECK(last.starts_with("fresh#"));
    CHECK(std::stoull(last.substr(6)) > 1'600'000'000'000ull);
    sp.store_state("k", 5);
    CHECK(sp.load_state("k", 0) == 5);
}

}  // namespace

TEST_CASE("corrupt spool files are moved aside; their readable rows go on in a new spool") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");

    SUBCASE("text file") {
        std::string text = "this is not a database\nat all\n";
        write_file(path, text);
        check_recovers(dir, text);
    }
    SUBCASE("random bytes") {
        std::mt19937 rng(1234);
        std::string junk(64 * 1024, '\0');
        for (auto& c : junk)
            c = static_cast<char>(rng() & 0xff);
        write_file(path, junk);
        check_recovers(dir, junk);
    }
    SUBCASE("truncated real spool") {
        make_real_spool(path, 2000);
        std::string full = read_file(path);
        REQUIRE(full.size() > 16 * 4096);
        std::string cut = full.substr(0, full.size() / 2 + 100);
        write_file(path, cut);
        check_recovers(dir, cut);
    }
    SUBCASE("truncated inside the header") {
        make_real_spool(path, 10);
        std::string cut = read_file(path).substr(0, 50);
        write_file(path, cut);
        check_recovers(dir, cut);
    }
    SUBCASE("flipped bytes in a page of a real spool") {
        make_real_spool(path, 2000);
        std::string data = read_file(path);
        const std::size_t pages = data.size() / 4096;
        REQUIRE(pages > 16);
        // Every b-tree page starts with its header (type, freeblock, cell count, content
        // start); damage the header of a page in the middle of the messages table.
        const std::size_t at = (pages / 2) * 4096;
        for (std::size_t i = 0; i < 8; ++i)
            data[at + i] = static_cast<char>(~data[at + i]);
        write_file(path, data);
        check_recovers(dir, data, true, 2000);
    }
    SUBCASE("a foreign SQLite database") {
        // A valid database, but not ours: it must not be mistaken for a spool.
        make_real_spool(path, 1);
        std::string ours = read_file(path);
        // application_id lives at offset 68 of the header.
        ours[68] = 'X';
        write_file(path, ours);
        check_recovers(dir, ours);
    }
}

TEST_CASE("a zero-byte file is damaged: moved aside and counted (issue 3)") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    write_file(path, "");
    REQUIRE(fs::file_size(path) == 0);
    prometheus::Registry reg;
    quiet_logs q;
    spool sp(settings(path), reg);
    CHECK(sp.corrupt_recoveries() == 1);
    CHECK(metric(reg, "ferry_spool_corrupt_total") == 1);
    CHECK(files_starting(dir.path, "spool.db.corrupt-").size() == 1);
    REQUIRE(sp.append("t", 1, false, 1, body("x")) == append_result::ok);
    CHECK(payloads(sp, base_of(sp)) == std::vector<std::string>{"x#1"});
}

TEST_CASE("a second corrupt file does not overwrite the first moved-aside one") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    quiet_logs q;
    for (int i = 0; i < 2; ++i) {
        write_file(path, cat("garbage ", std::to_string(i)));
        prometheus::Registry reg;
        spool sp(settings(path), reg);
        CHECK(sp.corrupt_recoveries() == 1);
    }
    auto moved = files_starting(dir.path, "spool.db.corrupt-");
    REQUIRE(moved.size() == 2);
    std::vector<std::string> contents{read_file(dir.file(moved[0])), read_file(dir.file(moved[1]))};
    std::sort(contents.begin(), contents.end());
    CHECK(contents == std::vector<std::string>{"garbage 0", "garbage 1"});
}

TEST_CASE("a spool in use by another connection is not moved aside") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    prometheus::Registry reg;
    quiet_logs q;
    spool first(settings(path), reg);
    REQUIRE(first.append("t", 1, false, 1, body("x")) == append_result::ok);
    // The spool holds an exclusive lock; a second open must fail loudly, not "recover".
    CHECK_THROWS_AS(spool(settings(path), reg), std::runtime_error);
    CHECK(files_starting(dir.path, "spool.db.corrupt-").empty());
    CHECK(payloads(first, base_of(first)) == std::vector<std::string>{"x#1"});
}

TEST_CASE("a spool whose directory does not exist throws") {
    prometheus::Registry reg;
    quiet_logs q;
    CHECK_THROWS_AS(spool(settings("/nonexistent-ferry-dir/spool.db"), reg), std::runtime_error);
}

namespace {

struct fsize_limit {
    rlimit old{};
    explicit fsize_limit(rlim_t bytes) {
        ::signal(SIGXFSZ, SIG_IGN);
        ::getrlimit(RLIMIT_FSIZE, &old);
        rlimit r = old;
        r.rlim_cur = bytes;
        ::setrlimit(RLIMIT_FSIZE, &r);
    }
    ~fsize_limit() { ::setrlimit(RLIMIT_FSIZE, &old); }
};

}  // namespace

TEST_CASE("a write error fails one append and the spool keeps working") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    prometheus::Registry reg;
    quiet_logs q;
    // fsync always: the WAL is written at every commit, so the error shows at once.
    spool sp(settings(path, 64 << 20, when_full::drop_oldest, fsync_mode::always), reg);
    REQUIRE(sp.append("t", 1, false, 1, sized(100)) == append_result::ok);
    const auto t0 = base_of(sp);
    {
        // No file may grow past 256 KiB: a 1 MiB message cannot be written.
        fsize_limit lim(256 * 1024);
        CHECK(sp.append("t", 1, false, 1, sized(1 << 20)) == append_result::error);
        CHECK(sp.append("t", 1, false, 1, sized(1 << 20)) == append_result::error);
    }
    double full = metric(reg, "ferry_spool_errors_total", "disk_full");
    double io = metric(reg, "ferry_spool_errors_total", "io");
    CHECK(full + io == 2);
    CHECK(sp.messages() == 1);
    CHECK(sp.bytes() == 101);
    REQUIRE(sp.append("t", 1, false, 1, sized(100)) == append_result::ok);
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 2);
    CHECK(rel(all[0].payload, t0).ends_with("#1"));
    CHECK(rel(all[1].payload, t0).ends_with("#2"));  // failed appends do not use a batch number
    CHECK(sp.messages() == 2);
}

TEST_CASE("the file stays bounded over many append/ack cycles") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    const std::uint64_t max_bytes = 1 << 20;
    const std::size_t batch = 20 * 1024;
    prometheus::Registry reg;
    spool sp(settings(path, max_bytes, when_full::drop_oldest, fsync_mode::batch), reg);
    auto on_disk = [&] { return file_size_or_zero(path) + file_size_or_zero(path + "-wal"); };

    std::uint64_t peak = 0;
    std::int64_t acked_upto = 0;
    for (int round = 0; round < 3; ++round) {
        // Fill far past max_bytes (drop_oldest keeps it at the bound), then drain.
        for (int i = 0; i < 200; ++i) {
            auto r =
                sp.append(cat("plant/gw/dev", std::to_string(i % 7)), 1, false, 1, sized(batch));
            REQUIRE((r == append_result::ok || r == append_result::ok_dropped));
            CHECK(sp.bytes() <= max_bytes);
            peak = std::max(peak, on_disk());
        }
        for (const auto& m : sp.peek(acked_upto, 1000)) {
            sp.ack(m.id);
            acked_upto = m.id;
            peak = std::max(peak, on_disk());
        }
        CHECK(sp.messages() == 0);
        // Steady trickle: one in, one out.
        for (int i = 0; i < 300; ++i) {
            REQUIRE(sp.append("plant/gw/x", 1, false, 1, sized(batch)) == append_result::ok);
            auto m = sp.peek(acked_upto, 1);
            REQUIRE(m.size() == 1);
            sp.ack(m[0].id);
            acked_upto = m[0].id;
            peak = std::max(peak, on_disk());
        }
    }
    const std::uint64_t drained = on_disk();
    MESSAGE("max_bytes=" << max_bytes << " peak on disk (db+wal)=" << peak
                         << " after drain=" << drained);
    // The bound documented in docs/SPOOL.md: max_bytes + one batch + 25 % + 256 KiB.
    CHECK(peak <= max_bytes + batch + max_bytes / 4 + 256 * 1024);
    CHECK(drained <= max_bytes / 2);
    CHECK(metric(reg, "ferry_spool_dropped_total", "drop_oldest") > 0);
}

TEST_CASE("bench: append of a 20 KB batch" * doctest::skip()) {
    for (auto mode : {fsync_mode::never, fsync_mode::batch, fsync_mode::always}) {
        tmp_dir dir;
        prometheus::Registry reg;
        spool sp(settings(dir.file("spool.db"), 512ull << 20, when_full::drop_oldest, mode), reg);
        std::string blob(20 * 1024, 'j');
        auto enc = [&](std::uint64_t, std::string& out) { out.assign(blob); };
        const int n = mode == fsync_mode::always ? 300 : 5000;
        std::int64_t after = 0;
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < n; ++i)
            sp.append("plant/gw/dev", 1, false, 1, enc);
        auto t1 = std::chrono::steady_clock::now();
        for (const auto& m : sp.peek(after, static_cast<std::size_t>(n))) {
            sp.ack(m.id);
            after = m.id;
        }
        auto t2 = std::chrono::steady_clock::now();
        auto us = [&](auto d) { return std::chrono::duration<double, std::micro>(d).count() / n; };
        MESSAGE("fsync=" << static_cast<int>(mode) << " append " << us(t1 - t0)
                         << " us/op, peek+ack " << us(t2 - t1) << " us/op");
    }
}

// Prints the on-disk overhead quoted in docs/SPOOL.md (run with --no-skip).
TEST_CASE("measure: on-disk size of a full spool" * doctest::skip()) {
    for (std::uint64_t max_bytes : {1ull << 20, 16ull << 20, 64ull << 20}) {
        for (std::size_t batch :
             {std::size_t{1024}, std::size_t{20 * 1024}, std::size_t{256 * 1024}}) {
            tmp_dir dir;
            const auto path = dir.file("spool.db");
            prometheus::Registry reg;
            spool sp(settings(path, max_bytes, when_full::drop_oldest, fsync_mode::batch), reg);
            std::uint64_t peak_db = 0, peak_wal = 0, peak_sum = 0;
            const auto n = 3 * max_bytes / batch + 10;
            std::int64_t acked = 0;
            for (std::uint64_t i = 0; i < n; ++i) {
                sp.append("plant/gw1/dev", 1, false, 1, sized(batch));
                auto db = file_size_or_zero(path);
                auto wal = file_size_or_zero(path + "-wal");
                peak_db = std::max(peak_db, db);
                peak_wal = std::max(peak_wal, wal);
                peak_sum = std::max(peak_sum, db + wal);
            }
            for (const auto& m : sp.peek(acked, 1000000))
                sp.ack(m.id);
            auto drained = file_size_or_zero(path) + file_size_or_zero(path + "-wal");
            MESSAGE(
                "max_bytes=" << max_bytes << " batch=" << batch << " peak db=" << peak_db
                             << " peak wal=" << peak_wal << " peak db+wal=" << peak_sum
                             << " overhead="
                             << (static_cast<double>(peak_sum) - static_cast<double>(max_bytes)) *
                                    100.0 / static_cast<double>(max_bytes)
                             << "% drained=" << drained);
        }
    }
}

// ---- seq: never repeats, whatever happens to the data directory (issue 13, item 1) --------

TEST_CASE("seq_source: a failed persist does not move the reserved range on; it retries") {
    std::vector<std::uint64_t> tried;
    bool ok = false;
    ferry::seq_source seq(
        100,
        [&](std::uint64_t mark) {
            tried.push_back(mark);
            return ok;
        },
        10);
    CHECK(seq.next() == 101);  // handed out (readings do not stop), but not reserved
    CHECK(tried == std::vector<std::uint64_t>{111});
    CHECK(seq.reserved() == 100);
    CHECK(seq.next() == 102);  // within a second of the failure: no new attempt
    CHECK(tried.size() == 1);
    std::this_thread::sleep_for(1100ms);
    ok = true;
    CHECK(seq.next() == 103);
    REQUIRE(tried.size() == 2);
    CHECK(tried[1] == 113);
    CHECK(seq.reserved() == 113);
    for (int i = 0; i < 10; ++i)
        seq.next();
    CHECK(tried.size() == 2);
}

TEST_CASE("identity: seq starts above the spool's mark, the identity file's and the clock") {
    tmp_dir dir;
    quiet_logs q;
    const auto id_path = dir.file("identity");
    const auto now_us =
        static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                       std::chrono::system_clock::now().time_since_epoch())
                                       .count());
    const std::uint64_t future = now_us + 3'600'000'000ull;  // as if the clock went back 1 h
    {
        prometheus::Registry reg;
        spool sp(settings(dir.file("spool.db")), reg);
        ferry::upstream::identity ids(id_path, sp, reg);
        // A fresh data directory: the clock.
        const auto start = ids.seq_start();
        CHECK(start >= now_us);
        CHECK(start < now_us + 60'000'000ull);
        CHECK(start < (1ull << 53));
        REQUIRE(ids.persist(future));
        CHECK(ferry::upstream::read_identity_file(id_path) == future);
        CHECK(sp.load_state(ferry::upstream::identity::k_seq_key, 0) == future);
        CHECK(ids.seq_start() == future);
    }
    // The spool is lost (moved aside, deleted): the identity file still holds the mark.
    fs::remove(dir.file("spool.db"));
    {
        prometheus::Registry reg;
        spool sp(settings(dir.file("spool.db")), reg);
        ferry::upstream::identity ids(id_path, sp, reg);
        CHECK(ids.seq_start() == future);
        // The identity file is lost instead: the spool's copy holds it.
        REQUIRE(ids.persist(future + 5));
        fs::remove(id_path);
        CHECK(ids.seq_start() == future + 5);
    }
}

TEST_CASE("identity: persist succeeds while one copy can be written, fails when none can") {
    tmp_dir dir;
    quiet_logs q;
    prometheus::Registry reg;
    spool sp(settings(dir.file("spool.db")), reg);
    // The identity file's directory does not exist: only the spool's copy is written.
    ferry::upstream::identity ids(dir.file("missing/identity"), sp, reg);
    CHECK(ids.persist(77));
    CHECK(sp.load_state(ferry::upstream::identity::k_seq_key, 0) == 77);
    CHECK(metric(reg, "ferry_seq_persist_errors_total") == 1);
}

TEST_CASE("append_group stores a rule pass in one transaction, numbered as one by one") {
    tmp_dir dir;
    prometheus::Registry reg;
    const std::string a = "a", b = "b";
    SUBCASE("every message fits: all stored, a topic twice takes consecutive numbers") {
        spool sp(settings(dir.file("spool.db")), reg);
        REQUIRE(sp.append(a, 1, false, 1, body("zero")) == append_result::ok);
        const auto base = base_now();
        std::vector<ferry::upstream::group_item> items{{a, 1, false, 2, body("one")},
                                                       {b, 0, true, 3, body("two")},
                                                       {a, 1, false, 4, body("three")}};
        CHECK(sp.append_group(items) == 3);
        auto all = sp.peek(0, 10);
        REQUIRE(all.size() == 4);
        CHECK(rel(all[1].payload, base) == "one#2");
        CHECK(all[2].topic == "b");
        CHECK(all[2].retain);
        CHECK(all[2].qos == 0);
        CHECK(rel(all[3].payload, base) == "three#3");
        CHECK(all[3].events == 4);
        CHECK(sp.messages() == 4);
        CHECK(metric(reg, "ferry_spool_received_total") == 4);
        // The next append of `a` goes on from the group's last number.
        REQUIRE(sp.append(a, 1, false, 1, body("four")) == append_result::ok);
        CHECK(rel(sp.peek(all[3].id, 1).at(0).payload, base) == "four#4");
        CHECK(sp.ack(all[3].id) == 4);
    }
    SUBCASE("the group stops before the first message that does not fit; append() takes it") {
        spool sp(settings(dir.file("spool.db"), 2000), reg);
        std::vector<ferry::upstream::group_item> items{{a, 1, false, 1, sized(800)},
                                                       {a, 1, false, 1, sized(800)},
                                                       {b, 1, false, 1, sized(800)}};
        CHECK(sp.append_group(items) == 2);
        CHECK(sp.messages() == 2);
        // append() applies when_full (drop_oldest) to the rest, as before.
        CHECK(sp.append(b, 1, false, 1, sized(800)) == append_result::ok_dropped);
        CHECK(sp.messages() == 2);
    }
    SUBCASE("a closed spool takes nothing") {
        spool sp(settings(dir.file("spool.db")), reg);
        sp.close();
        std::vector<ferry::upstream::group_item> items{{a, 1, false, 1, body("x")},
                                                       {b, 1, false, 1, body("y")}};
        CHECK(sp.append_group(items) == 0);
    }
}
