// Fuzz target: the config loader (core/config.hpp), YAML text to a validated config.
//
// `*_file` reads, profile files and ${NAME} substitution go through load_hooks, stubbed: a
// secret file's content is fixed ("secret", or nothing for a path containing "missing"), a
// profile file (NAME.yaml) holds one point, and only variables whose name starts with "SET"
// exist. Invariants, each a trap when broken:
// - load_config_text() returns a config or throws config::errors, nothing else;
// - every error names the file (or the profile file it stands in), has line and column >= 1
//   (the text was read) and a message;
// - a loaded config keeps its budgets: names at most k_max_name bytes, durations at most
//   k_max_duration, at most k_max_config_nodes values.
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "core/config.hpp"
#include "drivers/modbus/config.hpp"
#include "gateway/components.hpp"

namespace cfg = ferry::config;

namespace {

[[noreturn]] void violated(const char* what, std::string_view text) {
    std::fprintf(stderr, "config_fuzz: %s\n  config: %.*s\n", what,
                 static_cast<int>(std::min<std::size_t>(text.size(), 2048)), text.data());
    __builtin_trap();
}

cfg::load_hooks stubs() {
    cfg::load_hooks h;
    h.read_file = [](const std::string& path, std::size_t max_bytes,
                     std::string& why) -> std::optional<std::string> {
        if (path.find("missing") != std::string::npos) {
            why = "No such file or directory";
            return std::nullopt;
        }
        if (path.find("huge") != std::string::npos) {
            why = "larger than " + std::to_string(max_bytes) + " bytes";
            return std::nullopt;
        }
        // A profile file (gateway.profiles_dir/NAME.yaml): one point, so expansions run.
        if (path.size() > 5 && path.compare(path.size() - 5, 5, ".yaml") == 0)
            return std::string("points: [ { name: p, address: 0 } ]\n");
        return std::string("secret\n");
    };
    h.getenv = [](const std::string& name) -> std::optional<std::string> {
        if (name.rfind("SET", 0) == 0) return "1";
        return std::nullopt;
    };
    return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    static const cfg::load_hooks hooks = stubs();
    try {
        const auto c = ferry::load_config_text(text, "fuzz.yaml", hooks);
        if (c.gateway.id.size() > cfg::k_max_name) violated("gateway id too long", text);
        for (const auto& d : c.devices) {
            if (d.id.size() > cfg::k_max_name) violated("device id too long", text);
            const bool modbus = d.driver == "modbus_tcp" || d.driver == "modbus_rtu";
            if (d.poll_interval > cfg::k_max_duration ||
                (modbus && ferry::drivers::modbus::of(d).timeout > cfg::k_max_duration))
                violated("duration over the bound", text);
            for (const auto& p : d.points)
                if (p.name.size() > cfg::k_max_name) violated("point name too long", text);
        }
        for (const auto& r : c.rules)
            if (r.name.size() > cfg::k_max_name) violated("rule name too long", text);
        if (c.commands.max_age > cfg::k_max_duration) violated("max_age over the bound", text);
    } catch (const cfg::errors& e) {
        if (e.list().empty()) violated("errors thrown without an error", text);
        for (const auto& err : e.list()) {
            // An error in a profile file names that file (NAME.yaml).
            const bool ours =
                err.file == "fuzz.yaml" ||
                (err.file.size() > 5 && err.file.compare(err.file.size() - 5, 5, ".yaml") == 0);
            if (!ours || err.line < 1 || err.column < 1 || err.message.empty())
                violated(("malformed error: " + err.to_string()).c_str(), text);
        }
    } catch (const std::exception& e) {
        violated(e.what(), text);
    }
    return 0;
}
