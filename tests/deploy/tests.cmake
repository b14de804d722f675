# Deployment tier (issue 8): the systemd unit and the Debian package, checked the way an
# admin would. Host-only (not in cross builds); label integration. Scripts exit 77 to skip
# (not root, no systemd-analyze): ctest then reports them as skipped, not passed.
set(D ${CMAKE_CURRENT_SOURCE_DIR}/deploy)
add_test(NAME deploy_systemd_unit
         COMMAND ${D}/systemd_unit_test.sh ${PROJECT_SOURCE_DIR}/systemd/ferry.service $<TARGET_FILE:ferry>)
set_tests_properties(deploy_systemd_unit PROPERTIES LABELS integration SKIP_RETURN_CODE 77)
# Installs the package on this machine (dpkg -i) and purges it again: alone, never in parallel.
add_test(NAME deploy_package COMMAND ${D}/package_test.sh ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
set_tests_properties(deploy_package PROPERTIES LABELS integration SKIP_RETURN_CODE 77 RUN_SERIAL TRUE
                     TIMEOUT 300)
# The package's default /etc/ferry/ferry.yaml is valid (without root, in every run).
add_test(NAME deploy_default_config
         COMMAND $<TARGET_FILE:ferry> check -c ${PROJECT_SOURCE_DIR}/packaging/ferry.yaml)
set_tests_properties(deploy_default_config PROPERTIES LABELS integration)
