// The keys of `upstream` (the MQTT connection and the spool) and `dead_letter` (CONTRACT.md,
// config/REFERENCE.md), declared and read here.
#pragma once

#include "core/config_reader.hpp"

namespace ferry::upstream {

const config::section_schema& dead_letter_section();
const config::section_schema& config_section();

}  // namespace ferry::upstream
