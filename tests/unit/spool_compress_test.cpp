// Compressed rows (issue 16, docs/SPOOL.md "Compressed rows"): batch bodies stored as zstd
// frames, read back as they were encoded; rows without compression (earlier versions, or
// `compress: false`) still read; a damaged frame is found and dead-lettered; max_bytes counts
// the stored bytes. Part of unit_spool (spool_test.cpp holds the main).
#include <doctest/doctest.h>
#include <sqlite3.h>

#include <prometheus/registry.h>

#include <random>
#include <string>
#include <vector>

#include "tests/unit/unit_support.hpp"
#include "upstream/dead_letter.hpp"
#include "upstream/spool.hpp"
#include "upstream/spool_codec.hpp"

using ferry::upstream::append_result;
using ferry::upstream::spool;
namespace codec = ferry::upstream::spool_codec;

namespace {

ferry::config::spool_settings zsettings(const std::string& path, bool compress,
                                        std::uint64_t max_bytes = 1 << 20) {
    ferry::config::spool_settings s;
    s.path = path;
    s.max_bytes = max_bytes;
    s.full = ferry::config::when_full::drop_oldest;
    s.fsync = ferry::config::fsync_mode::batch;
    s.compress = compress;
    return s;
}

// A payload shaped like the contract's: `events` readings with names repeated per event.
std::string contract_payload(std::uint64_t batch, int events) {
    std::string out = "{\"gateway\":\"gw\",\"batch\":" + std::to_string(batch) + ",\"events\":[";
    for (int i = 0; i < events; ++i) {
        if (i != 0) out += ',';
        out += "{\"device\":\"dev1\",\"tag\":\"r" + std::to_string(i % 100) +
               "\",\"value\":" + std::to_string(i * 3) + ",\"unit\":\"u\",\"quality\":\"good\"," +
               "\"ts\":" + std::to_string(1764600000000 + i) + ",\"seq\":" +
               std::to_string(1000000 + batch * 1000 + static_cast<std::uint64_t>(i)) + "}";
    }
    return out + "]}";
}

ferry::upstream::encode_fn contract(int events) {
    return
        [events](std::uint64_t batch, std::string& out) { out = contract_payload(batch, events); };
}

// The rows' stored payloads by id, read with SQLite directly (the spool must be closed).
std::vector<std::string> stored_payloads(const std::string& path) {
    std::vector<std::string> out;
    sqlite3* h = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &h) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(h, "SELECT payload FROM messages ORDER BY id", -1, &st, nullptr) ==
            SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW)
        out.emplace_back(static_cast<const char*>(sqlite3_column_blob(st, 0)),
                         static_cast<std::size_t>(sqlite3_column_bytes(st, 0)));
    sqlite3_finalize(st);
    sqlite3_close(h);
    return out;
}

void set_payload(const std::string& path, std::int64_t id, const std::string& stored) {
    sqlite3* h = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &h) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(h, "UPDATE messages SET payload = ?1 WHERE id = ?2", -1, &st,
                               nullptr) == SQLITE_OK);
    sqlite3_bind_blob(st, 1, stored.data(), static_cast<int>(stored.size()), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, id);
    REQUIRE(sqlite3_step(st) == SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(h);
}

}  // namespace

TEST_CASE("codec: a compressible body becomes one checked frame, anything else stays as it is") {
    const auto plain = contract_payload(7, 500);
    std::string stored;
    codec::encode(plain, stored);
    CHECK(codec::is_compressed(stored));
    CHECK(stored.size() * 5 < plain.size());  // JSON with repeated names: well over 5x
    std::string back, error;
    REQUIRE(codec::decode(stored, back, error));
    CHECK(back == plain);

    // Random bytes do not shrink: stored as they are (and read back as they are).
    std::mt19937 rng(1);
    std::string noise(4096, '\0');
    for (auto& c : noise)
        c = static_cast<char>(rng());
    noise[0] = '{';
    codec::encode(noise, stored);
    CHECK(stored == noise);
    REQUIRE(codec::decode(stored, back, error));
    CHECK(back == noise);
    // A tiny body: not worth a frame.
    codec::encode("{}", stored);
    CHECK(stored == "{}");
}

TEST_CASE("codec: damaged frames are refused, never a crash or a huge allocation") {
    const auto plain = contract_payload(9, 200);
    std::string stored, back, error;
    codec::encode(plain, stored);
    REQUIRE(codec::is_compressed(stored));

    SUBCASE("a flipped bit in the body: the content checksum differs") {
        auto bad = stored;
        bad[bad.size() / 2] = static_cast<char>(bad[bad.size() / 2] ^ 0x10);
        CHECK_FALSE(codec::decode(bad, back, error));
        CHECK(error.find("compressed payload") == 0);
    }
    SUBCASE("truncated") {
        CHECK_FALSE(codec::decode(stored.substr(0, stored.size() - 7), back, error));
        CHECK_FALSE(codec::decode(stored.substr(0, 6), back, error));
    }
    SUBCASE("trailing bytes after the frame") {
        CHECK_FALSE(codec::decode(stored + "junk", back, error));
    }
    SUBCASE("a content size above the limit is refused before allocating") {
        CHECK_FALSE(codec::decode(stored, back, error, plain.size() - 1));
        CHECK(error.find("content size") != std::string::npos);
    }
    SUBCASE("the magic alone") {
        CHECK_FALSE(codec::decode(std::string("\x28\xb5\x2f\xfd", 4), back, error));
    }
}

TEST_CASE("compressed rows: round trip, stored bytes counted, published bytes unchanged") {
    ferry::unit::tmp_dir dir;
    const auto path = dir.file("spool.db");
    std::vector<std::string> sent;
    std::uint64_t held = 0;
    {
        prometheus::Registry reg;
        spool sp(zsettings(path, true), reg);
        for (int i = 0; i < 5; ++i)
            REQUIRE(sp.append("plant/dev1", 1, false, 500, contract(500)) == append_result::ok);
        auto all = sp.peek(0, 10);
        REQUIRE(all.size() == 5);
        std::uint64_t stored_sum = 0;
        for (const auto& m : all) {
            CHECK(m.payload.front() == '{');  // decompressed: what CONTRACT.md says goes out
            CHECK(m.payload == contract_payload(ferry::upstream::batch_of(m.payload), 500));
            CHECK(m.decode_error.empty());
            REQUIRE(m.stored_payload_bytes > 0);
            CHECK(static_cast<std::size_t>(m.stored_payload_bytes) * 5 < m.payload.size());
            // The bytes column counts what the row holds; the checks pass.
            CHECK(m.stored_bytes ==
                  static_cast<std::int64_t>(m.topic.size()) + m.stored_payload_bytes);
            CHECK(ferry::upstream::check_spooled(m, 0, true) == ferry::upstream::dead_reason::none);
            stored_sum += m.topic.size() + static_cast<std::uint64_t>(m.stored_payload_bytes);
            sent.push_back(m.payload);
        }
        CHECK(sp.bytes() == stored_sum);  // max_bytes counts stored (compressed) bytes
        held = sp.bytes();
    }
    for (const auto& s : stored_payloads(path))
        CHECK(codec::is_compressed(s));
    prometheus::Registry reg;
    spool sp(zsettings(path, true), reg);
    CHECK(sp.bytes() == held);  // recomputed at open from the stored lengths
    auto again = sp.peek(0, 10);
    REQUIRE(again.size() == 5);
    for (std::size_t i = 0; i < again.size(); ++i)
        CHECK(again[i].payload == sent[i]);
    for (const auto& m : again)
        sp.ack(m.id);
    CHECK(sp.bytes() == 0);
    CHECK(sp.messages() == 0);
}

TEST_CASE("compressed rows: max_bytes bounds what is stored, so more batches fit") {
    ferry::unit::tmp_dir dir;
    prometheus::Registry reg;
    // 40 batches of ~75 KB each (3 MB as JSON) in a 1 MiB spool: compressed, nothing drops.
    spool sp(zsettings(dir.file("spool.db"), true, 1 << 20), reg);
    for (int i = 0; i < 40; ++i)
        REQUIRE(sp.append("plant/dev1", 1, false, 500, contract(500)) == append_result::ok);
    CHECK(sp.messages() == 40);
    CHECK(sp.bytes() < (1u << 20));
    std::uint64_t plain = 0;
    for (const auto& m : sp.peek(0, 100))
        plain += m.topic.size() + m.payload.size();
    CHECK(plain > (1u << 20) * 2);
}

TEST_CASE("compressed rows: rows stored without compression still drain, in order") {
    ferry::unit::tmp_dir dir;
    const auto path = dir.file("spool.db");
    {
        // As an earlier version wrote them (same schema, plain rows) or `compress: false`.
        prometheus::Registry reg;
        spool sp(zsettings(path, false), reg);
        for (int i = 0; i < 3; ++i)
            REQUIRE(sp.append("plant/dev1", 1, false, 100, contract(100)) == append_result::ok);
    }
    auto rows = stored_payloads(path);
    REQUIRE(rows.size() == 3);
    for (const auto& s : rows)
        CHECK(s.front() == '{');
    prometheus::Registry reg;
    spool sp(zsettings(path, true), reg);
    for (int i = 0; i < 2; ++i)
        REQUIRE(sp.append("plant/dev1", 1, false, 100, contract(100)) == append_result::ok);
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 5);
    std::uint64_t prev_batch = 0;
    for (std::size_t i = 0; i < all.size(); ++i) {
        const auto& m = all[i];
        CHECK(ferry::upstream::check_spooled(m, 0, true) == ferry::upstream::dead_reason::none);
        const auto b = ferry::upstream::batch_of(m.payload);
        CHECK(m.payload == contract_payload(b, 100));
        if (i > 0) CHECK(b == prev_batch + 1);  // batch numbers go on across the change
        prev_batch = b;
        CHECK((m.stored_payload_bytes >= 0) == (i >= 3));  // the new rows are compressed
        sp.ack(m.id);
    }
    CHECK(sp.bytes() == 0);
}

TEST_CASE("compressed rows: a damaged frame is dead-lettered, the rows behind it go on") {
    ferry::unit::tmp_dir dir;
    const auto path = dir.file("spool.db");
    {
        prometheus::Registry reg;
        spool sp(zsettings(path, true), reg);
        for (int i = 0; i < 3; ++i)
            REQUIRE(sp.append("plant/dev1", 1, false, 200, contract(200)) == append_result::ok);
    }
    auto rows = stored_payloads(path);
    REQUIRE(rows.size() == 3);
    // One flipped bit in the middle of row 2: SQLite's quick_check cannot see it; the frame's
    // checksum does. Same length, so the bytes column still agrees.
    auto bad = rows[1];
    bad[bad.size() / 2] = static_cast<char>(bad[bad.size() / 2] ^ 0x01);
    set_payload(path, 2, bad);

    prometheus::Registry reg;
    spool sp(zsettings(path, true), reg);
    CHECK(sp.corrupt_recoveries() == 0);  // a healthy file: the row is the damage
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);
    CHECK(all[0].decode_error.empty());
    CHECK_FALSE(all[1].decode_error.empty());
    CHECK(all[1].payload == bad);  // the stored bytes, for the dead letter
    std::string why;
    CHECK(ferry::upstream::check_spooled(all[1], 0, true, &why) ==
          ferry::upstream::dead_reason::bad_payload);
    CHECK(why.find("compressed payload") == 0);
    CHECK(ferry::upstream::check_spooled(all[2], 0, true) == ferry::upstream::dead_reason::none);
    const auto moved = sp.dead_letter(all[1].id, "bad_payload");
    CHECK(moved.removed);
    CHECK(moved.events == 200);
    CHECK(moved.bytes == all[1].topic.size() + bad.size());
    sp.ack(all[0].id);
    sp.ack(all[2].id);
    CHECK(sp.messages() == 0);
    CHECK(sp.bytes() == 0);
}

TEST_CASE("compressed spools are created with 1 KiB pages; an existing file keeps its own") {
    ferry::unit::tmp_dir dir;
    auto page_size = [](const std::string& path) {
        sqlite3* h = nullptr;
        REQUIRE(sqlite3_open(path.c_str(), &h) == SQLITE_OK);
        sqlite3_stmt* st = nullptr;
        REQUIRE(sqlite3_prepare_v2(h, "PRAGMA page_size", -1, &st, nullptr) == SQLITE_OK);
        REQUIRE(sqlite3_step(st) == SQLITE_ROW);
        const auto n = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        sqlite3_close(h);
        return n;
    };
    const auto z = dir.file("z.db");
    const auto p = dir.file("p.db");
    {
        prometheus::Registry reg;
        spool zs(zsettings(z, true), reg);
        spool ps(zsettings(p, false), reg);
        REQUIRE(zs.append("plant/dev1", 1, false, 500, contract(500)) == append_result::ok);
        REQUIRE(ps.append("plant/dev1", 1, false, 500, contract(500)) == append_result::ok);
    }
    CHECK(page_size(z) == 1024);
    CHECK(page_size(p) == 4096);
    // A spool of an earlier version (4 KiB pages) opened with compression: it stays as it is
    // and takes compressed rows beside its plain ones.
    {
        prometheus::Registry reg;
        spool sp(zsettings(p, true), reg);
        REQUIRE(sp.append("plant/dev1", 1, false, 500, contract(500)) == append_result::ok);
        auto all = sp.peek(0, 10);
        REQUIRE(all.size() == 2);
        CHECK(all[0].stored_payload_bytes < 0);
        CHECK(all[1].stored_payload_bytes > 0);
        for (const auto& m : all)
            CHECK(ferry::upstream::check_spooled(m, 0, true) == ferry::upstream::dead_reason::none);
    }
    CHECK(page_size(p) == 4096);
}
