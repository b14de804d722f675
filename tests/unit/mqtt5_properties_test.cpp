// The pure parts of the MQTT 5 properties (upstream/mqtt5_properties.hpp): what is left of an
// expiry, and the first and last seq of a JSON batch.
#include "upstream/mqtt5_properties.hpp"

#include <doctest/doctest.h>

using namespace ferry::upstream;

TEST_CASE("expiry_left_s: whole seconds rounded up, 0 once passed, never more than the interval") {
    const std::int64_t made = 1764236400000;
    CHECK(expiry_left_s(made, 60, made) == 60);
    CHECK(expiry_left_s(made, 60, made + 1) == 60);  // 59.999 s left: rounded up
    CHECK(expiry_left_s(made, 60, made + 1000) == 59);
    CHECK(expiry_left_s(made, 60, made + 59001) == 1);
    CHECK(expiry_left_s(made, 60, made + 60000) == 0);
    CHECK(expiry_left_s(made, 60, made + 3600000) == 0);
    CHECK(expiry_left_s(made, 60, made - 3600000) == 60);  // a clock set back
    CHECK(expiry_left_s(made, 4294967295u, made) == 4294967295u);
}

TEST_CASE("seq_range_of: the first and last event's seq; a value never mistaken for one") {
    const auto r = seq_range_of(
        R"({"gateway":"g","batch":42,"events":[{"seq":1001,"device":"d","tag":"t","ts":1,)"
        R"("value":"{\"seq\":5}","quality":"good"},{"seq":1003,"device":"d","tag":"t","ts":2,)"
        R"("value":1,"quality":"good"}]})");
    CHECK(r.found);
    CHECK(r.first == 1001);
    CHECK(r.last == 1003);
    const auto one = seq_range_of(R"({"gateway":"g","batch":1,"events":[{"seq":7,"ts":1}]})");
    CHECK((one.found && one.first == 7 && one.last == 7));
    CHECK(!seq_range_of(R"({"gateway":"g","batch":1,"dead_letters":[{"reason":"x"}]})").found);
    CHECK(!seq_range_of("\x0a\x05binary").found);
}
