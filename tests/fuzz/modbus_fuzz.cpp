// Fuzz target: what the Modbus driver does with a device's answer — the response checks
// (drivers/modbus/link.hpp: parse_read_response, parse_write_response) and the decoding of
// the registers into point values (drivers/modbus/codec.hpp), up to the JSON of the events.
//
// Input: byte 0 picks the table (and so the function code), bytes 1-2 the count asked for
// (registers 1..125, bits 1..2000), the rest is the answer PDU (function code onwards) as it
// came off the wire. Invariants, each a trap when broken:
// - the checks never read past the PDU (ASan) and accept it only when it is exactly the
//   answer asked for: the function code, a byte count that matches the frame and the request;
//   bits come out as 0 or 1; an exception answer is two bytes;
// - an accepted answer decodes, for every type × byte order (and scale), at its first and
//   last registers, into a value of the point's type: strings valid UTF-8, and a value that is not
//   a reading (is_reading: NaN, infinities) is what the driver publishes as `bad`; the events' JSON
//   is valid UTF-8 and strict JSON (nlohmann), with `null` only for bad ones;
// - the write-answer check accepts only an echo of the request.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "core/json.hpp"
#include "core/utf8.hpp"
#include "drivers/modbus/codec.hpp"
#include "drivers/modbus/link.hpp"

using namespace ferry;
using namespace ferry::drivers::modbus;
using config::point_type;

namespace {

[[noreturn]] void violated(const char* what) {
    std::fprintf(stderr, "modbus_fuzz: %s\n", what);
    __builtin_trap();
}

struct decoder {
    config::point p;
    point_id id = 0;
};

std::vector<decoder>& decoders(point_table& table) {
    static std::vector<decoder> all = [&] {
        std::vector<decoder> out;
        const point_type types[] = {point_type::boolean, point_type::int16,   point_type::uint16,
                                    point_type::int32,   point_type::uint32,  point_type::int64,
                                    point_type::uint64,  point_type::float32, point_type::float64,
                                    point_type::string};
        const byte_order orders[] = {byte_order::abcd, byte_order::dcba, byte_order::badc,
                                     byte_order::cdab};
        for (auto t : types)
            for (auto o : orders)
                for (double scale : {1.0, 0.1, 1e300}) {
                    if (t == point_type::string && scale != 1.0) continue;
                    decoder d;
                    d.p = make_point("p" + std::to_string(out.size()),
                                     drivers::modbus::table::holding, 0, t, o,
                                     t == point_type::string ? 4 : 0);
                    d.p.scale = scale;
                    d.id = table.intern("dev", d.p.name, "");
                    out.push_back(d);
                }
        return out;
    }();
    return all;
}

void check_events(const std::vector<event>& events, const point_table& table) {
    static std::string out;
    json::encode_batch(out, "gw", 1, events, table);
    if (!utf8::valid(out)) violated("batch not valid UTF-8");
    const auto doc = nlohmann::json::parse(out, nullptr, false);
    if (doc.is_discarded()) violated("batch not strict JSON");
    const auto& evs = doc["events"];
    if (evs.size() != events.size()) violated("batch lost events");
    for (std::size_t i = 0; i < events.size(); ++i) {
        const bool good = events[i].quality == quality::good;
        if (good == evs[i]["value"].is_null())
            violated("null value on a good event, or a value on a bad one");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static point_table table;
    auto& all = decoders(table);
    if (size < 3) return 0;
    const auto tbl = static_cast<drivers::modbus::table>(data[0] % 4);
    const bool bits = is_bit_table(tbl);
    const std::uint32_t limit = bits ? k_max_bits : k_max_registers;
    const auto count = static_cast<std::uint16_t>(
        1 + static_cast<std::uint32_t>((data[1] << 8) | data[2]) % limit);
    const std::span<const std::uint8_t> pdu(data + 3, size - 3);

    std::array<std::uint16_t, k_max_bits> regs{};
    const auto r = parse_read_response(pdu, tbl, count, regs.data());
    if (r.err == fault::exception && pdu.size() != 2) violated("exception answer not two bytes");
    if (r.ok()) {
        const std::size_t want = bits ? (count + 7u) / 8u : 2u * count;
        if (pdu.size() != 2 + want || pdu[0] != function_code(tbl) || pdu[1] != want)
            violated("accepted an answer that is not the one asked for");
        std::vector<event> events;
        if (bits) {
            for (std::size_t i = 0; i < count; ++i)
                if (regs[i] > 1) violated("bit not 0 or 1");
            for (const auto& d : all) {
                event e;
                e.point = d.id;
                e.value = decode_bit(d.p, static_cast<std::uint8_t>(regs[0]));
                if (!is_reading(e.value)) e.quality = quality::bad;
                events.push_back(std::move(e));
            }
        } else {
            for (const auto& d : all) {
                const auto n = register_count(d.p);
                if (n > count) continue;
                // The first and the last window of the answer: every register position is
                // reached by some input, and a batch stays small enough to fuzz fast.
                for (const std::size_t at : {std::size_t{0}, std::size_t{count - n}}) {
                    event e;
                    e.point = d.id;
                    e.value =
                        decode_registers(d.p, std::span<const std::uint16_t>(regs.data() + at, n));
                    if (std::holds_alternative<std::monostate>(e.value))
                        violated("a window of the right size did not decode");
                    if (const auto* s = std::get_if<std::string>(&e.value); s && !utf8::valid(*s))
                        violated("string not valid UTF-8");
                    if (!is_reading(e.value)) e.quality = quality::bad;  // as the driver does
                    events.push_back(std::move(e));
                }
            }
        }
        check_events(events, table);
    }

    // The same bytes as the answer to a write of two registers at 0x0010.
    const std::array<std::uint16_t, 2> values{0x1234, 0x5678};
    const auto request = write_request(k_write_registers, 0x0010, values);
    const auto w = parse_write_response(pdu, request);
    if (w.ok() && (pdu.size() != 5 || !std::equal(pdu.begin(), pdu.end(), request.begin())))
        violated("accepted a write answer that does not echo the request");
    return 0;
}
