// The compact YAML tree (core/yaml_tree.hpp), built from yaml-cpp's parser events the way
// yaml-cpp's own NodeBuilder builds YAML::Node, minus the per-node heap objects.
#include "core/yaml_tree.hpp"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/parser.h>

#include <algorithm>
#include <istream>
#include <limits>
#include <streambuf>

namespace ferry::yaml {
namespace {

// The text as an istream without a copy of it (a std::stringstream would hold a second one).
class view_buf : public std::streambuf {
  public:
    explicit view_buf(std::string_view text) {
        // The buffer is only read: istream never writes through the get area.
        char* b = const_cast<char*>(text.data());
        setg(b, b, b + text.size());
    }
};

std::uint32_t narrow(std::size_t n) {
    // Indices and offsets are 32-bit: a config is at most k_max_config_file (4 MiB) and each
    // node takes at least one byte of text, so this only guards texts nobody loads.
    if (n > std::numeric_limits<std::uint32_t>::max())
        throw YAML::Exception(YAML::Mark::null_mark(), "document too large");
    return static_cast<std::uint32_t>(n);
}

std::uint32_t clamp_mark(int v) {
    return v < 0 ? 0 : static_cast<std::uint32_t>(v);
}

}  // namespace

// Receives the events of one document. Open collections collect their children's indices on
// a shared stack; at their end the indices move, contiguous, into the tree's child array.
class builder : public YAML::EventHandler {
  public:
    explicit builder(tree& t) : t_(t) {}

    void OnDocumentStart(const YAML::Mark&) override {}
    void OnDocumentEnd() override {}

    void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
        add(make(kind::null, mark, anchor, 0, 0));
    }

    void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
        // The parser refuses an alias to an anchor not yet defined; kept as a guard.
        if (anchor == 0 || anchor >= anchors_.size() || anchors_[anchor] == k_none)
            throw YAML::ParserException(mark, "the referenced anchor is not defined");
        add(anchors_[anchor]);
    }

    void OnScalar(const YAML::Mark& mark, const std::string& /*tag*/, YAML::anchor_t anchor,
                  const std::string& value) override {
        const auto offset = narrow(t_.arena_.size());
        t_.arena_ += value;
        add(make(kind::scalar, mark, anchor, offset, narrow(value.size())));
    }

    void OnSequenceStart(const YAML::Mark& mark, const std::string& /*tag*/, YAML::anchor_t anchor,
                         YAML::EmitterStyle::value /*style*/) override {
        open(make(kind::sequence, mark, anchor, 0, 0));
    }
    void OnSequenceEnd() override { close(1); }

    void OnMapStart(const YAML::Mark& mark, const std::string& /*tag*/, YAML::anchor_t anchor,
                    YAML::EmitterStyle::value /*style*/) override {
        open(make(kind::map, mark, anchor, 0, 0));
    }
    void OnMapEnd() override { close(2); }

  private:
    static constexpr std::uint32_t k_none = std::numeric_limits<std::uint32_t>::max();

    std::uint32_t make(kind k, const YAML::Mark& mark, YAML::anchor_t anchor, std::uint32_t first,
                       std::uint32_t size) {
        const auto index = narrow(t_.nodes_.size());
        const auto column = std::min(clamp_mark(mark.column), tree::k_column_mask);
        t_.nodes_.push_back({clamp_mark(mark.line),
                             column | (static_cast<std::uint32_t>(k) << tree::k_column_bits), first,
                             size});
        if (anchor) {
            if (anchor >= anchors_.size()) anchors_.resize(anchor + 1, k_none);
            anchors_[anchor] = index;
        }
        return index;
    }

    // A finished value: the root, or the next child of the innermost open collection.
    void add(std::uint32_t index) {
        if (open_.empty()) {
            if (!t_.has_root_) {
                t_.root_ = index;
                t_.has_root_ = true;
            }
            return;
        }
        pending_.push_back(index);
    }

    // A collection is its parent's child from its start: its own children follow it on the
    // pending stack and leave it at its end.
    void open(std::uint32_t index) {
        add(index);
        open_.push_back({index, pending_.size()});
    }

    void close(std::uint32_t per_entry) {
        const auto [index, from] = open_.back();
        open_.pop_back();
        auto& s = t_.nodes_[index];
        s.first = narrow(t_.kids_.size());
        s.size = narrow((pending_.size() - from) / per_entry);
        t_.kids_.insert(t_.kids_.end(), pending_.begin() + static_cast<std::ptrdiff_t>(from),
                        pending_.end());
        pending_.resize(from);
    }

    struct open_collection {
        std::uint32_t index;
        std::size_t from;  // its first child's place in pending_
    };

    tree& t_;
    std::vector<open_collection> open_;
    std::vector<std::uint32_t> pending_;
    std::vector<std::uint32_t> anchors_;  // anchor id (from 1) -> node
};

tree tree::parse(std::string_view text, std::uint32_t source) {
    tree t;
    t.source_ = source;
    // Room for the largest tree such a text is likely to make, reserved, not touched: pages
    // never written cost no RSS, while a vector that doubles holds its old and new arrays at
    // once, and a shrink_to_fit copies the whole array again. (50,000 points: 2.9 MB of text,
    // 456,539 nodes, a node per 6.5 bytes; a scalar's bytes never outnumber its text's.)
    t.nodes_.reserve(text.size() / 4 + 16);
    t.kids_.reserve(text.size() / 4 + 16);
    t.arena_.reserve(text.size());
    view_buf buf(text);
    std::istream in(&buf);
    YAML::Parser parser(in);
    builder b(t);
    parser.HandleNextDocument(b);
    return t;
}

tree tree::scalars(const std::vector<std::pair<std::string, YAML::Mark>>& values) {
    tree t;
    if (!values.empty()) t.source_ = clamp_mark(values.front().second.pos);
    builder b(t);
    b.OnSequenceStart(YAML::Mark(), "", 0, YAML::EmitterStyle::Default);
    for (const auto& [text, mark] : values)
        b.OnScalar(mark, "", 0, text);
    b.OnSequenceEnd();
    return t;
}

std::size_t tree::bytes() const {
    return nodes_.size() * sizeof(slot) + kids_.size() * sizeof(std::uint32_t) + arena_.size();
}

kind node::type() const {
    if (!tree_) return kind::null;
    return static_cast<kind>(tree_->nodes_[index_].column >> tree::k_column_bits);
}

std::string_view node::Scalar() const {
    if (type() != kind::scalar) return {};
    const auto& s = tree_->nodes_[index_];
    return std::string_view(tree_->arena_).substr(s.first, s.size);
}

YAML::Mark node::Mark() const {
    if (!tree_) return YAML::Mark::null_mark();
    const auto& s = tree_->nodes_[index_];
    YAML::Mark m;
    m.line = static_cast<int>(s.line);
    m.column = static_cast<int>(s.column & tree::k_column_mask);
    m.pos = static_cast<int>(tree_->source_);
    return m;
}

std::size_t node::size() const {
    const auto k = type();
    return k == kind::sequence || k == kind::map ? tree_->nodes_[index_].size : 0;
}

std::uint32_t node::child(std::size_t i) const {
    return tree_->kids_[tree_->nodes_[index_].first + i];
}

node node::item(std::size_t i) const {
    return {tree_, child(i)};
}
node node::key(std::size_t i) const {
    return {tree_, child(2 * i)};
}
node node::value(std::size_t i) const {
    return {tree_, child(2 * i + 1)};
}

}  // namespace ferry::yaml
