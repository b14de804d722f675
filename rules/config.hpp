// The keys of `rules` (CONTRACT.md, config/REFERENCE.md): declared and read here, filters
// compiled once to report their errors with their place.
#pragma once

#include "core/config_reader.hpp"

namespace ferry::rules {

const config::section_schema& config_section();

}  // namespace ferry::rules
