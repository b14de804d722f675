// Acceptance 5 of issue 3, through the real daemon: TLS against mosquitto with a CA the test
// makes (openssl, through the harness's test_pki). One broker, four listeners: plain (for the
// recorder), TLS with a certificate for 127.0.0.1, TLS with a certificate from the same CA for
// another host, TLS with a certificate from a CA ferry does not trust. All listeners require
// a client certificate. Four ferrys run side by side, one gateway id each.
#include <doctest/doctest.h>

#include <thread>

#include "tests/chaos/chaos_support.hpp"

using namespace ferry::test;

TEST_CASE("TLS: the right CA delivers; a wrong host or an untrusted CA is refused") {
    test_pki pki;
    const auto good_port = free_port();
    const auto wrong_host_port = free_port();
    const auto untrusted_port = free_port();
    mosquitto broker(
        0, pki.tls_listener(good_port, pki.server, pki.server_key) +
               pki.tls_listener(wrong_host_port, pki.wrong_host_server, pki.wrong_host_key) +
               pki.tls_listener(untrusted_port, pki.untrusted_server, pki.untrusted_key));
    for (auto p : {good_port, wrong_host_port, untrusted_port})
        REQUIRE(wait_for_port(p, 5s));
    modbus_sim sim(0, holding_registers(10));
    mqtt_recorder rec(broker.uri(), {"plant/#"});

    struct gateway {
        gateway(std::string i, std::uint16_t p, bool verify, bool deliver)
            : id(std::move(i)), port(p), verify_hostname(verify), must_deliver(deliver) {}
        std::string id;
        std::uint16_t port;
        bool verify_hostname;
        bool must_deliver;
        temp_dir dir;
        ferry_options o;
        std::unique_ptr<process> ferry;
    };
    std::vector<std::unique_ptr<gateway>> gws;
    gws.push_back(std::make_unique<gateway>("tls-good", good_port, true, true));
    gws.push_back(std::make_unique<gateway>("tls-wrong-host", wrong_host_port, true, false));
    gws.push_back(std::make_unique<gateway>("tls-untrusted", untrusted_port, true, false));
    // The control for the wrong host: the same listener with verify_hostname off connects, so
    // the refusal above is the host name check and nothing else.
    gws.push_back(std::make_unique<gateway>("tls-no-host-check", wrong_host_port, false, true));
    for (auto& g : gws) {
        g->o.gateway = g->id;
        g->o.data_dir = g->dir.path();
        g->o.http_port = free_port();
        g->o.modbus_port = sim.port();
        g->o.registers = 10;
        g->o.max_age = "200ms";
        g->o.uris = {"ssl://127.0.0.1:" + std::to_string(g->port)};
        g->o.tls = "{ ca_file: " + pki.ca + ", cert_file: " + pki.client +
                   ", key_file: " + pki.client_key +
                   ", verify_hostname: " + (g->verify_hostname ? "true" : "false") + " }";
        g->ferry = start_ferry(g->o, g->dir.file("ferry.yaml"), g->dir.file("ferry.log"));
    }
    for (auto& g : gws) {
        if (g->must_deliver) CHECK(rec.wait_for_count("plant/" + g->id + "/d1", 3, 15s));
    }
    // The refused ones have tried for a while by now; give them at least two attempts.
    for (auto& g : gws) {
        if (!g->must_deliver) {
            CHECK(wait_until(
                [&] {
                    return metric_value(g->o.http_port,
                                        "ferry_mqtt_connects_total{result=\"error\"}") >= 2;
                },
                15s));
        }
    }
    for (auto& g : gws) {
        CAPTURE(g->id);
        const auto m = metrics_text(g->o.http_port);
        const auto arrived = rec.messages_on("plant/" + g->id + "/d1").size();
        MESSAGE(g->id << ": connected=" << metric(m, "ferry_mqtt_connected").value_or(-1)
                      << " connects ok="
                      << metric(m, "ferry_mqtt_connects_total{result=\"ok\"}").value_or(-1)
                      << " error="
                      << metric(m, "ferry_mqtt_connects_total{result=\"error\"}").value_or(-1)
                      << " spooled=" << metric(m, "ferry_spool_messages").value_or(-1)
                      << " arrived=" << arrived);
        if (g->must_deliver) {
            CHECK(metric(m, "ferry_mqtt_connected") == 1.0);
            CHECK(arrived >= 3);
            auto c = check_delivery(parse_upstream(rec.messages(), "plant/" + g->id + "/"));
            CHECK(c.batch_gaps.empty());
            CHECK(c.seq_gaps.empty());
        } else {
            CHECK(metric(m, "ferry_mqtt_connected") == 0.0);
            CHECK(metric(m, "ferry_mqtt_connects_total{result=\"ok\"}") == 0.0);
            CHECK(metric(m, "ferry_mqtt_errors_total{reason=\"connect\"}").value_or(0) >= 2);
            CHECK(metric(m, "ferry_spool_messages").value_or(0) >= 1);  // kept for later
            CHECK(arrived == 0);
        }
    }
    for (auto& g : gws)
        CHECK(g->ferry->stop(15, 10s) == 0);
}
