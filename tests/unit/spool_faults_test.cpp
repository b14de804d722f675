// The spool under injected I/O faults: tests/tools/faultvfs.cpp is linked into this
// executable, so its constructor makes it the default SQLite VFS; env FERRY_FAULTVFS names
// the control file (see faultvfs.cpp for its lines).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <stdlib.h>

#include <prometheus/registry.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gateway/log.hpp"
#include "gateway/upstream/spool.hpp"
#include "tests/unit/unit_support.hpp"

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
    return s;
}

ferry::upstream::encode_fn body(std::string text) {
    return [text = std::move(text)](std::uint64_t batch, std::string& out) {
        out = text;
        out += "#";
        out += std::to_string(batch);
    };
}

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
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
        std::istringstream in(slurp(control + ".log"));
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
