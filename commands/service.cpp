// The command service (see commands.hpp for what is promised).
//
// Design note: the order of the checks. A malformed payload is answered first (with the id
// when there is one); then a gateway with commands disabled says so; then a repeated id is
// answered from the store before anything else is looked at, so a retry of a command that
// was written gets its original answer even if the config or the clock changed since. Only
// then device, its driver, point, writable, age, value, and last the rate limit, so that refused
// commands do not use up the device's budget. The id is recorded (fsynced) before the write is
// queued: a crash after that point can leave the id "in progress", never a second write.
#include "commands/commands.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "commands/internal.hpp"
#include "commands/store.hpp"
#include "core/log.hpp"

namespace ferry::commands {

namespace {

constexpr std::size_t k_queue = 1024;  // messages waiting for the service thread
// Repeats of an id being written that wait for its result; more are answered at once.
constexpr std::size_t k_max_waiting = 16;
// Writes queued or on the wire per device: a hanging device would otherwise collect every
// command the rate limit lets through (rate_limit per second, drained one per timeout).
constexpr std::size_t k_max_writing = 8;
constexpr const char* k_disabled =
    "commands are disabled in this gateway's config (commands.enabled: false)";

std::int64_t unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace

struct service::impl {
    config::commands_section settings;
    std::string prefix;  // ferry/{gateway}/cmd/
    std::string filter;
    std::string store_path;
    mutable std::mutex dmu;  // guards devices (a config reload replaces them)
    std::vector<config::device> devices;
    writer_for writers;
    publish_fn publish;
    std::array<prometheus::Counter*, k_results> counters{};
    std::array<std::atomic<std::uint64_t>, k_results> counted{};
    // ferry_input_rejected_total{input="command",reason}: refused by a budget.
    prometheus::Counter* too_large = nullptr;
    prometheus::Counter* too_deep = nullptr;
    prometheus::Counter* too_many_waiting = nullptr;
    prometheus::Counter* queue_full = nullptr;
    prometheus::Counter* device_busy = nullptr;

    std::mutex mu;  // guards db, buckets, in_flight
    std::unique_ptr<store> db;
    std::string store_error;
    std::map<std::string, token_bucket> buckets;
    // Ids being written, with the result topics of repeats that arrived meanwhile.
    std::map<std::string, std::vector<std::string>> in_flight;
    std::map<std::string, std::size_t> writing;  // per device: writes not finished yet

    std::mutex qmu;
    std::condition_variable qcv;
    struct message {
        std::string topic;
        std::string payload;  // only its first k_id_window bytes when over max_payload
        bool retained = false;
        std::size_t size = 0;  // of the payload as it arrived
    };
    std::deque<message> queue;
    bool stopping = false;
    std::thread thread;

    void count(result r) {
        counters[static_cast<std::size_t>(r)]->Increment();
        ++counted[static_cast<std::size_t>(r)];
    }

    // One log line and one count per answer.
    void answer(const std::string& topic, const std::optional<std::string>& id, result r, bool ok,
                const std::string& error, const std::string& device, const std::string& point,
                const std::string& value) {
        publish(topic, result_json(id, ok, error));
        count(r);
        const bool wrote = r == result::ok || r == result::device_error;
        auto level =
            ok || r == result::duplicate ? config::log_level::info : config::log_level::warn;
        log::write(level, k_component, wrote ? "write" : "command answered without a write",
                   {{"id", id ? id->substr(0, k_max_id) : std::string("null")},
                    {"device", device},
                    {"point", point},
                    {"value", value.substr(0, k_logged_value)},
                    {"result", std::string(to_string(r))},
                    {"error", error}});
    }

    // A copy: a reload may replace the devices while this command is checked and written.
    std::optional<config::device> find_device(const std::string& id) const {
        std::lock_guard lock(dmu);
        for (const auto& d : devices) {
            if (d.id == id) return d;
        }
        return std::nullopt;
    }

    void handle(const std::string& topic, const std::string& text, bool retained, std::size_t size);
    void finish(const std::string& id, const std::string& device, const std::string& point,
                const std::string& value, const std::string& topic, const write_outcome& o);
    void loop();
};

void service::impl::handle(const std::string& topic, const std::string& text, bool retained,
                           std::size_t size) {
    // ferry/{gateway}/cmd/{device}/{tag}/set
    constexpr std::string_view suffix = "/set";
    if (topic.size() <= prefix.size() + suffix.size() || topic.compare(0, prefix.size(), prefix) ||
        topic.compare(topic.size() - suffix.size(), suffix.size(), suffix))
        return;
    const auto middle = topic.substr(prefix.size(), topic.size() - prefix.size() - suffix.size());
    const auto slash = middle.find('/');
    if (slash == std::string::npos || middle.find('/', slash + 1) != std::string::npos) return;
    const auto device = middle.substr(0, slash);
    const auto point = middle.substr(slash + 1);
    const auto reply_to = prefix + middle + "/result";

    // The budget first: a payload over max_payload is never parsed (on_message kept only its
    // first k_id_window bytes), only searched for an id to answer. With commands disabled the
    // answer needs nothing but the id, so nothing else is parsed either.
    payload p;
    if (size > settings.max_payload) {
        p.id = find_id(text);
        p.error = "payload too large: " + std::to_string(size) +
                  " bytes, more than commands.max_payload (" +
                  std::to_string(settings.max_payload) + " bytes)";
        too_large->Increment();
        if (!p.id) {
            // No id to answer to: counted and logged only.
            log::warn(k_component, "command payload too large; dropped without an answer",
                      {{"topic", topic}, {"bytes", std::to_string(size)}});
            return;
        }
    } else if (!settings.enabled) {
        p.id = find_id(text);
        p.error = k_disabled;
    } else {
        p = parse_payload(text, settings.max_payload);
        if (p.too_deep) too_deep->Increment();
    }
    const auto value = p.error.empty() ? text_of(p.value) : std::string();
    auto refuse = [&](result r, const std::string& error) {
        answer(reply_to, p.id, r, false, error, device, point, value);
    };
    if (!p.error.empty())
        return refuse(p.error == k_disabled ? result::disabled : result::rejected, p.error);
    if (retained) {
        return refuse(result::rejected,
                      "a retained command is not executed (the broker would replay it at every "
                      "reconnect); publish commands with retain false");
    }
    const auto& id = *p.id;
    const auto now_ms = unix_ms();  // for "ts" (max_age): the operator's wall clock

    std::unique_lock lock(mu);
    if (!db) return refuse(result::rejected, store_error);
    if (auto it = in_flight.find(id); it != in_flight.end()) {
        // Answered together with the first when its write completes; a bounded number of
        // them (a sender repeating an id while a write hangs would grow this without end).
        if (it->second.size() < k_max_waiting) {
            it->second.push_back(reply_to);
            count(result::duplicate);
            return;
        }
        too_many_waiting->Increment();
        answer(reply_to, p.id, result::duplicate, false,
               "a write with this id is in progress; its result is not known yet (send the id "
               "again later)",
               device, point, value);
        return;
    }
    std::optional<store::entry> seen;
    try {
        seen = db->find(id, db->now());
    } catch (const std::exception& e) {
        return refuse(
            result::rejected,
            std::string("cannot read the command-id store; nothing was written: ") + e.what());
    }
    if (seen) {
        // Still "in progress" here means the result could not be stored: unknown as well.
        const auto error = seen->in_progress ? std::string(store::k_unknown_outcome) : seen->error;
        answer(reply_to, p.id, result::duplicate, seen->ok, error, device, point, value);
        return;
    }

    const auto dev = find_device(device);
    if (!dev) return refuse(result::rejected, "unknown device '" + device + "'");
    auto* w = writers(*dev);
    if (!w)
        return refuse(result::rejected,
                      "device '" + device + "' (driver " + dev->driver + ") does not take writes");
    const auto pt = std::find_if(dev->points.begin(), dev->points.end(),
                                 [&](const config::point& q) { return q.name == point; });
    if (pt == dev->points.end())
        return refuse(result::rejected, "device '" + device + "' has no point '" + point + "'");
    if (!pt->writable)
        return refuse(result::rejected, "point '" + device + "/" + point +
                                            "' is not writable (writable: false in the config)");
    bool future = false;
    if (auto why = check_age(p.ts, now_ms, settings.max_age, &future); !why.empty())
        return refuse(future ? result::rejected : result::stale, why);
    if (auto why = check_value(*pt, p.value, p.decimal); !why.empty())
        return refuse(result::rejected, why);
    if (auto why = w->check(*dev, *pt, p.value); !why.empty()) return refuse(result::rejected, why);
    if (writing[device] >= k_max_writing) {
        device_busy->Increment();
        return refuse(result::rate_limited, "device '" + device +
                                                "' is busy: " + std::to_string(k_max_writing) +
                                                " writes are waiting for it; nothing was written");
    }
    auto bucket = buckets.try_emplace(device, settings.rate_limit, settings.rate_period).first;
    if (!bucket->second.take(std::chrono::steady_clock::now())) {
        return refuse(result::rate_limited, "rate limited: device '" + device + "' takes at most " +
                                                std::to_string(settings.rate_limit) +
                                                " commands per " +
                                                std::to_string(settings.rate_period.count()) +
                                                " ms (commands.rate_limit)");
    }
    try {
        db->begin(id, device, point, db->now());
    } catch (const std::exception& e) {
        return refuse(
            result::rejected,
            std::string("cannot record the command id; nothing was written: ") + e.what());
    }
    in_flight[id];
    ++writing[device];
    lock.unlock();
    log::debug(k_component, "writing",
               {{"id", id}, {"device", device}, {"point", point}, {"value", value}});
    w->write(*dev, *pt, p.value,
             [this, id, device, point, value, reply_to](const write_outcome& o) {
                 finish(id, device, point, value, reply_to, o);
             });
}

void service::impl::finish(const std::string& id, const std::string& device,
                           const std::string& point, const std::string& value,
                           const std::string& topic, const write_outcome& o) {
    std::vector<std::string> repeats;
    {
        std::lock_guard lock(mu);
        try {
            // Nothing reached the device: the id may be sent again.
            if (o.attempted)
                db->finish(id, o.ok, o.error);
            else
                db->forget(id);
        } catch (const std::exception& e) {
            log::error(k_component, "cannot store a command's result",
                       {{"id", id}, {"error", e.what()}});
        }
        if (auto it = in_flight.find(id); it != in_flight.end()) {
            repeats = std::move(it->second);
            in_flight.erase(it);
        }
        if (auto it = writing.find(device); it != writing.end() && --it->second == 0)
            writing.erase(it);
    }
    answer(topic, id, o.ok ? result::ok : result::device_error, o.ok, o.error, device, point,
           value);
    for (const auto& t : repeats)
        publish(t, result_json(id, o.ok, o.error));
}

void service::impl::loop() {
    std::unique_lock lock(qmu);
    for (;;) {
        qcv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (stopping) break;
        auto [topic, text, retained, size] = std::move(queue.front());
        queue.pop_front();
        lock.unlock();
        try {
            handle(topic, text, retained, size);
        } catch (const std::exception& e) {
            log::error(k_component, "command failed", {{"topic", topic}, {"error", e.what()}});
        }
        lock.lock();
    }
    if (!queue.empty()) {
        log::warn(k_component, "commands not handled at shutdown (no answer sent)",
                  {{"count", std::to_string(queue.size())}});
    }
}

service::service(const config::config& cfg, std::string store_path, writer_for writers,
                 publish_fn publish, prometheus::Registry& registry)
    : impl_(std::make_unique<impl>()) {
    auto& m = *impl_;
    m.settings = cfg.commands;
    m.prefix = "ferry/" + cfg.gateway.id + "/cmd/";
    m.filter = m.prefix + "+/+/set";
    m.store_path = std::move(store_path);
    if (m.settings.enabled) m.devices = cfg.devices;  // disabled: never looked up
    m.writers = std::move(writers);
    m.publish = std::move(publish);
    auto& family = prometheus::BuildCounter()
                       .Name("ferry_commands_total")
                       .Help("Downlink commands by result")
                       .Register(registry);
    for (std::size_t r = 0; r < k_results; ++r)
        m.counters[r] = &family.Add({{"result", std::string(to_string(static_cast<result>(r)))}});
    auto& rejected = prometheus::BuildCounter()
                         .Name("ferry_input_rejected_total")
                         .Help("Inputs refused by a budget or a check, by input and reason")
                         .Register(registry);
    m.too_large = &rejected.Add({{"input", "command"}, {"reason", "too_large"}});
    m.too_deep = &rejected.Add({{"input", "command"}, {"reason", "too_deep"}});
    m.too_many_waiting = &rejected.Add({{"input", "command"}, {"reason", "too_many_waiting"}});
    m.queue_full = &rejected.Add({{"input", "command"}, {"reason", "queue_full"}});
    m.device_busy = &rejected.Add({{"input", "command"}, {"reason", "device_busy"}});
    if (!m.settings.enabled) return;
    try {
        m.db = std::make_unique<store>(m.store_path, store::options{});
    } catch (const std::exception& e) {
        m.store_error = std::string("commands are refused: the command-id store cannot be used (") +
                        e.what() + ")";
        log::error(k_component, "command-id store unusable; every command will be refused",
                   {{"path", m.store_path}, {"error", e.what()}});
    }
}

service::~service() {
    stop();
}

const std::string& service::filter() const {
    return impl_->filter;
}

void service::start() {
    std::lock_guard lock(impl_->qmu);
    if (impl_->thread.joinable() || impl_->stopping) return;
    impl_->thread = std::thread([this] { impl_->loop(); });
    log::info(k_component, impl_->settings.enabled ? "commands enabled" : "commands disabled",
              {{"filter", impl_->filter},
               {"store", impl_->settings.enabled ? impl_->store_path : std::string("-")}});
}

void service::stop() {
    {
        std::lock_guard lock(impl_->qmu);
        impl_->stopping = true;
    }
    impl_->qcv.notify_all();
    if (impl_->thread.joinable()) impl_->thread.join();
}

void service::on_message(const std::string& topic, const std::string& payload, bool retained) {
    {
        std::lock_guard lock(impl_->qmu);
        if (impl_->stopping) return;
        if (impl_->queue.size() >= k_queue) {
            // Answering here would publish from Paho's callback thread; the sender is told by
            // the missing answer and the log.
            log::warn(k_component, "command queue full; command dropped without an answer",
                      {{"topic", topic}});
            impl_->count(result::rate_limited);
            impl_->queue_full->Increment();
            return;
        }
        // Over the budget only the head is kept (to find an id to answer): the queue holds at
        // most k_queue × max_payload bytes of payloads, whatever the broker delivers.
        const std::string_view kept = payload.size() > impl_->settings.max_payload
                                          ? std::string_view(payload).substr(0, k_id_window)
                                          : std::string_view(payload);
        impl_->queue.push_back({topic, std::string(kept), retained, payload.size()});
    }
    impl_->qcv.notify_one();
}

void service::handle(const std::string& topic, const std::string& payload, bool retained) {
    impl_->handle(topic, payload, retained, payload.size());
}

void service::update_devices(std::vector<config::device> devices) {
    if (!impl_->settings.enabled) return;  // see the constructor
    std::lock_guard lock(impl_->dmu);
    impl_->devices = std::move(devices);
}

std::array<std::uint64_t, k_results> service::counts() const {
    std::array<std::uint64_t, k_results> out{};
    for (std::size_t r = 0; r < k_results; ++r)
        out[r] = impl_->counted[r].load();
    return out;
}

}  // namespace ferry::commands
