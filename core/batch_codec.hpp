// A batch encoding other than the contract's JSON, for rules with `publish.format` other than
// `json` (today: Sparkplug B DDATA, upstream/sparkplug/). The rule engine (rules/engine.hpp)
// asks it to encode each event into a batch body and to wrap a finished body into the payload
// the spool stores; the composition root (gateway/) builds the codec and hands it to the
// engine, so that rules/ never depends on an upstream format.
//
// Threading: called from the rule thread only, but an implementation may be reconfigured from
// another thread (a reload) and must guard its own state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/event.hpp"

namespace ferry {

class batch_codec {
  public:
    virtual ~batch_codec() = default;
    // The topic template of the rule's batches (replacing publish.topic); it should contain
    // {device} so that a batch never mixes devices when the format needs that.
    virtual std::string topic_template() const = 0;
    // Appends the encoding of `e` (of point `id`, described by `p`) to `body`; items are
    // concatenated without a separator. False, with nothing appended: the event says nothing
    // the format has not said already (Sparkplug: a reading of a device after its DDEATH); the
    // engine counts it `deduped`.
    virtual bool append_event(std::string& body, const event& e, point_id id,
                              const point_info& p) const = 0;
    // The most bytes wrap() adds to a body (for the batch's max_bytes).
    virtual std::size_t header_size() const = 0;
    // The payload of a finished batch, stored by the spool as batch `batch_no` of its topic.
    virtual void wrap(std::string_view body, std::uint64_t batch_no, std::string& out) const = 0;
};

}  // namespace ferry
