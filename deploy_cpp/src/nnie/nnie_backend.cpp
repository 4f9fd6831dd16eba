// The NNIE backend on the SDK's MPI API, in the manner of the SDK's NNIE sample (sample_nnie.c and
// sample_comm_nnie.c of the Hi3516CV500 / Hi3519AV100 SDKs): the .wk read into MMZ and loaded, task and temporary
// buffers in cached MMZ, blobs laid out from the model's segment info with aligned row strides, caches flushed around
// the forward pass. Packing and decoding are the core's, so the host tests of the core cover what runs here.
#include "pfpld/nnie_backend.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "hi_comm_svp.h"
#include "hi_comm_vb.h"
#include "hi_nnie.h"
#include "mpi_nnie.h"
#include "mpi_sys.h"
#include "mpi_vb.h"

#include "pfpld/error.hpp"
#include "pfpld/preprocess.hpp"

namespace pfpld {
namespace {

// Every failing MPI call becomes one line: the function, its error code in hex as the SDK documents them, and what
// it was doing.
void check(HI_S32 ret, const char* function, const std::string& what) {
    if (ret == HI_SUCCESS) return;
    char code[16];
    std::snprintf(code, sizeof code, "0x%08x", static_cast<unsigned>(ret));
    throw Error(std::string(function) + " failed with " + code + ": " + what);
}

std::string node_name(const SVP_NNIE_NODE_S& node) {   // szName is not terminated when it fills the array
    return std::string(node.szName, std::find(node.szName, node.szName + SVP_NNIE_NODE_NAME_LEN, '\0'));
}

std::string list_names(const SVP_NNIE_NODE_S* nodes, unsigned count) {
    std::string names;
    for (unsigned i = 0; i < count; ++i) names += (i ? ", " : "") + ("'" + node_name(nodes[i]) + "'");
    return names.empty() ? "none" : names;
}

// One MMZ allocation, zeroed, freed on destruction. The NNIE reads and writes memory behind the CPU's cache: a cached
// buffer is flushed (written back and invalidated) before the NNIE reads it and after it has written it.
class MmzBuffer {
public:
    MmzBuffer(const char* name, HI_U32 size, bool cached) : name_(name), size_(size), cached_(cached) {
        if (size == 0) throw Error(std::string("NNIE: the model asks for an empty ") + name + " buffer");
        char mmb[16];   // a writable copy of the name: not every SDK version declares the parameter const
        std::snprintf(mmb, sizeof mmb, "%s", name);
        HI_VOID* virt = nullptr;
        HI_S32 ret = cached ? HI_MPI_SYS_MmzAlloc_Cached(&phys_, &virt, mmb, nullptr, size)
                            : HI_MPI_SYS_MmzAlloc(&phys_, &virt, mmb, nullptr, size);
        check(ret, cached ? "HI_MPI_SYS_MmzAlloc_Cached" : "HI_MPI_SYS_MmzAlloc",
              std::to_string(size) + " bytes for " + name_ + " (cat /proc/media-mem shows what the MMZ has left)");
        virt_ = static_cast<uint8_t*>(virt);
        std::memset(virt_, 0, size);
        try {
            flush();
        } catch (...) {
            HI_MPI_SYS_MmzFree(phys_, virt_);
            throw;
        }
    }
    ~MmzBuffer() { HI_MPI_SYS_MmzFree(phys_, virt_); }
    MmzBuffer(const MmzBuffer&) = delete;
    MmzBuffer& operator=(const MmzBuffer&) = delete;

    uint8_t* data() { return virt_; }
    HI_U64 phys(HI_U32 offset = 0) const { return phys_ + offset; }
    HI_U64 virt(HI_U32 offset = 0) const { return static_cast<HI_U64>(reinterpret_cast<uintptr_t>(virt_ + offset)); }
    SVP_MEM_INFO_S info() const {
        SVP_MEM_INFO_S mem{};
        mem.u64PhyAddr = phys();
        mem.u64VirAddr = virt();
        mem.u32Size = size_;
        return mem;
    }
    void flush() {
        if (cached_) check(HI_MPI_SYS_MmzFlushCache(phys_, virt_, size_), "HI_MPI_SYS_MmzFlushCache", name_);
    }

private:
    std::string name_;
    HI_U32 size_;
    bool cached_;
    HI_U64 phys_ = 0;
    uint8_t* virt_ = nullptr;
};

// The .wk in (uncached) MMZ, as the sample reads it, and the model the SDK parses from it. The parsed model points
// into the file's memory, so the memory is freed only after the model is unloaded.
class WkModel {
public:
    explicit WkModel(const std::string& path) : path_(path) {
        std::ifstream in(path, std::ios::binary | std::ios::ate);
        if (!in) throw Error(path + ": cannot open the .wk (nnie_mapper_12 writes it from the cfg in the same folder)");
        const std::streamoff size = in.tellg();
        if (size <= 0 || size > std::streamoff(UINT32_MAX))
            throw Error(path + ": not a .wk (size " + std::to_string(size) + ")");
        file_ = std::make_unique<MmzBuffer>("pfpld_wk", HI_U32(size), false);
        in.seekg(0);
        if (!in.read(reinterpret_cast<char*>(file_->data()), size)) throw Error(path + ": read failed");
        SVP_SRC_MEM_INFO_S buffer = file_->info();
        check(HI_MPI_SVP_NNIE_LoadModel(&buffer, &model_), "HI_MPI_SVP_NNIE_LoadModel",
              path + " (a .wk from the NNIE 1.2 mapper, nnie_mapper_12, for this chip? A mapper 1.1 .wk fails on "
              "SDK 1.2)");
    }
    ~WkModel() { HI_MPI_SVP_NNIE_UnloadModel(&model_); }
    WkModel(const WkModel&) = delete;
    WkModel& operator=(const WkModel&) = delete;

    const SVP_NNIE_MODEL_S& model() const { return model_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    std::unique_ptr<MmzBuffer> file_;
    SVP_NNIE_MODEL_S model_{};
};

// The task buffer recorded with the NNIE driver (HI_MPI_SVP_NNIE_AddTskBuf, as the CNN sample does after allocating
// it) so that each forward pass skips mapping it again; removed before the buffer is freed.
class RecordedTaskBuffer {
public:
    explicit RecordedTaskBuffer(const SVP_MEM_INFO_S& buffer) : buffer_(buffer) {
        check(HI_MPI_SVP_NNIE_AddTskBuf(&buffer_), "HI_MPI_SVP_NNIE_AddTskBuf", "recording the task buffer");
    }
    ~RecordedTaskBuffer() { HI_MPI_SVP_NNIE_RemoveTskBuf(&buffer_); }
    RecordedTaskBuffer(const RecordedTaskBuffer&) = delete;
    RecordedTaskBuffer& operator=(const RecordedTaskBuffer&) = delete;

private:
    SVP_MEM_INFO_S buffer_;
};

HI_U32 element_bytes(SVP_BLOB_TYPE_E type) {
    return type == SVP_BLOB_TYPE_S32 || type == SVP_BLOB_TYPE_VEC_S32 || type == SVP_BLOB_TYPE_SEQ_S32 ? 4 : 1;
}

// A blob of one image shaped as the node, each row `align`-byte aligned as the sample's SAMPLE_SVP_NNIE_GetBlobMemSize
// aligns every node (the U8 image, S32 feature maps and VEC_S32 vectors alike); no address yet.
SVP_BLOB_S blob_for(const SVP_NNIE_NODE_S& node, HI_U32 align) {
    SVP_BLOB_S blob{};
    blob.enType = node.enType;
    blob.u32Num = 1;
    blob.unShape.stWhc.u32Width = node.unShape.stWhc.u32Width;
    blob.unShape.stWhc.u32Height = node.unShape.stWhc.u32Height;
    blob.unShape.stWhc.u32Chn = node.unShape.stWhc.u32Chn;
    blob.u32Stride = HI_U32(aligned_stride(size_t(node.unShape.stWhc.u32Width) * element_bytes(node.enType), align));
    return blob;
}

HI_U32 blob_bytes(const SVP_BLOB_S& blob) {
    return blob.u32Num * blob.unShape.stWhc.u32Chn * blob.unShape.stWhc.u32Height * blob.u32Stride;
}

void place_blob(SVP_BLOB_S* blob, const MmzBuffer& memory, HI_U32 offset) {
    blob->u64PhyAddr = memory.phys(offset);
    blob->u64VirAddr = memory.virt(offset);
}

class NnieBackend : public Backend {
public:
    NnieBackend(const DeployConfig& config, const std::string& runtime, const NnieOptions& options)
        : config_(config), files_(config.runtime(runtime)), runtime_(runtime), options_(options) {
        const std::string where = config.path + ": runtime '" + runtime + "'";
        if (files_.backend != "nnie") throw Error(where + " is for " + files_.backend + ", not nnie");
        if (files_.planes.size() != 3) throw Error(where + ": expected 3 input planes (the cfg's RGB_order)");
        if (!(files_.s32_scale > 0)) throw Error(where + ": s32_scale must be > 0");
        if (options.core_id < 0 || options.core_id >= int(SVP_NNIE_ID_BUTT))
            throw Error("NNIE core " + std::to_string(options.core_id) + ": this chip has cores 0.." +
                        std::to_string(int(SVP_NNIE_ID_BUTT) - 1));
        if (options.blob_align_bytes != 16 && options.blob_align_bytes != 32)
            throw Error("NNIE blob alignment " + std::to_string(options.blob_align_bytes) + ": expected 16 or 32");
        auto wk = files_.files.find("wk");
        if (wk == files_.files.end()) throw Error(where + " names no .wk");

        wk_ = std::make_unique<WkModel>(wk->second);
        const SVP_NNIE_MODEL_S& model = wk_->model();
        const std::string& path = wk_->path();
        if (model.enRunMode != SVP_NNIE_RUN_MODE_CHIP)
            throw Error(path + ": a functional-simulation .wk (from <task>_func.cfg); the board runs the one from "
                        "<task>_inst.cfg");
        if (model.u32NetSegNum != 1 || model.astSeg[0].enNetType != SVP_NNIE_NET_TYPE_CNN)
            throw Error(path + ": " + std::to_string(model.u32NetSegNum) + " segment(s), the first of net type " +
                        std::to_string(int(model.astSeg[0].enNetType)) + "; this backend runs one-segment CNN "
                        "models (net type 0) such as PFPLD");
        const SVP_NNIE_SEG_S& seg = model.astSeg[0];

        const SVP_NNIE_NODE_S& input = seg.astSrcNode[0];
        if (seg.u16SrcNum != 1 || node_name(input) != files_.input)
            throw Error(path + ": expected one input node '" + files_.input + "' (deploy.json), the model has " +
                        list_names(seg.astSrcNode, seg.u16SrcNum));
        const int height = config.contract.height(), width = config.contract.width();
        const auto& in_whc = input.unShape.stWhc;
        if (input.enType != SVP_BLOB_TYPE_U8 || in_whc.u32Chn != 3 || int(in_whc.u32Height) != height ||
            int(in_whc.u32Width) != width)
            throw Error(path + ": input '" + files_.input + "' is type " + std::to_string(int(input.enType)) + ", " +
                        std::to_string(in_whc.u32Chn) + "x" + std::to_string(in_whc.u32Height) + "x" +
                        std::to_string(in_whc.u32Width) + "; expected a U8 image (cfg [image_type] 1) of 3x" +
                        std::to_string(height) + "x" + std::to_string(width) + " (channels x rows x columns)");

        for (const auto& spec : config.outputs) {
            const std::string& blob = files_.outputs.at(spec.name);
            unsigned i = 0;
            while (i < seg.u16DstNum && node_name(seg.astDstNode[i]) != blob) ++i;
            if (i == seg.u16DstNum)
                throw Error(path + ": no output node '" + blob + "' (output '" + spec.name + "' in deploy.json); the "
                            "model has " + list_names(seg.astDstNode, seg.u16DstNum));
            const SVP_BLOB_TYPE_E type = seg.astDstNode[i].enType;
            if (type != SVP_BLOB_TYPE_S32 && type != SVP_BLOB_TYPE_VEC_S32)
                throw Error(path + ": output node '" + blob + "' is blob type " + std::to_string(int(type)) +
                            "; expected S32 or VEC_S32");
            output_index_[spec.name] = i;
        }

        // Task buffer per segment from the SDK, the temporary buffer from the model; one image, no ROI input.
        HI_U32 task_sizes[SVP_NNIE_MAX_NET_SEG_NUM] = {};
        check(HI_MPI_SVP_NNIE_GetTskBufSize(1, 0, &model, task_sizes, model.u32NetSegNum),
              "HI_MPI_SVP_NNIE_GetTskBufSize", path);
        task_ = std::make_unique<MmzBuffer>("pfpld_task", task_sizes[0], true);
        if (model.u32TmpBufSize > 0) tmp_ = std::make_unique<MmzBuffer>("pfpld_tmp", model.u32TmpBufSize, true);

        const HI_U32 align = HI_U32(options.blob_align_bytes);
        src_ = blob_for(input, align);
        input_ = std::make_unique<MmzBuffer>("pfpld_input", blob_bytes(src_), true);
        place_blob(&src_, *input_, 0);
        HI_U32 dst_bytes = 0;   // every output node gets a blob, one after the other: the forward pass writes them all
        dst_.resize(seg.u16DstNum);
        for (unsigned i = 0; i < seg.u16DstNum; ++i) {
            dst_[i] = blob_for(seg.astDstNode[i], align);
            dst_bytes += blob_bytes(dst_[i]);
        }
        outputs_ = std::make_unique<MmzBuffer>("pfpld_output", dst_bytes, true);
        HI_U32 offset = 0;
        for (auto& blob : dst_) {
            place_blob(&blob, *outputs_, offset);
            offset += blob_bytes(blob);
        }

        ctrl_.u32SrcNum = seg.u16SrcNum;
        ctrl_.u32DstNum = seg.u16DstNum;
        ctrl_.u32NetSegId = 0;
        ctrl_.enNnieId = static_cast<SVP_NNIE_ID_E>(options.core_id);
        ctrl_.stTskBuf = task_->info();
        if (tmp_) ctrl_.stTmpBuf = tmp_->info();
        recorded_task_ = std::make_unique<RecordedTaskBuffer>(ctrl_.stTskBuf);
    }

    Outputs infer(const Image& crop_bgr) override {
        const int height = config_.contract.height(), width = config_.contract.width();
        if (crop_bgr.width != width || crop_bgr.height != height || crop_bgr.channels != 3)
            throw Error("nnie backend: expected a BGR crop of " + std::to_string(height) + " rows x " +
                        std::to_string(width) + " columns");
        pack_planar_u8(crop_bgr, files_.planes, input_->data(), src_.u32Stride);
        return forward();
    }

    Outputs infer_planar(const uint8_t* planes, int height, int width) {
        const auto& whc = src_.unShape.stWhc;
        if (height != int(whc.u32Height) || width != int(whc.u32Width))
            throw Error("nnie backend: planar input is " + std::to_string(width) + "x" + std::to_string(height) +
                        ", the model's " + std::to_string(whc.u32Width) + "x" + std::to_string(whc.u32Height));
        for (size_t row = 0; row < size_t(3) * height; ++row) {
            uint8_t* dst = input_->data() + row * src_.u32Stride;
            std::memcpy(dst, planes + row * width, size_t(width));
            std::memset(dst + width, 0, src_.u32Stride - size_t(width));
        }
        return forward();
    }

    std::string name() const override { return "nnie:" + runtime_; }

private:
    Outputs forward() {
        input_->flush();     // the input, written by the CPU, reaches memory
        task_->flush();      // as the sample does before each forward pass
        outputs_->flush();   // no dirty line of ours is written back over what the NNIE writes
        SVP_NNIE_HANDLE handle = 0;
        check(HI_MPI_SVP_NNIE_Forward(&handle, &src_, &wk_->model(), dst_.data(), &ctrl_, HI_TRUE),
              "HI_MPI_SVP_NNIE_Forward", wk_->path());
        HI_BOOL finished = HI_FALSE;
        HI_S32 ret;
        while ((ret = HI_MPI_SVP_NNIE_Query(ctrl_.enNnieId, handle, &finished, HI_TRUE)) ==
               HI_ERR_SVP_NNIE_QUERY_TIMEOUT)
            usleep(useconds_t(options_.query_sleep_us));
        check(ret, "HI_MPI_SVP_NNIE_Query", wk_->path());
        if (!finished) throw Error("HI_MPI_SVP_NNIE_Query: returned before the forward pass of " + wk_->path() +
                                   " ended");
        outputs_->flush();   // invalidate: read what the NNIE wrote, not stale cache lines

        Outputs outputs;
        for (const auto& spec : config_.outputs) {
            const SVP_DST_BLOB_S& blob = dst_[output_index_.at(spec.name)];
            const auto& whc = blob.unShape.stWhc;
            const auto* s32 = reinterpret_cast<const int32_t*>(static_cast<uintptr_t>(blob.u64VirAddr));
            outputs.values[spec.name] = s32_blob_to_float(s32, blob.u32Num, whc.u32Chn, whc.u32Height, whc.u32Width,
                                                          blob.u32Stride, files_.s32_scale);
        }
        return outputs;
    }

    DeployConfig config_;
    RuntimeFiles files_;
    std::string runtime_;
    NnieOptions options_;
    std::map<std::string, unsigned> output_index_;   // spec output name -> dst node index
    // Released in the reverse of this order: the task buffer leaves the driver's record before it is freed, and the
    // buffers go before the model is unloaded.
    std::unique_ptr<WkModel> wk_;
    std::unique_ptr<MmzBuffer> task_, tmp_, input_, outputs_;
    SVP_SRC_BLOB_S src_{};
    std::vector<SVP_DST_BLOB_S> dst_;
    SVP_NNIE_FORWARD_CTRL_S ctrl_{};
    std::unique_ptr<RecordedTaskBuffer> recorded_task_;
};

}  // namespace

std::unique_ptr<Backend> make_nnie_backend(const DeployConfig& config, const std::string& runtime,
                                           const NnieOptions& options) {
    return std::make_unique<NnieBackend>(config, runtime, options);
}

Outputs nnie_infer_planar_u8(Backend& backend, const uint8_t* planes, int height, int width) {
    auto* nnie_backend = dynamic_cast<NnieBackend*>(&backend);
    if (!nnie_backend) throw Error("nnie_infer_planar_u8: not an NNIE backend");
    return nnie_backend->infer_planar(planes, height, width);
}

NnieMppSystem::NnieMppSystem() {
    HI_MPI_SYS_Exit();   // as the samples: clear what an earlier process may have left
    HI_MPI_VB_Exit();
    VB_CONFIG_S vb{};    // the samples' pools (sample_comm_svp.c)
    vb.u32MaxPoolCnt = 2;
    vb.astCommPool[1].u64BlkSize = 768 * 576 * 2;
    vb.astCommPool[1].u32BlkCnt = 1;
    check(HI_MPI_VB_SetConfig(&vb), "HI_MPI_VB_SetConfig", "MPP system set-up");
    check(HI_MPI_VB_Init(), "HI_MPI_VB_Init", "MPP system set-up");
    const HI_S32 ret = HI_MPI_SYS_Init();
    if (ret != HI_SUCCESS) HI_MPI_VB_Exit();
    check(ret, "HI_MPI_SYS_Init", "MPP system set-up (are the SDK's kernel modules loaded?)");
}

NnieMppSystem::~NnieMppSystem() {
    HI_MPI_SYS_Exit();
    HI_MPI_VB_Exit();
}

}  // namespace pfpld
