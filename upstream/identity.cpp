#include "upstream/identity.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/log.hpp"
#include "upstream/spool.hpp"

namespace ferry::upstream {

namespace {
constexpr std::string_view component = "seq";
}

std::uint64_t unix_us() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
}

std::uint64_t unix_ms_now() {
    return unix_us() / 1000;
}

std::uint64_t read_identity_file(const std::string& path) {
    std::ifstream in(path);
    std::string key;
    std::uint64_t value = 0;
    while (in >> key) {
        if (key == "seq_high_water" && (in >> value)) return value;
    }
    return 0;
}

bool write_identity_file(const std::string& path, std::uint64_t high_water) {
    const std::string tmp = path + ".tmp";
    const std::string body =
        "# ferry identity: the largest seq this gateway may have used\n"
        "seq_high_water " +
        std::to_string(high_water) + "\n";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    bool ok = ::write(fd, body.data(), body.size()) == static_cast<ssize_t>(body.size()) &&
              ::fsync(fd) == 0;
    int saved = errno;
    ::close(fd);
    if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
        if (ok) saved = errno;
        ::unlink(tmp.c_str());
        errno = saved;
        return false;
    }
    // The rename is durable only once the directory is.
    auto dir = std::filesystem::path(path).parent_path();
    if (dir.empty()) dir = ".";
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return false;
    ok = ::fsync(dfd) == 0;
    saved = errno;
    ::close(dfd);
    errno = saved;
    return ok;
}

identity::identity(std::string path, spool& sp, prometheus::Registry& registry)
    : path_(std::move(path)), spool_(sp) {
    auto& errors = prometheus::BuildCounter()
                       .Name("ferry_seq_persist_errors_total")
                       .Help("Failed writes of a copy of the seq high-water mark, by copy")
                       .Register(registry);
    err_spool_ = &errors.Add({{"copy", "spool"}});
    err_file_ = &errors.Add({{"copy", "file"}});
}

std::uint64_t identity::seq_start() {
    const std::uint64_t in_spool = spool_.load_state(k_seq_key, 0);
    const std::uint64_t in_file = read_identity_file(path_);
    const std::uint64_t clock = unix_us();
    const std::uint64_t start = std::max({in_spool, in_file, clock});
    log::info(component, "seq starts",
              {{"after", std::to_string(start)},
               {"spool_high_water", std::to_string(in_spool)},
               {"file_high_water", std::to_string(in_file)},
               {"clock_us", std::to_string(clock)},
               {"from", start == in_spool  ? "spool"
                        : start == in_file ? "identity_file"
                                           : "clock"}});
    return start;
}

bool identity::persist(std::uint64_t high_water) {
    const bool in_spool = spool_.store_state(k_seq_key, high_water);
    if (!in_spool) err_spool_->Increment();
    const bool in_file = write_identity_file(path_, high_water);
    if (!in_file) {
        err_file_->Increment();
        log::error(component, "cannot write the identity file",
                   {{"path", path_}, {"error", std::strerror(errno)}});
    }
    if (!in_spool && !in_file) {
        log::error(component,
                   "seq high-water mark not stored anywhere; numbers handed out until it is "
                   "rely on the clock floor of the next start",
                   {{"high_water", std::to_string(high_water)}});
    }
    return in_spool || in_file;
}

}  // namespace ferry::upstream
