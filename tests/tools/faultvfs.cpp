// faultvfs: an SQLite VFS that injects I/O faults, for tests (as SQLite's own test harness
// does with its test_vfs). Loaded with LD_PRELOAD (libferry_faultvfs.so) into `ferry run`, or
// linked into a test executable; either way a constructor registers it as the default VFS,
// wrapping the VFS that was the default (unix), so every database the process opens goes
// through it. Without a control file it changes nothing.
//
// Control: env FERRY_FAULTVFS names a control file, read when its identity (inode, size,
// mtime) changes, looked at no more often than every 50 ms (so a test that rewrites it waits
// at least that long; rewrite it with rename so a half-written file is never read). Lines:
//   fail <op> <count|all> <EIO|ENOSPC>   the next <count> calls of op fail (or every call while
//                                        the line is there); op: open read write sync truncate
//                                        any. EIO gives SQLITE_IOERR_<OP>, ENOSPC SQLITE_FULL.
//   corrupt_read <page-no>               reads of that page (1-based, 4096 bytes) of the main
//                                        database files open (and matched) when the line is
//                                        read return its bytes inverted; by inode, so the
//                                        damage follows the file when it is renamed, and a
//                                        new file made under the same name is sound
//   match <substring>                    only files whose path contains it (default "spool.db")
// Every injected fault appends a line "<op> <file> <errno-name|page=N>" to $FERRY_FAULTVFS.log.
//
// Power cuts: with FERRY_FAULTVFS_DURABLE=1, every successful xSync of a matched file copies
// the file to "<file>.durable" (what a disk is sure to hold after a power cut), and xDelete
// removes that copy. tests/tools/powercut.sh then replaces every SQLite file by its .durable
// copy, or deletes it when it has none, after the test killed the process with SIGKILL.
//
// Thread-safe: one mutex around the control state. Counts are per process.
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace {

enum op { op_open, op_read, op_write, op_sync, op_truncate, op_any };
constexpr const char* op_names[] = {"open", "read", "write", "sync", "truncate", "any"};
constexpr int k_page = 4096;

struct fail_rule {
    op what = op_any;
    long remaining = 0;  // -1: every call
    bool enospc = false;
};

struct control {
    std::mutex mu;
    std::vector<fail_rule> rules;
    std::vector<std::int64_t> corrupt_pages;
    // Main database files open now (by inode), and the (inode, page) pairs corrupt_read
    // applies to: the files that were open and matched when the line was read. Keyed by
    // inode, the damage follows a file that is renamed (a spool moved aside) and does not
    // touch a new file created under the same name.
    struct open_file {
        const void* file;
        ino_t ino;
        const char* path;
    };
    std::vector<open_file> open_main;
    std::vector<std::pair<ino_t, std::int64_t>> corrupt;
    std::string match = "spool.db";
    // Identity of the control file last read; all zero: none.
    ino_t ino = 0;
    off_t size = -1;
    timespec mtime{};
    std::chrono::steady_clock::time_point checked{};
    bool durable = false;
};

control& ctl() {
    static control c;
    return c;
}

sqlite3_vfs* g_real = nullptr;
sqlite3_vfs g_vfs;

// Re-reads the control file when it changed; called with ctl().mu held.
void refresh(control& c) {
    auto now = std::chrono::steady_clock::now();
    if (c.checked != std::chrono::steady_clock::time_point{} &&
        now - c.checked < std::chrono::milliseconds(50))
        return;
    c.checked = now;
    const char* d = std::getenv("FERRY_FAULTVFS_DURABLE");
    c.durable = d != nullptr && std::strcmp(d, "1") == 0;
    const char* path = std::getenv("FERRY_FAULTVFS");
    struct stat st {};
    if (path == nullptr || *path == '\0' || ::stat(path, &st) != 0) {
        // No control file: no faults, the damage of corrupt_read included (it names files by
        // inode, and a file made later may get a freed inode).
        if (c.size != -1) {
            c.rules.clear();
            c.corrupt_pages.clear();
            c.corrupt.clear();
            c.match = "spool.db";
            c.size = -1;
            c.ino = 0;
        }
        return;
    }
    if (st.st_ino == c.ino && st.st_size == c.size && st.st_mtim.tv_sec == c.mtime.tv_sec &&
        st.st_mtim.tv_nsec == c.mtime.tv_nsec)
        return;
    c.ino = st.st_ino;
    c.size = st.st_size;
    c.mtime = st.st_mtim;
    c.rules.clear();
    c.corrupt_pages.clear();
    c.match = "spool.db";
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::string word;
        if (!(ls >> word) || word[0] == '#') continue;
        if (word == "fail") {
            std::string o, count, err;
            ls >> o >> count >> err;
            fail_rule r;
            auto it = std::find(std::begin(op_names), std::end(op_names), o);
            if (it == std::end(op_names)) continue;
            r.what = static_cast<op>(it - std::begin(op_names));
            r.remaining = count == "all" ? -1 : std::strtol(count.c_str(), nullptr, 10);
            r.enospc = err == "ENOSPC";
            c.rules.push_back(r);
        } else if (word == "corrupt_read") {
            std::int64_t page = 0;
            if (ls >> page) c.corrupt_pages.push_back(page);
        } else if (word == "match") {
            ls >> c.match;
        }
    }
    c.corrupt.clear();
    for (std::int64_t page : c.corrupt_pages)
        for (const auto& f : c.open_main)
            if (std::strstr(f.path, c.match.c_str()) != nullptr)
                c.corrupt.emplace_back(f.ino, page);
}

void log_fault(const char* what, const char* file, const std::string& detail) {
    const char* path = std::getenv("FERRY_FAULTVFS");
    if (path == nullptr) return;
    std::string line =
        std::string(what) + " " + (file != nullptr ? file : "?") + " " + detail + "\n";
    std::string log = std::string(path) + ".log";
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    ssize_t n = ::write(fd, line.data(), line.size());
    (void)n;
    ::close(fd);
}

bool matches(const control& c, const char* file) {
    return file != nullptr && std::strstr(file, c.match.c_str()) != nullptr;
}

// 0 when the call goes through; otherwise the SQLite error to return (and the fault logged).
int injected(op what, const char* file, int ioerr) {
    control& c = ctl();
    std::lock_guard lock(c.mu);
    refresh(c);
    if (c.rules.empty() || !matches(c, file)) return 0;
    for (auto& r : c.rules) {
        if (r.what != what && r.what != op_any) continue;
        if (r.remaining == 0) continue;
        if (r.remaining > 0) --r.remaining;
        log_fault(op_names[what], file, r.enospc ? "ENOSPC" : "EIO");
        if (r.enospc) return SQLITE_FULL;
        return ioerr;
    }
    return 0;
}

struct fv_file {
    sqlite3_file base;
    sqlite3_file* real;  // the wrapped VFS's file, allocated right after this struct
    const char* path;    // valid until xClose (SQLite's promise for xOpen's zName)
    bool main_db;
    ino_t ino;  // main db files: their inode (corrupt_read)
};

sqlite3_file* real_of(sqlite3_file* f) {
    return reinterpret_cast<fv_file*>(f)->real;
}

// Copies the file to `path.durable` (temp + rename): what survives a power cut. Read through
// the open SQLite file, never a second descriptor: closing another descriptor of the file
// would drop the process's POSIX locks on it (SQLite's exclusive lock among them).
void durable_copy(sqlite3_file* real, const char* path) {
    if (path == nullptr) return;
    std::string tmp = std::string(path) + ".durable.tmp";
    std::string dst = std::string(path) + ".durable";
    sqlite3_int64 size = 0;
    if (real->pMethods->xFileSize(real, &size) != SQLITE_OK) return;
    int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) return;
    static thread_local char buf[1 << 16];
    bool ok = true;
    for (sqlite3_int64 off = 0; ok && off < size;) {
        const int n = static_cast<int>(std::min<sqlite3_int64>(sizeof buf, size - off));
        ok = real->pMethods->xRead(real, buf, n, off) == SQLITE_OK &&
             ::write(out, buf, static_cast<std::size_t>(n)) == n;
        off += n;
    }
    ::close(out);
    if (ok)
        ::rename(tmp.c_str(), dst.c_str());
    else
        ::unlink(tmp.c_str());
}

bool durable_on(const char* file) {
    control& c = ctl();
    std::lock_guard lock(c.mu);
    refresh(c);
    return c.durable && matches(c, file);
}

int fv_close(sqlite3_file* f) {
    sqlite3_file* r = real_of(f);
    int rc = r->pMethods != nullptr ? r->pMethods->xClose(r) : SQLITE_OK;
    f->pMethods = nullptr;
    if (reinterpret_cast<fv_file*>(f)->main_db) {
        control& c = ctl();
        std::lock_guard lock(c.mu);
        std::erase_if(c.open_main, [&](const auto& o) { return o.file == f; });
    }
    return rc;
}

int fv_read(sqlite3_file* f, void* buf, int amt, sqlite3_int64 off) {
    auto* ff = reinterpret_cast<fv_file*>(f);
    if (int e = injected(op_read, ff->path, SQLITE_IOERR_READ)) return e;
    int rc = ff->real->pMethods->xRead(ff->real, buf, amt, off);
    if (rc != SQLITE_OK || !ff->main_db) return rc;
    control& c = ctl();
    std::vector<std::int64_t> pages;
    {
        std::lock_guard lock(c.mu);
        refresh(c);
        for (const auto& [ino, page] : c.corrupt)
            if (ino == ff->ino) pages.push_back(page);
        if (pages.empty()) return rc;
    }
    for (std::int64_t p : pages) {
        const std::int64_t from = std::max<std::int64_t>((p - 1) * k_page, off);
        const std::int64_t to = std::min<std::int64_t>(p * k_page, off + amt);
        if (from >= to) continue;
        auto* b = static_cast<unsigned char*>(buf);
        for (std::int64_t i = from; i < to; ++i)
            b[i - off] = static_cast<unsigned char>(~b[i - off]);
        log_fault("corrupt_read", ff->path, "page=" + std::to_string(p));
    }
    return rc;
}

int fv_write(sqlite3_file* f, const void* buf, int amt, sqlite3_int64 off) {
    auto* ff = reinterpret_cast<fv_file*>(f);
    if (int e = injected(op_write, ff->path, SQLITE_IOERR_WRITE)) return e;
    return ff->real->pMethods->xWrite(ff->real, buf, amt, off);
}

int fv_truncate(sqlite3_file* f, sqlite3_int64 size) {
    auto* ff = reinterpret_cast<fv_file*>(f);
    if (int e = injected(op_truncate, ff->path, SQLITE_IOERR_TRUNCATE)) return e;
    return ff->real->pMethods->xTruncate(ff->real, size);
}

int fv_sync(sqlite3_file* f, int flags) {
    auto* ff = reinterpret_cast<fv_file*>(f);
    if (int e = injected(op_sync, ff->path, SQLITE_IOERR_FSYNC)) return e;
    int rc = ff->real->pMethods->xSync(ff->real, flags);
    if (rc == SQLITE_OK && durable_on(ff->path)) durable_copy(ff->real, ff->path);
    return rc;
}

int fv_file_size(sqlite3_file* f, sqlite3_int64* size) {
    return real_of(f)->pMethods->xFileSize(real_of(f), size);
}
int fv_lock(sqlite3_file* f, int l) {
    return real_of(f)->pMethods->xLock(real_of(f), l);
}
int fv_unlock(sqlite3_file* f, int l) {
    return real_of(f)->pMethods->xUnlock(real_of(f), l);
}
int fv_check_reserved(sqlite3_file* f, int* out) {
    return real_of(f)->pMethods->xCheckReservedLock(real_of(f), out);
}
int fv_file_control(sqlite3_file* f, int op, void* arg) {
    return real_of(f)->pMethods->xFileControl(real_of(f), op, arg);
}
int fv_sector_size(sqlite3_file* f) {
    return real_of(f)->pMethods->xSectorSize(real_of(f));
}
int fv_device_characteristics(sqlite3_file* f) {
    return real_of(f)->pMethods->xDeviceCharacteristics(real_of(f));
}
int fv_shm_map(sqlite3_file* f, int pg, int sz, int ext, void volatile** pp) {
    sqlite3_file* r = real_of(f);
    if (r->pMethods->iVersion < 2 || r->pMethods->xShmMap == nullptr) return SQLITE_IOERR;
    return r->pMethods->xShmMap(r, pg, sz, ext, pp);
}
int fv_shm_lock(sqlite3_file* f, int offset, int n, int flags) {
    sqlite3_file* r = real_of(f);
    if (r->pMethods->iVersion < 2 || r->pMethods->xShmLock == nullptr) return SQLITE_IOERR;
    return r->pMethods->xShmLock(r, offset, n, flags);
}
void fv_shm_barrier(sqlite3_file* f) {
    sqlite3_file* r = real_of(f);
    if (r->pMethods->iVersion >= 2 && r->pMethods->xShmBarrier != nullptr)
        r->pMethods->xShmBarrier(r);
}
int fv_shm_unmap(sqlite3_file* f, int del) {
    sqlite3_file* r = real_of(f);
    if (r->pMethods->iVersion < 2 || r->pMethods->xShmUnmap == nullptr) return SQLITE_OK;
    return r->pMethods->xShmUnmap(r, del);
}
// No memory-mapped reads: every page goes through xRead, where faults are injected.
int fv_fetch(sqlite3_file*, sqlite3_int64, int, void** pp) {
    *pp = nullptr;
    return SQLITE_OK;
}
int fv_unfetch(sqlite3_file*, sqlite3_int64, void*) {
    return SQLITE_OK;
}

const sqlite3_io_methods g_methods = {
    3,
    fv_close,
    fv_read,
    fv_write,
    fv_truncate,
    fv_sync,
    fv_file_size,
    fv_lock,
    fv_unlock,
    fv_check_reserved,
    fv_file_control,
    fv_sector_size,
    fv_device_characteristics,
    fv_shm_map,
    fv_shm_lock,
    fv_shm_barrier,
    fv_shm_unmap,
    fv_fetch,
    fv_unfetch,
};

int fv_open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags) {
    auto* ff = reinterpret_cast<fv_file*>(f);
    ff->base.pMethods = nullptr;
    ff->real = reinterpret_cast<sqlite3_file*>(ff + 1);
    ff->path = name;
    ff->main_db = (flags & SQLITE_OPEN_MAIN_DB) != 0;
    if (int e = injected(op_open, name, SQLITE_IOERR))
        return e == SQLITE_IOERR ? SQLITE_CANTOPEN : e;
    int rc = g_real->xOpen(g_real, name, ff->real, flags, out_flags);
    if (ff->real->pMethods != nullptr) ff->base.pMethods = &g_methods;
    ff->ino = 0;
    struct stat st {};
    if (rc == SQLITE_OK && ff->main_db && name != nullptr && ::stat(name, &st) == 0) {
        ff->ino = st.st_ino;
        control& c = ctl();
        std::lock_guard lock(c.mu);
        c.open_main.push_back({f, st.st_ino, name});
    }
    return rc;
}

int fv_delete(sqlite3_vfs*, const char* name, int sync_dir) {
    int rc = g_real->xDelete(g_real, name, sync_dir);
    if (rc == SQLITE_OK && durable_on(name)) ::unlink((std::string(name) + ".durable").c_str());
    return rc;
}
int fv_access(sqlite3_vfs*, const char* name, int flags, int* out) {
    return g_real->xAccess(g_real, name, flags, out);
}
int fv_full_pathname(sqlite3_vfs*, const char* name, int n, char* out) {
    return g_real->xFullPathname(g_real, name, n, out);
}
void* fv_dl_open(sqlite3_vfs*, const char* name) {
    return g_real->xDlOpen(g_real, name);
}
void fv_dl_error(sqlite3_vfs*, int n, char* msg) {
    g_real->xDlError(g_real, n, msg);
}
void (*fv_dl_sym(sqlite3_vfs*, void* h, const char* sym))(void) {
    return g_real->xDlSym(g_real, h, sym);
}
void fv_dl_close(sqlite3_vfs*, void* h) {
    g_real->xDlClose(g_real, h);
}
int fv_randomness(sqlite3_vfs*, int n, char* out) {
    return g_real->xRandomness(g_real, n, out);
}
int fv_sleep(sqlite3_vfs*, int us) {
    return g_real->xSleep(g_real, us);
}
int fv_current_time(sqlite3_vfs*, double* out) {
    return g_real->xCurrentTime(g_real, out);
}
int fv_get_last_error(sqlite3_vfs*, int n, char* out) {
    return g_real->xGetLastError != nullptr ? g_real->xGetLastError(g_real, n, out) : 0;
}
int fv_current_time_int64(sqlite3_vfs*, sqlite3_int64* out) {
    return g_real->xCurrentTimeInt64(g_real, out);
}

__attribute__((constructor)) void faultvfs_register() {
    if (sqlite3_initialize() != SQLITE_OK) return;
    g_real = sqlite3_vfs_find(nullptr);
    if (g_real == nullptr || g_real->iVersion < 2) return;
    std::memset(&g_vfs, 0, sizeof g_vfs);
    g_vfs.iVersion = 2;
    // Our header, then the real file, aligned as SQLite aligns its own allocations.
    g_vfs.szOsFile = static_cast<int>((sizeof(fv_file) + 7) / 8 * 8) + g_real->szOsFile;
    g_vfs.mxPathname = g_real->mxPathname;
    g_vfs.zName = "ferry_faultvfs";
    g_vfs.xOpen = fv_open;
    g_vfs.xDelete = fv_delete;
    g_vfs.xAccess = fv_access;
    g_vfs.xFullPathname = fv_full_pathname;
    g_vfs.xDlOpen = fv_dl_open;
    g_vfs.xDlError = fv_dl_error;
    g_vfs.xDlSym = fv_dl_sym;
    g_vfs.xDlClose = fv_dl_close;
    g_vfs.xRandomness = fv_randomness;
    g_vfs.xSleep = fv_sleep;
    g_vfs.xCurrentTime = fv_current_time;
    g_vfs.xGetLastError = fv_get_last_error;
    g_vfs.xCurrentTimeInt64 = fv_current_time_int64;
    sqlite3_vfs_register(&g_vfs, 1);
}

}  // namespace
