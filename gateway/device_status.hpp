// The status of every device upstream: one retained message per device on
// ferry/{gateway}/device/{device}/status, JSON {"state":"online"|"offline","since":MS,
// "reason":"..."} (reason only when offline), built from the drivers' reports
// (drivers::status_hook) and handed to the publisher (mqtt_publisher::set_retained), which
// sends it on every change and again after every connect. Not spooled (docs/DELIVERY.md).
//
// `since` is the Unix time in ms at which this run of Ferry saw the state begin; a report of
// the state a device is already in changes nothing (a device restarted by a reload keeps its
// `since`). A device's first status goes out with its first outcome after the start, so a
// retained status from an earlier run stays until then (the first poll goes at once).
// A device removed by a reload has its topic cleared (an empty retained message): it has no
// status any more, and no dashboard should keep showing it. At a clean stop every online device
// goes "offline" with reason "stopped" (an offline one keeps its reason), before the gateway's
// own "offline"; after a crash only the gateway's last will says so: a device's status holds
// while ferry/{gateway}/status is "online".
//
// Thread-safe: report() from any driver thread, the rest from the daemon's thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace ferry {

class device_status_board {
  public:
    // Makes `payload` the retained message of `topic`; an empty one clears it.
    using publish_fn = std::function<void(const std::string& topic, std::string payload)>;

    device_status_board(std::string gateway_id, const std::vector<std::string>& devices,
                        publish_fn publish);

    // A driver's report. Publishes when the state changes (or is the device's first).
    // Reports of devices not configured (removed by a reload while polled) are ignored.
    void report(const std::string& device, bool up, const std::string& reason);
    // A reload: the devices configured now. Call before the drivers run the new ones; the
    // topics of removed devices are cleared.
    void reconfigure(const std::vector<std::string>& devices);
    // A clean stop, once the drivers stopped: every online device goes "offline" with reason
    // "stopped".
    void stopped();

    std::string topic(const std::string& device) const;
    // {"state":...,"since":...[,"reason":...]}
    static std::string payload(bool up, std::int64_t since_ms, const std::string& reason);

  private:
    struct entry {
        bool known = false;  // a report came in this run
        bool up = false;
        std::int64_t since_ms = 0;
        std::string reason;
    };
    void publish(const std::string& device, const entry& e);  // with mu_ held

    std::string gateway_;
    publish_fn publish_;
    std::mutex mu_;
    std::map<std::string, entry> devices_;  // the configured devices
};

}  // namespace ferry
