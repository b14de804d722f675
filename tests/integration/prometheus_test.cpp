// Debian's Prometheus scrapes a running ferry for real; promtool checks the exposition.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "tests/support/ferry_run.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;
using nlohmann::json;

namespace {

// One instant-query value from Prometheus' HTTP API, or nullopt.
std::optional<double> query(std::uint16_t prom_port, const std::string& promql) {
    std::string q;
    for (char c : promql) {
        if (std::isalnum(static_cast<unsigned char>(c)) || c == '_')
            q += c;
        else {
            char buf[4];
            std::snprintf(buf, sizeof buf, "%%%02X", static_cast<unsigned char>(c));
            q += buf;
        }
    }
    auto r = http_get(prom_port, "/api/v1/query?query=" + q);
    if (r.status != 200) return std::nullopt;
    auto j = json::parse(r.body, nullptr, false);
    if (j.is_discarded() || j["status"] != "success" || j["data"]["result"].empty())
        return std::nullopt;
    return std::stod(j["data"]["result"][0]["value"][1].get<std::string>());
}

// True when Prometheus accepts the PromQL (the result may be empty).
bool valid_query(std::uint16_t prom_port, const std::string& promql) {
    std::string q;
    for (char c : promql) {
        if (std::isalnum(static_cast<unsigned char>(c)) || c == '_')
            q += c;
        else {
            char buf[4];
            std::snprintf(buf, sizeof buf, "%%%02X", static_cast<unsigned char>(c));
            q += buf;
        }
    }
    auto r = http_get(prom_port, "/api/v1/query?query=" + q);
    auto j = json::parse(r.body, nullptr, false);
    return r.status == 200 && !j.is_discarded() && j["status"] == "success";
}

}  // namespace

TEST_CASE("Prometheus scrapes ferry; the series carry the values ferry reports") {
    modbus_sim sim(0, {"holding:0=u16:7"});
    mosquitto broker;
    temp_dir dir;
    auto http_port = free_port();
    auto env = ferry_vars(dir.path(), http_port, sim.port(), broker.uri());
    env["GHOST_PORT"] = std::to_string(free_port());
    auto ferry_p = ferry_process(config_path("prometheus"), dir.file("ferry.log"), env);
    auto& ferry = *ferry_p;
    wait_ready(ferry, http_port, 10s);

    auto prom_port = free_port();
    write_file(dir.file("prometheus.yml"),
               "global: { scrape_interval: 1s, evaluation_interval: 1s }\n"
               "scrape_configs:\n"
               "  - job_name: ferry\n"
               "    static_configs: [ { targets: ['127.0.0.1:" +
                   std::to_string(http_port) + "'] } ]\n");
    process prom({"/usr/bin/prometheus", "--config.file=" + dir.file("prometheus.yml"),
                  "--storage.tsdb.path=" + dir.file("tsdb"),
                  "--web.listen-address=127.0.0.1:" + std::to_string(prom_port)},
                 dir.file("prometheus.log"));
    REQUIRE(wait_for_port(prom_port, 20s));
    bool scraped = wait_until([&] { return query(prom_port, "up{job=\"ferry\"}") == 1.0; }, 30s);
    if (!scraped) MESSAGE(read_file(dir.file("prometheus.log")));
    REQUIRE(scraped);
    REQUIRE(wait_until(
        [&] {
            return query(prom_port, "ferry_mqtt_published_total{result=\"ok\"}").value_or(0) >= 2;
        },
        20s));
    CHECK(query(prom_port, "ferry_build_info") == 1.0);
    CHECK(query(prom_port, "ferry_device_up{device=\"boiler1\"}") == 1.0);
    CHECK(query(prom_port, "ferry_mqtt_connected") == 1.0);
    CHECK(query(prom_port, "ferry_driver_polls_total{device=\"boiler1\",result=\"ok\"}")
              .value_or(0) >= 1);
    CHECK(query(prom_port, "ferry_spool_messages").has_value());
    CHECK(query(prom_port, "ferry_driver_poll_seconds_count{device=\"boiler1\"}").value_or(0) >= 1);

    // The Grafana dashboard in config/ only uses series ferry exports, in valid PromQL.
    auto dash =
        json::parse(read_file(std::string(FERRY_SOURCE_DIR) + "/config/grafana-dashboard.json"));
    auto exposition = http_get(http_port, "/metrics").body;
    std::size_t exprs = 0;
    for (const auto& panel : dash["panels"]) {
        for (const auto& target : panel["targets"]) {
            auto expr = target["expr"].get<std::string>();
            CAPTURE(expr);
            auto name_at = expr.find("ferry_");
            REQUIRE(name_at != std::string::npos);
            auto end = expr.find_first_not_of("abcdefghijklmnopqrstuvwxyz_", name_at);
            auto name = expr.substr(name_at, end - name_at);
            if (name.size() > 7 && name.ends_with("_bucket")) name.resize(name.size() - 7);
            CHECK(exposition.find("# TYPE " + name + " ") != std::string::npos);
            CHECK(valid_query(prom_port, expr));
            ++exprs;
        }
    }
    CHECK(exprs >= 12);

    // promtool lints the exposition format and names.
    write_file(dir.file("metrics.txt"), http_get(http_port, "/metrics").body);
    process check({"/bin/sh", "-c", "/usr/bin/promtool check metrics < " + dir.file("metrics.txt")},
                  dir.file("promtool.log"));
    auto rc = check.wait(30s);
    REQUIRE(rc);
    if (*rc != 0) MESSAGE(read_file(dir.file("promtool.log")));
    CHECK(*rc == 0);
    CHECK(ferry.stop() == 0);
}
