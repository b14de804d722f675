// The keys of the system driver (config/REFERENCE.md): poll_interval on the device; on each
// point its name (one of k_metric_names) and an optional unit.
#pragma once

#include "core/config_reader.hpp"

namespace ferry::drivers::system {

const config::driver_schema& config_schema();

}  // namespace ferry::drivers::system
