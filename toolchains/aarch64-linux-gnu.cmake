# Cross build for 64-bit ARM (Debian arm64), e.g. Raspberry Pi 4/5, i.MX8, RK3568 boxes.
# Use through scripts/cross-build aarch64 (builds the sysroot first). See docs/DEPLOY.md.
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(FERRY_TRIPLET aarch64-linux-gnu)
set(FERRY_DEB_ARCH arm64)
set(FERRY_SYSROOT_NAME aarch64)
set(FERRY_QEMU qemu-aarch64)
include(${CMAKE_CURRENT_LIST_DIR}/debian-cross.cmake)
