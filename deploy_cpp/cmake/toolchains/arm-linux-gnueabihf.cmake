# 32-bit ARM hard-float, Cortex-A7 with NEON VFPv4 (Hi3516CV500 / Hi3516DV300), with Debian's cross compiler
# (g++-arm-linux-gnueabihf). Tests run under qemu-arm (Debian qemu-user) with the target's libraries.
set(CMAKE_SYSTEM_PROCESSOR armv7-a)
set(PFPLD_CROSS_PREFIX arm-linux-gnueabihf- CACHE STRING "cross compiler prefix")
set(PFPLD_CPU_FLAGS "-mcpu=cortex-a7 -mfpu=neon-vfpv4 -mfloat-abi=hard")
set(CMAKE_FIND_ROOT_PATH /usr/arm-linux-gnueabihf)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-arm -L /usr/arm-linux-gnueabihf)
include(${CMAKE_CURRENT_LIST_DIR}/linux-cross.cmake)
