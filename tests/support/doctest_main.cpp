// doctest's implementation and main(), compiled once per build and linked into every test
// program (tests/CMakeLists.txt, ferry_doctest_main). With DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
// in each test file instead, every test TU compiled the whole framework again: about 8 s of
// CPU per TU at -O2 -g, in each of the four builds that compile tests.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
