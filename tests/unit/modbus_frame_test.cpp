// Answers to read requests, well-formed and malformed: every way a device can get it wrong
// turns into its own fault, never into values.
#include <doctest/doctest.h>

#include <vector>

#include "drivers/modbus/link.hpp"

using namespace ferry::drivers::modbus;
using ferry::drivers::modbus::table;
using bytes = std::vector<std::uint8_t>;

namespace {
read_result parse(const bytes& pdu, table t, std::uint16_t count, std::vector<std::uint16_t>& out) {
    out.assign(count, 0xdead);
    return parse_read_response(pdu, t, count, out.data());
}
}  // namespace

TEST_CASE("well-formed answers unpack registers and bits") {
    std::vector<std::uint16_t> out;
    CHECK(parse({0x03, 4, 0x12, 0x34, 0xab, 0xcd}, table::holding, 2, out).ok());
    CHECK(out == std::vector<std::uint16_t>{0x1234, 0xabcd});
    CHECK(parse({0x04, 2, 0x00, 0x07}, table::input, 1, out).ok());
    CHECK(out == std::vector<std::uint16_t>{7});
    // Bits are packed least significant first: 0b0000'0101, 0b1 -> 1 0 1 0 0 0 0 0 1
    CHECK(parse({0x01, 2, 0x05, 0x01}, table::coil, 9, out).ok());
    CHECK(out == std::vector<std::uint16_t>{1, 0, 1, 0, 0, 0, 0, 0, 1});
    CHECK(parse({0x02, 1, 0x02}, table::discrete, 2, out).ok());
    CHECK(out == std::vector<std::uint16_t>{0, 1});
}

TEST_CASE("exception answers carry their code and name") {
    std::vector<std::uint16_t> out;
    auto r = parse({0x83, 0x02}, table::holding, 2, out);
    CHECK(r.err == fault::exception);
    CHECK(r.exception == 0x02);
    CHECK(reason(r) == "illegal_address");
    CHECK(reason(parse({0x84, 0x01}, table::input, 1, out)) == "illegal_function");
    CHECK(reason(parse({0x81, 0x0b}, table::coil, 1, out)) == "gateway_target");
    CHECK(reason(parse({0x83, 0x42}, table::holding, 1, out)) == "exception_66");
    // An exception frame with trailing bytes is malformed, not an exception.
    CHECK(parse({0x83, 0x02, 0x00}, table::holding, 1, out).err == fault::bad_data);
    CHECK(out[0] == 0xdead);  // nothing written
}

TEST_CASE("malformed answers: short frames, wrong function, wrong byte counts") {
    std::vector<std::uint16_t> out;
    // One register fewer than asked, framed consistently.
    CHECK(parse({0x03, 2, 0x12, 0x34}, table::holding, 2, out).err == fault::short_frame);
    CHECK(parse({0x01, 1, 0xff}, table::coil, 9, out).err == fault::short_frame);
    CHECK(parse({}, table::holding, 1, out).err == fault::short_frame);
    // The byte count disagrees with the frame's length.
    CHECK(parse({0x03, 4, 0x12, 0x34}, table::holding, 2, out).err == fault::bad_data);
    // More than asked for.
    CHECK(parse({0x03, 6, 0, 1, 0, 2, 0, 3}, table::holding, 2, out).err == fault::bad_data);
    // The answer to another function.
    CHECK(parse({0x04, 2, 0, 1}, table::holding, 1, out).err == fault::bad_data);
    CHECK(parse({0x03}, table::holding, 1, out).err == fault::bad_data);
    CHECK(out[0] == 0xdead);
    CHECK(reason(read_result{fault::transaction_id}) == "transaction_id");
    CHECK(reason(read_result{fault::bad_crc}) == "bad_crc");
}

TEST_CASE("unanswered faults are the ones that may mean a device is down") {
    CHECK(read_result{fault::timeout}.unanswered());
    CHECK(read_result{fault::connect}.unanswered());
    CHECK(read_result{fault::io}.unanswered());
    CHECK_FALSE(read_result{fault::exception, 2}.unanswered());
    CHECK_FALSE(read_result{fault::bad_crc}.unanswered());
    CHECK_FALSE(read_result{fault::transaction_id}.unanswered());
}

TEST_CASE("write requests: FC 5, FC 6 and FC 16 frames, and what does not fit") {
    const std::uint16_t one[] = {1};
    const std::uint16_t word[] = {0x1234};
    const std::uint16_t two[] = {0x4148, 0x0000};
    CHECK(write_request(k_write_coil, 7, one) == bytes{0x05, 0x00, 0x07, 0xFF, 0x00});
    const std::uint16_t zero[] = {0};
    CHECK(write_request(k_write_coil, 7, zero) == bytes{0x05, 0x00, 0x07, 0x00, 0x00});
    CHECK(write_request(k_write_register, 0x0102, word) == bytes{0x06, 0x01, 0x02, 0x12, 0x34});
    CHECK(write_request(k_write_registers, 100, two) ==
          bytes{0x10, 0x00, 0x64, 0x00, 0x02, 0x04, 0x41, 0x48, 0x00, 0x00});
    // A coil is 0 or 1; FC 5/6 take one value; FC 16 at most 123.
    const std::uint16_t bad_bit[] = {2};
    CHECK(write_request(k_write_coil, 0, bad_bit).empty());
    CHECK(write_request(k_write_register, 0, two).empty());
    CHECK(write_request(k_write_registers, 0, std::vector<std::uint16_t>(124)).empty());
    CHECK(write_request(k_write_registers, 0, std::vector<std::uint16_t>{}).empty());
    CHECK(write_request(0x03, 0, word).empty());
}

TEST_CASE("write answers: the echo must match; exceptions carry their code") {
    const std::uint16_t word[] = {0x1234};
    const auto req6 = write_request(k_write_register, 0x0102, word);
    CHECK(parse_write_response(bytes{0x06, 0x01, 0x02, 0x12, 0x34}, req6).ok());
    CHECK(parse_write_response(bytes{0x06, 0x01, 0x02, 0x12, 0x35}, req6).err == fault::bad_data);
    CHECK(parse_write_response(bytes{0x06, 0x01, 0x02}, req6).err == fault::short_frame);
    CHECK(parse_write_response(bytes{0x06, 0x01, 0x02, 0x12, 0x34, 0}, req6).err ==
          fault::bad_data);
    auto ex = parse_write_response(bytes{0x86, 0x02}, req6);
    CHECK(ex.err == fault::exception);
    CHECK(reason(ex) == "illegal_address");
    CHECK(parse_write_response(bytes{0x03, 0x02}, req6).err == fault::bad_data);
    const std::uint16_t two[] = {1, 2};
    const auto req16 = write_request(k_write_registers, 100, two);
    CHECK(parse_write_response(bytes{0x10, 0x00, 0x64, 0x00, 0x02}, req16).ok());
    CHECK(parse_write_response(bytes{0x10, 0x00, 0x64, 0x00, 0x03}, req16).err == fault::bad_data);
    CHECK(parse_write_response(bytes{}, req16).err == fault::short_frame);
}
