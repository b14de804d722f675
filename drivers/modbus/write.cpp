#include "drivers/modbus/write.hpp"

#include "drivers/modbus/codec.hpp"

namespace ferry::drivers::modbus {

std::uint8_t encode_write(const config::point& p, const ferry::value& v,
                          std::vector<std::uint16_t>& values, std::string& why) {
    const auto tbl = of(p).tbl;
    if (tbl != table::holding && tbl != table::coil) {
        why = "input registers and discrete inputs are read-only";
        return 0;
    }
    const bool* flag = std::get_if<bool>(&v);
    if (tbl == table::coil || p.type == config::point_type::boolean) {
        if (!flag) {
            why = "value must be true or false";
            return 0;
        }
        values.assign(1, *flag ? 1 : 0);
        return tbl == table::coil ? k_write_coil : k_write_register;
    }
    if (p.type == config::point_type::string) {
        const auto* text = std::get_if<std::string>(&v);
        if (!text) {
            why = "value must be a string";
            return 0;
        }
        return encode_string(p, *text, values, &why) ? k_write_registers : 0;
    }
    const auto number = flag ? std::nullopt : as_double(v);
    if (!number) {
        why = "value must be a number";
        return 0;
    }
    if (!encode_registers(p, *number, values, &why)) return 0;
    return values.size() == 1 ? k_write_register : k_write_registers;
}

std::string describe_write_error(const read_result& r, const config::device& d, const link& lnk) {
    switch (r.err) {
        case fault::exception:
            return "the device answered with Modbus exception " + std::to_string(r.exception) +
                   " (" + reason(r) + ")";
        case fault::timeout:
            return "timeout: no answer within " + std::to_string(of(d).timeout.count()) +
                   "ms; the write may or may not have happened";
        case fault::connect:
            return "connect: cannot reach " + lnk.name() + "; nothing was written";
        default:
            return reason(r) +
                   ": the answer was not a valid confirmation; the write may or may "
                   "not have happened";
    }
}

}  // namespace ferry::drivers::modbus
