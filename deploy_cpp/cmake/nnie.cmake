# The NNIE backend, target pfpld_nnie: included by CMakeLists.txt when HISI_SDK_DIR is set (CMake or environment
# variable). HISI_SDK_DIR is the SDK's mpp folder (the one with include/ and lib/) or a folder above it: the unpacked
# SDK has it at smp/a7_linux/mpp (Hi3516CV500, Hi3516DV300) or smp/a53_linux/mpp (Hi3519AV100). The SDK's static
# libraries are linked as its sample Makefiles link them: libnnie, libmpi, and what libmpi needs (libsecurec and the
# audio libraries it refers to even when no audio is used).

if(NOT HISI_SDK_DIR AND DEFINED ENV{HISI_SDK_DIR})
  set(HISI_SDK_DIR "$ENV{HISI_SDK_DIR}")
endif()

set(HISI_MPP_DIR "")
foreach(candidate "${HISI_SDK_DIR}" "${HISI_SDK_DIR}/mpp" "${HISI_SDK_DIR}/smp/a7_linux/mpp"
                  "${HISI_SDK_DIR}/smp/a53_linux/mpp")
  if(EXISTS "${candidate}/include/mpi_nnie.h")
    set(HISI_MPP_DIR "${candidate}")
    break()
  endif()
endforeach()

# What src/nnie/nnie_backend.cpp includes and links; each library as lib<name>.a (what the samples link) or .so.
set(_pfpld_nnie_missing "")
if(HISI_MPP_DIR)
  foreach(header hi_comm_svp.h hi_nnie.h mpi_nnie.h mpi_sys.h hi_comm_vb.h mpi_vb.h)
    if(NOT EXISTS "${HISI_MPP_DIR}/include/${header}")
      list(APPEND _pfpld_nnie_missing "include/${header}")
    endif()
  endforeach()
  set(_pfpld_nnie_libs "")
  foreach(name nnie mpi securec VoiceEngine upvqe dnvqe)
    set(_found "")
    foreach(file "lib${name}.a" "lib${name}.so")
      if(NOT _found AND EXISTS "${HISI_MPP_DIR}/lib/${file}")
        set(_found "${HISI_MPP_DIR}/lib/${file}")
      endif()
    endforeach()
    if(_found)
      list(APPEND _pfpld_nnie_libs "${_found}")
    elseif(name STREQUAL "nnie" OR name STREQUAL "mpi")   # the others: only where the SDK version has them
      list(APPEND _pfpld_nnie_missing "lib/lib${name}.a")
    endif()
  endforeach()
endif()
if(NOT HISI_MPP_DIR)
  message(FATAL_ERROR "HISI_SDK_DIR=${HISI_SDK_DIR}: no include/mpi_nnie.h there nor in mpp/, smp/a7_linux/mpp/ "
    "(Hi3516CV500, Hi3516DV300) or smp/a53_linux/mpp/ (Hi3519AV100); point it at the SDK's mpp folder, the one "
    "with include/ and lib/")
elseif(_pfpld_nnie_missing)
  string(REPLACE ";" ", " _missing "${_pfpld_nnie_missing}")
  message(FATAL_ERROR "HISI_SDK_DIR=${HISI_SDK_DIR}: the SDK folder ${HISI_MPP_DIR} lacks ${_missing}, which the "
    "NNIE backend needs")
endif()
if(NOT CMAKE_CROSSCOMPILING)
  message(WARNING "HISI_SDK_DIR is set but this is not a cross build: the SDK's libraries are for the board's ARM "
    "core (-DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/arm-himix200-linux.cmake)")
endif()

add_library(pfpld_nnie STATIC "${CMAKE_CURRENT_LIST_DIR}/../src/nnie/nnie_backend.cpp")
target_include_directories(pfpld_nnie PRIVATE "${HISI_MPP_DIR}/include")   # SDK headers stay out of ours
# The SDK's static libraries refer to each other: one group, searched until nothing more resolves.
target_link_libraries(pfpld_nnie PUBLIC pfpld_core -Wl,--start-group ${_pfpld_nnie_libs} -Wl,--end-group pthread m dl)
target_compile_definitions(pfpld_nnie PUBLIC PFPLD_WITH_NNIE)
message(STATUS "pfpld: NNIE backend ON (${HISI_MPP_DIR})")
