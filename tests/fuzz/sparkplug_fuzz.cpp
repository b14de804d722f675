// Fuzz target: what a broker (or a damaged spool row) hands the Sparkplug B edge node
// (upstream/sparkplug/node.hpp): NCMD and DCMD payloads, the primary host's STATE message, and
// a spooled DDATA payload given its seq (and is_historical) at send time.
//
// The first byte picks the entry, the rest is the payload:
//   0 NCMD, 1 DCMD for the configured device, 2 DCMD for a device that does not exist,
//   3 STATE, 4 before_send of a DDATA spooled before the current birth, 5 of a later one.
// Invariants, each a trap when broken:
// - nothing throws;
// - a command is understood or refused with its reasons, never both for one metric: each
//   write names the configured device and one of its points;
// - before_send never shortens a payload, and a payload that was a Sparkplug B payload still
//   parses afterwards, with the seq it was given (0..255).
#include <prometheus/registry.h>
#include <unistd.h>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "core/event.hpp"
#include "upstream/sparkplug/node.hpp"
#include "upstream/sparkplug/sparkplug_b.pb.h"
#include "upstream/spool.hpp"

namespace sp = ferry::upstream::sparkplug;
namespace pb = org::eclipse::tahu::protobuf;

namespace {

[[noreturn]] void violated(const char* what) {
    std::fprintf(stderr, "sparkplug_fuzz: %s\n", what);
    __builtin_trap();
}

struct world {
    std::string dir;
    std::unique_ptr<ferry::upstream::spool> spool;
    ferry::point_table points;
    std::unique_ptr<sp::node> node;

    world() {
        char tmpl[] = "/tmp/ferry-fuzz-spb-XXXXXX";
        dir = ::mkdtemp(tmpl);
        ferry::config::spool_settings s;
        s.path = dir + "/spool.db";
        s.fsync = ferry::config::fsync_mode::never;
        static prometheus::Registry registry;
        spool = std::make_unique<ferry::upstream::spool>(s, registry);
        ferry::config::device d;
        d.id = "boiler1";
        for (auto [name, type] : {std::pair{"temperature", ferry::config::point_type::float32},
                                  std::pair{"level", ferry::config::point_type::int16},
                                  std::pair{"count", ferry::config::point_type::uint64},
                                  std::pair{"on", ferry::config::point_type::boolean},
                                  std::pair{"name", ferry::config::point_type::string}}) {
            ferry::config::point p;
            p.name = name;
            p.type = type;
            p.writable = true;
            d.points.push_back(p);
            points.intern(d.id, p.name, p.unit);
        }
        ferry::config::sparkplug_settings ss;
        ss.group_id = "plant";
        ss.edge_node_id = "gw1";
        node = std::make_unique<sp::node>(ss, *spool);
        node->configure({d}, points);
        node->births();  // a session: DDATA spooled before it is historical
    }
    ~world() {
        node.reset();
        spool.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }
};

world& the_world() {
    static world w;
    return w;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    auto& w = the_world();
    const std::string payload(reinterpret_cast<const char*>(data) + 1, size - 1);
    try {
        switch (data[0] % 6) {
            case 0:
            case 1:
            case 2: {
                const std::string topic = data[0] % 6 == 0   ? w.node->topic("NCMD")
                                          : data[0] % 6 == 1 ? w.node->topic("DCMD", "boiler1")
                                                             : w.node->topic("DCMD", "nobody");
                const auto c = w.node->parse_command(topic, payload);
                for (const auto& wr : c.writes) {
                    if (wr.device != "boiler1") violated("a write for another device");
                    if (!w.points.find("boiler1/" + wr.tag)) violated("a write to no point");
                }
                if (data[0] % 6 == 2 && !c.writes.empty()) violated("a write to no device");
                break;
            }
            case 3:
                w.node->host_state(payload);
                break;
            default: {
                std::string p = payload;
                pb::Payload before;
                const bool was = before.ParseFromString(p);
                const std::int64_t created = data[0] % 6 == 4 ? 0 : INT64_MAX;
                w.node->before_send(w.node->topic("DDATA", "boiler1"), p, created);
                if (p.size() < payload.size() && !was) violated("before_send shortened a payload");
                pb::Payload after;
                if (was && !after.ParseFromString(p)) violated("a payload no longer parses");
                if (was && (!after.has_seq() || after.seq() > 255)) violated("no seq in 0..255");
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "sparkplug_fuzz: threw: %s\n", e.what());
        __builtin_trap();
    }
    return 0;
}
