// core/yaml_tree: the compact document tree the config loader reads. It must read every
// document as yaml-cpp's own YAML::Node did (kinds, scalars, marks, aliases, errors), since the
// loader's messages and the config golden cases were written against that.
#include <doctest/doctest.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/yaml_tree.hpp"
#include "gateway/components.hpp"
#include "tests/support/paths.hpp"

namespace yaml = ferry::yaml;
namespace cfg = ferry::config;

namespace {

std::string read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// Walks both trees side by side; every difference is a failed CHECK naming its place.
// `depth` bounds the walk through aliases that make cycles.
void same(const YAML::Node& y, const yaml::node& n, const std::string& where, int depth = 0) {
    INFO(where);
    REQUIRE(depth < 32);
    CHECK(y.Mark().line == n.Mark().line);
    CHECK(y.Mark().column == n.Mark().column);
    CHECK(y.Mark().is_null() == n.Mark().is_null());
    switch (y.Type()) {
        case YAML::NodeType::Null:
            CHECK(n.IsNull());
            break;
        case YAML::NodeType::Scalar:
            REQUIRE(n.IsScalar());
            CHECK(y.Scalar() == n.Scalar());
            break;
        case YAML::NodeType::Sequence: {
            REQUIRE(n.IsSequence());
            REQUIRE(y.size() == n.size());
            for (std::size_t i = 0; i < n.size(); ++i)
                same(y[i], n.item(i), where + "[" + std::to_string(i) + "]", depth + 1);
            break;
        }
        case YAML::NodeType::Map: {
            REQUIRE(n.IsMap());
            std::size_t i = 0;
            for (auto it = y.begin(); it != y.end(); ++it, ++i) {
                REQUIRE(i < n.size());
                same(it->first, n.key(i), where + ".key" + std::to_string(i), depth + 1);
                same(it->second, n.value(i), where + ".value" + std::to_string(i), depth + 1);
            }
            CHECK(i == n.size());
            break;
        }
        case YAML::NodeType::Undefined:
            FAIL("undefined node in yaml-cpp's tree");
    }
}

void same_as_yaml_cpp(const std::string& text) {
    const auto t = yaml::tree::parse(text);
    same(YAML::Load(text), t.root(), "root");
}

}  // namespace

TEST_CASE("documents read as yaml-cpp's YAML::Node reads them: kinds, scalars, marks, order") {
    same_as_yaml_cpp(read(std::string(FERRY_SOURCE_DIR) + "/config/ferry.yaml"));
    same_as_yaml_cpp(
        read(std::string(FERRY_SOURCE_DIR) + "/tests/testcases/config/every_feature.yaml"));
    same_as_yaml_cpp(
        "a: 1\nb: [x, 'y', \"z\\n\", ~, null, Null, NULL, '', \"null\"]\nc:\n"
        "d: {e: f, g: }\n");
    same_as_yaml_cpp("- |\n  folded\n  text\n- >\n  more\n  text\n- !!str 12\n- !!str null\n");
    // Flow and block, nested, with complex keys and duplicates.
    same_as_yaml_cpp("? [a, b]\n: 1\n? {c: d}\n: 2\nk: 1\nk: 2\n~: 3\n");
    same_as_yaml_cpp("- - - deep\n  - [1, [2, [3]]]\n- {a: {b: {c: [d]}}}\n");
    same_as_yaml_cpp("x: 1\n---\ny: 2\n");  // the first document only
    same_as_yaml_cpp("");
    same_as_yaml_cpp("# only a comment\n");
    same_as_yaml_cpp("---\n");
    same_as_yaml_cpp("~\n");
    same_as_yaml_cpp("just a scalar\n");
}

TEST_CASE("kinds and 0-based marks") {
    const auto t = yaml::tree::parse("gateway:\n  id: gw1\nlist: [a, ~]\nempty:\n");
    const auto root = t.root();
    REQUIRE(root.IsMap());
    REQUIRE(root.size() == 3);
    CHECK(root.key(0).Scalar() == "gateway");
    CHECK(root.Mark().line == 0);
    const auto gw = root.value(0);
    REQUIRE(gw.IsMap());
    CHECK(gw.key(0).Mark().line == 1);
    CHECK(gw.key(0).Mark().column == 2);
    CHECK(gw.value(0).Scalar() == "gw1");
    CHECK(gw.value(0).Mark().column == 6);
    const auto list = root.value(1);
    REQUIRE(list.IsSequence());
    REQUIRE(list.size() == 2);
    CHECK(list.item(0).Scalar() == "a");
    CHECK(list.item(1).IsNull());
    CHECK(!list.item(1).IsScalar());
    CHECK(list.Mark().line == 2);
    CHECK(list.Mark().column == 6);
    CHECK(root.value(2).IsNull());
    // Other kinds read as empty.
    CHECK(list.Scalar().empty());
    CHECK(list.item(0).size() == 0);
}

TEST_CASE("no document: a default node, null, with a null mark") {
    for (const char* text : {"", "   \n", "# nothing\n"}) {
        INFO(text);
        const auto t = yaml::tree::parse(text);
        CHECK(t.root().IsNull());
        CHECK(t.root().Mark().is_null());
        CHECK(t.root().size() == 0);
        CHECK(t.root() == yaml::node());
    }
}

TEST_CASE("an alias is the node its anchor names, with the anchor's mark") {
    const auto t = yaml::tree::parse(
        "base: &b {x: 1}\nuse:\n  - *b\n  - *b\ns: &s v\nt: *s\n"
        "r: &s w\nu: *s\n");
    const auto root = t.root();
    const auto base = root.value(0);
    const auto use = root.value(1);
    CHECK(use.item(0) == base);
    CHECK(use.item(1) == base);
    CHECK(use.item(1).Mark().line == 0);  // where the anchor stands, not the alias
    CHECK(use.item(1).value(0).Scalar() == "1");
    CHECK(root.value(3) == root.value(2));
    CHECK(root.value(3).Scalar() == "v");
    // A redefined anchor names its latest node from there on.
    CHECK(root.value(5).Scalar() == "w");
    // Shared, not copied: the root, 6 keys, base's map with its pair, the sequence and 2
    // scalars; the 4 aliases add nothing.
    CHECK(t.node_count() == 1 + 6 + 3 + 1 + 2);
}

TEST_CASE("an alias inside the node it names makes a cycle, as in yaml-cpp") {
    const auto t = yaml::tree::parse("a: &a [x, *a]\n");
    const auto a = t.root().value(0);
    REQUIRE(a.IsSequence());
    CHECK(a.item(1) == a);
    CHECK(a.item(1).item(1).item(0).Scalar() == "x");
}

TEST_CASE("syntax errors throw yaml-cpp's ParserException with its 0-based mark") {
    auto mark_of = [](const std::string& text) {
        try {
            yaml::tree::parse(text);
        } catch (const YAML::ParserException& e) {
            return std::to_string(e.mark.line) + ":" + std::to_string(e.mark.column) + " " + e.msg;
        }
        return std::string("no error");
    };
    CHECK(mark_of("gateway:\n  id: g\n   bad: [\n") == "2:6 illegal map value");
    CHECK(mark_of("a: [b, c\nd: e\n") == mark_of("a: [b, c\nd: e\n"));
    CHECK(mark_of("x: *nope\n").find("the referenced anchor is not defined") != std::string::npos);
    // The same text and place yaml-cpp's YAML::Load reports.
    for (const char* text : {"a: [b, c\n", "a: {b\n", "- a\nb: c\n", "a: 'open\n", "x: *nope\n",
                             "a: b: c\n", "[a]]\n"}) {
        INFO(text);
        std::string expected = "no error";
        try {
            YAML::Load(text);
        } catch (const YAML::ParserException& e) {
            expected =
                std::to_string(e.mark.line) + ":" + std::to_string(e.mark.column) + " " + e.msg;
        }
        CHECK(mark_of(text) == expected);
    }
}

TEST_CASE("the loader's budget still refuses alias bombs and deep nesting, at FILE:LINE:COLUMN") {
    auto first_error = [](const std::string& text) {
        try {
            ferry::load_config_text(text, "f.yaml");
        } catch (const cfg::errors& e) {
            return e.list().front().to_string();
        }
        return std::string("loaded");
    };
    // Ten levels of ten aliases each: 10^10 values from a few hundred bytes.
    std::string bomb = "gateway: {id: g}\nx:\n  a0: &a0 [v, v, v, v, v, v, v, v, v, v]\n";
    for (int i = 1; i < 10; ++i) {
        bomb += "  a" + std::to_string(i) + ": &a" + std::to_string(i) + " [";
        for (int j = 0; j < 10; ++j)
            bomb += std::string(j ? ", " : "") + "*a" + std::to_string(i - 1);
        bomb += "]\n";
    }
    const auto e = first_error(bomb);
    CHECK(e.rfind("f.yaml:", 0) == 0);
    CHECK(e.find(": x.a9[") != std::string::npos);
    CHECK(e.find("the file expands to more than 1000000 values") != std::string::npos);

    std::string deep = "gateway: {id: g}\nx: ";
    for (int i = 0; i < 70; ++i)
        deep += "[";
    for (int i = 0; i < 70; ++i)
        deep += "]";
    deep += "\n";
    CHECK(first_error(deep) == "f.yaml:2:" + std::to_string(4 + 64) + ": x" + [] {
        std::string p;
        for (int i = 0; i < 64; ++i)
            p += "[0]";
        return p;
    }() + ": nested deeper than 64 levels");
    // A cycle is a nesting without end.
    CHECK(first_error("gateway: {id: g}\nx: &a [*a]\n").find("nested deeper than 64 levels") !=
          std::string::npos);
}

TEST_CASE("scalars and nodes are held compactly: no heap object per value") {
    std::string text = "points:\n";
    for (int i = 0; i < 1000; ++i)
        text += "  - { name: r" + std::to_string(i) + ", address: " + std::to_string(i) +
                ", type: uint16, unit: u }\n";
    const auto t = yaml::tree::parse(text);
    // 1 root map + 1 key + 1 sequence + 1000 × (1 map + 8 scalars).
    CHECK(t.node_count() == 3 + 1000 * 9);
    // 16 bytes a node, 4 a child link, and the scalars' bytes, fewer than the text's.
    CHECK(t.bytes() < 16 * t.node_count() + 4 * 9000 + text.size());
}

TEST_CASE("duplicate keys are found in small maps and in maps too large to search in a row") {
    for (int keys : {3, 16, 17, 40}) {
        INFO(keys << " keys");
        // gateway: { id: g, k1: 1, ..., then k2 again and id again }
        std::string text = "gateway:\n  id: g\n";
        for (int i = 1; i < keys; ++i)
            text += "  k" + std::to_string(i) + ": 1\n";
        text += "  k2: again\n  id: again\n";
        std::vector<std::string> dups;
        try {
            ferry::load_config_text(text, "f.yaml");
        } catch (const cfg::errors& e) {
            for (const auto& err : e.list())
                if (err.message.find("duplicate key") != std::string::npos)
                    dups.push_back(err.to_string());
        }
        const auto line = std::to_string(keys + 2);
        const auto next = std::to_string(keys + 3);
        REQUIRE(dups.size() == 2);
        CHECK(dups[0] == "f.yaml:" + line + ":3: gateway.k2: duplicate key (first at line 4)");
        CHECK(dups[1] == "f.yaml:" + next + ":3: gateway.id: duplicate key (first at line 2)");
    }
}
