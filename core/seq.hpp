// The gateway-wide sequence: every reading gets a `seq` when it is sampled. Strictly
// increasing within a run and across restarts, including after `kill -9`, a power cut, a
// spool moved aside or a lost data directory (the start point is chosen by the caller:
// upstream/identity.hpp takes the largest of two stored high-water marks and the
// wall clock in microseconds).
//
// How it survives restarts without a disk write per reading: the source reserves blocks.
// Before handing out any number of a new block it durably stores the block's end (the
// high-water mark) through `persist`; after a restart it resumes from the stored mark.
// A crash thus skips at most one block of numbers (a gap in seq is harmless: consumers
// dedupe on (gateway, seq) and detect loss through `batch` numbers), never repeats one.
//
// When `persist` fails (returns false), the reserved range does not move on: the numbers
// are still handed out (stopping the readings would lose them), but the next number past
// the old mark tries to persist again, at most once a second, until it succeeds. Until
// then only the wall-clock floor of the next start covers them (see identity.hpp).
//
// Thread-safe; next() is lock-free except when a new block is reserved.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>

namespace ferry {

class seq_source {
  public:
    // Durably stores the high-water mark; false when it could not.
    using persist_fn = std::function<bool(std::uint64_t high_water)>;

    // `start` is the largest seq that may have been handed out before (0 on a fresh
    // gateway); seq starts above it.
    seq_source(std::uint64_t start, persist_fn persist, std::uint64_t block = 65536)
        : next_(start + 1), reserved_(start), block_(block), persist_(std::move(persist)) {}

    std::uint64_t next() {
        std::uint64_t s = next_.fetch_add(1, std::memory_order_relaxed);
        if (s > reserved_.load(std::memory_order_acquire)) reserve(s);
        return s;
    }

    // Reserves `n` consecutive numbers at once (one per value of a poll); returns the first.
    std::uint64_t next_n(std::uint64_t n) {
        std::uint64_t s = next_.fetch_add(n, std::memory_order_relaxed);
        if (s + n - 1 > reserved_.load(std::memory_order_acquire)) reserve(s + n - 1);
        return s;
    }

    // The high-water mark last stored durably.
    std::uint64_t reserved() const { return reserved_.load(std::memory_order_acquire); }

  private:
    void reserve(std::uint64_t upto) {
        std::lock_guard lock(mu_);
        std::uint64_t r = reserved_.load(std::memory_order_relaxed);
        if (upto <= r) return;
        if (!persist_) {
            reserved_.store(upto + block_, std::memory_order_release);
            return;
        }
        const auto now = std::chrono::steady_clock::now();
        if (failed_ && now - last_try_ < std::chrono::seconds(1)) return;
        last_try_ = now;
        std::uint64_t mark = upto + block_;
        failed_ = !persist_(mark);
        if (!failed_) reserved_.store(mark, std::memory_order_release);
    }

    std::atomic<std::uint64_t> next_;
    std::atomic<std::uint64_t> reserved_;
    std::uint64_t block_;
    persist_fn persist_;
    std::mutex mu_;
    bool failed_ = false;
    std::chrono::steady_clock::time_point last_try_{};
};

}  // namespace ferry
