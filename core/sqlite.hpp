// The small layer over SQLite's C API that every store in Ferry shares (the spool, the
// command-id store): a prepared statement that finalizes itself, a scope that resets it after
// each use, bind and column helpers on std::string_view, and errors that carry
// sqlite3_errmsg.
//
// Deliberately thin: callers still call sqlite3_step() on the raw handle where they act on
// its result code (the spool sorts every code into disk full, I/O error or damage), and own
// their connection (open flags, pragmas and close order differ per store).
//
// Threading: nothing of its own. A statement belongs to its connection and may be used only
// where that connection may; finalize it before the connection is closed (sqlite3_close
// refuses a connection with live statements).
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ferry::sqlite {

// sqlite3_errmsg(db), or sqlite3_errstr(rc) when there is no connection (a failed open
// may leave none).
std::string message(sqlite3* db, int rc);

// A failed SQLite call: what() is "<what>: <message(db, rc)>", code() the result code.
class error : public std::runtime_error {
  public:
    error(sqlite3* db, int rc, std::string_view what);
    int code() const noexcept { return code_; }

  private:
    int code_;
};

// Owns one prepared statement (or none); finalized when destroyed or re-prepared.
class statement {
  public:
    // Flags for sqlite3_prepare_v3: PERSISTENT for statements kept for the life of the
    // connection (SQLite then allocates them outside its lookaside), 0 for one-off ones.
    static constexpr unsigned persistent = SQLITE_PREPARE_PERSISTENT;

    statement() = default;
    // Prepares `sql` on `db`; throws sqlite::error when it does not compile.
    statement(sqlite3* db, std::string_view sql, unsigned flags = persistent);
    ~statement() { finalize(); }
    statement(const statement&) = delete;
    statement& operator=(const statement&) = delete;

    // Prepares `sql` on `db`, finalizing what was held; returns SQLite's result code (the
    // statement is empty unless it is SQLITE_OK).
    int prepare(sqlite3* db, std::string_view sql, unsigned flags = persistent) noexcept;
    sqlite3_stmt* get() const noexcept { return stmt_; }
    void finalize() noexcept;

  private:
    sqlite3_stmt* stmt_ = nullptr;
};

// One use of a kept statement: resets it and clears its bindings when the scope ends,
// whatever happened in it, so it is ready for the next use. Bindings made before the scope
// began are kept until then.
class use {
  public:
    explicit use(const statement& s) noexcept : s_(s.get()) {}
    use(const use&) = delete;
    use& operator=(const use&) = delete;
    ~use() {
        sqlite3_reset(s_);
        sqlite3_clear_bindings(s_);
    }
    sqlite3_stmt* operator*() const noexcept { return s_; }

  private:
    sqlite3_stmt* s_;
};

// Steps `s` once inside a use (reset afterwards): SQLITE_OK when it ran (DONE, or a first
// ROW that is not wanted), else the result code.
int step_done(const statement& s);

// Binding parameter `i` (from 1, as ?1 in SQL). SQLITE_STATIC (the default) does not copy:
// the bytes must stay valid until the statement is reset; SQLITE_TRANSIENT copies them.
// An empty view binds an empty value, never NULL (SQLite binds NULL for a null pointer).
inline int bind_text(sqlite3_stmt* s, int i, std::string_view text,
                     sqlite3_destructor_type how = SQLITE_STATIC) {
    return sqlite3_bind_text64(s, i, text.data() != nullptr ? text.data() : "", text.size(), how,
                               SQLITE_UTF8);
}
inline int bind_blob(sqlite3_stmt* s, int i, std::string_view bytes,
                     sqlite3_destructor_type how = SQLITE_STATIC) {
    return sqlite3_bind_blob64(s, i, bytes.data() != nullptr ? bytes.data() : "", bytes.size(),
                               how);
}

// Column `c` of the current row as text, with its length ("" for NULL). Valid until the
// statement steps again or is reset.
inline std::string_view column_text(sqlite3_stmt* s, int c) {
    const auto* t = reinterpret_cast<const char*>(sqlite3_column_text(s, c));
    if (t == nullptr) return {};
    return {t, static_cast<std::size_t>(sqlite3_column_bytes(s, c))};
}

}  // namespace ferry::sqlite
