# 32-bit ARM hard-float, Cortex-A7 with NEON VFPv4 (Hi3516CV500 / Hi3516DV300), with Debian's cross compiler
# (g++-arm-linux-gnueabihf). Tests run under qemu-arm (Debian qemu-user) with the target's libraries.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7-a)
set(PFPLD_CROSS_PREFIX arm-linux-gnueabihf- CACHE STRING "cross compiler prefix")
set(CMAKE_C_COMPILER ${PFPLD_CROSS_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${PFPLD_CROSS_PREFIX}g++)
set(CMAKE_C_FLAGS_INIT "-mcpu=cortex-a7 -mfpu=neon-vfpv4 -mfloat-abi=hard")
set(CMAKE_CXX_FLAGS_INIT "-mcpu=cortex-a7 -mfpu=neon-vfpv4 -mfloat-abi=hard")
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-arm -L /usr/arm-linux-gnueabihf)
set(CMAKE_FIND_ROOT_PATH /usr/arm-linux-gnueabihf)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
# Header-only packages (nlohmann-json) and a cross-built ncnn given with ncnn_DIR are found outside the sysroot.
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
