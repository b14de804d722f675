// Whole-file reads and writes, for every test tier. Header-only: unit tests link no harness
// (no Paho, no processes), yet read their golden files through the same two functions.
#pragma once

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ferry::test {

// The whole file, bytes as they are. Throws std::runtime_error when it cannot be opened, so a
// misspelt fixture path fails loudly instead of comparing against "".
inline std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// The whole file, or "" when it does not exist (yet): for logs a child may not have written.
inline std::string read_file_if_exists(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return {};
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Replaces the file with `content`; throws std::runtime_error when it cannot be written.
inline void write_file(const std::string& path, const std::string& content) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write " + path);
    out << content;
    if (!out.flush()) throw std::runtime_error("cannot write " + path);
}

}  // namespace ferry::test
