#include "drivers/modbus/config.hpp"

#include <string>

namespace ferry::drivers::modbus {
namespace {

using config::option;

constexpr std::string_view k_table_names[] = {"holding", "input", "coil", "discrete"};
constexpr std::string_view k_byte_order_names[] = {"ABCD", "DCBA", "BADC", "CDAB"};

// Keys both take (unit_id's range differs: read_device checks it).
#define FERRY_MODBUS_COMMON_DEVICE_KEYS                                                       \
    {"unit_id", "integer", "1",                                                               \
     "Modbus unit (slave) id: 0..255 for modbus_tcp, 1..247 for modbus_rtu."},                \
        {"poll_interval", "duration 1ms..720h", "1s", "How often all points are read."},      \
        {"timeout", "duration 1ms..720h", "500ms", "Answer timeout of one request."},         \
        {"retries", "integer 0..100", "2", "Retries of a failed request within one poll."}, { \
        "max_gap", "integer 0..124", "16",                                                    \
            "Unused registers a read may bridge to join two points into one request."         \
    }

constexpr option k_tcp_device[] = {
    {"host", "string", "required", "Host name or IP address of the Modbus TCP server."},
    {"port", "integer 1..65535", "502", "TCP port."},
    FERRY_MODBUS_COMMON_DEVICE_KEYS,
};
constexpr option k_rtu_device[] = {
    FERRY_MODBUS_COMMON_DEVICE_KEYS,
    {"serial", "map", "required", "The serial line (see `devices[].serial`)."},
};
#undef FERRY_MODBUS_COMMON_DEVICE_KEYS

constexpr option k_point[] = {
    {"table", "", "holding", "Modbus table.", config::k_all_drivers, k_table_names},
    {"address", "integer 0..65535", "required", "0-based protocol address."},
    {"type", "", "uint16 (bool for coil and discrete)",
     "Value type. coil and discrete need bool; bool from a register is `register != 0`.",
     config::k_all_drivers, config::k_type_names},
    {"byte_order", "", "ABCD",
     "Register and byte order of multi-register types (ABCD = big endian).", config::k_all_drivers,
     k_byte_order_names},
    {"length", "integer 1..125", "required for string",
     "Registers of a string (two characters each); only for type string."},
    {"scale", "number != 0", "1", "value = raw * scale + offset."},
    {"offset", "number", "0", "value = raw * scale + offset."},
    {"unit", "string", "\"\"", "Unit sent with each value, e.g. degC."},
    {"writable", "bool", "false",
     "May downlink commands write it? Only holding and coil are writable."},
    {"min", "number", "none", "Lowest value a command may write."},
    {"max", "number", "none", "Highest value a command may write."},
};

void read_common(config::loader& ld, const config::map_reader& m, config::device& d) {
    ld.set_dur(m, "poll_interval", d.poll_interval, true);
    ld.set_dur(m, "timeout", d.timeout, true);
    ld.set(m, "retries", d.retries, 0, 100);
    ld.set(m, "max_gap", d.max_gap, 0, 124);
}

void read_tcp(config::loader& ld, const config::map_reader& m, config::device& d) {
    if (m.require("host"))
        if (auto s = ld.nonempty_str(*m.get("host"))) d.host = *s;
    ld.set(m, "port", d.port, 1, 65535);
    ld.set(m, "unit_id", d.unit_id, 0, 255);
    read_common(ld, m, d);
}

void read_rtu(config::loader& ld, const config::map_reader& m, config::device& d) {
    ld.set(m, "unit_id", d.unit_id, 1, 247);
    read_common(ld, m, d);
    if (m.require("serial")) d.serial = config::read_serial(ld, *m.get("serial"));
}

void read_point(config::loader& ld, const config::map_reader& m, config::point& p) {
    using config::point_type;
    using config::table;
    ld.set_enum(m, "table", p.tbl, k_table_names);
    const bool bits = p.tbl == table::coil || p.tbl == table::discrete;
    if (bits) p.type = point_type::boolean;
    bool type_ok = true;
    if (auto r = m.get("type")) {
        if (auto x = ld.choice(*r, config::k_type_names, "type")) {
            p.type = static_cast<point_type>(*x);
            if (bits && p.type != point_type::boolean)
                ld.fail(*r, "table '" + std::string(k_table_names[static_cast<int>(p.tbl)]) +
                                "' holds bits: type must be bool");
        } else {
            type_ok = false;
        }
    }
    ld.set_enum(m, "byte_order", p.order, k_byte_order_names);

    if (m.get("length")) {
        if (p.type != point_type::string) {
            if (type_ok) ld.fail(m.key_ref("length"), "'length' applies only to type string");
        } else {
            ld.set(m, "length", p.length, 1, 125);
        }
    } else if (p.type == point_type::string) {
        m.require("length", "registers, for type string");
    }

    if (m.require("address")) {
        if (auto x = ld.integer(*m.get("address"), 0, 65535)) {
            p.address = static_cast<std::uint32_t>(*x);
            const std::uint32_t n = type_ok ? config::register_count(p) : 0;
            if (n > 0 && p.address + n > 65536)
                ld.fail(*m.get("address"), "a " + std::string(config::type_name(p.type)) + " at " +
                                               std::to_string(p.address) + " needs registers " +
                                               std::to_string(p.address) + ".." +
                                               std::to_string(p.address + n - 1) +
                                               ", past the last one (65535)");
        }
    }

    ld.set_bool(m, "writable", p.writable);
    if (p.writable && (p.tbl == table::input || p.tbl == table::discrete))
        ld.fail(*m.get("writable"), "table '" +
                                        std::string(k_table_names[static_cast<int>(p.tbl)]) +
                                        "' is read-only in Modbus");
    if (auto r = m.get("min"))
        if (auto x = ld.number(*r)) p.min = *x;
    if (auto r = m.get("max"))
        if (auto x = ld.number(*r)) p.max = *x;
    if (p.min && p.max && *p.min > *p.max) ld.fail(*m.get("max"), "max is less than min");
}

}  // namespace

const config::driver_schema& tcp_schema() {
    static const config::driver_schema s{"modbus_tcp", k_tcp_device, k_point, {},
                                         read_tcp,     read_point,   nullptr};
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
        nullptr};
    return s;
}

}  // namespace ferry::drivers::modbus
