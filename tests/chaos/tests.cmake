ferry_test(chaos_outage chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/outage_test.cpp)
target_link_libraries(chaos_outage PRIVATE SQLite::SQLite3)
ferry_test(chaos_kill9 chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/kill9_test.cpp)
target_link_libraries(chaos_kill9 PRIVATE SQLite::SQLite3)
