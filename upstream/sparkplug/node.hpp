// Ferry as a Sparkplug B edge node (docs/SPARKPLUG.md, Eclipse Sparkplug 3.0.0).
//
// The node knows the devices and points from config and builds every Sparkplug message:
//   NBIRTH   spBv1.0/{group}/NBIRTH/{edge}: bdSeq, "Node Control/Rebirth"; seq 0
//   DBIRTH   .../DBIRTH/{edge}/{device}: every point of the device as a metric: name (the
//            tag), alias (alias_of: stable across restarts and reloads), datatype (datatype_of:
//            from the point's type), the last value seen (or is_null), properties engUnit,
//            engLow/engHigh (min/max)
//   DDATA    .../DDATA/{edge}/{device}: the rules' batches (this class is their batch_codec):
//            metrics by alias with their own timestamps; a reading without a value is
//            is_null; quality other than good is the property "Quality" (Int32, OPC codes:
//            64 uncertain, 0 bad)
//   DDEATH   .../DDEATH/{edge}/{device} when a device goes down (device_state)
//   NDEATH   .../NDEATH/{edge}: the MQTT will, with the bdSeq of the NBIRTH that follows
// `seq` (0..255, per edge node, over every message but NDEATH) is given at send time by
// before_send(), on the publisher's sender thread, so that it follows the order on the wire
// even for DDATA that waited in the spool: the field is appended to the stored encoding (a
// protobuf scalar's last occurrence wins). DDATA spooled before the current NBIRTH (an
// outage, a restart) goes out with every metric flagged is_historical.
//
// bdSeq rises by one (mod 256) per connect attempt (will()) and is kept in the spool's state
// table, so it keeps rising across restarts.
//
// With primary_host_id (store-and-forward): nothing is born and no DDATA leaves the spool until
// the host's STATE says online; when it goes offline, the spool holds DDATA again, and when it
// is back, NBIRTH and the DBIRTHs go out first, then the held DDATA, flagged is_historical.
//
// Threading: every method may be called from any thread (one internal mutex); the codec
// methods run on the rule thread, will/births/before_send on the publisher's sender thread,
// device_state on driver threads, parse_command on Paho's callback thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/batch_codec.hpp"
#include "core/config.hpp"
#include "core/event.hpp"
#include "upstream/mqtt_publisher.hpp"

namespace prometheus {
class Registry;
}
namespace ferry::upstream {
class spool;
}

namespace ferry::upstream::sparkplug {

// A message the node sends beside the spool (births, deaths, the will), as the publisher's
// session hooks take it.
using message = mqtt_publisher::outbound;

// One write a DCMD asked for, for the command path (commands/).
struct write_request {
    std::string device;
    std::string tag;
    ferry::value value;
    std::string id;  // stable for the same DCMD: a repeat is answered, never written twice
    std::int64_t ts_ms = 0;
};

// What an NCMD or DCMD asked.
struct command {
    bool rebirth = false;
    std::vector<write_request> writes;
    std::vector<std::string> errors;  // metrics that could not be understood (logged)
};

// Sparkplug DataType of a point: its type; numbers with a scale or offset are Double (the
// drivers deliver raw * scale + offset as a float).
std::uint32_t datatype_of(const config::point& p);
// A metric alias per device/tag: FNV-1a 64 of "device/tag", top bit cleared (some hosts read
// aliases as signed). Stable across restarts and reloads, so DDATA spooled before a restart
// is still understood after the next DBIRTH.
std::uint64_t alias_of(std::string_view device, std::string_view tag);

class node final : public batch_codec {
  public:
    // Reads the last bdSeq from the spool's state table. With a registry: the component's
    // metrics, ferry_sparkplug_sent_total{type} (messages handed to the broker, by Sparkplug
    // type: NBIRTH DBIRTH DDATA DDEATH NDEATH), ferry_sparkplug_received_total{type} (NCMD DCMD
    // STATE), ferry_sparkplug_errors_total{reason} (command: a command not understood; state: a
    // STATE not understood), ferry_sparkplug_bdseq, ferry_sparkplug_primary_host_online.
    node(config::sparkplug_settings settings, spool& sp, prometheus::Registry* registry = nullptr);
    ~node() override;

    // The devices and their points (at start and after a reload; call rebirth afterwards).
    // Throws std::invalid_argument when two points of the edge node share an alias.
    void configure(const std::vector<config::device>& devices, const point_table& points);

    // spBv1.0/{group}/{type}/{edge}[/{device}]
    std::string topic(std::string_view type, std::string_view device = {}) const;
    // The NCMD and DCMD filters to subscribe to.
    std::vector<std::string> command_filters() const;

    // ---- batch_codec (DDATA) ----
    std::string topic_template() const override;
    // False for a reading of a device after its DDEATH: DDATA of a dead device would make a
    // host ask for a rebirth; the DBIRTH when it is back carries its last value.
    bool append_event(std::string& body, const event& e, point_id id,
                      const point_info& p) const override;
    std::size_t header_size() const override;
    void wrap(std::string_view body, std::uint64_t batch_no, std::string& out) const override;

    // ---- The publisher's session hooks ----
    // The will of the next connect: NDEATH with the next bdSeq (persisted first).
    message will();
    // The NDEATH of the current connection (same bdSeq as its will): sent before a clean
    // disconnect, which does not fire the will.
    message death() const;
    // NBIRTH, then a DBIRTH per device, then a DDEATH per device known to be down.
    std::vector<message> births();
    // Gives `payload` its seq (and flags DDATA spooled before the current NBIRTH
    // is_historical). Topics outside this node's namespace are left alone.
    void before_send(const std::string& topic, std::string& payload, std::int64_t created_ms);

    // ---- Primary host (store-and-forward, specification 3.0 chapter 5) ----
    // spBv1.0/STATE/{primary_host_id}; empty without primary_host_id.
    std::string state_topic() const;
    // A STATE message of the primary host: JSON {"online":bool,"timestamp":ms} (3.0), or the
    // text ONLINE / OFFLINE of older hosts. One with an older timestamp than the last taken is
    // ignored (the specification). Returns the new state when it changed.
    std::optional<bool> host_state(const std::string& payload);
    // After each connect: the births, or nothing when a primary host is configured (gate()
    // sends them once it is online).
    std::vector<message> after_connect();
    // The publisher's gate: without a primary host always open (empty). With one: nullopt
    // while it is offline (DDATA stays in the spool, births wait), the births once it is
    // online and this connection has not had them since, else empty.
    std::optional<std::vector<message>> gate();

    // ---- Devices ----
    // A driver's report: DDEATH when a device goes down, DBIRTH when it comes back; nothing
    // when the state did not change.
    std::optional<message> device_state(const std::string& device, bool up);

    // ---- Inbound ----
    command parse_command(const std::string& topic, const std::string& payload) const;

    std::uint64_t bd_seq() const;

  private:
    command parse(const std::string& topic, const std::string& payload) const;
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace ferry::upstream::sparkplug
