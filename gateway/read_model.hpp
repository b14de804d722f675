// The read model (the query side): the last value, quality, ts and seq of every point and
// the state of every device, materialised from the bus and served by /api/v1/values and
// /api/v1/devices.
//
// Device state is the driver's, as it reports it (report(): the same reports that set
// `ferry_device_up` and the retained status topics), so the API, the metrics and the status
// messages agree: a Modbus device is `down` only after `down_after` silent polls, not at its
// first bad value. Before a device's first report the state is derived from its events: `up`
// while the newest sampling round (events sharing its newest ts) holds at least one good value,
// `down` when it holds only bad ones or before its first event. `errors` counts its
// bad-quality events; `last_ok_ts` is the newest ts of a good event.
//
// The JSON snapshots are built at most once per change of the model (every apply() and
// reconfigure() is one) and shared: the requests between two changes (GET and HEAD, any
// number of clients) get the same string, and only the newest one is kept here. Size: one
// entry per sampled point, ~90 bytes plus its names, unit and string value (strings are
// bounded where they enter: serial_line's max_frame, a Modbus string's registers).
//
// Thread-safe: apply() from one consumer thread, reconfigure() and the JSON snapshots from
// any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/event.hpp"

namespace ferry {

struct device_ref {
    std::string id;
    std::string driver;
};

class read_model {
  public:
    read_model(const point_table& points, std::vector<device_ref> devices);

    // A config reload: the devices and the ids of the points configured now. Kept devices
    // keep their state; points no longer configured are no longer served. Call after new
    // points are interned and before their events arrive.
    void reconfigure(std::vector<device_ref> devices, std::span<const point_id> live);

    void apply(std::span<const event> events);
    // A driver's report of a device's state (drivers::status_hook). Ignored for a device not
    // configured (removed by a reload while polled).
    void report(const std::string& device, bool up);

    using json_ptr = std::shared_ptr<const std::string>;
    // [{"device","tag","value","quality","ts","seq"}], one per point that has been sampled.
    json_ptr values_json() const;
    // [{"id","driver","state","last_ok_ts","errors"}], one per configured device.
    json_ptr devices_json() const;

  private:
    struct device_state {
        device_ref ref;
        std::int64_t newest_ts = -1;
        bool newest_good = false;
        std::int64_t last_ok_ts = -1;
        std::uint64_t errors = 0;
        std::optional<bool> reported_up{};  // the driver's last report, once there is one
        bool up() const { return reported_up.value_or(newest_good); }
    };

    // A snapshot and the version of the model it shows.
    struct snapshot {
        std::uint64_t version = 0;
        json_ptr json;
    };
    std::string build_values() const;   // with mu_ held
    std::string build_devices() const;  // with mu_ held

    const point_table& points_;
    mutable std::mutex mu_;
    std::uint64_t version_ = 1;  // bumped by every change
    mutable snapshot values_snap_, devices_snap_;
    std::vector<event> last_;             // per point id; seq 0 = never sampled
    std::vector<std::size_t> device_of_;  // point id → index in devices_
    std::vector<device_state> devices_;
};

}  // namespace ferry
