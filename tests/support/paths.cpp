// The one translation unit whose compile line holds absolute paths (tests/support/paths.hpp
// says why); tests/CMakeLists.txt passes them as FERRY_PATH_* definitions.
#include "tests/support/paths.hpp"

namespace ferry::test {

const char source_dir[] = FERRY_PATH_SOURCE_DIR;
const char ferry_program[] = FERRY_PATH_BINARY;
const char modbus_sim_program[] = FERRY_PATH_MODBUS_SIM;
const char faultvfs_library[] = FERRY_PATH_FAULTVFS_LIB;

}  // namespace ferry::test
