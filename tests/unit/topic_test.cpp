#include <doctest/doctest.h>

#include "core/topic.hpp"

using ferry::topic_pattern;
using ferry::topic_template;

static bool m(const char* pattern, const char* address) {
    auto p = topic_pattern::compile(pattern);
    REQUIRE(p);
    return p->matches(address);
}

TEST_CASE("exact patterns match only themselves") {
    CHECK(m("boiler1/temperature", "boiler1/temperature"));
    CHECK_FALSE(m("boiler1/temperature", "boiler1/temp"));
    CHECK_FALSE(m("boiler1/temperature", "boiler1/temperature/x"));
    CHECK_FALSE(m("boiler1/temperature", "boiler1"));
}

TEST_CASE("+ matches exactly one level") {
    CHECK(m("+/humidity", "room1/humidity"));
    CHECK(m("+/humidity", "x/humidity"));
    CHECK_FALSE(m("+/humidity", "room1/temperature"));
    CHECK_FALSE(m("+/humidity", "a/b/humidity"));
    CHECK(m("boiler1/+", "boiler1/pressure"));
    CHECK_FALSE(m("boiler1/+", "boiler1"));
}

TEST_CASE("# matches the rest, including nothing") {
    CHECK(m("#", "a/b"));
    CHECK(m("meter7/#", "meter7/energy"));
    CHECK(m("meter7/#", "meter7"));
    CHECK_FALSE(m("meter7/#", "meter8/energy"));
}

TEST_CASE("* matches within one level") {
    CHECK(m("meter*/#", "meter7/energy"));
    CHECK(m("meter*/#", "meter/energy"));
    CHECK_FALSE(m("meter*/#", "xmeter7/energy"));
    CHECK(m("*/temp*", "boiler/temperature"));
    CHECK(m("b*r*1/t", "boiler1/t"));
    CHECK_FALSE(m("b*r*1/t", "boiler2/t"));
    CHECK_FALSE(m("*", "a/b"));  // * never crosses a level
}

TEST_CASE("invalid patterns are refused with a reason") {
    std::string why;
    CHECK_FALSE(topic_pattern::compile("a/#/b", &why));
    CHECK(why == "'#' must be a whole level and the last one");
    CHECK_FALSE(topic_pattern::compile("a/b+", &why));
    CHECK(why == "'+' must be a whole level");
    CHECK_FALSE(topic_pattern::compile("a//b", &why));
    CHECK(why == "empty level in pattern");
    CHECK_FALSE(topic_pattern::compile("", &why));
}

TEST_CASE("templates expand every placeholder") {
    auto t = topic_template::compile("plant/{gateway}/{device}/{tag}/{rule}");
    REQUIRE(t);
    CHECK(t->expand({"gw1", "boiler1", "temperature", "temps"}) ==
          "plant/gw1/boiler1/temperature/temps");
    CHECK(t->uses_device());
    CHECK(t->uses_tag());
    auto plain = topic_template::compile("fixed/topic");
    REQUIRE(plain);
    CHECK(plain->expand({"g", "d", "t", "r"}) == "fixed/topic");
    CHECK_FALSE(plain->uses_device());
}

TEST_CASE("bad templates are refused with a reason") {
    std::string why;
    CHECK_FALSE(topic_template::compile("plant/{gatway}", &why));
    CHECK(why == "unknown placeholder {gatway} (known: {gateway} {device} {tag} {rule})");
    CHECK_FALSE(topic_template::compile("plant/{device", &why));
    CHECK(why == "unclosed '{' at position 7");
    CHECK_FALSE(topic_template::compile("plant/+/x", &why));
    CHECK(why == "wildcard '+' is not allowed in a publish topic");
    CHECK_FALSE(topic_template::compile("a}", &why));
}
