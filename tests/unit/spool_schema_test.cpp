// The spool's schema versions (docs/SPOOL.md): files an earlier Ferry wrote are migrated at
// open and keep their messages; the message expiry (schema 3, issue 18) is stored per row and
// survives a salvage.
#include <doctest/doctest.h>
#include <prometheus/registry.h>
#include <sqlite3.h>

#include <string>
#include <vector>

#include "core/log.hpp"
#include "tests/unit/unit_support.hpp"
#include "upstream/spool.hpp"

using ferry::upstream::append_result;
using ferry::upstream::spool;

namespace {

using ferry::unit::tmp_dir;

ferry::config::spool_settings settings(const std::string& path) {
    ferry::config::spool_settings s;
    s.path = path;
    s.max_bytes = 1 << 20;
    s.fsync = ferry::config::fsync_mode::batch;
    s.compress = false;
    return s;
}

ferry::upstream::encode_fn body(std::string text) {
    return [text = std::move(text)](std::uint64_t batch, std::string& out) {
        out = text + "#" + std::to_string(batch);
    };
}

void make_real_spool(const std::string& path, int n) {
    prometheus::Registry reg;
    spool sp(settings(path), reg);
    for (int i = 0; i < n; ++i)
        REQUIRE(sp.append("dev/t", 1, false, 1, body("message-" + std::to_string(i))) ==
                append_result::ok);
}

struct quiet_logs {
    quiet_logs() { ferry::log::set_level(ferry::config::log_level::error); }
    ~quiet_logs() { ferry::log::set_level(ferry::config::log_level::info); }
};

// A real spool of `n` messages at `path`, turned back by `sql` into what an earlier Ferry wrote.
void make_old_spool(const std::string& path, int n, const char* sql) {
    make_real_spool(path, n);
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, sql, nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
}

}  // namespace

TEST_CASE("a version-1 spool is migrated at open and keeps its messages") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    // Before the events column existed (and the expiry column).
    make_old_spool(path, 3,
                   "ALTER TABLE messages DROP COLUMN expiry_s;"
                   " ALTER TABLE messages DROP COLUMN events; PRAGMA user_version=1;");
    prometheus::Registry reg;
    quiet_logs q;
    spool sp(settings(path), reg);
    CHECK(sp.corrupt_recoveries() == 0);
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);
    CHECK(all[0].events == 0);
    REQUIRE(sp.append("dev/t", 1, false, 4, body("new")) == append_result::ok);
    all = sp.peek(0, 10);
    REQUIRE(all.size() == 4);
    CHECK(all[3].events == 4);
    CHECK(sp.ack(all[3].id) == 4);
}

TEST_CASE("a version-2 spool is migrated at open: its rows never expire, new ones keep theirs") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    // What Ferry wrote before message expiry (issue 18).
    make_old_spool(path, 2, "ALTER TABLE messages DROP COLUMN expiry_s; PRAGMA user_version=2;");
    prometheus::Registry reg;
    quiet_logs q;
    {
        spool sp(settings(path), reg);
        CHECK(sp.corrupt_recoveries() == 0);
        auto all = sp.peek(0, 10);
        REQUIRE(all.size() == 2);
        CHECK(all[0].expiry_s == 0);
        REQUIRE(sp.append("dev/t", 1, false, 4, body("new"), 90) == append_result::ok);
        std::vector<ferry::upstream::group_item> items;
        const std::string topic = "dev/u";
        items.push_back({topic, 1, false, 1, body("g1"), 7});
        items.push_back({topic, 1, false, 1, body("g2")});
        REQUIRE(sp.append_group(items) == 2);
    }
    prometheus::Registry reg2;
    spool again(settings(path), reg2);  // reopened: version 3 as it is
    CHECK(again.corrupt_recoveries() == 0);
    const auto all = again.peek(0, 10);
    REQUIRE(all.size() == 5);
    CHECK(all[2].expiry_s == 90);
    CHECK(all[3].expiry_s == 7);
    CHECK(all[4].expiry_s == 0);
}

TEST_CASE("a salvage keeps each row's message expiry") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    {
        prometheus::Registry reg;
        spool sp(settings(path), reg);
        REQUIRE(sp.append("dev/t", 1, false, 1, body("a"), 30) == append_result::ok);
        REQUIRE(sp.append("dev/t", 1, false, 1, body("b")) == append_result::ok);
    }
    // A column that is not ours: the schema differs, the file is damaged, its rows salvaged.
    make_old_spool(path, 0, "ALTER TABLE messages ADD COLUMN junk INTEGER");
    prometheus::Registry reg;
    quiet_logs q;
    spool sp(settings(path), reg);
    CHECK(sp.corrupt_recoveries() == 1);
    const auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 2);
    CHECK(all[0].expiry_s == 30);
    CHECK(all[1].expiry_s == 0);
}
