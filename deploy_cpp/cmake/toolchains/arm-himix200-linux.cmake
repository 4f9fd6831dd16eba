# HiSilicon's own toolchain for Hi3516CV500 / Hi3516DV300 (arm-himix200-linux-, from the SDK; glibc), Cortex-A7,
# softfp like the SDK's libraries. Not installed on our CI machines: this file is the documented way to build the
# same sources for the board with the vendor compiler, e.g. with -DHISI_SDK_DIR=<sdk>/mpp for the NNIE backend (see
# deploy_cpp/README.md). uClibc variants (arm-himix100-linux-) work the same way with PFPLD_CROSS_PREFIX changed.
set(CMAKE_SYSTEM_PROCESSOR armv7-a)
set(PFPLD_CROSS_PREFIX arm-himix200-linux- CACHE STRING "cross compiler prefix")
set(PFPLD_CPU_FLAGS "-mcpu=cortex-a7 -mfpu=neon-vfpv4 -mfloat-abi=softfp")
include(${CMAKE_CURRENT_LIST_DIR}/linux-cross.cmake)
