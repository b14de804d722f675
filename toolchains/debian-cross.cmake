# Shared part of Ferry's cross toolchain files (aarch64-linux-gnu.cmake,
# arm-linux-gnueabihf.cmake): Debian 12's cross g++ against a sysroot of Debian 12 packages
# of the target architecture (scripts/sysroot builds it; scripts/cross-build does all of it).
#
# Set before including: FERRY_TRIPLET (aarch64-linux-gnu), FERRY_DEB_ARCH (arm64),
# CMAKE_SYSTEM_PROCESSOR (aarch64), FERRY_QEMU (qemu-aarch64).
# The sysroot: -DFERRY_SYSROOT=DIR, else $FERRY_SYSROOT, else .cache/sysroot-<arch>.
set(CMAKE_SYSTEM_NAME Linux)

if(NOT FERRY_SYSROOT)
  if(DEFINED ENV{FERRY_SYSROOT})
    set(FERRY_SYSROOT "$ENV{FERRY_SYSROOT}")
  else()
    set(FERRY_SYSROOT "${CMAKE_CURRENT_LIST_DIR}/../.cache/sysroot-${FERRY_SYSROOT_NAME}")
  endif()
endif()
get_filename_component(FERRY_SYSROOT "${FERRY_SYSROOT}" ABSOLUTE)
if(NOT EXISTS "${FERRY_SYSROOT}/usr/include")
  message(FATAL_ERROR "No sysroot at ${FERRY_SYSROOT}: run scripts/sysroot ${FERRY_SYSROOT_NAME} "
                      "(or scripts/cross-build ${FERRY_SYSROOT_NAME}, which does everything)")
endif()
# try_compile projects re-read this file: hand them the same sysroot.
set(ENV{FERRY_SYSROOT} "${FERRY_SYSROOT}")

set(CMAKE_C_COMPILER ${FERRY_TRIPLET}-gcc)
set(CMAKE_CXX_COMPILER ${FERRY_TRIPLET}-g++)
set(CMAKE_SYSROOT "${FERRY_SYSROOT}")
set(CMAKE_LIBRARY_ARCHITECTURE ${FERRY_TRIPLET})

# Headers, libraries and CMake packages from the sysroot only; programs from the host.
set(CMAKE_FIND_ROOT_PATH "${FERRY_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# pkg-config (libmodbus, libsystemd): the target's .pc files, paths prefixed by the sysroot.
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${FERRY_SYSROOT}")
set(ENV{PKG_CONFIG_LIBDIR}
    "${FERRY_SYSROOT}/usr/lib/${FERRY_TRIPLET}/pkgconfig:${FERRY_SYSROOT}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")

# Shared libraries of the sysroot that our direct dependencies need in turn.
set(CMAKE_EXE_LINKER_FLAGS_INIT
    "-Wl,-rpath-link,${FERRY_SYSROOT}/usr/lib/${FERRY_TRIPLET}:${FERRY_SYSROOT}/lib/${FERRY_TRIPLET}")

# binfmt_misc is not mounted on the build machines: ctest (the unit tier) and any target
# run at build time go through qemu-user explicitly, with the sysroot as its root for the
# dynamic loader and the shared libraries.
find_program(FERRY_QEMU_PROGRAM ${FERRY_QEMU})
if(FERRY_QEMU_PROGRAM)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${FERRY_QEMU_PROGRAM};-L;${FERRY_SYSROOT}")
endif()

set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE ${FERRY_DEB_ARCH} CACHE STRING "Debian architecture of the package")
