// The in-flight window (design note in mqtt_publisher.cpp, docs/DELIVERY.md): filling it from
// the spool in order, publishing, completing deliveries on Paho's thread (ack the spool, then
// free the slot), the ack timeout, and settling refused publishes without reordering a topic.
#include "upstream/mqtt_publisher_impl.hpp"

#include <mqtt/message.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "core/log.hpp"
#include "core/topic.hpp"

namespace ferry::upstream {

namespace {

// A replayed JSON batch says so: {"replay":true,"gateway":...} (CONTRACT.md). Other payloads
// go as they are.
void mark_replay(std::string& payload) {
    if (payload.size() > 2 && payload[0] == '{' && payload[1] == '"')
        payload.insert(1, k_replay_mark);
}

// Return codes with which Paho fails a publish because the connection is (being) closed.
bool cancelled(int rc) {
    return rc == MQTTASYNC_DISCONNECTED || rc == MQTTASYNC_OPERATION_INCOMPLETE;
}

}  // namespace

void mqtt_publisher::impl::on_delivered(const mqtt::token& tok, bool ok) {
    const auto pub =
        static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(tok.get_user_context()));
    pending p;
    bool current = false;
    // The broker said no (MQTT 5 PUBACK/PUBREC reason >= 0x80): not a broken connection but
    // an answer about this message, settled by the refusal policy (settle_refusals).
    const int reason = static_cast<int>(tok.get_reason_code());
    const bool refused = !ok && reason >= 0x80 && !cancelled(tok.get_return_code());
    // An acknowledged message leaves the spool before its slot in the window frees: freed
    // first, the sender could publish one more while this row is still in the file, and a
    // crash then would resend one message beyond the window (the fault campaign saw 17 back
    // with a window of 16). The broker has it: removing it is right even if the connection has
    // dropped since. A resent duplicate acked again finds no row and counts 0 events, so each
    // event is counted as delivered once.
    std::uint32_t delivered_events = 0;
    if (ok) {
        std::int64_t id = 0;
        {
            std::lock_guard lk(mu_);
            auto it = outstanding_.find(pub);
            if (it == outstanding_.end()) return;  // from a connection we already gave up on
            id = it->second.id;
        }
        delivered_events = spool_.ack(id);
    }
    {
        std::lock_guard lk(mu_);
        auto it = outstanding_.find(pub);
        if (it == outstanding_.end()) {
            // Forgotten by a reconnect meanwhile; the row is gone from the spool all the same.
            m_events_delivered_.Increment(static_cast<double>(delivered_events));
            return;
        }
        p = std::move(it->second);
        outstanding_.erase(it);
        current = p.gen == gen_ && !lost_;
        // Paho cancels what was queued or in flight when the connection closes; the loss
        // itself is handled once, by the connection-lost path, and everything is resent.
        if (!ok && cancelled(tok.get_return_code())) current = false;
        if (refused) {
            refused_[p.id] = refused_publish{p.topic, p.batch, reason, p.replay};
        } else if (!ok && current) {
            publish_failed_ = true;
        }
        if (ok) {
            auto& newest = newest_acked_[{p.topic, p.replay}];
            newest = std::max(newest, p.id);
            probe_ = false;  // the broker takes messages again: open the window
            refusals_.erase(p.id);
        }
        m_inflight_.Set(static_cast<double>(outstanding_.size()));
    }
    if (refused) {
        m_published_error_.Increment();
        m_err_refused_.Increment();
        log::warn(
            k_component, "publish refused",
            {{"id", std::to_string(p.id)},
             {"topic", p.topic},
             {"batch", std::to_string(p.batch)},
             {"reason", std::to_string(reason)},
             {"words", mqtt::exception::reason_code_str(reason)},
             {"policy", settings_.refused == config::refused_policy::block ? "block" : "drop"}});
    } else if (ok) {
        m_events_delivered_.Increment(static_cast<double>(delivered_events));
        if (log::enabled(config::log_level::debug)) {
            log::debug(k_component, "acked",
                       {{"id", std::to_string(p.id)},
                        {"mid", std::to_string(tok.get_message_id())},
                        {"generation", std::to_string(p.gen)},
                        {"current", current ? "true" : "false"}});
        }
        acks_this_connection_.fetch_add(1, std::memory_order_relaxed);
        m_published_ok_.Increment();
        m_sent_.Increment();
        const auto age_ms = std::max<std::int64_t>(0, unix_ms() - p.created_ms);
        m_latency_.Observe(static_cast<double>(age_ms) / 1000.0);
    } else if (current) {
        m_published_error_.Increment();
        m_err_publish_.Increment();
        log::warn(k_component, "publish failed",
                  {{"id", std::to_string(p.id)},
                   {"rc", std::to_string(tok.get_return_code())},
                   {"reason", std::to_string(static_cast<int>(tok.get_reason_code()))},
                   {"action", "reconnect_and_resend"}});
    }
    cv_.notify_all();
}

bool mqtt_publisher::impl::publish_one(spooled_message& m, bool replay) {
    std::uint64_t pub = 0;
    {
        std::lock_guard lk(mu_);
        pub = next_pub_++;
        outstanding_[pub] =
            pending{gen_, m.id, m.created_ms, steady::now(), m.topic, batch_of(m.payload), replay};
        m_inflight_.Set(static_cast<double>(outstanding_.size()));
    }
    if (m.id > highest_taken_) {
        highest_taken_ = m.id;
        m_received_.Increment();
    }
    if (replay) {
        m_replayed_.Increment();
        mark_replay(m.payload);
    }
    // A session hook's rewrite (Sparkplug: the seq given at send time).
    if (hooks_.before_send) hooks_.before_send(m.topic, m.payload, m.created_ms);
    auto props = properties_for(m);
    try {
        auto msg =
            mqtt::make_message(m.topic, mqtt::binary_ref(std::move(m.payload)), m.qos, m.retain);
        if (!props.empty()) msg->set_properties(std::move(props));
        client_->publish(msg, reinterpret_cast<void*>(static_cast<std::uintptr_t>(pub)), listener_);
        return true;
    } catch (const mqtt::exception& e) {
        bool live = false;
        {
            std::lock_guard lk(mu_);
            outstanding_.erase(pub);
            if (cancelled(e.get_return_code())) {
                // The connection dropped under us; Paho's lost callback may still be coming.
                if (!lost_) lost_cause_ = "client disconnected";
                lost_ = true;
            } else {
                live = !lost_;
                publish_failed_ = true;
            }
        }
        if (live) {
            m_published_error_.Increment();
            m_err_publish_.Increment();
            log::warn(k_component, "publish failed",
                      {{"id", std::to_string(m.id)}, {"error", e.what()}});
        }
        cv_.notify_all();
        return false;
    }
}

mqtt_publisher::impl::cursors mqtt_publisher::impl::start_streams() {
    cursors c;
    if (replay_.order == config::replay_order::live_first) c.boundary = spool_.last_id();
    c.live = c.boundary;
    pacer_.reset(steady::now());
    if (c.boundary > 0 && spool_.messages() > 0)
        log::info(k_component, "replaying the backlog beside live data",
                  {{"backlog_messages_at_most", std::to_string(spool_.messages())},
                   {"up_to_id", std::to_string(c.boundary)},
                   {"rate", replay_.rate > 0 ? std::to_string(replay_.rate) : "unpaced"}});
    return c;
}

// Fills the window from the spool: live messages first, then the backlog's replay (at the
// pacer's rate) in the room left. A live message that finds the window full waits for one
// acknowledgement; pacing the replay keeps room for it. Each stream keeps the sliding-window
// rule on its own.
void mqtt_publisher::impl::fill_window(cursors& c) {
    // Acked rows the spool could not delete yet (disk errors) keep their slot: a crash now
    // would resend them, and resends must stay within the window (the 31-min fault campaign,
    // seed 3290849218, saw 17 back with a window of 16 after write errors and a kill -9).
    const std::size_t unsettled = spool_.unsettled_acks();
    // The window also slides: in each stream, no message newer than the oldest unacknowledged
    // one of that stream plus the window goes out (spool ids), so a resend never reaches
    // further back than the window even when the broker acknowledges later messages but not an
    // earlier one (the campaign, seed 1336295787: PUBACKs withheld, then passed again, a resend
    // 17 back with 12 in flight).
    struct room {
        std::size_t free = 0, live = 0, replay = 0;
        std::int64_t last_live = std::numeric_limits<std::int64_t>::max();
        std::int64_t last_replay = std::numeric_limits<std::int64_t>::max();
    } r;
    {
        std::unique_lock lk(mu_);
        // After a refusal nothing new is taken until the window has settled, then one message
        // at a time until the broker accepts one (see settle_refusals).
        const std::size_t window = !refused_.empty() ? 0 : probe_ ? 1 : window_;
        const auto rooms = [&] {
            room out;
            const std::size_t busy = outstanding_.size() + unsettled;
            out.free = window - std::min(window, busy);
            std::int64_t oldest_live = std::numeric_limits<std::int64_t>::max();
            std::int64_t oldest_replay = oldest_live;
            for (const auto& [pub, p] : outstanding_) {
                auto& oldest = p.replay ? oldest_replay : oldest_live;
                oldest = std::min(oldest, p.id);
            }
            const auto slide = [&](std::int64_t oldest, std::int64_t cursor, std::int64_t& last) {
                if (oldest == std::numeric_limits<std::int64_t>::max() || window == 0)
                    return window;
                last = oldest + static_cast<std::int64_t>(window) - 1;
                return cursor >= last ? std::size_t{0} : static_cast<std::size_t>(last - cursor);
            };
            out.live = std::min(out.free, slide(oldest_live, c.live, out.last_live));
            if (c.replaying())
                out.replay = std::min(out.free, slide(oldest_replay, c.replay, out.last_replay));
            return out;
        };
        r = rooms();
        if (r.live == 0 && r.replay == 0) {
            if (unsettled != 0 && outstanding_.size() < window) {
                // Only the spool holds the window: nothing here will signal, so re-check soon.
                cv_.wait_for(lk, k_idle_wait,
                             [&] { return lost_ || publish_failed_ || stop_requested_; });
                return;
            }
            // Window full: wait for an ack (or loss, or stop).
            cv_.wait_for(lk, k_idle_wait, [&] {
                if (lost_ || publish_failed_ || stop_requested_) return true;
                if (!refused_.empty()) return outstanding_.empty();
                const auto now = rooms();
                return now.live > 0 || now.replay > 0;
            });
            return;
        }
    }
    bool sent = false;
    if (r.live > 0) {
        auto msgs = spool_.peek(c.live, r.live);
        for (auto& m : msgs) {
            if (m.id > r.last_live) break;  // beyond the sliding window (ids may have gaps)
            if (!dead_lettered(m) && !expired(m)) {
                if (!publish_one(m, false)) return;
                --r.free;
            }
            c.live = m.id;
            sent = true;
        }
    }
    r.replay = std::min(r.replay, r.free);
    auto wake = steady::now() + k_idle_wait;
    if (r.replay > 0) {
        const auto now = steady::now();
        auto msgs = spool_.peek(c.replay, r.replay);
        if (msgs.empty() || msgs.front().id > c.boundary) c.replay = c.boundary;  // all sent
        for (auto& m : msgs) {
            if (m.id > c.boundary) {
                c.replay = c.boundary;  // the backlog is through: the rest is live
                log::info(k_component, "backlog replayed", {{"up_to_id", std::to_string(m.id)}});
                break;
            }
            if (m.id > r.last_replay) break;
            if (!dead_lettered(m) && !expired(m)) {
                if (!pacer_.take(m.payload.size(), now)) {
                    wake = std::min(wake, pacer_.next(now));
                    break;
                }
                if (!publish_one(m, true)) return;
            }
            c.replay = m.id;
            sent = true;
        }
    }
    // Nothing to send: wait for a live message (or the pacer's next token, or an ack's room).
    if (!sent)
        spool_.wait_for_messages(c.live, std::chrono::ceil<std::chrono::milliseconds>(
                                             std::max(wake - steady::now(), steady::duration{})));
}

// The oldest outstanding publish has waited longer than ack_timeout. A broker (or anything in
// between) that keeps the connection alive, answering pings, but never acks would otherwise
// hold the window full forever; a reconnect makes the resend from the oldest happen.
bool mqtt_publisher::impl::ack_overdue() {
    std::int64_t id = 0;
    steady::duration waited{};
    std::size_t unacked = 0;
    {
        std::lock_guard lk(mu_);
        if (outstanding_.empty()) return false;
        const auto oldest = std::min_element(
            outstanding_.begin(), outstanding_.end(),
            [](const auto& a, const auto& b) { return a.second.sent < b.second.sent; });
        id = oldest->second.id;
        waited = steady::now() - oldest->second.sent;
        unacked = outstanding_.size();
    }
    if (waited < settings_.ack_timeout) return false;
    m_err_ack_timeout_.Increment();
    log::warn(
        k_component, "no PUBACK in time",
        {{"id", std::to_string(id)},
         {"waited_ms", ms_string(std::chrono::duration_cast<std::chrono::milliseconds>(waited))},
         {"ack_timeout_ms", ms_string(settings_.ack_timeout)},
         {"unacked", std::to_string(unacked)},
         {"action", "reconnect_and_resend"}});
    return true;
}

// Every publish of the window that held a refusal has its answer (or was forgotten with a
// lost connection).
bool mqtt_publisher::impl::refusals_settled() {
    std::lock_guard lk(mu_);
    return !refused_.empty() && outstanding_.empty();
}

// Settles the refused publishes of a window once nothing is outstanding (fill_window takes
// nothing new meanwhile). Per refused message, oldest first:
//  - a later message on its topic was accepted (or may have been: its answer was lost with
//    the connection): delivering this one now would show a consumer an older batch after a
//    newer one on that topic, so it is dropped, whatever the policy;
//  - policy `drop` and refused `refused_attempts` times: dropped;
//  - else it stays in the spool. The stream resumes from the oldest message in the spool, one
//    message at a time until the broker accepts one, after a backoff that doubles with each
//    refusal of the same message: nothing newer overtakes it, and `block` does not creep.
// Messages the broker accepted in the window were acked as usual: the consumer has them.
void mqtt_publisher::impl::settle_refusals(cursors& cursor) {
    struct verdict {
        std::int64_t id;
        refused_publish r;
        int times;
        bool overtaken;
    };
    std::vector<verdict> verdicts;
    {
        std::lock_guard lk(mu_);
        for (auto& [id, r] : refused_) {
            std::int64_t newer = 0;
            // Order is per topic within a stream: a live message accepted after a refused
            // replayed one is the point of live first, not an overtaking.
            const stream_key key{r.topic, r.replay};
            if (auto it = newest_acked_.find(key); it != newest_acked_.end()) newer = it->second;
            if (auto it = maybe_acked_.find(key); it != maybe_acked_.end())
                newer = std::max(newer, it->second);
            verdicts.push_back({id, std::move(r), ++refusals_[id], newer > id});
        }
        refused_.clear();
        maybe_acked_.clear();
    }
    int kept_times = 0;  // refusals of the oldest message kept
    for (auto& v : verdicts) {
        const bool exhausted = settings_.refused == config::refused_policy::drop &&
                               v.times >= settings_.refused_attempts;
        if (!v.overtaken && !exhausted) {
            if (kept_times == 0) kept_times = v.times;
            continue;
        }
        {
            std::lock_guard lk(mu_);
            refusals_.erase(v.id);
        }
        const auto events = spool_.drop(v.id);
        m_dropped_refused_.Increment(static_cast<double>(events));
        log::error(k_component, "refused message dropped",
                   {{"id", std::to_string(v.id)},
                    {"topic", v.r.topic},
                    {"batch", std::to_string(v.r.batch)},
                    {"reason", std::to_string(v.r.reason)},
                    {"refusals", std::to_string(v.times)},
                    {"events", std::to_string(events)},
                    {"why", v.overtaken ? "a later message on the topic was accepted"
                                        : "refused_attempts reached"}});
    }
    // Every publish has its answer: go on from the oldest message of each stream.
    cursor.live = cursor.boundary;
    cursor.replay = 0;
    if (kept_times == 0) return;
    {
        std::lock_guard lk(mu_);
        probe_ = true;
    }
    auto delay = k_backoff_min;
    for (int i = 1; i < kept_times && delay < k_backoff_max; ++i)
        delay *= 2;
    wait_backoff(std::min(delay, k_backoff_max));
}

}  // namespace ferry::upstream
