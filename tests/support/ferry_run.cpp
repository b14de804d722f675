// Running `ferry` in tests: checked-in configs, their environment, and the chaos builder.
#include "tests/support/ferry_run.hpp"

#include "tests/support/paths.hpp"

namespace ferry::test {

std::string config_path(const std::string& name) {
    return std::string(FERRY_SOURCE_DIR) + "/tests/configs/" + name + ".yaml";
}

std::string copy_config(const temp_dir& dir, const std::string& name, const std::string& tail) {
    write_file(dir.file("ferry.yaml"), read_file(config_path(name)) + tail);
    return dir.file("ferry.yaml");
}

ferry_env ferry_vars(const std::string& data_dir, std::uint16_t http_port,
                     std::uint16_t modbus_port, const std::string& mqtt_uri) {
    ferry_env env{{"DATA_DIR", data_dir}};
    if (http_port != 0) env["HTTP_PORT"] = std::to_string(http_port);
    if (modbus_port != 0) env["MODBUS_PORT"] = std::to_string(modbus_port);
    if (!mqtt_uri.empty()) env["MQTT_URI"] = mqtt_uri;
    return env;
}

std::unique_ptr<process> ferry_process(const std::string& config, const std::string& log,
                                       const ferry_env& env) {
    return std::make_unique<process>(std::vector<std::string>{FERRY_BINARY, "run", "-c", config},
                                     log, env);
}

std::string ferry_yaml(const ferry_options& o) {
    std::string y = "gateway:\n  id: " + o.gateway + "\n  data_dir: " + o.data_dir +
                    "\n  log_level: " + o.log_level + "\n";
    if (o.http_port != 0) y += "http: { listen: 127.0.0.1:" + std::to_string(o.http_port) + " }\n";
    y += "devices:\n  - id: d1\n    driver: modbus_tcp\n    host: 127.0.0.1\n    port: " +
         std::to_string(o.modbus_port) + "\n    poll_interval: " + o.poll +
         "\n    timeout: " + o.timeout + "\n    points:\n";
    for (int i = 0; i < o.registers; ++i) {
        y += "      - { name: r" + std::to_string(i) +
             ", table: holding, address: " + std::to_string(i) + ", type: uint16 }\n";
    }
    y += o.extra_devices;
    y += "rules:\n  - name: all\n    match: [\"#\"]\n    batch: { max_events: " +
         std::to_string(o.max_events) + ", max_age: " + o.max_age +
         " }\n    publish: { topic: \"plant/{gateway}/{device}\", qos: 1 }\n";
    y += "upstream:\n  mqtt:\n    uris: [";
    for (std::size_t i = 0; i < o.uris.size(); ++i)
        y += (i ? ", \"" : "\"") + o.uris[i] + "\"";
    y += "]\n    inflight: " + std::to_string(o.inflight) + "\n";
    if (!o.keepalive.empty()) y += "    keepalive: " + o.keepalive + "\n";
    if (!o.tls.empty()) y += "    tls: " + o.tls + "\n";
    for (const auto& k : o.mqtt_keys)
        y += "    " + k + "\n";
    y += "  spool:\n    path: \"{data_dir}/spool.db\"\n    max_bytes: " + o.max_bytes +
         "\n    when_full: " + o.when_full + "\n    fsync: " + o.fsync + "\n";
    if (!o.compress.empty()) y += "    compress: " + o.compress + "\n";
    if (!o.replay.empty()) y += "  replay: " + o.replay + "\n";
    return y;
}

}  // namespace ferry::test
