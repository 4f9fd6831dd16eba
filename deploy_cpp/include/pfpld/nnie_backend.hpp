// The NNIE backend: runs the `<task>_inst.wk` of an NNIE bundle's deploy.json on the HiSilicon NNIE (Hi3516CV500,
// Hi3516DV300, Hi3519AV100) through the SDK's MPI calls, feeding the planar U8 input that pack_planar_u8 makes and
// reading the S32 report blobs by name through s32_blob_to_float. Built only with a HiSilicon SDK (cmake/nnie.cmake);
// no SDK header is needed to include this one.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "pfpld/backend.hpp"

namespace pfpld {

struct NnieOptions {
    int core_id = 0;              // SVP_NNIE_ID_E; Hi3516CV500, Hi3516DV300 and Hi3519AV100 have one core, 0
    int blob_align_bytes = 16;    // every blob row is rounded up to this many bytes: 16 as the SDK samples do
                                  // (SAMPLE_SVP_NNIE_ALIGN_16); 32 is the samples' other alignment
    int query_sleep_us = 100;     // pause between HI_MPI_SVP_NNIE_Query calls that time out (the samples' usleep)
};

// Loads the runtime's .wk and allocates its buffers. Needs an initialised MPP system (see NnieMppSystem).
// One backend runs one forward pass at a time: its blobs are shared by every call to infer.
std::unique_ptr<Backend> make_nnie_backend(const DeployConfig& config, const std::string& runtime = "nnie",
                                           const NnieOptions& options = {});

// The input already planar (3 planes in the runtime's `planes` order, `height` rows of `width` bytes, no padding):
// the bundle's data/nnie_image/rgb_planar/*.bgr test files, whose JSON holds what the board should print.
Outputs nnie_infer_planar_u8(Backend& backend, const uint8_t* planes, int height, int width);

// The MPP system set up as the SDK's SVP samples do (SAMPLE_COMM_SVP_CheckSysInit: SYS and VB exit, VB config with
// the samples' pools, VB init, SYS init) and torn down when destroyed. Only for a process that owns the MPP, such as
// a command-line tool; an application with a video pipeline has initialised the system already and must not use it.
class NnieMppSystem {
public:
    NnieMppSystem();
    ~NnieMppSystem();
    NnieMppSystem(const NnieMppSystem&) = delete;
    NnieMppSystem& operator=(const NnieMppSystem&) = delete;
};

}  // namespace pfpld
