// ferry_modbus_sim: a Modbus TCP server on libmodbus for tests and the demo.
//
// Usage: ferry_modbus_sim --port P [options]
//   --port P           TCP port on 127.0.0.1 (required; the server never binds elsewhere)
//   --unit U           answer only unit id U; other unit ids get exception 0x0B
//                      (gateway target device failed to respond). Default: answer any unit.
//   --set SPEC         repeatable; SPEC = TABLE:ADDR=TYPE[:ORDER]:VALUE
//                        TABLE  holding | input | coil | discrete
//                        TYPE   bool u16 i16 u32 i32 u64 i64 f32 f64 str
//                        ORDER  abcd (default) | dcba | badc | cdab  (see modbus_encode.hpp)
//                      e.g. holding:100=f32:cdab:21.5  input:0=u16:7  coil:3=bool:1
//                           holding:200=str:PUMP-1 (two chars per register, high byte first)
//   --stats FILE       after every request, atomically rewrite FILE with
//                        requests=N  accepted=N  connections=N  fc<code>=N (one per line)
//   --fail FROM-TO     repeatable; requests (reads and writes) touching protocol addresses
//                      FROM..TO (inclusive, any table) get ILLEGAL_DATA_ADDRESS
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

struct options {
    int port = -1;
    int unit = -1;
    std::string stats;
    std::vector<std::string> sets;
    std::vector<std::pair<int, int>> fail;
    bool silent = false;
    bool wave = false;
    int delay_ms = 0;
};

[[noreturn]] void usage(const std::string& msg) {
    std::fprintf(stderr, "ferry_modbus_sim: %s\n", msg.c_str());
    std::fprintf(stderr,
                 "usage: ferry_modbus_sim --port P [--unit U] [--stats FILE] [--set SPEC]... "
                 "[--fail FROM-TO]... [--silent] [--delay MS] [--wave]\n");
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
            o.unit = parse_int(next(), 0, 255, "--unit");
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
        } else if (a == "--silent") {
            o.silent = true;
        } else if (a == "--wave") {
            o.wave = true;
        } else if (a == "--delay") {
            o.delay_ms = parse_int(next(), 0, 600000, "--delay");
        } else if (a == "--help" || a == "-h") {
            usage("help");
        } else {
            usage("unknown argument " + a);
        }
    }
    if (o.port < 0) usage("--port is required");
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
    void request(int fc) {
        ++requests_;
        ++by_fc_[fc];
        write();
    }
    void accepted() {
        ++accepted_;
        write();
    }
    void set_connections(std::size_t n) { connections_ = n; }
    // Write to a temporary file and rename, so a reader never sees a half-written file.
    void write() const {
        if (path_.empty()) return;
        const std::string tmp = path_ + ".tmp";
        std::FILE* f = std::fopen(tmp.c_str(), "w");
        if (!f) return;
        std::fprintf(f, "requests=%llu\naccepted=%llu\nconnections=%zu\n",
                     static_cast<unsigned long long>(requests_),
                     static_cast<unsigned long long>(accepted_), connections_);
        for (const auto& [fc, n] : by_fc_) {
            std::fprintf(f, "fc%d=%llu\n", fc, static_cast<unsigned long long>(n));
        }
        std::fclose(f);
        std::rename(tmp.c_str(), path_.c_str());
    }

  private:
    std::string path_;
    std::uint64_t requests_ = 0;
    std::uint64_t accepted_ = 0;
    std::size_t connections_ = 0;
    std::map<int, std::uint64_t> by_fc_;
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

    stats_file stats(opt.stats);
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
            stats.request(query[header]);
            if (opt.silent) continue;
            if (opt.delay_ms > 0)
                std::this_thread::sleep_for(std::chrono::milliseconds(opt.delay_ms));
            if (opt.wave) update_wave(map, start);

            int rc;
            const int unit = query[header - 1];
            const auto [lo, hi] = request_range(query, header);
            bool failing = false;
            for (const auto& [from, to] : opt.fail) {
                if (lo >= 0 && lo <= to && hi >= from) failing = true;
            }
            if (opt.unit >= 0 && unit != opt.unit) {
                rc = modbus_reply_exception(ctx, query, MODBUS_EXCEPTION_GATEWAY_TARGET);
            } else if (failing) {
                rc = modbus_reply_exception(ctx, query, MODBUS_EXCEPTION_ILLEGAL_DATA_ADDRESS);
            } else {
                rc = modbus_reply(ctx, query, len, map);
            }
            if (rc < 0) closed.push_back(fd);
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
