// A compact YAML document tree: what the config loader reads, built from yaml-cpp's event
// parser instead of its node tree (YAML::Node).
//
// Why: YAML::Node keeps each value as a shared, reference-counted heap object with its own
// strings, tag and style; a 2.9 MB file of 50,000 points took 206 MiB of heap and 0.6 s of
// CPU to load that way, where the event parser with this tree takes 10 MB and 0.4 s
// (docs/PERFORMANCE.md, "Config loading"). yaml-cpp stays the parser; only its DOM is
// replaced.
//
// Shape: one flat array of 16-byte nodes (kind, 0-based line and column as yaml-cpp marks
// them, and either a scalar's offset and length in one string arena or a collection's range
// of child indices), the child indices in one array (a map's as key, value, key, value, ...),
// and the scalars in one arena. Nothing is allocated per value.
//
// What the loader relied on in YAML::Node stays the same, so the two read alike:
// - kinds: a plain `~`, `null`, `Null`, `NULL` or an absent value is null (not a scalar);
// - an alias IS the node its anchor names: same kind, content and mark (the anchor's
//   position), and counted again at each use by whoever walks the tree (a document of
//   aliases to aliases is small here but expands exponentially; the loader bounds the
//   expansion, core/config.hpp k_max_config_nodes). An alias inside the node it names makes
//   a cycle, as in yaml-cpp; only walks bounded by depth may follow aliases;
// - map pairs keep the file's order, duplicate keys included (the loader reports them);
// - only the first document of the text is read;
// - `node` keeps the names of YAML::Node's read API (IsNull, IsScalar, IsSequence, IsMap,
//   Scalar, Mark): components' read hooks test `value_ref::node` with them.
//
// Sources: a config is read from more than one file (profiles, core/config.hpp), so each tree
// carries a source number given by whoever parses it, and Mark().pos holds that number instead
// of a byte offset (nothing reads offsets). An error's mark alone then tells which file it
// stands in. `scalars()` makes the few values the loader synthesizes (the id and unit id of
// each device of a range) with the mark of what they replace, source included.
//
// Errors: parse() throws what yaml-cpp's parser throws (YAML::ParserException with a 0-based
// mark, or another YAML::Exception); no tree is left behind then.
//
// Lifetime and threads: a `node` is a view into its tree, valid while the tree lives and is
// not moved from. A tree is immutable after parse(); reading it from several threads is safe.
#pragma once

#include <yaml-cpp/mark.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry::yaml {

enum class kind : std::uint8_t { null, scalar, sequence, map };

class tree;

// One value of a tree. A default-constructed node stands for no document at all (what
// YAML::Load gives for an empty text): null, with a null mark.
class node {
  public:
    node() = default;

    kind type() const;
    bool IsNull() const { return type() == kind::null; }
    bool IsScalar() const { return type() == kind::scalar; }
    bool IsSequence() const { return type() == kind::sequence; }
    bool IsMap() const { return type() == kind::map; }
    // A scalar's text (after YAML's quoting and folding); empty for other kinds.
    std::string_view Scalar() const;
    // Where the value starts, 0-based, with the tree's source number as `pos`;
    // YAML::Mark::null_mark() for a default node.
    YAML::Mark Mark() const;

    // Items of a sequence, pairs of a map; 0 for other kinds.
    std::size_t size() const;
    node item(std::size_t i) const;   // sequence: the i-th item
    node key(std::size_t i) const;    // map: the i-th pair's key
    node value(std::size_t i) const;  // map: the i-th pair's value

    // Same node of the same tree (an alias and its anchor are the same node).
    bool operator==(const node&) const = default;

  private:
    friend class tree;
    node(const tree* t, std::uint32_t i) : tree_(t), index_(i) {}
    std::uint32_t child(std::size_t i) const;

    const tree* tree_ = nullptr;
    std::uint32_t index_ = 0;
};

class tree {
  public:
    // Parses the first document of `text` (see Errors above); its marks carry `source`.
    static tree parse(std::string_view text, std::uint32_t source = 0);
    // A sequence of scalars, each with its given text and mark (the mark's pos is the source).
    static tree scalars(const std::vector<std::pair<std::string, YAML::Mark>>& values);

    // The document's root; a default node when the text holds no document.
    node root() const { return has_root_ ? node(this, root_) : node(); }

    // Nodes, child links and scalar bytes held (each alias counts once).
    std::size_t node_count() const { return nodes_.size(); }
    // Bytes the tree's three arrays fill. (parse() reserves room for a larger tree; what is
    // never written there costs address space, not memory.)
    std::size_t bytes() const;

    tree(tree&&) = default;
    tree& operator=(tree&&) = default;
    tree(const tree&) = delete;
    tree& operator=(const tree&) = delete;
    ~tree() = default;

  private:
    friend class node;
    friend class builder;
    tree() = default;

    struct slot {
        std::uint32_t line;    // 0-based
        std::uint32_t column;  // 0-based, in the low 30 bits; the kind in the top 2
        std::uint32_t first;   // scalar: offset in arena_; collection: index in kids_
        std::uint32_t size;    // scalar: bytes; sequence: items; map: pairs
    };
    static constexpr std::uint32_t k_column_bits = 30;
    static constexpr std::uint32_t k_column_mask = (1u << k_column_bits) - 1;

    std::vector<slot> nodes_;
    std::vector<std::uint32_t> kids_;
    std::string arena_;
    std::uint32_t root_ = 0;
    std::uint32_t source_ = 0;
    bool has_root_ = false;
};

}  // namespace ferry::yaml
