# HiSilicon's own toolchain for Hi3516CV500 / Hi3516DV300 (arm-himix200-linux-, from the SDK; glibc), Cortex-A7.
# Not installed on our CI machines: this file is the documented way to build the same sources for the board with
# the vendor compiler, e.g. with -DHISI_SDK_DIR=<sdk>/mpp for the NNIE backend (see deploy_cpp/README.md).
# Hi3519AV100 SDKs ship arm-himix200-linux too; uClibc variants (arm-himix100-linux-) work the same way with
# PFPLD_CROSS_PREFIX changed.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7-a)
set(PFPLD_CROSS_PREFIX arm-himix200-linux- CACHE STRING "cross compiler prefix")
set(CMAKE_C_COMPILER ${PFPLD_CROSS_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${PFPLD_CROSS_PREFIX}g++)
set(CMAKE_C_FLAGS_INIT "-mcpu=cortex-a7 -mfpu=neon-vfpv4 -mfloat-abi=softfp")
set(CMAKE_CXX_FLAGS_INIT "-mcpu=cortex-a7 -mfpu=neon-vfpv4 -mfloat-abi=softfp")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
