#include "gateway/components.hpp"

#include "commands/config.hpp"
#include "drivers/registry.hpp"
#include "rules/config.hpp"
#include "upstream/config.hpp"

namespace ferry {

const config::schema& config_schema() {
    static const config::schema s = [] {
        config::schema out;
        for (const auto* d : drivers::registered())
            for (const auto* ds : d->schemas)
                out.drivers.push_back(ds);
        // Top-level sections beside the core's gateway, http and devices, in REFERENCE order.
        out.sections = {&rules::config_section(), &upstream::dead_letter_section(),
                        &commands::config_section(), &upstream::config_section()};
        out.profiles_dir = FERRY_PROFILES_DIR;  // where the package installs config/profiles
        return out;
    }();
    return s;
}

config::config load_config(const std::string& file) {
    return config::load_config(file, config_schema());
}

config::config load_config_text(const std::string& text, const std::string& file,
                                const config::load_hooks& hooks) {
    return config::load_config_text(text, file, config_schema(), hooks);
}

std::string expand_config(const std::string& file) {
    return config::expand_config(file, config_schema());
}

std::string reference_markdown() {
    return config::reference_markdown(config_schema());
}

}  // namespace ferry
