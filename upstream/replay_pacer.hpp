// The pace of a replayed backlog (upstream.replay.rate and bytes_per_second, docs/DELIVERY.md,
// Live first): a token bucket per limit, refilled continuously, holding at most 100 ms of
// tokens so that a replay goes out evenly rather than in bursts after a pause.
//
// A message may go when the bucket holds a whole message token (`rate`) and the byte bucket is
// not in debt (`bytes_per_second`); the byte bucket is then charged the message's size and may
// go into debt, so a message larger than 100 ms of bytes still goes, and the next waits until
// the debt is paid. Unpaced (both 0): every message may go at once. Pure and single-threaded:
// the publisher's sender thread owns it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace ferry::upstream {

class replay_pacer {
  public:
    using clock = std::chrono::steady_clock;

    replay_pacer(std::uint32_t rate, std::uint64_t bytes_per_second)
        : rate_(static_cast<double>(rate)), bytes_rate_(static_cast<double>(bytes_per_second)) {}

    bool paced() const { return rate_ > 0 || bytes_rate_ > 0; }

    // A connect: the buckets start full.
    void reset(clock::time_point now) {
        messages_ = message_cap();
        bytes_ = byte_cap();
        at_ = now;
    }

    // Takes the tokens of one message of `bytes` and returns true when it may go now.
    bool take(std::uint64_t bytes, clock::time_point now) {
        if (!paced()) return true;
        refill(now);
        if ((rate_ > 0 && messages_ < 1.0) || (bytes_rate_ > 0 && bytes_ < 0.0)) return false;
        messages_ -= 1.0;
        bytes_ -= static_cast<double>(bytes);
        return true;
    }

    // When the next message may go (`now` when it may already).
    clock::time_point next(clock::time_point now) {
        if (!paced()) return now;
        refill(now);
        double wait_s = 0;
        if (rate_ > 0 && messages_ < 1.0) wait_s = (1.0 - messages_) / rate_;
        if (bytes_rate_ > 0 && bytes_ < 0.0) wait_s = std::max(wait_s, -bytes_ / bytes_rate_);
        return now +
               std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(wait_s));
    }

  private:
    static constexpr double k_burst_s = 0.1;
    double message_cap() const { return std::max(1.0, rate_ * k_burst_s); }
    double byte_cap() const { return bytes_rate_ * k_burst_s; }

    void refill(clock::time_point now) {
        const double dt = std::chrono::duration<double>(now - at_).count();
        at_ = now;
        if (dt <= 0) return;
        if (rate_ > 0) messages_ = std::min(message_cap(), messages_ + dt * rate_);
        if (bytes_rate_ > 0) bytes_ = std::min(byte_cap(), bytes_ + dt * bytes_rate_);
    }

    double rate_;
    double bytes_rate_;
    double messages_ = 0;
    double bytes_ = 0;
    clock::time_point at_{};
};

}  // namespace ferry::upstream
