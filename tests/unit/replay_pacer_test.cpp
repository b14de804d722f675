// The replay's pace (upstream/replay_pacer.hpp): what goes out per second of simulated time.
#include <doctest/doctest.h>

#include <chrono>

#include "upstream/replay_pacer.hpp"

using ferry::upstream::replay_pacer;
using namespace std::chrono_literals;

namespace {

const auto k_start = replay_pacer::clock::time_point{} + 1h;

// Messages of `bytes` the pacer lets go over `span`, asked every millisecond.
int sent_over(replay_pacer& p, std::chrono::milliseconds span, std::uint64_t bytes) {
    auto t = k_start;
    p.reset(t);
    int n = 0;
    for (auto end = t + span; t < end; t += 1ms)
        while (p.take(bytes, t))
            ++n;
    return n;
}

template <class D>
replay_pacer::clock::duration ticks(D d) {
    return std::chrono::duration_cast<replay_pacer::clock::duration>(d);
}

}  // namespace

TEST_CASE("unpaced: everything goes at once") {
    replay_pacer p(0, 0);
    CHECK_FALSE(p.paced());
    p.reset(k_start);
    for (int i = 0; i < 100000; ++i)
        REQUIRE(p.take(1 << 20, k_start));
    CHECK(p.next(k_start) == k_start);
}

TEST_CASE("rate: messages per second, with at most 100 ms of burst") {
    replay_pacer p(200, 0);
    CHECK(p.paced());
    // 10 s at 200/s: 2,000, plus the 20 the full bucket held at the start.
    const int n = sent_over(p, 10s, 1000);
    CHECK(n >= 2000);
    CHECK(n <= 2021);
    // A bucket left alone does not save up more than 100 ms.
    replay_pacer q(200, 0);
    q.reset(k_start);
    const auto later = k_start + 60s;
    int burst = 0;
    while (q.take(1, later))
        ++burst;
    CHECK(burst == 20);
    CHECK(q.next(later) - later == ticks(5ms));  // the next token
}

TEST_CASE("a rate below 10/s still lets one message go at a time") {
    replay_pacer p(2, 0);
    const int n = sent_over(p, 10s, 1);
    CHECK(n >= 20);
    CHECK(n <= 21);
}

TEST_CASE("bytes_per_second: a large message goes, and the next waits for its bytes") {
    replay_pacer p(0, 10000);
    // 10 s at 10,000 B/s in 3,000-byte messages: 100,000 B, about 33, plus the first burst.
    const int n = sent_over(p, 10s, 3000);
    CHECK(n >= 33);
    CHECK(n <= 35);
    // A message larger than the bucket goes (into debt), the next waits until it is paid.
    replay_pacer q(0, 10000);
    q.reset(k_start);
    CHECK(q.take(50000, k_start));
    CHECK_FALSE(q.take(1, k_start));
    const auto wait = q.next(k_start) - k_start;
    CHECK(wait > ticks(4800ms));
    CHECK(wait < ticks(4950ms));
}

TEST_CASE("both limits: the tighter one holds") {
    replay_pacer p(100, 10000);  // 100/s, but 1,000-byte messages: 10/s by bytes
    const int n = sent_over(p, 10s, 1000);
    CHECK(n >= 100);
    CHECK(n <= 102);
}
