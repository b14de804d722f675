#include "drivers/modbus/config.hpp"

#include <array>
#include <string>
#include <utility>

#include "core/config_reader.hpp"

namespace ferry::drivers::modbus {
namespace {

using config::option;

constexpr std::string_view k_table_names[] = {"holding", "input", "coil", "discrete"};
constexpr std::string_view k_byte_order_names[] = {"ABCD", "DCBA", "BADC", "CDAB"};

// Keys both take (unit_id's range differs: read_device checks it).
constexpr option k_common_device[] = {
    {"unit_id", "integer, range or list", "1",
     "The Modbus unit (slave) id: 0..255 for modbus_tcp, 1..247 for modbus_rtu; on one serial "
     "port each unit id belongs to one device. A range (\"1-30\") or a list ([1, 2, 5]) makes "
     "one device per unit id; the `id` must then contain `{unit_id}` (docs/PROFILES.md)."},
    {"poll_interval", "duration 1ms..720h", "1s",
     "Fixed rate, no drift: a poll that overruns skips the missed slots and counts them "
     "(`ferry_driver_overruns_total`)."},
    {"timeout", "duration 1ms..720h", "500ms",
     "Answer timeout of one request (RTU: also the longest silence between two bytes of an "
     "answer)."},
    {"retries", "integer 0..100", "2",
     "Extra attempts of a failed request while the device answers; a device whose last poll "
     "went unanswered gets one attempt per request."},
    {"max_gap", "integer 0..124", "16",
     "Unused registers (or bits) a request may bridge to join two points; 0 reads only adjacent "
     "points together."},
    {"down_after", "integer 1..100", "3",
     "Polls in a row without any answer (timeouts, refused or broken connections) after which "
     "the device is down: `ferry_device_up` 0 and tried once per `retry_every` instead of every "
     "poll, so that the units that answer keep their schedule."},
    {"retry_every", "duration 1s..24h", "30s",
     "How often a down device is tried: one attempt, ±20 % jitter, off the poll grid. The first "
     "answer brings it up and back onto its poll schedule at once."},
    {"max_registers", "integer 1..125", "125",
     "Registers per read request (FC 3/4), for devices that refuse long reads; each point must "
     "fit in one request."},
    {"max_coils", "integer 1..2000", "2000",
     "Bits per read request (FC 1/2: coils and discrete inputs), for devices that refuse long "
     "reads."},
    {"request_delay", "duration 0s..10s", "0s",
     "Pause before each request to the device (reads and writes; a serial line stays quiet "
     "meanwhile), for devices that need a gap between requests."},
};

template <std::size_t A, std::size_t B>
constexpr std::array<option, A + B> concat(const option (&a)[A], const option (&b)[B]) {
    std::array<option, A + B> out{};
    for (std::size_t i = 0; i < A; ++i)
        out[i] = a[i];
    for (std::size_t i = 0; i < B; ++i)
        out[A + i] = b[i];
    return out;
}

constexpr option k_tcp_only[] = {
    {"host", "string", "required", "IP address or host name of the Modbus TCP server."},
    {"port", "integer 1..65535", "502", "TCP port."},
    {"connect_delay", "duration 0s..10s", "0s",
     "Wait after a connection opens before its first request, for devices (and gateways) that "
     "drop a request sent at once."},
    {"close_after_poll", "bool", "false",
     "Close the connection after each poll and each write, for devices that serve one client "
     "at a time; the next poll connects again."},
};
constexpr option k_rtu_only[] = {
    {"serial", "map", "required",
     "The serial line (see `devices[].serial`). Every modbus_rtu device naming the same port "
     "shares it: one bus, one scheduler."},
};
constexpr auto k_tcp_device = concat(k_tcp_only, k_common_device);
constexpr auto k_rtu_device = concat(k_common_device, k_rtu_only);

constexpr option k_point[] = {
    {"table", "", "holding", "Modbus table.", config::k_all_drivers, k_table_names},
    {"address", "integer 0..65535", "required", "0-based protocol address."},
    {"type", "", "uint16 (bool for coil and discrete)",
     "Value type. coil and discrete points are `bool`; `bool` from a register is `register != 0`.",
     config::k_all_drivers, config::k_type_names},
    {"byte_order", "", "ABCD",
     "ABCD = most significant register first, big-endian within each register; CDAB = least "
     "significant register first; BADC = bytes of each register swapped; DCBA = fully "
     "little-endian. 16-bit types: BADC and DCBA swap the two bytes. Strings: BADC/DCBA swap the "
     "bytes of each register.",
     config::k_all_drivers, k_byte_order_names},
    {"length", "integer 1..125", "required for string",
     "Registers of a string, required for type `string`: two characters per register, high byte "
     "first, NULs and trailing spaces trimmed. The bytes are taken as UTF-8; ill-formed parts "
     "become U+FFFD, counted in `ferry_invalid_utf8_total{device}`."},
    {"scale", "number != 0", "1",
     "value = raw × scale + offset (the value is then a float; a scale of 1/k such as 0.1 divides "
     "by k, so raw -3 with scale 0.1 is exactly -0.3). A float32 travels as the shortest decimal "
     "that reads back as the same float."},
    {"offset", "number", "0", "value = raw * scale + offset."},
    {"unit", "string", "\"\"", "Carried in every event, e.g. degC."},
    {"poll_interval", "duration 1ms..720h", "the device's",
     "The point's own poll rate, for a device with fast and slow points: the device's points "
     "of one poll interval form a poll group, read in as few requests as the group allows and "
     "polled on its own fixed-rate schedule (README \"Poll groups\")."},
    {"writable", "bool", "false",
     "May downlink commands write it? Only holding and coil points can be writable."},
    {"min", "number", "none",
     "Lowest value a command may write, in engineering units (before the inverse of "
     "scale/offset)."},
    {"max", "number", "none", "Highest value a command may write, in engineering units."},
};

// A duration key within lo..hi (the loader checks the form, this the range).
void set_dur_within(config::loader& ld, const config::map_reader& m, std::string_view key,
                    config::duration& out, config::duration lo, config::duration hi,
                    std::string_view range) {
    const auto v = m.get(key);
    if (!v) return;
    config::duration x = out;
    ld.set_dur(m, key, x, false);
    if (x < lo || x > hi)
        ld.fail(*v, "duration '" + std::string(v->node.Scalar()) + "' is out of range (" +
                        std::string(range) + ")");
    else
        out = x;
}

void read_common(config::loader& ld, const config::map_reader& m, config::device& d,
                 device_settings& s) {
    using std::chrono::hours;
    using std::chrono::seconds;
    ld.set_dur(m, "poll_interval", d.poll_interval, true);
    ld.set_dur(m, "timeout", s.timeout, true);
    ld.set(m, "retries", s.retries, 0, 100);
    ld.set(m, "max_gap", s.max_gap, 0, 124);
    ld.set(m, "down_after", s.down_after, 1, 100);
    set_dur_within(ld, m, "retry_every", s.retry_every, seconds(1), hours(24), "1s..24h");
    ld.set(m, "max_registers", s.max_registers, 1, 125);
    ld.set(m, "max_coils", s.max_coils, 1, 2000);
    set_dur_within(ld, m, "request_delay", s.request_delay, seconds(0), seconds(10), "0s..10s");
}

void read_tcp(config::loader& ld, const config::map_reader& m, config::device& d) {
    device_settings s;
    if (m.require("host"))
        if (auto h = ld.nonempty_str(*m.get("host"))) s.host = *h;
    ld.set(m, "port", s.port, 1, 65535);
    ld.set(m, "unit_id", s.unit_id, 0, 255);
    read_common(ld, m, d, s);
    set_dur_within(ld, m, "connect_delay", s.connect_delay, std::chrono::seconds(0),
                   std::chrono::seconds(10), "0s..10s");
    ld.set_bool(m, "close_after_poll", s.close_after_poll);
    d.settings = config::driver_settings::make(std::move(s));
}

void read_rtu(config::loader& ld, const config::map_reader& m, config::device& d) {
    device_settings s;
    ld.set(m, "unit_id", s.unit_id, 1, 247);
    read_common(ld, m, d, s);
    if (m.require("serial")) s.serial = config::read_serial(ld, *m.get("serial"));
    d.settings = config::driver_settings::make(std::move(s));
}

void read_point(config::loader& ld, const config::map_reader& m, config::point& p) {
    using config::point_type;
    point_settings s;
    ld.set_enum(m, "table", s.tbl, k_table_names);
    const bool bits = is_bit_table(s.tbl);
    if (bits) p.type = point_type::boolean;
    bool type_ok = true;
    if (auto r = m.get("type")) {
        if (auto x = ld.choice(*r, config::k_type_names, "type")) {
            p.type = static_cast<point_type>(*x);
            if (bits && p.type != point_type::boolean)
                ld.fail(*r, "table '" + std::string(k_table_names[static_cast<int>(s.tbl)]) +
                                "' holds bits: type must be bool");
        } else {
            type_ok = false;
        }
    }
    ld.set_enum(m, "byte_order", s.order, k_byte_order_names);

    if (m.get("length")) {
        if (p.type != point_type::string) {
            if (type_ok) ld.fail(m.key_ref("length"), "'length' applies only to type string");
        } else {
            ld.set(m, "length", s.length, 1, 125);
        }
    } else if (p.type == point_type::string) {
        m.require("length", "registers, for type string");
    }

    if (m.require("address")) {
        if (auto x = ld.integer(*m.get("address"), 0, 65535)) {
            s.address = static_cast<std::uint32_t>(*x);
            const std::uint32_t n = type_ok ? register_count(p.type, s) : 0;
            if (n > 0 && s.address + n > 65536)
                ld.fail(*m.get("address"), "a " + std::string(config::type_name(p.type)) + " at " +
                                               std::to_string(s.address) + " needs registers " +
                                               std::to_string(s.address) + ".." +
                                               std::to_string(s.address + n - 1) +
                                               ", past the last one (65535)");
        }
    }

    config::duration own{0};
    ld.set_dur(m, "poll_interval", own, true);
    s.poll_interval_ms = static_cast<std::uint32_t>(own.count());

    ld.set_bool(m, "writable", p.writable);
    if (p.writable && (s.tbl == table::input || s.tbl == table::discrete))
        ld.fail(*m.get("writable"), "table '" +
                                        std::string(k_table_names[static_cast<int>(s.tbl)]) +
                                        "' is read-only in Modbus");
    if (auto r = m.get("min"))
        if (auto x = ld.number(*r)) p.min = *x;
    if (auto r = m.get("max"))
        if (auto x = ld.number(*r)) p.max = *x;
    if (p.min && p.max && *p.min > *p.max) ld.fail(*m.get("max"), "max is less than min");
    p.settings = config::driver_settings::make(s);
}

// Every point must fit in one request of max_registers (a point is never cut in two).
void finish_device(config::loader& ld, const config::map_reader& m, config::device& d) {
    const auto& s = of(d);
    // Only a max_registers below the protocol's 125 can be too small for a point.
    const auto v = m.get("max_registers");
    if (!v) return;
    for (const auto& p : d.points) {
        if (is_bit_table(of(p).tbl)) continue;
        const auto n = register_count(p);
        if (n > s.max_registers)
            ld.fail(*v, "point '" + p.name + "' takes " + std::to_string(n) +
                            " registers, and a point is read in one request: at least " +
                            std::to_string(n) + " needed");
    }
}

}  // namespace

const config::driver_schema& tcp_schema() {
    static const config::driver_schema s{
        "modbus_tcp", k_tcp_device, k_point,       {},
        read_tcp,     read_point,   finish_device, {"unit_id", 0, 255}};
    return s;
}

const config::driver_schema& rtu_schema() {
    static const config::driver_schema s{
        "modbus_rtu",
        k_rtu_device,
        k_point,
        {{"devices[].serial", "modbus_rtu and serial_line.", config::k_serial_options}},
        read_rtu,
        read_point,
        finish_device,
        {"unit_id", 1, 247}};
    return s;
}

std::uint32_t register_count(config::point_type type, const point_settings& s) {
    using config::point_type;
    if (is_bit_table(s.tbl)) return 1;
    switch (type) {
        case point_type::boolean:
        case point_type::int16:
        case point_type::uint16:
            return 1;
        case point_type::int32:
        case point_type::uint32:
        case point_type::float32:
            return 2;
        case point_type::int64:
        case point_type::uint64:
        case point_type::float64:
            return 4;
        case point_type::string:
            return s.length;
    }
    return 1;
}

config::point make_point(std::string name, table tbl, std::uint32_t address,
                         config::point_type type, byte_order order, std::uint32_t length,
                         config::duration poll_interval) {
    config::point p;
    p.name = std::move(name);
    p.type = type;
    p.settings = config::driver_settings::make(point_settings{
        tbl, order, address, length, static_cast<std::uint32_t>(poll_interval.count())});
    return p;
}

namespace {
config::device device_of(std::string id, std::string_view driver, std::vector<config::point> points,
                         device_settings s) {
    config::device d;
    d.id = std::move(id);
    d.driver = std::string(driver);
    d.points = std::move(points);
    d.settings = config::driver_settings::make(std::move(s));
    return d;
}
}  // namespace

config::device make_tcp_device(std::string id, std::string host, std::uint16_t port,
                               std::vector<config::point> points) {
    device_settings s;
    s.host = std::move(host);
    s.port = port;
    return device_of(std::move(id), "modbus_tcp", std::move(points), std::move(s));
}

config::device make_rtu_device(std::string id, config::serial_settings serial, int unit_id,
                               std::vector<config::point> points) {
    device_settings s;
    s.unit_id = unit_id;
    s.serial = std::move(serial);
    return device_of(std::move(id), "modbus_rtu", std::move(points), std::move(s));
}

}  // namespace ferry::drivers::modbus
