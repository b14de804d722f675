// Helpers for unit tests (no sockets, no processes): a scratch directory.
#pragma once

#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace ferry::unit {

// A fresh directory under /tmp, removed with everything in it on destruction.
struct tmp_dir {
    std::string path;
    tmp_dir() {
        char tmpl[] = "/tmp/ferry-unit-test-XXXXXX";
        char* p = ::mkdtemp(tmpl);
        REQUIRE(p != nullptr);
        path = p;
    }
    ~tmp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    tmp_dir(const tmp_dir&) = delete;
    tmp_dir& operator=(const tmp_dir&) = delete;
    std::string file(const std::string& name) const { return path + "/" + name; }
};

}  // namespace ferry::unit
