// ferry_modbus_sim: a Modbus TCP server on libmodbus for tests and the demo.
//
// Usage: ferry_modbus_sim --port P [options]          (Modbus TCP)
//        ferry_modbus_sim --rtu DEVICE [--baud B] [--parity N|E|O] [options]   (Modbus RTU)
//   --port P           TCP port on 127.0.0.1 (the server never binds elsewhere)
//   --rtu DEVICE       serve Modbus RTU on a serial device instead (e.g. one end of a socat
//                      pty pair); --baud (default 9600) and --parity (default N), 8 data bits,
//                      1 stop bit
//   --pace             RTU: answer each request only after the time it and its answer take
//                      on a real line at --baud, with the 3.5-character silence after each
//                      (a pty moves bytes at memory speed); what a benchmark of one bus needs
//   --unit U           repeatable (or U1,U2,...): answer only these unit ids. Over TCP other
//                      unit ids get exception 0x0B (gateway target device failed to respond);
//                      over RTU they get no answer, as on a bus where no such slave exists.
//                      Default: answer any unit.
//   --set SPEC         repeatable; SPEC = TABLE:ADDR=TYPE[:ORDER]:VALUE
//                        TABLE  holding | input | coil | discrete
//                        TYPE   bool u16 i16 u32 i32 u64 i64 f32 f64 str
//                        ORDER  abcd (default) | dcba | badc | cdab  (see modbus_encode.hpp)
//                      e.g. holding:100=f32:cdab:21.5  input:0=u16:7  coil:3=bool:1
//                           holding:200=str:PUMP-1 (two chars per register, high byte first)
//   --stats FILE       after every request, atomically rewrite FILE with
//                        requests=N  answered=N  accepted=N  connections=N  fc<code>=N
//                        unit<id>=N
//                      (one per line). requests counts on arrival (before --delay), answered
//                      once an answer (data or exception) was written whole. Costs a file rewrite
//                      per request: leave it out when measuring speed.
//   --fail FROM-TO     repeatable; requests (reads and writes) touching protocol addresses
//                      FROM..TO (inclusive, any table) get ILLEGAL_DATA_ADDRESS
//   --fail-first N     the first N requests (any address, any unit) get ILLEGAL_DATA_ADDRESS,
//                      as from a device that is still booting; later ones are served normally
//   --corrupt MODE:FROM-TO  repeatable; reads (FC 1-4) touching FROM..TO get a malformed
//                      answer: MODE crc (RTU: CRC wrong), short (one register or byte fewer
//                      than asked, framed consistently), tid (TCP: another transaction id),
//                      unit (the answer names another unit id)
//   --silent           accept connections and read requests, but never answer
//   --delay MS         wait MS milliseconds before each answer (blocks all clients)
//   --wave             demo data: holding 0 = u16 counter, +1 every second;
//                      holding 2..3 = f32 (abcd) temperature, 21.5 + 2.5*sin(2*pi*t/60);
//                      holding 4 = i16 -(counter % 100)
// Registers written by clients (FC 5, 6, 15, 16, 23) are stored and read back.
// SIGTERM/SIGINT: close every socket and exit 0.
#include <modbus/modbus.h>
#include <sys/select.h>
#include <unistd.h>

#include <algorithm>
#include <array>

#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/tools/modbus_encode.hpp"

namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_signal(int) {
    g_stop = 1;
}

enum class corruption { crc, short_frame, tid, unit };

struct corrupt_range {
    corruption mode;
    int from;
    int to;
};

struct options {
    int port = -1;
    std::string rtu;
    int baud = 9600;
    char parity = 'N';
    std::set<int> units;  // empty: any
    std::string stats;
    std::vector<std::string> sets;
    std::vector<std::pair<int, int>> fail;
    long fail_first = 0;
    std::vector<corrupt_range> corrupt;
    bool silent = false;
    bool wave = false;
    bool pace = false;
    int delay_ms = 0;
    int write_delay_ms = 0;
};

[[noreturn]] void usage(const std::string& msg) {
    std::fprintf(stderr, "ferry_modbus_sim: %s\n", msg.c_str());
    std::fprintf(stderr,
                 "usage: ferry_modbus_sim (--port P | --rtu DEVICE [--baud B] [--parity N|E|O] "
                 "[--pace])\n"
                 "       [--unit U]... [--stats FILE] [--set SPEC]... [--fail FROM-TO]...\n"
                 "       [--fail-first N]\n"
                 "       [--corrupt crc|short|tid|unit:FROM-TO]... [--silent] [--delay MS] "
                 "[--write-delay MS] [--wave]\n");
    std::exit(2);
}

int parse_int(const std::string& text, int lo, int hi, const char* what) {
    char* end = nullptr;
    const long v = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || v < lo || v > hi) usage(std::string("bad ") + what);
    return static_cast<int>(v);
}

options parse_args(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) usage(a + " needs a value");
            return argv[++i];
        };
        if (a == "--port") {
            o.port = parse_int(next(), 1, 65535, "--port");
        } else if (a == "--unit") {
            const std::string list = next();
            std::size_t pos = 0;
            while (pos <= list.size()) {
                const auto comma = std::min(list.find(',', pos), list.size());
                o.units.insert(parse_int(list.substr(pos, comma - pos), 0, 255, "--unit"));
                pos = comma + 1;
            }
        } else if (a == "--rtu") {
            o.rtu = next();
        } else if (a == "--baud") {
            o.baud = parse_int(next(), 1, 4000000, "--baud");
        } else if (a == "--parity") {
            const std::string p = next();
            if (p != "N" && p != "E" && p != "O") usage("--parity takes N, E or O");
            o.parity = p[0];
        } else if (a == "--corrupt") {
            const std::string c = next();
            const auto colon = c.find(':');
            const auto dash = c.find('-', colon == std::string::npos ? 0 : colon);
            if (colon == std::string::npos || dash == std::string::npos)
                usage("--corrupt takes MODE:FROM-TO");
            const std::string mode = c.substr(0, colon);
            corrupt_range r{};
            if (mode == "crc")
                r.mode = corruption::crc;
            else if (mode == "short")
                r.mode = corruption::short_frame;
            else if (mode == "tid")
                r.mode = corruption::tid;
            else if (mode == "unit")
                r.mode = corruption::unit;
            else
                usage("unknown --corrupt mode " + mode);
            r.from = parse_int(c.substr(colon + 1, dash - colon - 1), 0, 65535, "--corrupt");
            r.to = parse_int(c.substr(dash + 1), 0, 65535, "--corrupt");
            o.corrupt.push_back(r);
        } else if (a == "--stats") {
            o.stats = next();
        } else if (a == "--set") {
            o.sets.push_back(next());
        } else if (a == "--fail") {
            const std::string r = next();
            const auto dash = r.find('-');
            if (dash == std::string::npos) usage("--fail takes FROM-TO");
            o.fail.emplace_back(parse_int(r.substr(0, dash), 0, 65535, "--fail"),
                                parse_int(r.substr(dash + 1), 0, 65535, "--fail"));
        } else if (a == "--fail-first") {
            o.fail_first = parse_int(next(), 0, 1000000000, "--fail-first");
        } else if (a == "--silent") {
            o.silent = true;
        } else if (a == "--pace") {
            o.pace = true;
        } else if (a == "--wave") {
            o.wave = true;
        } else if (a == "--delay") {
            o.delay_ms = parse_int(next(), 0, 600000, "--delay");
        } else if (a == "--write-delay") {
            o.write_delay_ms = parse_int(next(), 0, 600000, "--write-delay");
        } else if (a == "--help" || a == "-h") {
            usage("help");
        } else {
            usage("unknown argument " + a);
        }
    }
    if ((o.port < 0) == o.rtu.empty()) usage("give exactly one of --port and --rtu");
    return o;
}

void apply_set(modbus_mapping_t* map, const ferry::tools::sim_set& s) {
    using ferry::tools::sim_table;
    for (std::size_t i = 0; i < s.words.size(); ++i) {
        const std::size_t a = s.address + i;
        switch (s.table) {
            case sim_table::holding:
                map->tab_registers[a] = s.words[i];
                break;
            case sim_table::input:
                map->tab_input_registers[a] = s.words[i];
                break;
            case sim_table::coil:
                map->tab_bits[a] = static_cast<std::uint8_t>(s.words[i]);
                break;
            case sim_table::discrete:
                map->tab_input_bits[a] = static_cast<std::uint8_t>(s.words[i]);
                break;
        }
    }
}

class stats_file {
  public:
    explicit stats_file(std::string path) : path_(std::move(path)) {}
    void request(int fc, int unit) {
        ++requests_;
        ++by_fc_[fc];
        ++by_unit_[unit];
        write();
    }
    void accepted() {
        ++accepted_;
        write();
    }
    bool answered(bool written) {
        if (written) {
            ++answered_;
            write();
        }
        return written;
    }
    void set_connections(std::size_t n) { connections_ = n; }
    // Write to a temporary file and rename, so a reader never sees a half-written file.
    void write() const {
        if (path_.empty()) return;
        const std::string tmp = path_ + ".tmp";
        std::FILE* f = std::fopen(tmp.c_str(), "w");
        if (!f) return;
        std::fprintf(f, "requests=%llu\nanswered=%llu\naccepted=%llu\nconnections=%zu\n",
                     static_cast<unsigned long long>(requests_),
                     static_cast<unsigned long long>(answered_),
                     static_cast<unsigned long long>(accepted_), connections_);
        for (const auto& [fc, n] : by_fc_) {
            std::fprintf(f, "fc%d=%llu\n", fc, static_cast<unsigned long long>(n));
        }
        for (const auto& [unit, n] : by_unit_) {
            std::fprintf(f, "unit%d=%llu\n", unit, static_cast<unsigned long long>(n));
        }
        std::fclose(f);
        std::rename(tmp.c_str(), path_.c_str());
    }

  private:
    std::string path_;
    std::uint64_t requests_ = 0;
    std::uint64_t answered_ = 0;
    std::uint64_t accepted_ = 0;
    std::size_t connections_ = 0;
    std::map<int, std::uint64_t> by_fc_;
    std::map<int, std::uint64_t> by_unit_;
};

// The address range a request touches; nullopt-like {-1,-1} for other function codes.
std::pair<int, int> request_range(const std::uint8_t* req, int header) {
    const int fc = req[header];
    const int addr = (req[header + 1] << 8) | req[header + 2];
    switch (fc) {
        case 1:
        case 2:
        case 3:
        case 4:
        case 15:
        case 16:
        case 23: {
            const int count = (req[header + 3] << 8) | req[header + 4];
            return {addr, addr + std::max(count, 1) - 1};
        }
        case 5:
        case 6:
            return {addr, addr};
        default:
            return {-1, -1};
    }
}

void update_wave(modbus_mapping_t* map, std::chrono::steady_clock::time_point start) {
    const double t =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto counter = static_cast<std::uint16_t>(static_cast<std::uint64_t>(t) & 0xffff);
    map->tab_registers[0] = counter;
    const auto temp = static_cast<float>(21.5 + 2.5 * std::sin(2.0 * M_PI * t / 60.0));
    const auto regs = ferry::tools::to_registers(std::bit_cast<std::uint32_t>(temp), 2,
                                                 ferry::tools::sim_order::abcd);
    map->tab_registers[2] = regs[0];
    map->tab_registers[3] = regs[1];
    map->tab_registers[4] = static_cast<std::uint16_t>(-(counter % 100));
}

std::uint16_t crc16(const std::uint8_t* data, std::size_t n) {
    std::uint16_t crc = 0xffff;
    for (std::size_t i = 0; i < n; ++i) {
        crc = static_cast<std::uint16_t>(crc ^ data[i]);
        for (int b = 0; b < 8; ++b)
            crc = static_cast<std::uint16_t>((crc & 1) ? (crc >> 1) ^ 0xa001 : crc >> 1);
    }
    return crc;
}

// The answer PDU (function code onwards) to a read request PDU (FC 1-4), built by hand so
// that it can be corrupted; `drop` values fewer than asked for.
std::vector<std::uint8_t> read_answer(const modbus_mapping_t* map, const std::uint8_t* pdu,
                                      int drop) {
    const int fc = pdu[0];
    const int addr = (pdu[1] << 8) | pdu[2];
    const int asked = (pdu[3] << 8) | pdu[4];
    std::vector<std::uint8_t> out{static_cast<std::uint8_t>(fc), 0};
    if (fc == 1 || fc == 2) {
        const std::uint8_t* bits = fc == 1 ? map->tab_bits : map->tab_input_bits;
        const int bytes = std::max((asked + 7) / 8 - drop, 0);
        const int count = std::min(asked, bytes * 8);
        out.resize(2 + static_cast<std::size_t>(bytes), 0);
        for (int i = 0; i < count && addr + i < 65536; ++i) {
            if (bits[addr + i])
                out[2 + static_cast<std::size_t>(i / 8)] |= std::uint8_t(1u << (i % 8));
        }
    } else {
        const std::uint16_t* regs = fc == 3 ? map->tab_registers : map->tab_input_registers;
        const int count = std::max(asked - drop, 0);
        for (int i = 0; i < count && addr + i < 65536; ++i) {
            out.push_back(static_cast<std::uint8_t>(regs[addr + i] >> 8));
            out.push_back(static_cast<std::uint8_t>(regs[addr + i] & 0xff));
        }
    }
    out[1] = static_cast<std::uint8_t>(out.size() - 2);
    return out;
}

bool write_all(int fd, const std::vector<std::uint8_t>& data) {
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        done += static_cast<std::size_t>(n);
    }
    return true;
}

// Serves one request. `frame` is the whole ADU as received (TCP: MBAP header first; RTU: the
// unit id first, CRC last); `header` the length before the function code. Returns false when
// the connection should be closed.
bool serve(modbus_t* ctx, int fd, bool rtu, const std::uint8_t* frame, int len, int header,
           const options& opt, modbus_mapping_t* map, stats_file& stats,
           std::chrono::steady_clock::time_point start) {
    const int unit = frame[header - 1];
    const int fc = frame[header];
    stats.request(fc, unit);
    const bool known_unit = opt.units.empty() || opt.units.count(unit) > 0;
    if (opt.silent || (rtu && !known_unit)) return true;
    if (opt.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(opt.delay_ms));
    // A device slow to write and quick to read: writes queue while polls go on.
    const bool write = fc == 5 || fc == 6 || fc == 15 || fc == 16 || fc == 22 || fc == 23;
    if (write && opt.write_delay_ms > 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(opt.write_delay_ms));
    if (opt.wave) update_wave(map, start);
    if (rtu) modbus_set_slave(ctx, unit);

    const auto [lo, hi] = request_range(frame, header);
    static long served = 0;  // requests seen so far, for --fail-first
    bool failing = served++ < opt.fail_first;
    for (const auto& [from, to] : opt.fail) {
        if (lo >= 0 && lo <= to && hi >= from) failing = true;
    }
    const corrupt_range* corrupt = nullptr;
    for (const auto& c : opt.corrupt) {
        if (fc >= 1 && fc <= 4 && lo >= 0 && lo <= c.to && hi >= c.from) corrupt = &c;
    }
    if (!known_unit)
        return stats.answered(modbus_reply_exception(ctx, frame, MODBUS_EXCEPTION_GATEWAY_TARGET) >=
                              0);
    if (failing)
        return stats.answered(
            modbus_reply_exception(ctx, frame, MODBUS_EXCEPTION_ILLEGAL_DATA_ADDRESS) >= 0);
    if (!corrupt) return stats.answered(modbus_reply(ctx, frame, len, map) >= 0);

    auto pdu = read_answer(map, frame + header, corrupt->mode == corruption::short_frame ? 1 : 0);
    const auto answer_unit =
        static_cast<std::uint8_t>(corrupt->mode == corruption::unit ? unit + 1 : unit);
    std::vector<std::uint8_t> adu;
    if (rtu) {
        adu.push_back(answer_unit);
        adu.insert(adu.end(), pdu.begin(), pdu.end());
        std::uint16_t crc = crc16(adu.data(), adu.size());
        if (corrupt->mode == corruption::crc) crc ^= 0x5a5a;
        adu.push_back(static_cast<std::uint8_t>(crc & 0xff));
        adu.push_back(static_cast<std::uint8_t>(crc >> 8));
    } else {
        std::uint16_t tid = static_cast<std::uint16_t>((frame[0] << 8) | frame[1]);
        if (corrupt->mode == corruption::tid) tid = static_cast<std::uint16_t>(tid + 1);
        const auto length = static_cast<std::uint16_t>(pdu.size() + 1);
        adu = {static_cast<std::uint8_t>(tid >> 8),
               static_cast<std::uint8_t>(tid & 0xff),
               0,
               0,
               static_cast<std::uint8_t>(length >> 8),
               static_cast<std::uint8_t>(length & 0xff),
               answer_unit};
        adu.insert(adu.end(), pdu.begin(), pdu.end());
    }
    return stats.answered(write_all(fd, adu));
}

// How long a request (`need` bytes, `frame` its first) and its answer keep a real line busy
// at opt.baud: 1 start, 8 data, the parity and 1 stop bit per byte, and the 3.5-character
// silence that ends each frame (fixed at 1.75 ms above 19200 baud, as the Modbus serial line
// specification says). Exceptions are taken as full answers.
std::chrono::microseconds line_time(const options& opt, const std::uint8_t* frame,
                                    std::size_t need) {
    const int fc = frame[1];
    const int quantity = (frame[4] << 8) | frame[5];
    std::size_t answer = 8;  // writes echo address and value or quantity
    if (fc == 3 || fc == 4) answer = 5 + 2 * static_cast<std::size_t>(quantity);
    if (fc == 1 || fc == 2) answer = 5 + (static_cast<std::size_t>(quantity) + 7) / 8;
    const double char_us = (opt.parity == 'N' ? 10.0 : 11.0) * 1e6 / opt.baud;
    const double silence_us = opt.baud > 19200 ? 1750.0 : 3.5 * char_us;
    return std::chrono::microseconds(
        static_cast<long>(static_cast<double>(need + answer) * char_us + 2 * silence_us));
}

// Modbus RTU: requests are cut from the byte stream by their function code's length and
// checked by CRC; a frame for a unit we do not serve is read and left unanswered.
int run_rtu(const options& opt, modbus_mapping_t* map, stats_file& stats) {
    modbus_t* ctx = modbus_new_rtu(opt.rtu.c_str(), opt.baud, opt.parity, 8, 1);
    if (!ctx || modbus_connect(ctx) == -1) {
        std::fprintf(stderr, "ferry_modbus_sim: open %s: %s\n", opt.rtu.c_str(),
                     modbus_strerror(errno));
        if (ctx) modbus_free(ctx);
        return 3;
    }
    const int fd = modbus_get_socket(ctx);
    std::fprintf(stderr, "ferry_modbus_sim: serving RTU on %s\n", opt.rtu.c_str());
    stats.write();
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::uint8_t> buf;
    auto last_byte = start;
    while (!g_stop) {
        if (opt.wave) update_wave(map, start);
        fd_set rd;
        FD_ZERO(&rd);
        FD_SET(fd, &rd);
        timeval tv{0, 20 * 1000};
        const int n = select(fd + 1, &rd, nullptr, nullptr, &tv);
        if (n < 0) {
            if (errno == EINTR) continue;
            std::perror("ferry_modbus_sim: select");
            break;
        }
        const auto now = std::chrono::steady_clock::now();
        if (n == 0) {
            // A silence ends a frame: drop an incomplete one.
            if (!buf.empty() && now - last_byte > std::chrono::milliseconds(50)) buf.clear();
            continue;
        }
        std::array<std::uint8_t, 512> chunk{};
        const ssize_t got = ::read(fd, chunk.data(), chunk.size());
        if (got <= 0) {
            if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            std::this_thread::sleep_for(std::chrono::milliseconds(20));  // pty peer not open yet
            continue;
        }
        last_byte = now;
        buf.insert(buf.end(), chunk.begin(), chunk.begin() + got);
        while (buf.size() >= 2) {
            const int fc = buf[1];
            std::size_t need = 0;
            if (fc >= 1 && fc <= 6) {
                need = 8;
            } else if (fc == 15 || fc == 16) {
                if (buf.size() < 7) break;
                need = 9u + buf[6];
            } else {
                buf.clear();  // not a request we know: resynchronise on the next frame
                break;
            }
            if (buf.size() < need) break;
            const std::uint16_t crc = crc16(buf.data(), need - 2);
            if (buf[need - 2] != (crc & 0xff) || buf[need - 1] != (crc >> 8)) {
                buf.clear();
                break;
            }
            if (opt.pace) std::this_thread::sleep_for(line_time(opt, buf.data(), need));
            serve(ctx, fd, true, buf.data(), static_cast<int>(need), 1, opt, map, stats, start);
            buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(need));
        }
    }
    modbus_close(ctx);
    modbus_free(ctx);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const options opt = parse_args(argc, argv);

    modbus_mapping_t* map = modbus_mapping_new(65536, 65536, 65536, 65536);
    if (!map) {
        std::fprintf(stderr, "ferry_modbus_sim: out of memory\n");
        return 3;
    }
    for (const auto& spec : opt.sets) {
        std::string why;
        const auto s = ferry::tools::parse_set(spec, &why);
        if (!s) usage("--set " + spec + ": " + why);
        apply_set(map, *s);
    }

    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: select() must return EINTR
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    stats_file stats(opt.stats);
    if (!opt.rtu.empty()) {
        const int rc = run_rtu(opt, map, stats);
        modbus_mapping_free(map);
        std::fprintf(stderr, "ferry_modbus_sim: stopped\n");
        return rc;
    }

    modbus_t* ctx = modbus_new_tcp("127.0.0.1", opt.port);
    if (!ctx) {
        std::fprintf(stderr, "ferry_modbus_sim: modbus_new_tcp: %s\n", modbus_strerror(errno));
        return 3;
    }
    const int listen_fd = modbus_tcp_listen(ctx, 64);
    if (listen_fd < 0) {
        std::fprintf(stderr, "ferry_modbus_sim: listen on 127.0.0.1:%d: %s\n", opt.port,
                     modbus_strerror(errno));
        modbus_free(ctx);
        modbus_mapping_free(map);
        return 3;
    }
    std::fprintf(stderr, "ferry_modbus_sim: listening on 127.0.0.1:%d\n", opt.port);

    stats.write();
    const int header = modbus_get_header_length(ctx);
    const auto start = std::chrono::steady_clock::now();
    std::set<int> clients;
    std::uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];

    while (!g_stop) {
        if (opt.wave) update_wave(map, start);
        fd_set rd;
        FD_ZERO(&rd);
        FD_SET(listen_fd, &rd);
        int max_fd = listen_fd;
        for (int fd : clients) {
            FD_SET(fd, &rd);
            max_fd = std::max(max_fd, fd);
        }
        timeval tv{0, 100 * 1000};  // wake up for --wave and to notice signals
        const int n = select(max_fd + 1, &rd, nullptr, nullptr, &tv);
        if (n < 0) {
            if (errno == EINTR) continue;
            std::perror("ferry_modbus_sim: select");
            break;
        }
        if (n == 0) continue;

        if (FD_ISSET(listen_fd, &rd)) {
            int lfd = listen_fd;
            const int fd = modbus_tcp_accept(ctx, &lfd);
            if (fd >= 0) {
                if (fd >= FD_SETSIZE) {
                    close(fd);  // select() cannot watch it
                } else {
                    clients.insert(fd);
                    stats.set_connections(clients.size());
                    stats.accepted();
                }
            }
        }
        std::vector<int> closed;
        for (int fd : clients) {
            if (!FD_ISSET(fd, &rd)) continue;
            modbus_set_socket(ctx, fd);
            const int len = modbus_receive(ctx, query);
            if (len < 0) {
                closed.push_back(fd);
                continue;
            }
            if (len == 0) continue;  // a request not for us (libmodbus filtered it)
            if (!serve(ctx, fd, false, query, len, header, opt, map, stats, start))
                closed.push_back(fd);
        }
        for (int fd : closed) {
            close(fd);
            clients.erase(fd);
        }
        if (!closed.empty()) {
            stats.set_connections(clients.size());
            stats.write();
        }
    }

    for (int fd : clients)
        close(fd);
    close(listen_fd);
    modbus_free(ctx);
    modbus_mapping_free(map);
    std::fprintf(stderr, "ferry_modbus_sim: stopped\n");
    return 0;
}
