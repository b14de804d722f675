// Where the tests find the source tree and the programs they start: the absolute paths of
// this checkout and build, defined in one translation unit (paths.cpp) that every test
// program links (tests/CMakeLists.txt, ferry_test_paths).
//
// Why one TU: a path on the compile line of every test (-DFERRY_SOURCE_DIR="/abs/path")
// makes each test TU's ccache key depend on the folder of the clone, so a CI clone in
// another folder recompiles every test even with CCACHE_BASEDIR. Here only paths.cpp differs.
//
// The arrays are constant-initialized, so a test may use them in its own namespace-scope
// initializers (const std::string k_dir = std::string(FERRY_SOURCE_DIR) + ...) without any
// static initialization order problem. The macro names are those the tests used when the
// paths were -D definitions; they name these arrays (so `FERRY_SOURCE_DIR "/x"` no longer
// concatenates: write std::string(FERRY_SOURCE_DIR) + "/x").
#pragma once

namespace ferry::test {

extern const char source_dir[];          // the checkout (PROJECT_SOURCE_DIR)
extern const char ferry_program[];       // the ferry daemon of this build
extern const char modbus_sim_program[];  // tests/tools: the Modbus simulator
extern const char faultvfs_library[];    // tests/tools: the SQLite fault VFS, for LD_PRELOAD

}  // namespace ferry::test

#define FERRY_SOURCE_DIR ::ferry::test::source_dir
#define FERRY_BINARY ::ferry::test::ferry_program
#define FERRY_MODBUS_SIM ::ferry::test::modbus_sim_program
#define FERRY_FAULTVFS_LIB ::ferry::test::faultvfs_library
