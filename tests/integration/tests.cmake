# Integration tier: real mosquitto, real Modbus servers, pty pairs; loopback only.
ferry_test(integration_harness integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/harness_test.cpp)
target_link_libraries(integration_harness PRIVATE PkgConfig::MODBUS)
ferry_test(integration_publisher integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/publisher_test.cpp)
target_link_libraries(integration_publisher PRIVATE ferry_upstream)
ferry_test(integration_pipeline integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/pipeline_test.cpp)
ferry_test(integration_cli integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/cli_test.cpp)
ferry_test(integration_http integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/http_test.cpp)
ferry_test(integration_rules integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/rules_pipeline_test.cpp)
ferry_test(integration_prometheus integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/prometheus_test.cpp)
ferry_test(integration_systemd integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/systemd_test.cpp)
ferry_test(integration_modbus integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/modbus_driver_test.cpp)
target_link_libraries(integration_modbus PRIVATE ferry_modbus)
# Issue 17: failing units backed off and quirk settings, pymodbus's request log as the witness.
ferry_test(integration_modbus_field integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/modbus_field_test.cpp)
target_link_libraries(integration_modbus_field PRIVATE ferry_modbus)
ferry_test(integration_modbus_line integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/modbus_line_test.cpp)
ferry_test(integration_modbus_groups integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/modbus_groups_test.cpp)
target_link_libraries(integration_modbus_groups PRIVATE ferry_modbus)
# Issue 17 item 6: `ferry probe modbus --scan` through the binary, pymodbus on a pty line.
ferry_test(integration_modbus_scan integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/modbus_scan_test.cpp)
ferry_test(integration_reload integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/reload_test.cpp)
ferry_test(integration_serial integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/serial_line_test.cpp)
ferry_test(integration_secrets integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/secrets_test.cpp)
ferry_test(integration_commands integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/commands_test.cpp)
ferry_test(integration_modbus_write integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/modbus_write_test.cpp)
target_link_libraries(integration_modbus_write PRIVATE ferry_modbus)
ferry_test(integration_conservation integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/conservation_test.cpp)
ferry_test(integration_mqtt_proxy integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/mqtt_proxy_test.cpp)
# Issue 14: no poison message upstream (dead letters), through `ferry run` and mosquitto.
ferry_test(integration_poison integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/poison_test.cpp)
target_link_libraries(integration_poison PRIVATE SQLite::SQLite3)
# The system driver (issue 15): the box's health through `ferry run` and mosquitto.
ferry_test(integration_system integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/system_driver_test.cpp)
# The broker port probe of the publisher's reconnect wait (issue 16), on loopback sockets.
ferry_test(integration_port_probe integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/port_probe_test.cpp)
target_link_libraries(integration_port_probe PRIVATE ferry_upstream)
# Per-device status (issue 17): retained ferry/{gateway}/device/{device}/status through `ferry
# run`, mosquitto and the simulator; the per-channel request metrics.
ferry_test(integration_device_status integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/device_status_test.cpp)
ferry_test(integration_sparkplug integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/sparkplug_test.cpp)
# MQTT 5 properties (issue 18, item 3): message_expiry, user properties, Receive Maximum,
# retain_last, and MQTT 3.1.1 without them, through `ferry run`, mosquitto and mosquitto_sub.
ferry_test(integration_mqtt5 integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/mqtt5_test.cpp)
ferry_test(integration_brokers integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/brokers_test.cpp)
# The reference consumer (issue 19, tools/ferry_consumer.py) against mosquitto and `ferry run`:
# a shared subscription into one SQLite file, and crafted gaps, repeats and replays.
ferry_test(integration_consumer integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/consumer_test.cpp)
target_link_libraries(integration_consumer PRIVATE SQLite::SQLite3)
