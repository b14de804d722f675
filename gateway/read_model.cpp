#include "gateway/read_model.hpp"

#include <charconv>

#include "gateway/json.hpp"

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
    : points_(points), last_(points.size()), device_of_(points.size(), devices.size()) {
    for (auto& d : devices)
        devices_.push_back(device_state{std::move(d), -1, false, -1, 0});
    for (point_id id = 0; id < points.size(); ++id) {
        const auto& dev = points.get(id).device;
        for (std::size_t i = 0; i < devices_.size(); ++i) {
            if (devices_[i].ref.id == dev) device_of_[id] = i;
        }
    }
}

void read_model::apply(std::span<const event> events) {
    std::lock_guard lock(mu_);
    for (const auto& e : events) {
        if (e.point >= last_.size()) continue;
        last_[e.point] = e;
        auto di = device_of_[e.point];
        if (di >= devices_.size()) continue;
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

std::string read_model::values_json() const {
    std::string out = "[";
    std::lock_guard lock(mu_);
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

std::string read_model::devices_json() const {
    std::string out = "[";
    std::lock_guard lock(mu_);
    bool first = true;
    for (const auto& d : devices_) {
        if (!first) out += ',';
        first = false;
        out += "{\"id\":";
        json::append_string(out, d.ref.id);
        out += ",\"driver\":";
        json::append_string(out, d.ref.driver);
        out += ",\"state\":\"";
        out += d.newest_good ? "up" : "down";
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
