// Cuts the byte stream of a serial line into frames: by a delimiter, or by a fixed length.
//
// Delimiter framing guards against a stream without delimiters (a wrong baud rate, a sensor in
// a binary mode): a frame longer than `max_frame` bytes is reported once as too long, and
// everything up to the next delimiter is dropped; the frame after it is read normally. With
// the delimiter "\n", a '\r' before it is stripped too (CR LF line ends).
//
// Pure, no I/O; not thread-safe (one framer per port). Frames handed to the callback are
// views into the framer's buffer or the input, valid only during the call.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "drivers/serial/config.hpp"

namespace ferry::drivers::serial {

class framer {
  public:
    explicit framer(const framing_settings& f)
        : delim_(f.delimiter),
          length_(f.length),
          max_(f.max_frame),
          strip_cr_(f.length == 0 && f.delimiter == "\n") {}

    // Feeds bytes as they came from the port. Calls on_frame(std::string_view) for every
    // complete frame (delimiter stripped) and on_too_long() once for every frame over max_frame.
    template <class OnFrame, class OnTooLong>
    void feed(std::string_view in, OnFrame&& on_frame, OnTooLong&& on_too_long);

    // Forgets a partial frame (after the port was reopened: its start is gone).
    void reset() {
        buf_.clear();
        discarding_ = false;
    }
    // Bytes held of a frame not yet complete.
    std::size_t pending() const { return buf_.size(); }

  private:
    template <class OnFrame>
    void fixed(std::string_view in, OnFrame& on_frame);

    std::string delim_;
    std::size_t length_;
    std::size_t max_;
    bool strip_cr_;
    std::string buf_;
    bool discarding_ = false;  // inside a frame already reported too long
};

template <class OnFrame, class OnTooLong>
void framer::feed(std::string_view in, OnFrame&& on_frame, OnTooLong&& on_too_long) {
    if (length_ > 0) return fixed(in, on_frame);
    const std::size_t dlen = delim_.size();
    // A delimiter may straddle two reads: rescan the last dlen-1 bytes already held.
    std::size_t scan = buf_.size() >= dlen - 1 ? buf_.size() - (dlen - 1) : 0;
    const bool buffered = !buf_.empty();
    if (buffered) buf_.append(in);
    const std::string_view data = buffered ? std::string_view(buf_) : in;
    std::size_t start = 0;
    for (;;) {
        const auto pos = dlen == 1 ? data.find(delim_[0], scan) : data.find(delim_, scan);
        if (pos == std::string_view::npos) break;
        std::size_t len = pos - start;
        if (strip_cr_ && len > 0 && data[pos - 1] == '\r') --len;
        if (discarding_)
            discarding_ = false;  // the end of the frame already counted
        else if (len > max_)
            on_too_long();
        else
            on_frame(data.substr(start, len));
        start = pos + dlen;
        scan = start;
    }
    std::size_t tail = data.size() - start;
    // The tail may end in part of a delimiter: only past max + dlen - 1 is it surely too long.
    if (!discarding_ && tail > max_ + (dlen - 1) + (strip_cr_ ? 1 : 0)) {
        on_too_long();
        discarding_ = true;
    }
    if (discarding_) {
        const std::size_t keep = std::min(tail, dlen - 1);
        start = data.size() - keep;
    }
    if (buffered)
        buf_.erase(0, start);
    else
        buf_.assign(data.substr(start));
}

template <class OnFrame>
void framer::fixed(std::string_view in, OnFrame& on_frame) {
    if (!buf_.empty()) {
        const std::size_t need = length_ - buf_.size();
        if (in.size() < need) {
            buf_.append(in);
            return;
        }
        buf_.append(in.substr(0, need));
        in.remove_prefix(need);
        on_frame(std::string_view(buf_));
        buf_.clear();
    }
    while (in.size() >= length_) {
        on_frame(in.substr(0, length_));
        in.remove_prefix(length_);
    }
    buf_.assign(in);
}

}  // namespace ferry::drivers::serial
