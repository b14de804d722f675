// The keys of `commands` (CONTRACT.md, config/REFERENCE.md), declared and read here.
#pragma once

#include "core/config_reader.hpp"

namespace ferry::commands {

const config::section_schema& config_section();

}  // namespace ferry::commands
