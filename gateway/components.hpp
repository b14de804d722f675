// The composition root's list of components: every registered driver (drivers/registry.hpp)
// and every section a component owns, as one config schema. What `ferry run`, `ferry check`,
// a reload and the tests load configs with.
#pragma once

#include <string>

#include "core/config.hpp"
#include "core/config_reader.hpp"

namespace ferry {

const config::schema& config_schema();

// config::load_config / load_config_text with config_schema().
config::config load_config(const std::string& file);
config::config load_config_text(const std::string& text, const std::string& file,
                                const config::load_hooks& hooks = {});

// config::expand_config with config_schema(): `ferry check --expand`.
std::string expand_config(const std::string& file);

// config/REFERENCE.md's generated part.
std::string reference_markdown();

}  // namespace ferry
