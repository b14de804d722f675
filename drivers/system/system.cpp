#include "drivers/system/system.hpp"

#include "core/config_reader.hpp"

#include <sys/statvfs.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <sstream>
#include <thread>

namespace ferry::drivers::system {
namespace {

using steady = std::chrono::steady_clock;

// A small /proc or /sys file, whole (core's bounded reader: /proc reports size 0).
std::optional<std::string> slurp(const std::string& path) {
    std::string why;
    return config::read_file(path, why, 64 * 1024);
}

std::optional<double> first_number(const std::string& text) {
    std::istringstream in(text);
    double x = 0;
    if (in >> x) return x;
    return std::nullopt;
}

// "MemAvailable:    1234 kB" from /proc/meminfo.
std::optional<std::uint64_t> meminfo(const std::string& text, std::string_view key) {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.compare(0, key.size(), key) != 0 || line.size() <= key.size() ||
            line[key.size()] != ':')
            continue;
        std::istringstream fields(line.substr(key.size() + 1));
        std::uint64_t kib = 0;
        if (fields >> kib) return kib * 1024;
        return std::nullopt;
    }
    return std::nullopt;
}

// The CPU's thermal zone: the first whose type names the CPU or SoC (Raspberry Pi
// "cpu-thermal", x86 "x86_pkg_temp", many ARM boards "soc-thermal"), else zone 0.
std::optional<double> cpu_temp(const std::string& thermal) {
    std::error_code ec;
    std::vector<std::filesystem::path> zones;
    for (const auto& e : std::filesystem::directory_iterator(thermal, ec))
        if (e.path().filename().string().rfind("thermal_zone", 0) == 0) zones.push_back(e.path());
    std::sort(zones.begin(), zones.end());
    auto pick = zones.empty() ? std::filesystem::path() : zones.front();
    for (const auto& z : zones) {
        auto type = slurp((z / "type").string()).value_or("");
        if (type.find("cpu") != std::string::npos || type.find("soc") != std::string::npos ||
            type.find("pkg") != std::string::npos) {
            pick = z;
            break;
        }
    }
    if (pick.empty()) return std::nullopt;
    auto milli = slurp((pick / "temp").string());
    if (!milli) return std::nullopt;
    auto x = first_number(*milli);
    if (!x) return std::nullopt;
    return *x / 1000.0;
}

}  // namespace

std::optional<metric> metric_of(std::string_view name) {
    for (std::size_t i = 0; i < k_metric_names.size(); ++i)
        if (k_metric_names[i] == name) return static_cast<metric>(i);
    return std::nullopt;
}

ferry::value sample(metric m, const sources_paths& paths) {
    switch (m) {
        case metric::load1:
            if (auto t = slurp(paths.proc + "/loadavg"))
                if (auto x = first_number(*t)) return *x;
            return {};
        case metric::uptime:
            if (auto t = slurp(paths.proc + "/uptime"))
                if (auto x = first_number(*t)) return *x;
            return {};
        case metric::mem_available:
            if (auto t = slurp(paths.proc + "/meminfo"))
                if (auto x = meminfo(*t, "MemAvailable")) return *x;
            return {};
        case metric::disk_free: {
            auto dir = std::filesystem::path(paths.spool).parent_path();
            struct statvfs vfs {};
            if (dir.empty() || statvfs(dir.c_str(), &vfs) != 0) return {};
            return static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
        }
        case metric::cpu_temp:
            if (auto x = cpu_temp(paths.thermal)) return *x;
            return {};
        case metric::spool_bytes: {
            // What the spool holds on the card: the database and its write-ahead log.
            std::uint64_t total = 0;
            bool any = false;
            for (const auto* suffix : {"", "-wal"}) {
                std::error_code ec;
                auto n = std::filesystem::file_size(paths.spool + suffix, ec);
                if (!ec) {
                    total += n;
                    any = true;
                }
            }
            if (!any) return {};
            return total;
        }
    }
    return {};
}

namespace {

class system_source final : public source {
  public:
    system_source(std::vector<config::device> devices, const driver_context& ctx,
                  sources_paths paths)
        : ctx_(ctx), paths_(std::move(paths)), families_(ctx_.registry) {
        set(std::move(devices));
    }
    ~system_source() override { system_source::stop(); }

    void start() override {
        std::lock_guard lock(mu_);
        if (thread_.joinable()) return;
        stopping_ = false;
        thread_ = std::thread([this] { run(); });
    }

    void stop() override {
        {
            std::lock_guard lock(mu_);
            stopping_ = true;
        }
        cv_.notify_all();
        if (thread_.joinable()) thread_.join();
    }

    void update(std::vector<config::device> devices) override {
        {
            std::lock_guard lock(mu_);
            set(std::move(devices));
        }
        cv_.notify_all();
    }

    std::vector<source_status> status() const override {
        std::lock_guard lock(mu_);
        std::vector<source_status> out;
        for (const auto& d : devices_)
            out.push_back({d.cfg.id, d.up, d.ok, d.failed});
        return out;
    }

  private:
    struct device_rt {
        config::device cfg;
        std::vector<std::pair<metric, point_id>> points;
        steady::time_point due;
        bool up = false;
        bool reported = false;  // its first outcome went to ctx_.on_status
        std::uint64_t ok = 0, failed = 0;
        prometheus::Gauge* up_gauge = nullptr;
        prometheus::Counter* received = nullptr;
        prometheus::Counter* sent = nullptr;
        prometheus::Counter* unavailable = nullptr;
    };

    // Under mu_. Unchanged devices keep their schedule and counts.
    void set(std::vector<config::device> devices) {
        std::vector<device_rt> next;
        for (auto& d : devices) {
            auto old = std::find_if(devices_.begin(), devices_.end(),
                                    [&](const device_rt& o) { return o.cfg.id == d.id; });
            if (old != devices_.end() && config::same_settings(old->cfg, d)) {
                next.push_back(std::move(*old));
                devices_.erase(old);
                continue;
            }
            device_rt rt;
            rt.due = steady::now();
            for (const auto& p : d.points) {
                auto m = metric_of(p.name);
                auto id = ctx_.points.find(d.id + "/" + p.name);
                if (m && id) rt.points.emplace_back(*m, *id);
            }
            if (old != devices_.end()) {
                rt.up_gauge = old->up_gauge;
                rt.received = old->received;
                rt.sent = old->sent;
                rt.unavailable = old->unavailable;
                devices_.erase(old);
            } else {
                rt.up_gauge = &families_.up.Add({{"device", d.id}});
                rt.received = &families_.received.Add({{"device", d.id}});
                rt.sent = &families_.sent.Add({{"device", d.id}});
                rt.unavailable =
                    &families_.errors.Add({{"device", d.id}, {"reason", "unavailable"}});
            }
            rt.cfg = std::move(d);
            next.push_back(std::move(rt));
        }
        for (auto& gone : devices_) {  // removed: their series go with them
            families_.up.Remove(gone.up_gauge);
            families_.received.Remove(gone.received);
            families_.sent.Remove(gone.sent);
            families_.errors.Remove(gone.unavailable);
        }
        devices_ = std::move(next);
    }

    void run() {
        std::vector<event> out;
        std::unique_lock lock(mu_);
        while (!stopping_) {
            auto next = steady::time_point::max();
            for (auto& d : devices_) {
                if (steady::now() >= d.due) {
                    const bool was_up = d.up, first = !d.reported;
                    poll(d, out);
                    d.reported = true;
                    const bool report = ctx_.on_status && (first || was_up != d.up);
                    const auto id = report ? d.cfg.id : std::string();
                    const bool up = d.up;
                    // Fixed rate; after a long stall the next poll is one interval away.
                    d.due = std::max(d.due + d.cfg.poll_interval, steady::now());
                    // Publishing may wait for room on the bus (a full `block` spool): not
                    // under the lock, so stop() and update() stay prompt.
                    lock.unlock();
                    if (report) ctx_.on_status(id, up, up ? "" : "unavailable");
                    publish(out);
                    lock.lock();
                    if (stopping_) return;
                    next = steady::now();  // devices_ may have changed: look again
                    break;
                }
                next = std::min(next, d.due);
            }
            if (next == steady::time_point::max() || next > steady::now())
                cv_.wait_until(lock, next == steady::time_point::max()
                                         ? steady::now() + std::chrono::hours(1)
                                         : next);
        }
    }

    // Under mu_: samples every point of `d` into `out`.
    void poll(device_rt& d, std::vector<event>& out) {
        out.clear();
        const auto now = wall_clock::now();
        std::size_t good = 0;
        for (const auto& [m, id] : d.points) {
            event e;
            e.point = id;
            e.ts = now;
            e.value = sample(m, paths_);
            if (std::holds_alternative<std::monostate>(e.value)) {
                e.quality = quality::bad;
                d.unavailable->Increment();
            } else {
                ++good;
            }
            out.push_back(std::move(e));
        }
        d.up = good > 0;
        (d.up ? d.ok : d.failed) += 1;
        d.up_gauge->Set(d.up ? 1 : 0);
        d.received->Increment(static_cast<double>(good));
        // Counted here, under the lock (a reload may remove the series while publish waits).
        d.sent->Increment(static_cast<double>(out.size()));
    }

    void publish(std::vector<event>& out) {
        if (out.empty()) return;
        const auto first = ctx_.seq.next_n(out.size());
        for (std::size_t i = 0; i < out.size(); ++i)
            out[i].seq = first + i;
        ctx_.bus.publish(out);
    }

    driver_context ctx_;
    sources_paths paths_;
    driver_families families_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool stopping_ = false;
    std::vector<device_rt> devices_;
    std::thread thread_;
};

}  // namespace

std::unique_ptr<source> make_source(std::vector<config::device> devices, const driver_context& ctx,
                                    sources_paths paths) {
    if (paths.spool.empty()) paths.spool = ctx.spool_path;
    return std::make_unique<system_source>(std::move(devices), ctx, std::move(paths));
}

}  // namespace ferry::drivers::system
