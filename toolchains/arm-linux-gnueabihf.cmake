# Cross build for 32-bit ARM with hardware float (Debian armhf: ARMv7-A, VFPv3-D16),
# e.g. Raspberry Pi 2/3 on 32-bit OS, i.MX6, AM335x boxes.
# Use through scripts/cross-build armhf (builds the sysroot first). See docs/DEPLOY.md.
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(FERRY_TRIPLET arm-linux-gnueabihf)
set(FERRY_DEB_ARCH armhf)
set(FERRY_SYSROOT_NAME armhf)
set(FERRY_QEMU qemu-arm)
include(${CMAKE_CURRENT_LIST_DIR}/debian-cross.cmake)
# GCC notes that std::span's argument passing changed in GCC 7.1 on ARM (-Wpsabi): it only
# matters when linking with code built by GCC < 7, which no Debian 12 library is.
string(APPEND CMAKE_CXX_FLAGS_INIT " -Wno-psabi")
