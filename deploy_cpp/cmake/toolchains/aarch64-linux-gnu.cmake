# 64-bit ARM (Hi3519AV100's and most boards' Cortex-A53/A55/A73 in 64-bit mode, or any aarch64 Linux), with
# Debian's cross compiler (g++-aarch64-linux-gnu). Tests run under qemu-aarch64 (Debian qemu-user).
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(PFPLD_CROSS_PREFIX aarch64-linux-gnu- CACHE STRING "cross compiler prefix")
set(PFPLD_CPU_FLAGS "")
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
include(${CMAKE_CURRENT_LIST_DIR}/linux-cross.cmake)
