# Label `cluster`: Ferry against a RabbitMQ cluster (tests/support/rabbitmq.hpp), nodes killed
# under load. Root and Debian's rabbitmq-server (scripts/install-deps); ctest's full run in
# scripts/test includes it beside the other tiers.
ferry_test(cluster_rabbitmq_failover cluster
  ${CMAKE_CURRENT_SOURCE_DIR}/cluster/rabbitmq_failover_test.cpp)
target_link_libraries(cluster_rabbitmq_failover PRIVATE SQLite::SQLite3)
