// spool::append_group: the messages of one rule pass in one transaction (spool.hpp). Only the
// plain case; anything else is left to append(), which has the policies and the errors.
#include <unordered_map>

#include "core/log.hpp"
#include "upstream/spool_codec.hpp"
#include "upstream/spool_impl.hpp"

namespace ferry::upstream {

std::size_t spool::append_group(std::span<const group_item> items) {
    try {
        return impl_->append_group(items);
    } catch (...) {
        return 0;  // nothing committed: append() one by one reports what is wrong
    }
}

std::size_t spool::impl::append_group(std::span<const group_item> items) {
    thread_local std::string encoded;
    thread_local std::string stored;
    struct done {
        std::uint64_t batch_no;
        std::int64_t id;
        std::uint64_t need;
    };
    std::vector<done> stored_rows;
    std::unique_lock lock(mu_);
    if (closed_ || items.size() < 2) return 0;
    run_deferred_salvage("append");
    retry_acks();
    if (db_ == nullptr || salvage_rc_ != 0) return 0;
    // A topic twice in the group takes consecutive numbers before any is committed.
    std::unordered_map<std::string_view, std::uint64_t> numbers;
    std::uint64_t group_bytes = 0;
    bool open = false;
    auto give_up = [&](int rc) {
        if (open) rollback();
        if (rc != SQLITE_OK) record_error(rc, "append");
        return std::size_t{0};
    };
    for (const auto& m : items) {
        auto [it, fresh] = numbers.try_emplace(m.topic, 0);
        const std::uint64_t batch_no = fresh ? next_batch(m.topic) : it->second + 1;
        encoded.clear();
        try {
            m.encode(batch_no, encoded);
            if (settings_.compress)
                spool_codec::encode(encoded, stored);
            else
                stored.swap(encoded);
        } catch (...) {
            return give_up(SQLITE_OK);  // append() meets it again and reports it
        }
        const std::uint64_t need = m.topic.size() + stored.size();
        // Stop short of anything append() decides by policy: a full spool, the disk reserve.
        if (bytes_.load() + group_bytes + need > settings_.max_bytes ||
            below_disk_reserve(group_bytes + need))
            break;
        if (!open) {
            if (const int rc = step_done(begin_); rc != SQLITE_OK) return give_up(rc);
            open = true;
        }
        std::int64_t id = 0;
        if (const int rc = insert_row(m, batch_no, stored, id); rc != SQLITE_OK) return give_up(rc);
        it->second = batch_no;
        group_bytes += need;
        stored_rows.push_back({batch_no, id, need});
    }
    if (!open) return 0;
    if (const int rc = step_done(commit_); rc != SQLITE_OK) return give_up(rc);
    // Committed: from here on nothing may make the caller append these again (the public
    // append_group answers 0 to an exception, and the caller would store them twice).
    try {
        for (std::size_t i = 0; i < stored_rows.size(); ++i)
            on_stored(items[i].topic, stored_rows[i].batch_no, stored_rows[i].id,
                      stored_rows[i].need, items[i].events);
        set_gauges();
    } catch (...) {
        log::error(component, "accounting after a grouped append failed");
    }
    lock.unlock();
    data_cv_.notify_all();
    return stored_rows.size();
}

}  // namespace ferry::upstream
