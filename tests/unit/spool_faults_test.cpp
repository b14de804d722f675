// The spool under injected I/O faults: tests/tools/faultvfs.cpp is linked into this
// executable, so its constructor makes it the default SQLite VFS; env FERRY_FAULTVFS names
// the control file (see faultvfs.cpp for its lines).
#include <doctest/doctest.h>
#include <stdlib.h>

#include <prometheus/registry.h>
#include <sqlite3.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/log.hpp"
#include "tests/support/files.hpp"
#include "tests/unit/unit_support.hpp"
#include "upstream/spool.hpp"

using namespace std::chrono_literals;
using ferry::config::fsync_mode;
using ferry::config::when_full;
using ferry::upstream::append_result;
using ferry::upstream::spool;

namespace {

using ferry::unit::tmp_dir;

ferry::config::spool_settings settings(const std::string& path,
                                       fsync_mode fsync = fsync_mode::batch) {
    ferry::config::spool_settings s;
    s.path = path;
    s.max_bytes = 1 << 20;
    s.full = when_full::drop_oldest;
    s.fsync = fsync;
    // The damage cases flip bytes in pages of a known layout, built from payloads of repeated
    // characters that zstd would shrink to a few pages; compressed rows have their own cases
    // (spool_compress_test.cpp).
    s.compress = false;
    return s;
}

ferry::upstream::encode_fn body(std::string text) {
    return [text = std::move(text)](std::uint64_t batch, std::string& out) {
        out = text;
        out += "#";
        out += std::to_string(batch);
    };
}

double metric(prometheus::Registry& reg, const std::string& name, const std::string& reason = "") {
    for (const auto& fam : reg.Collect()) {
        if (fam.name != name) continue;
        for (const auto& m : fam.metric) {
            bool match = reason.empty();
            for (const auto& l : m.label)
                if (l.name == "reason" && l.value == reason) match = true;
            if (match) return m.counter.value;
        }
    }
    return -1;
}

// The faultvfs control file for one test: set() replaces its lines (by rename, and waits out
// the shim's 50 ms re-read interval); the destructor clears every fault.
struct faults {
    tmp_dir dir;
    std::string control = dir.file("faults");
    faults() {
        set("");
        ::setenv("FERRY_FAULTVFS", control.c_str(), 1);
        std::this_thread::sleep_for(80ms);
    }
    ~faults() {
        set("");
        ::unsetenv("FERRY_FAULTVFS");
        ::unsetenv("FERRY_FAULTVFS_DURABLE");
        std::this_thread::sleep_for(80ms);
    }
    faults(const faults&) = delete;
    faults& operator=(const faults&) = delete;
    void set(const std::string& lines) const {
        {
            std::ofstream out(control + ".tmp", std::ios::trunc);
            out << lines;
        }
        std::rename((control + ".tmp").c_str(), control.c_str());
        std::this_thread::sleep_for(80ms);
    }
    std::vector<std::string> log() const {
        std::vector<std::string> out;
        std::istringstream in(ferry::test::read_file_if_exists(control + ".log"));
        for (std::string line; std::getline(in, line);)
            out.push_back(line);
        return out;
    }
};

struct quiet_logs {
    quiet_logs() { ferry::log::set_level(ferry::config::log_level::error); }
    ~quiet_logs() { ferry::log::set_level(ferry::config::log_level::info); }
};

}  // namespace

TEST_CASE("faultvfs: failing writes make append return error, and it recovers when cleared") {
    faults f;
    tmp_dir dir;
    quiet_logs q;
    prometheus::Registry reg;
    spool sp(settings(dir.file("spool.db"), fsync_mode::always), reg);
    REQUIRE(sp.append("t", 1, false, 1, body("a")) == append_result::ok);

    f.set("fail write all EIO\n");
    CHECK(sp.append("t", 1, false, 1, body("b")) == append_result::error);
    CHECK(sp.append("t", 1, false, 1, body("c")) == append_result::error);
    CHECK(metric(reg, "ferry_spool_errors_total", "io") >= 2);
    auto lines = f.log();
    REQUIRE_FALSE(lines.empty());
    CHECK(lines[0].rfind("write ", 0) == 0);
    CHECK(lines[0].find("spool.db") != std::string::npos);
    CHECK(lines[0].ends_with(" EIO"));

    f.set("");
    REQUIRE(sp.append("t", 1, false, 1, body("d")) == append_result::ok);
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 2);
    CHECK(all[0].payload.starts_with("a#"));
    CHECK(all[1].payload.starts_with("d#"));
}

TEST_CASE("faultvfs: a count fails only that many calls; ENOSPC is disk_full; match filters") {
    faults f;
    tmp_dir dir;
    quiet_logs q;
    prometheus::Registry reg;
    spool sp(settings(dir.file("spool.db"), fsync_mode::always), reg);
    f.set("fail sync 1 ENOSPC\n");
    CHECK(sp.append("t", 1, false, 1, body("a")) == append_result::error);
    CHECK(metric(reg, "ferry_spool_errors_total", "disk_full") == 1);
    CHECK(sp.append("t", 1, false, 1, body("b")) == append_result::ok);
    CHECK(f.log().size() == 1);

    f.set("match other.db\nfail any all EIO\n");
    CHECK(sp.append("t", 1, false, 1, body("c")) == append_result::ok);
    CHECK(f.log().size() == 1);
}

TEST_CASE("fsync modes: always fsyncs every commit, never none (faultvfs sees the syncs)") {
    faults f;
    quiet_logs q;
    {
        tmp_dir dir;
        prometheus::Registry reg;
        spool sp(settings(dir.file("spool.db"), fsync_mode::never), reg);
        f.set("fail sync all EIO\n");  // every append must get through without a sync
        CHECK(sp.append("t", 1, false, 1, body("a")) == append_result::ok);
        CHECK(sp.append("t", 1, false, 1, body("b")) == append_result::ok);
    }
    f.set("");
    tmp_dir dir;
    prometheus::Registry reg;
    spool sp(settings(dir.file("spool.db"), fsync_mode::always), reg);
    f.set("fail sync all EIO\n");
    // Before the fix, preparing "PRAGMA synchronous=NORMAL" at open had switched `always` to
    // NORMAL: this append succeeded without any fsync.
    CHECK(sp.append("t", 1, false, 1, body("c")) == append_result::error);
    f.set("");
    CHECK(sp.append("t", 1, false, 1, body("d")) == append_result::ok);
}

TEST_CASE("faultvfs durable copies hold what was fsynced, not what was only written") {
    faults f;
    quiet_logs q;
    ::setenv("FERRY_FAULTVFS_DURABLE", "1", 1);
    f.set("# durable copies only\n");
    tmp_dir dir;
    tmp_dir after_cut;
    {
        prometheus::Registry reg;
        spool sp(settings(dir.file("spool.db"), fsync_mode::batch), reg);
        for (int i = 0; i < 3; ++i)
            REQUIRE(sp.append("t", 1, false, 1, body("synced")) == append_result::ok);
        sp.store_state("k", 7);  // fsynced in `batch`: the three appends become durable
        for (int i = 0; i < 2; ++i)
            REQUIRE(sp.append("t", 1, false, 1, body("written")) == append_result::ok);
        // The power cut: only the .durable copies survive (as tests/tools/powercut.sh does).
        for (const char* suffix : {"", "-wal"}) {
            const std::string from = dir.file(std::string("spool.db") + suffix + ".durable");
            if (std::ifstream(from).good())
                std::filesystem::copy_file(from, after_cut.file(std::string("spool.db") + suffix));
        }
        CHECK(sp.peek(0, 10).size() == 5);
    }
    ::unsetenv("FERRY_FAULTVFS_DURABLE");
    f.set("");
    prometheus::Registry reg;
    spool sp(settings(after_cut.file("spool.db"), fsync_mode::batch), reg);
    CHECK(sp.load_state("k", 0) == 7);
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 3);
    for (const auto& m : all)
        CHECK(m.payload.starts_with("synced#"));
}

namespace {

std::uint64_t batch_of(const std::string& payload) {
    return std::stoull(payload.substr(payload.rfind('#') + 1));
}

// Runs a spool at `dir` as boot "boot-A": 3 appends, a fsynced state write, 2 more appends.
// Returns the batch numbers given out, and leaves in `cut` what a power cut leaves (the
// .durable copies) and in `killed` what kill -9 leaves (the files as the kernel has them).
std::vector<std::uint64_t> run_until_cut(fsync_mode mode, const tmp_dir& dir, const tmp_dir& cut,
                                         const tmp_dir& killed) {
    ::setenv("FERRY_TEST_BOOT_ID", "boot-A", 1);
    std::vector<std::uint64_t> batches;
    prometheus::Registry reg;
    spool sp(settings(dir.file("spool.db"), mode), reg);
    for (int i = 0; i < 5; ++i) {
        REQUIRE(sp.append("t", 1, false, 1, body(i < 3 ? "synced" : "written")) ==
                append_result::ok);
        if (i == 2) sp.store_state("k", 1);
    }
    for (const auto& m : sp.peek(0, 10))
        batches.push_back(batch_of(m.payload));
    for (const char* suffix : {"", "-wal"}) {
        const std::string name = std::string("spool.db") + suffix;
        if (std::ifstream(dir.file(name + ".durable")).good())
            std::filesystem::copy_file(dir.file(name + ".durable"), cut.file(name));
        if (std::ifstream(dir.file(name)).good())
            std::filesystem::copy_file(dir.file(name), killed.file(name));
    }
    return batches;
}

// Opens `path` as boot `boot` and appends once: the batch number it got.
std::uint64_t next_batch_after(const std::string& path, fsync_mode mode, const char* boot) {
    ::setenv("FERRY_TEST_BOOT_ID", boot, 1);
    prometheus::Registry reg;
    spool sp(settings(path, mode), reg);
    REQUIRE(sp.append("t", 1, false, 1, body("after")) == append_result::ok);
    auto all = sp.peek(0, 10);
    ::unsetenv("FERRY_TEST_BOOT_ID");
    return batch_of(all.back().payload);
}

}  // namespace

TEST_CASE("power cut in fsync batch: batch numbers jump instead of being given out again") {
    faults f;
    quiet_logs q;
    ::setenv("FERRY_FAULTVFS_DURABLE", "1", 1);
    f.set("# durable copies only\n");
    tmp_dir dir, cut, killed;
    auto batches = run_until_cut(fsync_mode::batch, dir, cut, killed);
    REQUIRE(batches.size() == 5);
    // Readings arrive at < 1 message/ms per topic in real life; keep the test honest about it.
    std::this_thread::sleep_for(20ms);

    // After the cut only 3 appends were durable; a reboot happened (another boot id).
    const auto after_cut = next_batch_after(cut.file("spool.db"), fsync_mode::batch, "boot-B");
    CHECK(after_cut > batches[4]);  // before the fix: batches[2] + 1, a number given out before
    // kill -9 in the same boot: the kernel had every write; nothing lost, no jump.
    const auto after_kill = next_batch_after(killed.file("spool.db"), fsync_mode::batch, "boot-A");
    CHECK(after_kill == batches[4] + 1);
}

TEST_CASE("power cut in fsync always: nothing acknowledged was lost, batch numbers go on") {
    faults f;
    quiet_logs q;
    ::setenv("FERRY_FAULTVFS_DURABLE", "1", 1);
    f.set("# durable copies only\n");
    tmp_dir dir, cut, killed;
    auto batches = run_until_cut(fsync_mode::always, dir, cut, killed);
    REQUIRE(batches.size() == 5);
    const auto after_cut = next_batch_after(cut.file("spool.db"), fsync_mode::always, "boot-B");
    CHECK(after_cut == batches[4] + 1);
}

TEST_CASE("a failed ack is kept and retried: the spool empties, nothing is handed out again") {
    faults f;
    tmp_dir dir;
    quiet_logs q;
    prometheus::Registry reg;
    spool sp(settings(dir.file("spool.db")), reg);
    for (int i = 0; i < 5; ++i)
        REQUIRE(sp.append("t", 1, false, 2, body("m")) == append_result::ok);
    auto all = sp.peek(0, 10);
    REQUIRE(all.size() == 5);

    f.set("fail write all EIO\n");
    // The broker acknowledged three; their DELETEs fail. They count as delivered at once.
    for (int i = 0; i < 3; ++i)
        CHECK(sp.ack(all[static_cast<std::size_t>(i)].id) == 2);
    CHECK(sp.ack(all[0].id) == 0);  // a repeated ack does not count twice
    // Before the fix a failed ack was logged and forgotten: peek handed all five out again
    // and the spool held them until the next reconnect resent them.
    auto rest = sp.peek(0, 10);
    REQUIRE(rest.size() == 2);
    CHECK(rest[0].id == all[3].id);
    CHECK(sp.peek(0, 1).at(0).id == all[3].id);  // a small window skips them too
    CHECK(sp.wait_for_messages(0, 0ms));
    for (int i = 3; i < 5; ++i)
        CHECK(sp.ack(all[static_cast<std::size_t>(i)].id) == 2);
    // Nothing left to send: peek and wait agree (the publisher must not spin).
    CHECK(sp.peek(0, 10).empty());
    CHECK_FALSE(sp.wait_for_messages(0, 0ms));
    CHECK(sp.messages() == 5);  // still in the file

    // The disk heals: the next calls delete them, without any reconnect.
    f.set("");
    std::this_thread::sleep_for(150ms);
    CHECK_FALSE(sp.wait_for_messages(0, 200ms));
    CHECK(sp.messages() == 0);
    CHECK(sp.bytes() == 0);
    CHECK(metric(reg, "ferry_spool_sent_total") == 5);
    REQUIRE(sp.append("t", 1, false, 2, body("after")) == append_result::ok);
    CHECK(sp.peek(0, 10).size() == 1);
}

namespace {

// PRAGMA quick_check of the SQLite file at `path`, through whatever VFS is the default.
std::string quick_check(const std::string& path) {
    sqlite3* db = nullptr;
    std::string result;
    if (sqlite3_open(path.c_str(), &db) == SQLITE_OK)
        sqlite3_exec(
            db, "PRAGMA quick_check",
            [](void* out, int, char** values, char**) {
                *static_cast<std::string*>(out) += values[0] != nullptr ? values[0] : "";
                return 0;
            },
            &result, nullptr);
    sqlite3_close(db);
    return result;
}

}  // namespace

// corrupt_read names files by inode, and a file made later may get a freed inode (ext4 reuses
// them). Before the fix the shim kept its (inode, page) pairs when the control file went away
// (the `faults` of a test is cleared and FERRY_FAULTVFS unset before the shim looks again), so
// a later test's file could read damaged: "a page damaged in the file while running" failed
// once under load with peek giving 1 row of the 399 kept.
TEST_CASE("faultvfs: corrupt_read ends with the faults that set it") {
    tmp_dir dir;
    const auto path = dir.file("spool.db");
    {
        quiet_logs q;
        prometheus::Registry reg;
        spool sp(settings(path), reg);
        for (int i = 0; i < 10; ++i)  // 200 KB: page 12 holds message data
            REQUIRE(sp.append("t", 1, false, 1, body(std::string(20000, 'x'))) ==
                    append_result::ok);
    }
    REQUIRE(quick_check(path) == "ok");
    {
        faults f;
        sqlite3* db = nullptr;  // open when the line is read: its inode gets the damage
        REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
        f.set("corrupt_read 12\n");
        CHECK(quick_check(path) != "ok");
        sqlite3_close(db);
    }
    CHECK(quick_check(path) == "ok");  // before the fix: page 12 still read inverted
}

namespace {

// A spool of 400 messages of 20 KB (3 events each): 8 MB, four times SQLite's page cache, so
// its first pages are read from the main file again by the next full scan.
void fill_large(spool& sp) {
    for (int i = 0; i < 400; ++i) {
        REQUIRE(sp.append("t", 1, false, 3, [i](std::uint64_t batch, std::string& out) {
            out = "m-" + std::to_string(i) + "#" + std::to_string(batch) + "#";
            out.resize(20 * 1024, 'x');
        }) == append_result::ok);
    }
}

// What a page damaged while running must cost: the messages on it, counted, nothing else.
void check_salvaged(spool& sp, prometheus::Registry& reg, std::uint64_t last_batch) {
    auto all = sp.peek(0, 1000);  // meets the damaged page, rebuilds, reads the rebuilt spool
    const auto kept = sp.messages();
    MESSAGE("kept " << kept << " of 400");
    CHECK(sp.corrupt_recoveries() == 1);
    CHECK(kept >= 380);
    CHECK(kept < 400);
    CHECK(all.size() == kept);
    CHECK(metric(reg, "ferry_spool_dropped_total", "corrupt") == static_cast<double>(400 - kept));
    CHECK(metric(reg, "ferry_events_dropped_total", "corrupt") ==
          static_cast<double>(3 * (400 - kept)));
    for (std::size_t i = 1; i < all.size(); ++i)
        CHECK(all[i].id > all[i - 1].id);
    // peek and wait agree: after the last message there is nothing, before it something.
    REQUIRE_FALSE(all.empty());
    CHECK_FALSE(sp.wait_for_messages(all.back().id, 0ms));
    CHECK(sp.wait_for_messages(all.front().id - 1, 0ms));
    // Appends go on, and this run's batch numbers with them.
    REQUIRE(sp.append("t", 1, false, 3, body("after")) == append_result::ok);
    auto last = sp.peek(all.back().id, 10);
    REQUIRE(last.size() == 1);
    CHECK(last[0].payload == "after#" + std::to_string(last_batch + 1));
    // Every row that is left can be acked: the spool drains.
    for (const auto& m : sp.peek(0, 1000))
        sp.ack(m.id);
    CHECK(sp.messages() == 0);
}

std::uint64_t last_batch_of(spool& sp) {
    auto all = sp.peek(0, 1000);
    auto p = all.back().payload;
    auto at = p.find('#');
    return std::stoull(p.substr(at + 1, p.find('#', at + 1) - at - 1));
}

}  // namespace

// A spool of 64 MiB filled by fill_large(), and its last batch number.
struct large_spool {
    tmp_dir dir;
    prometheus::Registry reg;
    spool sp{[this] {
                 auto s = settings(dir.file("spool.db"));
                 s.max_bytes = 64 << 20;
                 return s;
             }(),
             reg};
    std::uint64_t last = 0;
    large_spool() {
        fill_large(sp);
        last = last_batch_of(sp);
    }
};

TEST_CASE("a page damaged while running costs its messages only, counted (faultvfs)") {
    faults f;
    quiet_logs q;
    large_spool l;
    auto& [dir, reg, sp, last] = l;
    f.set("corrupt_read 12\n");
    check_salvaged(sp, reg, last);
    CHECK_FALSE(f.log().empty());
    auto moved = std::filesystem::directory_iterator(dir.path);
    bool found = false;
    for (const auto& e : moved)
        found = found || e.path().filename().string().starts_with("spool.db.corrupt-");
    CHECK(found);  // the damaged file is kept for a post-mortem
}

TEST_CASE("a page damaged in the file while running costs its messages only, counted") {
    quiet_logs q;
    large_spool l;
    auto& [dir, reg, sp, last] = l;
    {
        // Invert the first bytes of page 12 in the file itself (an early message's page, long
        // checkpointed into the main file and out of SQLite's cache).
        std::fstream io(dir.file("spool.db"), std::ios::in | std::ios::out | std::ios::binary);
        std::string page(4096, '\0');
        io.seekg(11 * 4096);
        io.read(page.data(), 4096);
        for (int i = 0; i < 8; ++i)
            page[static_cast<std::size_t>(i)] =
                static_cast<char>(~page[static_cast<std::size_t>(i)]);
        io.seekp(11 * 4096);
        io.write(page.data(), 4096);
    }
    check_salvaged(sp, reg, last);
}

// ENOSPC, EIO and SQLITE_CORRUPT on every spool operation (docs/FAULTS.md): open and peek.
TEST_CASE("EIO while opening: nothing held is lost, whether the open fails or goes on") {
    faults f;
    tmp_dir dir;
    quiet_logs q;
    {
        prometheus::Registry reg;
        spool sp(settings(dir.file("spool.db"), fsync_mode::always), reg);
        for (int i = 0; i < 3; ++i)
            REQUIRE(sp.append("t", 1, false, 1, body("m" + std::to_string(i))) ==
                    append_result::ok);
    }
    for (const char* op : {"open", "read"}) {
        CAPTURE(op);
        f.set(std::string("fail ") + op + " 1 EIO\n");
        try {
            prometheus::Registry reg;
            spool sp(settings(dir.file("spool.db"), fsync_mode::always), reg);
        } catch (const std::exception&) {
            // Refusing to start is allowed (systemd restarts); losing the file is not.
        }
        f.set("");
        prometheus::Registry reg;
        spool sp(settings(dir.file("spool.db"), fsync_mode::always), reg);
        auto all = sp.peek(0, 10);
        REQUIRE(all.size() == 3);
        for (int i = 0; i < 3; ++i)
            CHECK(all[static_cast<std::size_t>(i)].payload.starts_with("m" + std::to_string(i)));
    }
    CHECK(f.log().size() >= 2);  // both faults did reach the open
}

TEST_CASE("EIO on reads during peek: counted, nothing skipped, the next peek gets every row") {
    faults f;
    tmp_dir dir;
    quiet_logs q;
    prometheus::Registry reg;
    auto s = settings(dir.file("spool.db"), fsync_mode::batch);
    s.max_bytes = 64ull << 20;
    spool sp(s, reg);
    // More than SQLite's page cache (2 MB), so a full peek reads pages through the VFS.
    const std::string big(20000, 'x');
    for (int i = 0; i < 300; ++i)
        REQUIRE(sp.append("t", 1, false, 1, body(big + std::to_string(i))) == append_result::ok);
    f.set("fail read 3 EIO\n");
    auto first = sp.peek(0, 300);
    f.set("");
    CHECK(f.log().size() >= 1);  // the reads did reach the file and fail
    // A peek cut short by an error hands out a prefix, never a row after a hole.
    for (std::size_t i = 0; i < first.size(); ++i)
        CHECK(first[i].payload.starts_with(big + std::to_string(i) + "#"));
    auto again = sp.peek(first.empty() ? 0 : first.back().id, 300);
    CHECK(first.size() + again.size() == 300);
    CHECK(sp.messages() == 300);
}
