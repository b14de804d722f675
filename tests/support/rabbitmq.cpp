#include "tests/support/rabbitmq.hpp"

#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "tests/support/paths.hpp"

namespace ferry::test {

namespace {

constexpr auto k_start_timeout = std::chrono::milliseconds(240000);  // the tool's own: 90 s/node

std::string tool_path() {
    return std::string(FERRY_SOURCE_DIR) + "/tests/tools/rabbitmq_cluster.py";
}

}  // namespace

cli_result rabbitmq_cluster::tool(const std::vector<std::string>& args,
                                  std::chrono::milliseconds timeout) const {
    temp_dir out;
    std::vector<std::string> argv{"/usr/bin/python3", tool_path()};
    argv.insert(argv.end(), args.begin(), args.end());
    process p(argv, out.file("out"));
    const auto code = p.wait(timeout);
    if (!code) p.stop(SIGTERM, 5000ms);
    return {code.value_or(-1), read_file_if_exists(out.file("out"))};
}

rabbitmq_cluster::rabbitmq_cluster(int nodes) {
    // --owner: the tool stops the cluster itself should this test runner die without running
    // its destructors (a crash, ctest's timeout).
    const auto r = tool({"start", dir_.path(), "--nodes", std::to_string(nodes), "--owner",
                         std::to_string(::getpid())},
                        k_start_timeout);
    if (r.code != 0) {
        stop();  // what a start that timed out left running
        throw std::runtime_error("rabbitmq_cluster: start of " + std::to_string(nodes) +
                                 " nodes failed (exit " + std::to_string(r.code) + "):\n" + r.out);
    }
    std::ifstream in(dir_.file("cluster.json"));
    const auto j = nlohmann::json::parse(in);
    for (const auto& n : j.at("nodes")) {
        node_info info;
        info.name = n.at("name").get<std::string>();
        info.mqtt_port = n.at("mqtt_port").get<std::uint16_t>();
        info.amqp_port = n.at("amqp_port").get<std::uint16_t>();
        info.pid = n.at("pid").get<pid_t>();
        nodes_.push_back(std::move(info));
    }
    start_seconds_ = j.value("start_seconds", 0.0);
}

rabbitmq_cluster::~rabbitmq_cluster() {
    stop();
}

void rabbitmq_cluster::stop() {
    if (stopped_) return;
    stopped_ = true;
    tool({"stop", dir_.path()}, 60000ms);
}

const rabbitmq_cluster::node_info& rabbitmq_cluster::node(int i) const {
    if (i < 0 || i >= size())
        throw std::out_of_range("rabbitmq_cluster: no node " + std::to_string(i));
    return nodes_[static_cast<std::size_t>(i)];
}

std::string rabbitmq_cluster::uri(int i) const {
    return "tcp://127.0.0.1:" + std::to_string(mqtt_port(i));
}

int rabbitmq_cluster::node_of(const std::string& u) const {
    for (int i = 0; i < size(); ++i) {
        if (uri(i) == u) return i;
    }
    return -1;
}

std::string rabbitmq_cluster::log_file(int i) const {
    return dir_.path() + "/node-" + std::to_string(i) + "/log/" + name(i) + ".log";
}

void rabbitmq_cluster::kill(int i) {
    node(i);  // range check
    const auto r = tool({"kill", dir_.path(), std::to_string(i)}, 30000ms);
    if (r.code != 0)
        throw std::runtime_error("rabbitmq_cluster: kill " + std::to_string(i) + ": " + r.out);
}

bool rabbitmq_cluster::running(int i) const {
    // Not a zombie: nobody reaps a node the tool started and left behind.
    const auto state = read_file_if_exists("/proc/" + std::to_string(pid(i)) + "/stat");
    const auto paren = state.rfind(')');
    return paren != std::string::npos && paren + 2 < state.size() && state[paren + 2] != 'Z';
}

cli_result rabbitmq_cluster::ctl(int i, const std::vector<std::string>& args) const {
    std::vector<std::string> a{"ctl", dir_.path(), std::to_string(i)};
    a.insert(a.end(), args.begin(), args.end());
    node(i);
    return tool(a, 60000ms);
}

}  // namespace ferry::test
