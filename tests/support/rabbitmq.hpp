// A RabbitMQ cluster for a test: tests/tools/rabbitmq_cluster.py driven from C++ (what the tool
// does, and why each port and file is its own, is in its docstring and tests/tools/README.md).
//
// The constructor starts N nodes on free loopback ports in a temp dir of its own and returns
// once they run as one cluster and every MQTT listener takes connections (throws
// std::runtime_error with the tool's output otherwise). The destructor stops every node and the
// cluster's epmd by pid (SIGTERM, SIGKILL after 15 s) and removes the directory. Needs root
// (the nodes run as the `rabbitmq` user) and Debian's rabbitmq-server (scripts/install-deps).
// Not thread-safe: one thread drives it. The nodes are not the test runner's children: should
// it die without running destructors (a crash, ctest's timeout), the tool's watch process stops
// them within a second (`start --owner`).
//
// RabbitMQ 3.10's MQTT plugin speaks 3.1.1 only (a consumer: mqtt_recorder(uri, filters, 4)),
// has no shared subscriptions, and takes connections only while a majority of the nodes run
// (its client-id tracking is a Raft cluster): 2 of 3.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tests/support/harness.hpp"

namespace ferry::test {

class rabbitmq_cluster {
  public:
    explicit rabbitmq_cluster(int nodes);
    ~rabbitmq_cluster();
    rabbitmq_cluster(const rabbitmq_cluster&) = delete;
    rabbitmq_cluster& operator=(const rabbitmq_cluster&) = delete;

    int size() const { return static_cast<int>(nodes_.size()); }
    std::string uri(int i) const;  // tcp://127.0.0.1:<node i's MQTT port>
    std::uint16_t mqtt_port(int i) const { return node(i).mqtt_port; }
    std::uint16_t amqp_port(int i) const { return node(i).amqp_port; }
    const std::string& name(int i) const { return node(i).name; }  // ferry<random>-<i>@localhost
    pid_t pid(int i) const { return node(i).pid; }                 // its beam.smp
    // The node an MQTT URI of this cluster points at (as Ferry logs it on "connected"), or -1.
    int node_of(const std::string& uri) const;
    // How long `start` took, as the tool measured it (seconds).
    double start_seconds() const { return start_seconds_; }
    const std::string& dir() const { return dir_.path(); }
    std::string log_file(int i) const;  // node i's RabbitMQ log

    // SIGKILL node i's beam.smp (a hard node failure); returns once it is gone.
    void kill(int i);
    bool running(int i) const;
    // `rabbitmqctl ARGS` against node i: its exit code and output (stdout and stderr).
    cli_result ctl(int i, const std::vector<std::string>& args) const;
    // Every node and the epmd, by pid. Idempotent; the destructor calls it.
    void stop();

  private:
    struct node_info {
        std::string name;
        std::uint16_t mqtt_port = 0, amqp_port = 0;
        pid_t pid = -1;
    };
    const node_info& node(int i) const;
    cli_result tool(const std::vector<std::string>& args, std::chrono::milliseconds timeout) const;

    temp_dir dir_;
    std::vector<node_info> nodes_;
    double start_seconds_ = 0;
    bool stopped_ = false;
};

}  // namespace ferry::test
