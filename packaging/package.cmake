# Install layout and the Debian package (CPack DEB), included from the top-level
# CMakeLists.txt. `scripts/package BUILD_DIR` builds build-dir/packages/ferry_<v>_<arch>.deb
# for the architecture that build dir targets (amd64 natively; arm64/armhf from the
# cross build dirs of scripts/cross-build). Contents:
#   /usr/bin/ferry                          the daemon (stripped)
#   /lib/systemd/system/ferry.service       the hardened unit (systemd/ferry.service)
#   /etc/ferry/ferry.yaml                   the default config, a conffile
#   /usr/share/ferry/profiles/*.yaml        device profiles (config/profiles; FERRY_PROFILES_DIR)
#   /var/lib/ferry                          made by postinst, owned by the system user ferry
#   /usr/share/doc/ferry/                   DEPLOY.md, REFERENCE.md, copyright
# Maintainer scripts: packaging/debian/{postinst,prerm,postrm}.
include(GNUInstallDirs)

install(FILES ${PROJECT_SOURCE_DIR}/systemd/ferry.service
        DESTINATION /lib/systemd/system)
install(FILES ${PROJECT_SOURCE_DIR}/packaging/ferry.yaml
        DESTINATION /etc/ferry)
file(GLOB FERRY_SHIPPED_PROFILES ${PROJECT_SOURCE_DIR}/config/profiles/*.yaml)
install(FILES ${FERRY_SHIPPED_PROFILES}
        DESTINATION ${FERRY_PROFILES_DIR})
install(FILES ${PROJECT_SOURCE_DIR}/docs/DEPLOY.md ${PROJECT_SOURCE_DIR}/config/REFERENCE.md
              ${PROJECT_SOURCE_DIR}/packaging/copyright
        DESTINATION ${CMAKE_INSTALL_DOCDIR})

if(NOT CPACK_DEBIAN_PACKAGE_ARCHITECTURE)
  find_program(FERRY_DPKG dpkg)
  if(FERRY_DPKG)
    execute_process(COMMAND ${FERRY_DPKG} --print-architecture
                    OUTPUT_VARIABLE CPACK_DEBIAN_PACKAGE_ARCHITECTURE
                    OUTPUT_STRIP_TRAILING_WHITESPACE)
  endif()
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME ferry)
set(CPACK_PACKAGE_VENDOR "Ferry")
set(CPACK_PACKAGE_CONTACT "Ferry maintainers <ferry@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "IoT telemetry edge gateway: Modbus to MQTT with a durable spool")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "Ferry polls devices (Modbus TCP), turns readings into events, batches them by YAML\n\
rules and ferries them upstream over MQTT (QoS 1) through a bounded SQLite spool on\n\
local disk, so an uplink outage or a restart loses nothing accepted. Runs as a\n\
hardened systemd service (ferry.service) as the system user ferry.")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)   # ferry_0.1.0-1_arm64.deb
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
# Library dependencies from the binary: natively dpkg-shlibdeps; in a cross build it cannot
# see the foreign architecture's packages, so scripts/package passes Depends computed from
# the binary's NEEDED sonames and the sysroot's soname → package map (scripts/sysroot).
if(CMAKE_CROSSCOMPILING)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS OFF)
else()
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
endif()
set(CPACK_DEBIAN_PACKAGE_PREDEPENDS "adduser")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/packaging/debian/postinst
    ${PROJECT_SOURCE_DIR}/packaging/debian/prerm
    ${PROJECT_SOURCE_DIR}/packaging/debian/postrm
    ${PROJECT_SOURCE_DIR}/packaging/debian/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_OUTPUT_FILE_PREFIX ${PROJECT_BINARY_DIR}/packages)
include(CPack)
