# Integration tier: real mosquitto, real Modbus servers, pty pairs; loopback only.
ferry_test(integration_harness integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/harness_test.cpp)
target_link_libraries(integration_harness PRIVATE PkgConfig::MODBUS)
ferry_test(integration_publisher integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/publisher_test.cpp)
target_link_libraries(integration_publisher PRIVATE ferry_upstream)
ferry_test(integration_pipeline integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/pipeline_test.cpp)
ferry_test(integration_cli integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/cli_test.cpp)
target_link_libraries(integration_cli PRIVATE ferry_base)
ferry_test(integration_http integration ${CMAKE_CURRENT_SOURCE_DIR}/integration/http_test.cpp)
