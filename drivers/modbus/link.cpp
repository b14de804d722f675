#include "drivers/modbus/link.hpp"

#include <fcntl.h>
#include <modbus.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <thread>

namespace ferry::drivers::modbus {

using steady = std::chrono::steady_clock;

std::string reason(const read_result& r) {
    switch (r.err) {
        case fault::none:
            return "none";
        case fault::timeout:
            return "timeout";
        case fault::transaction_id:
            return "transaction_id";
        case fault::short_frame:
            return "short_frame";
        case fault::bad_crc:
            return "bad_crc";
        case fault::bad_slave:
            return "bad_slave";
        case fault::bad_data:
            return "bad_data";
        case fault::connect:
            return "connect";
        case fault::io:
            return "io";
        case fault::exception:
            break;
    }
    switch (r.exception) {
        case 0x01:
            return "illegal_function";
        case 0x02:
            return "illegal_address";
        case 0x03:
            return "illegal_value";
        case 0x04:
            return "device_failure";
        case 0x06:
            return "device_busy";
        case 0x0A:
            return "gateway_path";
        case 0x0B:
            return "gateway_target";
        default: {
            std::string s = "exception_";
            s += std::to_string(r.exception);
            return s;
        }
    }
}

std::uint8_t function_code(table t) {
    switch (t) {
        case table::coil:
            return 0x01;
        case table::discrete:
            return 0x02;
        case table::holding:
            return 0x03;
        case table::input:
        default:
            return 0x04;
    }
}

read_result parse_read_response(std::span<const std::uint8_t> pdu, table t, std::uint16_t count,
                                std::uint16_t* out) {
    const std::uint8_t fc = function_code(t);
    if (pdu.empty()) return {fault::short_frame};
    if (pdu[0] == (fc | 0x80)) {
        if (pdu.size() != 2) return {fault::bad_data};
        return {fault::exception, pdu[1]};
    }
    if (pdu[0] != fc || pdu.size() < 2) return {fault::bad_data};
    const std::size_t bytes = pdu[1];
    if (bytes != pdu.size() - 2) return {fault::bad_data};  // byte count disagrees with frame
    const std::size_t want = is_bit_table(t) ? (count + 7u) / 8u : 2u * count;
    if (bytes < want) return {fault::short_frame};
    if (bytes > want) return {fault::bad_data};
    const std::uint8_t* data = pdu.data() + 2;
    if (is_bit_table(t)) {
        for (std::size_t i = 0; i < count; ++i)
            out[i] = static_cast<std::uint16_t>((data[i / 8] >> (i % 8)) & 1u);
    } else {
        for (std::size_t i = 0; i < count; ++i)
            out[i] = static_cast<std::uint16_t>((data[2 * i] << 8) | data[2 * i + 1]);
    }
    return {};
}

std::vector<std::uint8_t> write_request(std::uint8_t function, std::uint16_t address,
                                        std::span<const std::uint16_t> values) {
    auto be16 = [](std::vector<std::uint8_t>& out, std::uint32_t v) {
        out.push_back(static_cast<std::uint8_t>(v >> 8));
        out.push_back(static_cast<std::uint8_t>(v));
    };
    std::vector<std::uint8_t> pdu{function};
    be16(pdu, address);
    if (function == k_write_coil || function == k_write_register) {
        if (values.size() != 1) return {};
        if (function == k_write_coil && values[0] > 1) return {};
        be16(pdu, function == k_write_coil ? (values[0] ? 0xFF00u : 0x0000u) : values[0]);
        return pdu;
    }
    if (function != k_write_registers || values.empty() || values.size() > k_max_write_registers)
        return {};
    be16(pdu, static_cast<std::uint32_t>(values.size()));
    pdu.push_back(static_cast<std::uint8_t>(2 * values.size()));
    for (auto v : values)
        be16(pdu, v);
    return pdu;
}

read_result parse_write_response(std::span<const std::uint8_t> pdu,
                                 std::span<const std::uint8_t> request) {
    if (pdu.empty() || request.size() < 5) return {fault::short_frame};
    const std::uint8_t fc = request[0];
    if (pdu[0] == (fc | 0x80)) {
        if (pdu.size() != 2) return {fault::bad_data};
        return {fault::exception, pdu[1]};
    }
    if (pdu[0] != fc) return {fault::bad_data};
    if (pdu.size() < 5) return {fault::short_frame};
    if (pdu.size() > 5) return {fault::bad_data};
    // FC 5/6: the whole request echoed; FC 16: function, address and quantity.
    if (!std::equal(pdu.begin(), pdu.end(), request.begin())) return {fault::bad_data};
    return {};
}

namespace {

int ms_until(steady::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
    return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

// Modbus TCP on a plain non-blocking socket: send, poll, recv; usually one recv per answer.
class tcp_link final : public link {
  public:
    tcp_link(std::string host, std::uint16_t port, std::chrono::milliseconds connect_delay,
             const std::atomic<bool>* halt)
        : host_(std::move(host)), port_(port), connect_delay_(connect_delay), halt_(halt) {}
    ~tcp_link() override { close(); }

    std::string name() const override { return host_ + ":" + std::to_string(port_); }

    void close() override {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

    read_result read(int unit, table t, std::uint16_t address, std::uint16_t count,
                     std::chrono::milliseconds timeout, std::uint16_t* out) override {
        const std::array<std::uint8_t, 5> pdu{
            function_code(t), static_cast<std::uint8_t>(address >> 8),
            static_cast<std::uint8_t>(address), static_cast<std::uint8_t>(count >> 8),
            static_cast<std::uint8_t>(count)};
        std::span<const std::uint8_t> answer;
        const auto r = exchange(unit, pdu, timeout, answer);
        if (!r.ok()) return r;
        return parse_read_response(answer, t, count, out);
    }

    read_result write(int unit, std::uint8_t function, std::uint16_t address,
                      std::span<const std::uint16_t> values,
                      std::chrono::milliseconds timeout) override {
        const auto pdu = write_request(function, address, values);
        if (pdu.empty()) return {fault::bad_data};
        std::span<const std::uint8_t> answer;
        const auto r = exchange(unit, pdu, timeout, answer);
        if (!r.ok()) return r;
        return parse_write_response(answer, pdu);
    }

  private:
    // Sends one request PDU to `unit` under a fresh transaction id and receives its answer;
    // on success `answer` is the answer's PDU (inside buf_, valid until the next exchange).
    read_result exchange(int unit, std::span<const std::uint8_t> pdu,
                         std::chrono::milliseconds timeout, std::span<const std::uint8_t>& answer) {
        auto deadline = steady::now() + timeout;
        if (fd_ < 0) {
            if (!open(deadline)) return {fault::connect};
            if (connect_delay_.count() > 0) {
                if (!wait_connect_delay()) {
                    close();
                    return {fault::connect};
                }
                deadline = steady::now() + timeout;
            }
        }
        ++tid_;
        std::array<std::uint8_t, 7 + 253> req{};
        const std::size_t length = 1 + pdu.size();
        req[0] = static_cast<std::uint8_t>(tid_ >> 8);
        req[1] = static_cast<std::uint8_t>(tid_);
        req[4] = static_cast<std::uint8_t>(length >> 8);
        req[5] = static_cast<std::uint8_t>(length);
        req[6] = static_cast<std::uint8_t>(unit);
        std::copy(pdu.begin(), pdu.end(), req.begin() + 7);
        if (!send_all(req.data(), 6 + length, deadline)) {
            const bool timed_out = errno == ETIMEDOUT;
            close();
            return {timed_out ? fault::timeout : fault::io};
        }
        std::size_t have = 0;
        std::size_t need = 7;  // the MBAP header first; then we know the frame's length
        while (have < need) {
            const ssize_t n = ::recv(fd_, buf_.data() + have, buf_.size() - have, 0);
            if (n > 0) {
                have += static_cast<std::size_t>(n);
                if (need == 7 && have >= 7) {
                    const unsigned protocol = (buf_[2] << 8) | buf_[3];
                    const unsigned len = (buf_[4] << 8) | buf_[5];
                    if (protocol != 0 || len < 2 || len > 254) return desync(fault::bad_data);
                    need = 6 + len;
                }
                continue;
            }
            if (n == 0) {
                close();
                return {fault::io};
            }
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                close();
                return {fault::io};
            }
            pollfd p{fd_, POLLIN, 0};
            const int rc = ::poll(&p, 1, ms_until(deadline));
            if (rc == 0) return desync(fault::timeout);  // a late answer would follow: reopen
            if (rc < 0 && errno != EINTR) {
                close();
                return {fault::io};
            }
        }
        if (have > need) return desync(fault::bad_data);  // more than one answer: out of step
        const std::uint16_t got_tid = static_cast<std::uint16_t>((buf_[0] << 8) | buf_[1]);
        if (got_tid != tid_) return desync(fault::transaction_id);
        if (buf_[6] != static_cast<std::uint8_t>(unit)) return {fault::bad_slave};
        answer = std::span<const std::uint8_t>(buf_.data() + 7, need - 7);
        return {};
    }

    read_result desync(fault f) {
        close();
        return {f};
    }

    bool open(steady::time_point deadline) {
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        addrinfo* res = nullptr;
        const std::string port = std::to_string(port_);
        if (::getaddrinfo(host_.c_str(), port.c_str(), &hints, &res) != 0) return false;
        for (addrinfo* a = res; a && fd_ < 0; a = a->ai_next) {
            const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                                    a->ai_protocol);
            if (fd < 0) continue;
            bool ok = ::connect(fd, a->ai_addr, a->ai_addrlen) == 0;
            if (!ok && errno == EINPROGRESS) {
                pollfd p{fd, POLLOUT, 0};
                int err = 0;
                socklen_t len = sizeof err;
                ok = ::poll(&p, 1, ms_until(deadline)) == 1 &&
                     ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
            }
            if (!ok) {
                ::close(fd);
                continue;
            }
            const int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            fd_ = fd;
        }
        ::freeaddrinfo(res);
        return fd_ >= 0;
    }

    bool send_all(const std::uint8_t* data, std::size_t size, steady::time_point deadline) {
        std::size_t sent = 0;
        while (sent < size) {
            const ssize_t n = ::send(fd_, data + sent, size - sent, MSG_NOSIGNAL);
            if (n > 0) {
                sent += static_cast<std::size_t>(n);
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                pollfd p{fd_, POLLOUT, 0};
                if (::poll(&p, 1, ms_until(deadline)) == 0) {
                    errno = ETIMEDOUT;
                    return false;
                }
                continue;
            }
            return false;
        }
        return true;
    }

    // False when halted meanwhile (checked every 50 ms).
    bool wait_connect_delay() const {
        for (auto left = connect_delay_; left.count() > 0;) {
            if (halt_ && halt_->load(std::memory_order_relaxed)) return false;
            const auto step = std::min(left, std::chrono::milliseconds(50));
            std::this_thread::sleep_for(step);
            left -= step;
        }
        return !(halt_ && halt_->load(std::memory_order_relaxed));
    }

    std::string host_;
    std::uint16_t port_;
    std::chrono::milliseconds connect_delay_;
    const std::atomic<bool>* halt_;
    int fd_ = -1;
    std::uint16_t tid_ = 0;
    std::array<std::uint8_t, 512> buf_{};
};

// Modbus RTU on libmodbus: it sets the line up and checks CRCs; we check the rest.
class rtu_link final : public link {
  public:
    explicit rtu_link(config::serial_settings s) : s_(std::move(s)) {}
    ~rtu_link() override { close(); }

    std::string name() const override { return s_.port; }

    void close() override {
        if (ctx_) {
            modbus_close(ctx_);
            modbus_free(ctx_);
            ctx_ = nullptr;
        }
    }

    read_result read(int unit, table t, std::uint16_t address, std::uint16_t count,
                     std::chrono::milliseconds timeout, std::uint16_t* out) override {
        if (!ctx_ && !open()) return {fault::connect};
        prepare(unit, timeout);
        const std::uint8_t req[6] = {
            static_cast<std::uint8_t>(unit),         function_code(t),
            static_cast<std::uint8_t>(address >> 8), static_cast<std::uint8_t>(address),
            static_cast<std::uint8_t>(count >> 8),   static_cast<std::uint8_t>(count)};
        if (modbus_send_raw_request(ctx_, req, sizeof req) == -1) {
            close();
            return {fault::io};
        }
        const int n = modbus_receive_confirmation(ctx_, rsp_.data());
        if (n == -1) return failed(errno);
        // libmodbus answers 0 for a frame addressed from another unit id.
        if (n == 0 || rsp_[0] != static_cast<std::uint8_t>(unit)) {
            modbus_flush(ctx_);
            return {fault::bad_slave};
        }
        if (n < 4) return {fault::short_frame};
        return parse_read_response(
            std::span<const std::uint8_t>(rsp_.data() + 1, static_cast<std::size_t>(n) - 3), t,
            count, out);
    }

    // libmodbus checks the echo of a write itself (EMBBADDATA when it differs) and turns an
    // exception answer into errno MODBUS_ENOBASE + code.
    read_result write(int unit, std::uint8_t function, std::uint16_t address,
                      std::span<const std::uint16_t> values,
                      std::chrono::milliseconds timeout) override {
        if (write_request(function, address, values).empty()) return {fault::bad_data};
        if (!ctx_ && !open()) return {fault::connect};
        prepare(unit, timeout);
        int rc = -1;
        if (function == k_write_coil)
            rc = modbus_write_bit(ctx_, address, values[0] ? TRUE : FALSE);
        else if (function == k_write_register)
            rc = modbus_write_register(ctx_, address, values[0]);
        else
            rc = modbus_write_registers(ctx_, address, static_cast<int>(values.size()),
                                        values.data());
        if (rc == -1) return failed(errno);
        return {};
    }

  private:
    void prepare(int unit, std::chrono::milliseconds timeout) {
        const auto ms = timeout.count();
        const auto sec = static_cast<std::uint32_t>(ms / 1000);
        const auto usec = static_cast<std::uint32_t>((ms % 1000) * 1000);
        modbus_set_response_timeout(ctx_, sec, usec);
        modbus_set_byte_timeout(ctx_, sec, usec);
        modbus_set_slave(ctx_, unit);
        modbus_flush(ctx_);  // whatever a late answer left on the line
    }

    // The same classification for reads and writes.
    read_result failed(int err) {
        modbus_flush(ctx_);
        if (err == ETIMEDOUT) return {fault::timeout};
        if (err == EMBBADCRC) return {fault::bad_crc};
        if (err == EMBBADDATA || err == EMBMDATA) return {fault::bad_data};
        if (err == EMBBADSLAVE) return {fault::bad_slave};
        if (err > MODBUS_ENOBASE && err < EMBBADCRC)
            return {fault::exception, static_cast<std::uint8_t>(err - MODBUS_ENOBASE)};
        close();
        return {fault::io};
    }

    bool open() {
        const char parity = s_.par == config::parity::even  ? 'E'
                            : s_.par == config::parity::odd ? 'O'
                                                            : 'N';
        ctx_ = modbus_new_rtu(s_.port.c_str(), static_cast<int>(s_.baud), parity, s_.data_bits,
                              s_.stop_bits);
        if (!ctx_) return false;
        if (modbus_connect(ctx_) == -1) {
            modbus_free(ctx_);
            ctx_ = nullptr;
            return false;
        }
        return true;
    }

    config::serial_settings s_;
    modbus_t* ctx_ = nullptr;
    std::array<std::uint8_t, MODBUS_RTU_MAX_ADU_LENGTH> rsp_{};
};

}  // namespace

std::unique_ptr<link> make_tcp_link(std::string host, std::uint16_t port,
                                    std::chrono::milliseconds connect_delay,
                                    const std::atomic<bool>* halt) {
    return std::make_unique<tcp_link>(std::move(host), port, connect_delay, halt);
}

std::unique_ptr<link> make_rtu_link(config::serial_settings serial) {
    return std::make_unique<rtu_link>(std::move(serial));
}

}  // namespace ferry::drivers::modbus
