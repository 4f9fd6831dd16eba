# Shared by the toolchain files: a Linux target whose compiler is ${PFPLD_CROSS_PREFIX}gcc/g++. Libraries come from
# the target's sysroot; header-only packages (nlohmann-json) and a cross-built ncnn given with ncnn_DIR are found
# outside it. Set PFPLD_CROSS_PREFIX, CMAKE_SYSTEM_PROCESSOR and the CPU flags before including this file.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_C_COMPILER ${PFPLD_CROSS_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${PFPLD_CROSS_PREFIX}g++)
set(CMAKE_C_FLAGS_INIT "${PFPLD_CPU_FLAGS}")
set(CMAKE_CXX_FLAGS_INIT "${PFPLD_CPU_FLAGS}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
