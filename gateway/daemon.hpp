// The daemon: builds every component from a validated config, runs them, and stops them
// in the order that keeps data: drivers stop polling, the rule engine flushes its open
// batches into the spool, the publisher gets a short drain window, the spool closes.
//
// Threads: the driver pool, one rule-engine thread, the publisher's sender thread (plus
// Paho's own), and the caller's thread, which waits for signals in run().
#pragma once

#include <memory>
#include <string>

#include "core/config.hpp"

namespace ferry {

struct build_info {
    static const char* version();
    static const char* arch();
    static const char* build_type();
};

class daemon {
  public:
    explicit daemon(config::config cfg);
    ~daemon();

    // Starts everything, then blocks until SIGTERM or SIGINT; returns the exit code.
    // The signals must be blocked in every thread before the daemon is built (main does it).
    int run();

  private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry
