#include "upstream/spool_codec.hpp"

#include <zstd.h>

#include <memory>
#include <stdexcept>

namespace ferry::upstream::spool_codec {

namespace {

constexpr unsigned char k_magic[4] = {0x28, 0xb5, 0x2f, 0xfd};
// Level 1: the batches are JSON with names repeated per event, which level 1 already shrinks
// by about 10x; higher levels cost more CPU per value for a few percent (docs/PERFORMANCE.md).
constexpr int k_level = 1;

struct cctx_free {
    void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct dctx_free {
    void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

ZSTD_CCtx* cctx() {
    thread_local std::unique_ptr<ZSTD_CCtx, cctx_free> c = [] {
        std::unique_ptr<ZSTD_CCtx, cctx_free> p(ZSTD_createCCtx());
        if (!p) throw std::runtime_error("zstd: cannot create a compression context");
        ZSTD_CCtx_setParameter(p.get(), ZSTD_c_compressionLevel, k_level);
        ZSTD_CCtx_setParameter(p.get(), ZSTD_c_checksumFlag, 1);
        ZSTD_CCtx_setParameter(p.get(), ZSTD_c_contentSizeFlag, 1);
        return p;
    }();
    return c.get();
}

ZSTD_DCtx* dctx() {
    thread_local std::unique_ptr<ZSTD_DCtx, dctx_free> d(ZSTD_createDCtx());
    return d.get();
}

}  // namespace

bool is_compressed(std::string_view stored) {
    return stored.size() >= sizeof k_magic &&
           std::string_view(stored.data(), sizeof k_magic) ==
               std::string_view(reinterpret_cast<const char*>(k_magic), sizeof k_magic);
}

void encode(std::string_view payload, std::string& stored) {
    stored.resize(ZSTD_compressBound(payload.size()));
    const std::size_t n =
        ZSTD_compress2(cctx(), stored.data(), stored.size(), payload.data(), payload.size());
    if (ZSTD_isError(n) != 0) {
        ZSTD_CCtx_reset(cctx(), ZSTD_reset_session_only);
        throw std::runtime_error(std::string("zstd: ") + ZSTD_getErrorName(n));
    }
    if (n >= payload.size()) {
        stored.assign(payload);  // nothing gained (a tiny batch): stored as it is
        return;
    }
    stored.resize(n);
}

bool decode(std::string_view stored, std::string& out, std::string& error,
            std::size_t max_payload) {
    if (!is_compressed(stored)) {
        out.assign(stored);
        return true;
    }
    // The frame's content size, checked before anything is allocated: a damaged header must
    // not make the publisher allocate gigabytes.
    const unsigned long long size = ZSTD_getFrameContentSize(stored.data(), stored.size());
    if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN) {
        error = "compressed payload: frame header unreadable";
        return false;
    }
    if (size > max_payload) {
        error = "compressed payload: content size " + std::to_string(size) + " above " +
                std::to_string(max_payload);
        return false;
    }
    // One whole frame, nothing after it.
    const std::size_t frame = ZSTD_findFrameCompressedSize(stored.data(), stored.size());
    if (ZSTD_isError(frame) != 0 || frame != stored.size()) {
        error = "compressed payload: not exactly one complete frame";
        return false;
    }
    ZSTD_DCtx* d = dctx();
    if (d == nullptr) {
        error = "compressed payload: no decompression context";
        return false;
    }
    out.resize(static_cast<std::size_t>(size));
    // Checks the frame's content checksum: a flipped bit anywhere in the row is found here.
    const std::size_t n =
        ZSTD_decompressDCtx(d, out.data(), out.size(), stored.data(), stored.size());
    if (ZSTD_isError(n) != 0 || n != size) {
        ZSTD_DCtx_reset(d, ZSTD_reset_session_only);
        error = std::string("compressed payload: ") +
                (ZSTD_isError(n) != 0 ? ZSTD_getErrorName(n) : "size differs from its header");
        return false;
    }
    return true;
}

}  // namespace ferry::upstream::spool_codec
