#include "gateway/read_model.hpp"

#include <algorithm>
#include <charconv>
#include <unordered_map>

#include "core/json.hpp"

namespace ferry {
namespace {

std::int64_t ms_of(wall_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

void append_int(std::string& out, std::int64_t v) {
    char buf[24];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, static_cast<std::size_t>(end - buf));
}

}  // namespace

read_model::read_model(const point_table& points, std::vector<device_ref> devices)
    : points_(points) {
    std::vector<point_id> all(points.size());
    for (point_id id = 0; id < all.size(); ++id)
        all[id] = id;
    reconfigure(std::move(devices), all);
}

void read_model::reconfigure(std::vector<device_ref> devices, std::span<const point_id> live) {
    std::lock_guard lock(mu_);
    ++version_;
    std::vector<device_state> next;
    for (auto& d : devices) {
        auto it = std::find_if(devices_.begin(), devices_.end(),
                               [&](const device_state& s) { return s.ref.id == d.id; });
        if (it != devices_.end() && it->ref.driver == d.driver)
            next.push_back(std::move(*it));
        else
            next.push_back(device_state{std::move(d)});
    }
    devices_ = std::move(next);
    std::unordered_map<std::string_view, std::size_t> index;
    for (std::size_t i = 0; i < devices_.size(); ++i)
        index.emplace(devices_[i].ref.id, i);
    const auto n = points_.size();
    last_.resize(n);
    std::vector<bool> is_live(n, false);
    for (auto id : live)
        is_live[id] = true;
    device_of_.assign(n, devices_.size());
    for (point_id id = 0; id < n; ++id) {
        auto it = index.find(points_.get(id).device);
        if (is_live[id] && it != index.end())
            device_of_[id] = it->second;
        else
            last_[id] = event{};  // no longer configured: no longer served
    }
}

void read_model::apply(std::span<const event> events) {
    std::lock_guard lock(mu_);
    ++version_;
    for (const auto& e : events) {
        if (e.point >= last_.size()) continue;
        auto di = device_of_[e.point];
        if (di >= devices_.size()) continue;  // a point a reload took out
        last_[e.point] = e;
        auto& d = devices_[di];
        auto ts = ms_of(e.ts);
        bool good = e.quality != quality::bad;
        if (ts > d.newest_ts) {
            d.newest_ts = ts;
            d.newest_good = good;
        } else if (ts == d.newest_ts) {
            d.newest_good = d.newest_good || good;
        }
        if (good)
            d.last_ok_ts = std::max(d.last_ok_ts, ts);
        else
            ++d.errors;
    }
}

void read_model::report(const std::string& device, bool up) {
    std::lock_guard lock(mu_);
    for (auto& d : devices_) {
        if (d.ref.id != device) continue;
        if (d.reported_up == up) return;
        d.reported_up = up;
        ++version_;
        return;
    }
}

read_model::json_ptr read_model::values_json() const {
    std::lock_guard lock(mu_);
    if (values_snap_.version != version_)
        values_snap_ = {version_, std::make_shared<const std::string>(build_values())};
    return values_snap_.json;
}

read_model::json_ptr read_model::devices_json() const {
    std::lock_guard lock(mu_);
    if (devices_snap_.version != version_)
        devices_snap_ = {version_, std::make_shared<const std::string>(build_devices())};
    return devices_snap_.json;
}

std::string read_model::build_values() const {
    std::string out = "[";
    bool first = true;
    for (point_id id = 0; id < last_.size(); ++id) {
        const auto& e = last_[id];
        if (e.seq == 0) continue;
        const auto& p = points_.get(id);
        if (!first) out += ',';
        first = false;
        out += "{\"device\":";
        json::append_string(out, p.device);
        out += ",\"tag\":";
        json::append_string(out, p.tag);
        out += ",\"value\":";
        if (e.quality == quality::bad)
            out += "null";
        else
            json::append_value(out, e.value);
        out += ",\"quality\":\"";
        out += to_string(e.quality);
        out += "\",\"ts\":";
        append_int(out, ms_of(e.ts));
        out += ",\"seq\":";
        append_int(out, static_cast<std::int64_t>(e.seq));
        if (!p.unit.empty()) {
            out += ",\"unit\":";
            json::append_string(out, p.unit);
        }
        out += '}';
    }
    out += "]";
    return out;
}

std::string read_model::build_devices() const {
    std::string out = "[";
    bool first = true;
    for (const auto& d : devices_) {
        if (!first) out += ',';
        first = false;
        out += "{\"id\":";
        json::append_string(out, d.ref.id);
        out += ",\"driver\":";
        json::append_string(out, d.ref.driver);
        out += ",\"state\":\"";
        out += d.up() ? "up" : "down";
        out += "\",\"last_ok_ts\":";
        if (d.last_ok_ts < 0)
            out += "null";
        else
            append_int(out, d.last_ok_ts);
        out += ",\"errors\":";
        append_int(out, static_cast<std::int64_t>(d.errors));
        out += '}';
    }
    out += "]";
    return out;
}

}  // namespace ferry
