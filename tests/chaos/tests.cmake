ferry_test(chaos_outage chaos ${CMAKE_CURRENT_SOURCE_DIR}/chaos/outage_test.cpp)
target_link_libraries(chaos_outage PRIVATE SQLite::SQLite3)
