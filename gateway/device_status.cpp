#include "gateway/device_status.hpp"

#include <chrono>

#include "core/json.hpp"

namespace ferry {

namespace {

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace

device_status_board::device_status_board(std::string gateway_id,
                                         const std::vector<std::string>& devices,
                                         publish_fn publish)
    : gateway_(std::move(gateway_id)), publish_(std::move(publish)) {
    for (const auto& d : devices)
        devices_[d];
}

std::string device_status_board::topic(const std::string& device) const {
    return "ferry/" + gateway_ + "/device/" + device + "/status";
}

std::string device_status_board::payload(bool up, std::int64_t since_ms,
                                         const std::string& reason) {
    std::string out = up ? R"({"state":"online","since":)" : R"({"state":"offline","since":)";
    out += std::to_string(since_ms);
    if (!up) {
        out += R"(,"reason":)";
        json::append_string(out, reason.empty() ? "unknown" : reason);
    }
    out += '}';
    return out;
}

void device_status_board::publish(const std::string& device, const entry& e) {
    publish_(topic(device), payload(e.up, e.since_ms, e.reason));
}

void device_status_board::report(const std::string& device, bool up, const std::string& reason) {
    std::lock_guard lk(mu_);
    auto it = devices_.find(device);
    if (it == devices_.end()) return;
    auto& e = it->second;
    if (e.known && e.up == up) return;
    e.known = true;
    e.up = up;
    e.since_ms = now_ms();
    e.reason = up ? std::string() : reason;
    // Under the lock: two changes of one device reach the publisher in the order they happened.
    publish(device, e);
}

void device_status_board::reconfigure(const std::vector<std::string>& devices) {
    std::lock_guard lk(mu_);
    std::map<std::string, entry> next;
    for (const auto& d : devices) {
        auto it = devices_.find(d);
        next[d] = it == devices_.end() ? entry{} : it->second;
    }
    for (const auto& [id, e] : devices_) {
        if (!next.contains(id)) publish_(topic(id), {});
    }
    devices_ = std::move(next);
}

void device_status_board::stopped() {
    std::lock_guard lk(mu_);
    const auto now = now_ms();
    for (auto& [id, e] : devices_) {
        if (!e.known || !e.up) continue;  // an offline device keeps its reason and since
        e.up = false;
        e.since_ms = now;
        e.reason = "stopped";
        publish(id, e);
    }
}

}  // namespace ferry
