// tests/tools/mqtt_proxy.py, the fault injector the broker-fault chaos tests and the fault
// campaign stand on: a Paho client publishes through it to a real mosquitto, a recorder
// subscribed at the broker directly shows what the broker received, and each mode is checked
// by what a client would see (an ack that never comes, a slow ack, a cut, a refusal).
#include "tests/support/mqtt_proxy.hpp"

#include <doctest/doctest.h>
#include <mqtt/async_client.h>

#include <atomic>
#include <thread>

#include "tests/support/harness.hpp"

using namespace ferry::test;

namespace {

struct client {
    mqtt::async_client c;
    std::atomic<bool> lost{false};
    explicit client(const std::string& uri)
        : c(uri, "proxy-test-" + std::to_string(free_port()), mqtt::create_options(MQTTVERSION_5),
            nullptr) {
        c.set_connection_lost_handler([this](const std::string&) { lost = true; });
    }
    void connect() {
        auto opts = mqtt::connect_options_builder()
                        .mqtt_version(MQTTVERSION_5)
                        .clean_start(true)
                        .connect_timeout(std::chrono::seconds(5))
                        .finalize();
        c.connect(opts)->wait_for(10s);
        REQUIRE(c.is_connected());
    }
    mqtt::delivery_token_ptr publish(const std::string& payload) {
        return c.publish("proxy/test", payload.data(), payload.size(), 1, false);
    }
};

}  // namespace

TEST_CASE("mqtt_proxy: pass, withhold_puback, slow_ack, cut, refuse and stats") {
    mosquitto broker;
    mqtt_proxy proxy(broker.port());
    mqtt_recorder rec(broker.uri(), {"proxy/#"});

    client cl(proxy.uri());
    cl.connect();

    // pass: acked, counted.
    REQUIRE(cl.publish("one")->wait_for(10s));
    CHECK(rec.wait_for_count(1, 10000ms));
    auto s = proxy.stats();
    CHECK(s.mode == "pass");
    CHECK(s.open == 1);
    CHECK(s.to_broker["PUBLISH"] == 1);
    CHECK(s.to_client["PUBACK"] == 1);

    // withhold_puback: the broker has the message, the client never hears back, pings pass.
    proxy.withhold_puback();
    auto held = cl.publish("two");
    CHECK(rec.wait_for_count(2, 10000ms));
    CHECK_FALSE(held->wait_for(1500ms));
    s = proxy.stats();
    CHECK(s.pubacks_withheld == 1);
    CHECK(s.inflight == 1);
    CHECK(s.inflight_max >= 1);
    CHECK(cl.c.is_connected());

    // refuse_publish: the proxy answers PUBACK 0x97 itself; the broker never sees it.
    proxy.pass();
    proxy.refuse_publish(1);
    auto refused = cl.publish("refused");
    CHECK_THROWS(refused->wait_for(10s));
    CHECK(static_cast<int>(refused->get_reason_code()) == 0x97);
    CHECK(proxy.stats().publishes_refused == 1);
    REQUIRE(cl.publish("after")->wait_for(10s));  // only one was refused
    CHECK(rec.wait_for_count(3, 10000ms));
    std::this_thread::sleep_for(300ms);
    CHECK(rec.messages().back().payload == "after");

    // slow_ack: the ack comes, late.
    proxy.slow_ack(800ms);
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE(cl.publish("three")->wait_for(10s));
    CHECK(std::chrono::steady_clock::now() - t0 >= 700ms);

    // cut: the client loses its connection; the mode stays.
    proxy.cut();
    CHECK(wait_until([&] { return cl.lost.load(); }, 10000ms));
    s = proxy.stats();
    CHECK(s.cuts == 1);
    CHECK(s.open == 0);
    CHECK(s.mode == "slow_ack");

    // refuse: a new connection is closed at once.
    proxy.refuse();
    client other(proxy.uri());
    CHECK_THROWS(other.c
                     .connect(mqtt::connect_options_builder()
                                  .mqtt_version(MQTTVERSION_5)
                                  .connect_timeout(std::chrono::seconds(3))
                                  .finalize())
                     ->wait());

    // A bad command is an error, not a silent no-op.
    CHECK_THROWS(proxy.command("nonsense"));
    CHECK_THROWS(proxy.command("delay x"));

    // pass again: a new connection works.
    proxy.pass();
    client again(proxy.uri());
    again.connect();
    REQUIRE(again.publish("four")->wait_for(10s));
    CHECK(rec.wait_for_count(5, 10000ms));
    CHECK(rec.count() == 5);  // one, two, after, three, four: never "refused"
}
