// ferry: the command line of CONTRACT.md.
//   ferry run -c FILE | ferry check -c FILE | ferry version | ferry probe modbus [--scan] ...
// Exit codes: 0 ok, 1 invalid config or input, 2 usage error, 3 runtime failure.
#include <malloc.h>
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/log.hpp"
#include "drivers/modbus/probe.hpp"
#include "gateway/components.hpp"
#include "gateway/daemon.hpp"

namespace {

constexpr int k_ok = 0;
constexpr int k_invalid = 1;
constexpr int k_usage = 2;
constexpr int k_runtime = 3;

const char* const k_usage_text =
    "usage: ferry run   -c FILE    run in the foreground\n"
    "       ferry check -c FILE    validate a config file\n"
    "       ferry check --expand -c FILE\n"
    "                              validate, then print the config resolved (profiles,\n"
    "                              unit-id ranges) as YAML\n"
    "       ferry version          version, build type, target architecture\n"
    "       ferry probe modbus ... read registers once and print every decoding\n"
    "       ferry probe modbus ... --scan RANGE\n"
    "                              which unit ids of a line answer, and which profiles\n"
    "                              their registers fit (ferry probe modbus --help)\n";

int usage(const char* why) {
    if (why) std::fprintf(stderr, "ferry: %s\n", why);
    std::fputs(k_usage_text, stderr);
    return k_usage;
}

// Parses "-c FILE" / "--config FILE" / "--config=FILE", and "--expand" where `expand` is given
// (ferry check); nothing else is accepted.
bool config_arg(const std::vector<std::string>& args, std::string& file, std::string& why,
                bool* expand = nullptr) {
    for (std::size_t i = 0; i < args.size(); ++i) {
        const auto& a = args[i];
        if (a == "--expand" && expand) {
            *expand = true;
        } else if (a == "-c" || a == "--config") {
            if (i + 1 >= args.size()) {
                why = a + " needs a file";
                return false;
            }
            file = args[++i];
        } else if (a.rfind("--config=", 0) == 0) {
            file = a.substr(9);
        } else {
            why = "unknown argument '" + a + "'";
            return false;
        }
    }
    if (file.empty()) {
        why = "missing -c FILE";
        return false;
    }
    return true;
}

int load(const std::string& file, ferry::config::config& out) {
    try {
        out = ferry::load_config(file);
        return k_ok;
    } catch (const ferry::config::errors& e) {
        for (const auto& err : e.list())
            std::fprintf(stderr, "%s\n", err.to_string().c_str());
        return k_invalid;
    }
}

// ferry check --expand: the resolved config on stdout, or the errors as `ferry check` prints
// them.
int expand(const std::string& file) {
    try {
        std::fputs(ferry::expand_config(file).c_str(), stdout);
        return k_ok;
    } catch (const ferry::config::errors& e) {
        for (const auto& err : e.list())
            std::fprintf(stderr, "%s\n", err.to_string().c_str());
        return k_invalid;
    }
}

}  // namespace

int main(int argc, char** argv) {
    // glibc gives each thread that allocates its own 64 MiB arena; a gateway with a handful
    // of threads and modest allocation rates is better served by two (measured: 41 -> 36 MiB
    // RSS in bench/e2e_bench, CPU unchanged; docs/PERFORMANCE.md).
    mallopt(M_ARENA_MAX, 2);
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) return usage(nullptr);
    const std::string cmd = args[0];
    args.erase(args.begin());

    if (cmd == "version" || cmd == "--version") {
        std::printf("ferry %s (%s, %s)\n", ferry::build_info::version(),
                    ferry::build_info::build_type(), ferry::build_info::arch());
        return k_ok;
    }
    if (cmd == "help" || cmd == "--help" || cmd == "-h") {
        std::fputs(k_usage_text, stdout);
        return k_ok;
    }
    if (cmd == "probe")
        return ferry::drivers::modbus::probe_main(args, stdout, stderr, ferry::config_schema());
    if (cmd != "run" && cmd != "check") return usage(("unknown command '" + cmd + "'").c_str());

    std::string file, why;
    bool expand_it = false;
    if (!config_arg(args, file, why, cmd == "check" ? &expand_it : nullptr))
        return usage(why.c_str());
    if (expand_it) return expand(file);

    ferry::config::config cfg;
    if (int rc = load(file, cfg); rc != k_ok) return rc;
    if (cmd == "check") {
        std::printf("%s: ok\n", file.c_str());
        return k_ok;
    }

    // Block the signals in every thread; the daemon waits for them with sigwait().
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    signal(SIGPIPE, SIG_IGN);

    try {
        ferry::daemon d(std::move(cfg));
        return d.run();
    } catch (const std::exception& e) {
        ferry::log::error("ferry", "fatal", {{"error", e.what()}});
        return k_runtime;
    }
}
