ferry_test(chaos_outage chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/outage_test.cpp)
target_link_libraries(chaos_outage PRIVATE SQLite::SQLite3)
ferry_test(chaos_kill9 chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/kill9_test.cpp)
target_link_libraries(chaos_kill9 PRIVATE SQLite::SQLite3)
ferry_test(chaos_bounds chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/bounds_test.cpp)
target_link_libraries(chaos_bounds PRIVATE SQLite::SQLite3)
ferry_test(chaos_corrupt_spool chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/corrupt_spool_test.cpp)
target_link_libraries(chaos_corrupt_spool PRIVATE SQLite::SQLite3)
ferry_test(chaos_tls chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/tls_test.cpp)
target_link_libraries(chaos_tls PRIVATE SQLite::SQLite3)
ferry_test(chaos_failover chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/failover_test.cpp)
target_link_libraries(chaos_failover PRIVATE SQLite::SQLite3)
ferry_test(chaos_disk_full chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/disk_full_test.cpp)
target_link_libraries(chaos_disk_full PRIVATE SQLite::SQLite3)
ferry_test(chaos_lifecycle chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/lifecycle_test.cpp)
target_link_libraries(chaos_lifecycle PRIVATE SQLite::SQLite3)
# The randomized fault campaign (docs/FAULTS.md): FERRY_CAMPAIGN_SECONDS of faults (120 in CI);
# ./scripts/soak MINUTES runs it long.
ferry_test(chaos_campaign chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/campaign_test.cpp)
target_link_libraries(chaos_campaign PRIVATE SQLite::SQLite3)
add_dependencies(chaos_campaign ferry_faultvfs)
# Network faults below the socket: each case runs in a network namespace of its own (root;
# exit 77 = skipped, loudly, where the kernel refuses a namespace or has no netem).
add_executable(chaos_network ${CMAKE_CURRENT_SOURCE_DIR}/chaos/network_test.cpp)
target_link_libraries(chaos_network PRIVATE ferry_doctest_main ferry_warnings ferry_test_support
  SQLite::SQLite3)
target_include_directories(chaos_network PRIVATE ${PROJECT_SOURCE_DIR})
add_dependencies(chaos_network ferry ferry_modbus_sim)
foreach(case partition slow_uplink netem)
  set(args "")
  if(case STREQUAL "netem")
    set(args --need-netem)
  endif()
  string(REPLACE "_" " " words ${case})
  add_test(NAME chaos_network_${case}
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/chaos/netns_run.sh ${args} $<TARGET_FILE:chaos_network>
            "--test-case=${words}*")
  set_tests_properties(chaos_network_${case} PROPERTIES LABELS chaos RUN_SERIAL TRUE
    SKIP_RETURN_CODE 77)
endforeach()
ferry_test(chaos_broker_faults chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/broker_faults_test.cpp)
target_link_libraries(chaos_broker_faults PRIVATE SQLite::SQLite3)
ferry_test(chaos_spool_faults chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/spool_faults_test.cpp)
target_link_libraries(chaos_spool_faults PRIVATE SQLite::SQLite3)
