// Where `seq` starts, and where its high-water mark is kept: the promise that seq never
// repeats for a gateway id, whatever happens to the data directory short of restoring an
// old backup.
//
// The start is the largest of three:
//   1. the spool's state `seq_high_water` (fsynced in `always` and `batch`);
//   2. a second copy in the identity file `{data_dir}/identity`, written atomically (temp +
//      fsync + rename + fsync of the directory) at every reservation: it survives a spool
//      moved aside or deleted, and a spool that cannot be written;
//   3. the wall clock in MICROseconds since the Unix epoch at start: it covers a lost data
//      directory (new SD card, rm -rf) and a start after the marks could not be stored.
// The clock floor holds while the gateway averages fewer than 1,000,000 readings/s since it
// first started, and while the clock does not go back before the last run's time (the unit
// orders After=time-sync.target); the stored marks cover a clock that went back. Values stay
// below 2^53 (exact in a JSON double) until the year 2255.
//
// persist() writes both copies and succeeds when at least one is durable; each failure is
// logged and counted in ferry_seq_persist_errors_total{copy="spool"|"file"}.
// Not thread-safe by itself: seq_source calls persist() under its own lock.
#pragma once

#include <cstdint>
#include <string>

namespace prometheus {
class Counter;
class Registry;
}  // namespace prometheus

namespace ferry::upstream {

class spool;

class identity {
  public:
    identity(std::string path, spool& sp, prometheus::Registry& registry);

    // The largest seq that may have been handed out before this run (see above).
    std::uint64_t seq_start();
    // Stores `high_water` in the spool state and the identity file; true when one is durable.
    bool persist(std::uint64_t high_water);

    static constexpr const char* k_seq_key = "seq_high_water";

  private:
    std::string path_;
    spool& spool_;
    prometheus::Counter* err_spool_;
    prometheus::Counter* err_file_;
};

// Microseconds / milliseconds since the Unix epoch by the system clock: the floors for seq
// and for a new topic's batch numbers.
std::uint64_t unix_us();
std::uint64_t unix_ms_now();

// Reads the identity file's high-water mark; 0 when missing or unreadable.
std::uint64_t read_identity_file(const std::string& path);
// Writes it atomically and durably; false (errno set) when it could not.
bool write_identity_file(const std::string& path, std::uint64_t high_water);

}  // namespace ferry::upstream
