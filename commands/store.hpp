// The idempotency store behind "at most once per id" (commands.hpp has the whole contract).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace ferry::commands {

// commands.db (SQLite, WAL, synchronous=FULL): one row per command id that reached the
// write stage. Not thread-safe (the service locks around it). Throws std::runtime_error
// when the file cannot be opened or is not ours.
class store {
  public:
    struct options {
        std::size_t max_ids = 10000;
        std::chrono::milliseconds ttl = std::chrono::hours(24);
    };
    struct entry {
        bool in_progress = false;
        bool ok = false;
        std::string error;
    };
    static constexpr std::string_view k_unknown_outcome =
        "outcome unknown: ferry stopped during the write";

    // Opens (or creates) the file; ids left "in progress" by an earlier run become
    // failed with k_unknown_outcome.
    store(const std::string& path, options opt);
    ~store();
    store(const store&) = delete;
    store& operator=(const store&) = delete;

    // `now_ms` is a reading of the store's clock, now(): Ferry's accumulated running time,
    // which wall-clock steps do not move (tests pass their own readings).
    std::optional<entry> find(const std::string& id, std::int64_t now_ms);
    // Records `id` in progress, durably (fsynced) before returning; evicts by TTL and count,
    // and persists the running time.
    void begin(const std::string& id, const std::string& device, const std::string& point,
               std::int64_t now_ms);
    // Ferry's running time in ms: what earlier runs persisted plus the monotonic time since
    // this store was opened.
    std::int64_t now() const;
    void finish(const std::string& id, bool ok, const std::string& error);
    void forget(const std::string& id);  // nothing was sent: the id may come again
    std::size_t size();

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry::commands
