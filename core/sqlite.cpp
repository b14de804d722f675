#include "core/sqlite.hpp"

namespace ferry::sqlite {

std::string message(sqlite3* db, int rc) {
    return db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
}

error::error(sqlite3* db, int rc, std::string_view what)
    : std::runtime_error(std::string(what) + ": " + message(db, rc)), code_(rc) {}

statement::statement(sqlite3* db, std::string_view sql, unsigned flags) {
    const int rc = prepare(db, sql, flags);
    if (rc != SQLITE_OK) throw error(db, rc, sql);
}

int statement::prepare(sqlite3* db, std::string_view sql, unsigned flags) noexcept {
    finalize();
    return sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()), flags, &stmt_, nullptr);
}

void statement::finalize() noexcept {
    sqlite3_finalize(stmt_);
    stmt_ = nullptr;
}

int step_done(const statement& s) {
    use u(s);
    const int rc = sqlite3_step(*u);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

}  // namespace ferry::sqlite
