// The main() of replay_<name>: runs a fuzz target once on each given input, without libFuzzer,
// so the seed corpora and the regression inputs are a unit test in every build (gcc, the ASan +
// UBSan build) and need no clang.
//
//   replay_<name> PATH...   each PATH is a file, or a directory whose regular files are run in
//                           name order; a PATH that does not exist is skipped (a target with no
//                           regressions yet has no directory).
//
// The empty input runs first, as libFuzzer does. Each input is copied into a heap block of
// exactly its size, so AddressSanitizer sees a read past its end. A finding aborts (the target
// traps, or a sanitizer reports); the input's name is printed before it runs, so the last name
// printed is the culprit. Exit status: 0 when every input ran, 1 when a path could not be read.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace {

namespace fs = std::filesystem;

bool run_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
        return false;
    }
    std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    std::fprintf(stderr, "replay: %s (%zu bytes)\n", path.c_str(), bytes.size());
    // new[] of the exact size (not the vector's capacity): a read past the end is caught.
    auto copy = std::make_unique<std::uint8_t[]>(bytes.size());
    std::copy(bytes.begin(), bytes.end(), copy.get());
    LLVMFuzzerTestOneInput(copy.get(), bytes.size());
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    LLVMFuzzerTestOneInput(nullptr, 0);
    bool ok = true;
    std::size_t inputs = 1;
    for (int i = 1; i < argc; ++i) {
        const fs::path path(argv[i]);
        std::error_code ec;
        if (!fs::exists(path, ec)) {
            std::fprintf(stderr, "replay: %s does not exist; skipped\n", argv[i]);
            continue;
        }
        std::vector<fs::path> files;
        if (fs::is_directory(path, ec)) {
            for (const auto& entry : fs::directory_iterator(path, ec))
                if (entry.is_regular_file()) files.push_back(entry.path());
            std::sort(files.begin(), files.end());
        } else {
            files.push_back(path);
        }
        for (const auto& f : files) {
            ok = run_file(f) && ok;
            ++inputs;
        }
    }
    if (!ok) return 1;
    std::printf("replay: %zu inputs (the empty one included) ran without a finding\n", inputs);
    return 0;
}
