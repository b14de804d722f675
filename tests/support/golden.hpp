// The one golden-case runner: every folder under tests/testcases/<kind>/ is a case, run in
// name order. The test says how to turn a case folder into text; the runner compares that
// text with the folder's expected file, byte for byte.
//
// FERRY_UPDATE_GOLDEN=1 rewrites the expected files from what the code does now instead of
// comparing (review the diff before committing it!).
//
// Used by unit tests (rules, serial, config errors) and integration tests (`ferry check` on
// the config error cases): header-only, needs doctest and FERRY_SOURCE_DIR (support/paths.hpp,
// which every ferry_test program links).
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "tests/support/files.hpp"
#include "tests/support/paths.hpp"

namespace ferry::test {

// tests/testcases/<kind> in the source tree.
inline std::filesystem::path testcases_dir(const std::string& kind) {
    return std::filesystem::path(FERRY_SOURCE_DIR) / "tests/testcases" / kind;
}

// The case folders of `kind`, sorted by name (files beside them are not cases).
inline std::vector<std::filesystem::path> golden_cases(const std::string& kind) {
    std::vector<std::filesystem::path> out;
    for (const auto& entry : std::filesystem::directory_iterator(testcases_dir(kind)))
        if (entry.is_directory()) out.push_back(entry.path());
    std::sort(out.begin(), out.end());
    return out;
}

// For every case of `kind`: CHECKs run(case folder) == the case's `expected` file (or, with
// FERRY_UPDATE_GOLDEN set, writes it). Failures name the case. Returns the number of cases.
inline std::size_t check_golden(
    const std::string& kind, const std::string& expected,
    const std::function<std::string(const std::filesystem::path&)>& run) {
    const bool update = std::getenv("FERRY_UPDATE_GOLDEN") != nullptr;
    const auto cases = golden_cases(kind);
    for (const auto& dir : cases) {
        const std::string name = dir.filename().string();
        CAPTURE(name);
        const std::string actual = run(dir);
        if (update) {
            write_file((dir / expected).string(), actual);
            continue;
        }
        CHECK(actual == read_file((dir / expected).string()));
    }
    return cases.size();
}

// `text` with every occurrence of `from` replaced by `to`: makes absolute case paths in
// expected output stable ("/abs/tests/testcases/config/x" -> ".").
inline std::string replace_all(std::string text, const std::string& from, const std::string& to) {
    if (from.empty()) return text;
    for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
        text.replace(at, from.size(), to);
    return text;
}

}  // namespace ferry::test
