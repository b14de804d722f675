// Config loading: CPU and heap of each step of loading one file, and what the loaded config
// holds per point (docs/PERFORMANCE.md, "Config loading"). Not a test.
//
//   bench_config FILE [RUNS]     (bench/large_config.py writes the large-site file)
//
// Per step, the best of RUNS (CPU time of this thread) and the heap in use it adds (glibc
// mallinfo2: bytes handed out by malloc, whatever RSS the allocator keeps around them):
// - yaml-cpp's YAML::Load (the node tree the loader used before core/yaml_tree);
// - core/yaml_tree's parse (what the loader builds now, and drops before it returns);
// - the whole load (ferry::load_config_text), and the config it returns, per point.
#include <malloc.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "core/yaml_tree.hpp"
#include "gateway/components.hpp"

namespace {

double cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

std::size_t heap_in_use() {
    return mallinfo2().uordblks;
}

// Best CPU time of `runs` calls of `f`, and the heap in use while what the last call returned
// is alive (what `f` returns is kept until measured).
template <class F>
void step(const char* name, int runs, F f) {
    double best = std::numeric_limits<double>::max();
    std::size_t held = 0;
    for (int i = 0; i < runs; ++i) {
        const auto before = heap_in_use();
        const double t0 = cpu_seconds();
        auto result = f();
        best = std::min(best, cpu_seconds() - t0);
        held = heap_in_use() - before;
    }
    std::printf("%-34s %8.3f s CPU  %9.1f MiB heap held\n", name, best,
                static_cast<double>(held) / (1 << 20));
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: bench_config FILE [RUNS]\n");
        return 2;
    }
    const std::string file = argv[1];
    const int runs = argc > 2 ? std::max(1, std::atoi(argv[2])) : 3;
    std::ifstream in(file, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    std::printf("%s: %zu bytes\n", file.c_str(), text.size());

    step("yaml-cpp YAML::Load", runs, [&] { return YAML::Load(text); });
    step("core/yaml_tree parse", runs, [&] { return ferry::yaml::tree::parse(text); });
    step("load_config_text (whole load)", runs,
         [&] { return ferry::load_config_text(text, file); });

    const auto t = ferry::yaml::tree::parse(text);
    std::printf("tree: %zu nodes, %zu bytes (%.1f bytes/node)\n", t.node_count(), t.bytes(),
                static_cast<double>(t.bytes()) / static_cast<double>(t.node_count()));

    const auto before = heap_in_use();
    const auto c = ferry::load_config_text(text, file);
    const auto held = heap_in_use() - before;
    std::size_t points = 0;
    for (const auto& d : c.devices)
        points += d.points.size();
    std::printf(
        "config: %zu devices, %zu points, %zu heap bytes = %.0f bytes/point "
        "(sizeof point %zu, device %zu)\n",
        c.devices.size(), points, held,
        points ? static_cast<double>(held) / static_cast<double>(points) : 0.0,
        sizeof(ferry::config::point), sizeof(ferry::config::device));
    return 0;
}
