// Fuzz target: the spool's open and recovery path over damaged files (issue 14). The input is
// the bytes of a spool file; it is written as data_dir/spool.db and opened the way `ferry run`
// opens it (upstream::spool), then read, checked and drained a little as the publisher would.
//
// Invariants (abort on violation):
//  - nothing crashes and no exception escapes but the constructor's documented
//    std::runtime_error (an environment error; a damaged file must never be one of those);
//  - after open, the spool's running totals are what its rows hold (bytes = topic + payload
//    of every row peeked, messages = rows peeked): a lying `bytes` column cannot skew them;
//  - every row either passes check_spooled or is dead-lettered, and each leaves the stream
//    exactly once (ack or dead_letter), leaving bytes() and messages() at 0;
//  - a damaged file is moved aside (spool.db.corrupt-*), never deleted or left in place
//    with the spool refusing to start.
// Seeds: tests/fuzz/corpus/spool/ (made by tests/fuzz/make_spool_corpus.sh); inputs that once
// failed are in tests/fuzz/regressions/spool/. By hand, from the source root:
//   clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -I. -o fuzz_spool
//     tests/fuzz/spool_fuzz.cpp upstream/spool*.cpp upstream/dead_letter.cpp
//     core/sqlite.cpp core/json.cpp core/log.cpp core/event.cpp -lsqlite3 -lprometheus-cpp-core
//   ./fuzz_spool -dict=tests/fuzz/spool.dict -max_len=40000 CORPUS_COPY tests/fuzz/corpus/spool
#include <prometheus/registry.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include "core/log.hpp"
#include "upstream/dead_letter.hpp"
#include "upstream/spool.hpp"

namespace fs = std::filesystem;

namespace {

std::string g_dir;

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "spool_fuzz: invariant violated: %s\n", what);
        std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // tmpfs when there is one: every open fsyncs (mark_open), which on a disk caps the run at
    // a few execs per second.
    char shm[] = "/dev/shm/ferry-spool-fuzz-XXXXXX";
    char tmp[] = "/tmp/ferry-spool-fuzz-XXXXXX";
    const char* d = ::mkdtemp(shm);
    if (d == nullptr) d = ::mkdtemp(tmp);
    if (d == nullptr) std::abort();
    g_dir = d;
    ferry::log::set_level(ferry::config::log_level::error);
    std::atexit([] {
        std::error_code ec;
        fs::remove_all(g_dir, ec);
    });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(g_dir, ec))
        fs::remove_all(e.path(), ec);
    const std::string path = g_dir + "/spool.db";
    {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    }
    ferry::config::spool_settings s;
    s.path = path;
    s.max_bytes = 1 << 20;
    s.full = ferry::config::when_full::drop_oldest;
    s.fsync = ferry::config::fsync_mode::never;  // nothing here needs to survive power loss
    prometheus::Registry registry;
    try {
        ferry::upstream::spool sp(s, registry);
        // Recovery moved a damaged file aside or kept it; either way a spool file exists.
        check(fs::exists(path), "no spool file after open");
        if (sp.corrupt_recoveries() > 0) {
            bool moved = false;
            for (const auto& e : fs::directory_iterator(g_dir, ec))
                moved = moved || e.path().filename().string().starts_with("spool.db.corrupt-");
            check(moved, "damaged file not kept aside");
        }

        auto rows = sp.peek(0, 64);
        if (rows.size() < 64) {
            std::uint64_t bytes = 0;
            for (const auto& m : rows)
                bytes += m.topic.size() + m.payload.size();
            check(sp.messages() == rows.size(), "messages() differs from the rows held");
            check(sp.bytes() == bytes, "bytes() differs from what the rows hold");
        }
        for (const auto& m : rows) {
            std::string detail;
            const auto why = ferry::upstream::check_spooled(m, 4096, true, &detail);
            if (why == ferry::upstream::dead_reason::none) {
                sp.ack(m.id);
            } else {
                auto notice = ferry::upstream::dead_letter_notice("gw", m, why, detail, 0);
                check(ferry::upstream::valid_utf8(notice), "notice is not UTF-8");
                sp.dead_letter(m.id, ferry::upstream::to_string(why));
            }
        }
        if (rows.size() < 64) {
            check(sp.messages() == 0, "rows left after each left the stream once");
            check(sp.bytes() == 0, "bytes left after each row left the stream once");
        }
        // The spool still takes new messages.
        sp.append("plant/gw/d1", 1, false, 1, [](std::uint64_t batch, std::string& out) {
            out = "{\"gateway\":\"gw\",\"batch\":" + std::to_string(batch) + ",\"events\":[]}";
        });
        sp.store_state("seq_high_water", 1);
    } catch (const std::runtime_error&) {
        // Documented: only for the environment (directory, permissions, lock, disk, memory).
    }
    return 0;
}
