// The wire side of the Modbus driver: one read (or write) request and its checked answer.
//
// `parse_read_response` checks a response PDU against the read it answers (pure, no I/O).
// A `link` carries requests to devices:
//   tcp_link  Modbus TCP on our own socket code (not libmodbus), so every request has its own
//             transaction id and a stale or foreign answer is recognised as such. A
//             desynchronised stream (transaction-id mismatch, broken MBAP header, extra
//             bytes) or a timeout closes the socket; the next read reconnects.
//   rtu_link  Modbus RTU on libmodbus (serial set-up, CRC, inter-character timing). One link
//             per serial port, shared by every unit id on it; input is flushed before each
//             request and after an error, so a late answer cannot be taken for the next one.
// A link is used by one thread at a time (the driver's scheduler guarantees it).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "drivers/modbus/config.hpp"

namespace ferry::drivers::modbus {

// Why a request failed. Each has a reason label for ferry_driver_errors_total.
enum class fault : std::uint8_t {
    none,
    timeout,         // no (complete) answer in time
    exception,       // a Modbus exception response; the code is in read_result::exception
    transaction_id,  // TCP: the answer carries another transaction id (stream out of step)
    short_frame,     // a well-formed answer with fewer data than asked for
    bad_crc,         // RTU: CRC mismatch
    bad_slave,       // the answer comes from another unit id
    bad_data,        // anything else malformed: wrong function code, byte count, MBAP header
    connect,         // cannot connect (TCP) or open the serial port (RTU)
    io,              // the connection broke (reset, closed by the peer, write error)
};

struct read_result {
    fault err = fault::none;
    std::uint8_t exception = 0;  // Modbus exception code, when err == fault::exception
    bool ok() const { return err == fault::none; }
    // True when the device did not answer at all (it may be down).
    bool unanswered() const {
        return err == fault::timeout || err == fault::connect || err == fault::io;
    }
};

// Label for ferry_driver_errors_total{reason}: timeout, transaction_id, short_frame, bad_crc,
// bad_slave, bad_data, connect, io, or for exceptions illegal_function, illegal_address,
// illegal_value, device_failure, device_busy, gateway_path, gateway_target, exception_<code>.
std::string reason(const read_result& r);

constexpr std::uint8_t k_illegal_address = 0x02;
constexpr std::uint32_t k_max_registers = 125;  // per read request (FC 3/4)
constexpr std::uint32_t k_max_bits = 2000;      // per read request (FC 1/2)

std::uint8_t function_code(table t);

// Checks the PDU (function code onwards) answering a read of `count` registers or bits of
// table `t`, and unpacks the values into out[0..count) (bits as 0 or 1).
read_result parse_read_response(std::span<const std::uint8_t> pdu, table t, std::uint16_t count,
                                std::uint16_t* out);

// ---- Writes (downlink commands) ----------------------------------------------------------
// FC 5 writes one coil (values[0]: 0 or 1), FC 6 one holding register, FC 16 several.
constexpr std::uint8_t k_write_coil = 0x05;
constexpr std::uint8_t k_write_register = 0x06;
constexpr std::uint8_t k_write_registers = 0x10;
constexpr std::uint32_t k_max_write_registers = 123;  // per FC 16 request

// The request PDU (function code onwards) of a write; empty when `values` does not suit the
// function (FC 5/6: exactly one value; FC 16: 1..123 values).
std::vector<std::uint8_t> write_request(std::uint8_t function, std::uint16_t address,
                                        std::span<const std::uint16_t> values);
// Checks the PDU answering the write `request`: FC 5 and 6 echo the request, FC 16 echoes its
// address and quantity; an exception answer carries its code.
read_result parse_write_response(std::span<const std::uint8_t> pdu,
                                 std::span<const std::uint8_t> request);

class link {
  public:
    virtual ~link() = default;
    // Reads `count` registers (or bits, as 0/1) of table `t` from `address` of unit `unit`
    // into out[0..count). Opens the connection first when needed.
    virtual read_result read(int unit, table t, std::uint16_t address, std::uint16_t count,
                             std::chrono::milliseconds timeout, std::uint16_t* out) = 0;
    // Writes `values` at `address` of unit `unit` with FC 5, 6 or 16 (k_write_*). Never
    // retried here: the caller decides (a write that timed out may have happened).
    virtual read_result write(int unit, std::uint8_t function, std::uint16_t address,
                              std::span<const std::uint16_t> values,
                              std::chrono::milliseconds timeout) = 0;
    virtual void close() = 0;
    // "127.0.0.1:502" or "/dev/ttyUSB0", for logs.
    virtual std::string name() const = 0;
};

// `connect_delay`: the wait after a connection opens, before its first request (a device's
// quirk); the request's timeout starts after it. When `*halt` turns true (the poller stops)
// the wait ends at once, the connection is closed and the request fails with fault::connect
// unsent: a stop does not wait out a 10 s delay.
std::unique_ptr<link> make_tcp_link(std::string host, std::uint16_t port,
                                    std::chrono::milliseconds connect_delay = {},
                                    const std::atomic<bool>* halt = nullptr);
std::unique_ptr<link> make_rtu_link(config::serial_settings serial);

}  // namespace ferry::drivers::modbus
