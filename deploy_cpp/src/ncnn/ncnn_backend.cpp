#include "pfpld/ncnn_backend.hpp"

#include <cstring>

#include <net.h>

#include "pfpld/error.hpp"
#include "pfpld/preprocess.hpp"

namespace pfpld {
namespace {

class NcnnBackend : public Backend {
public:
    NcnnBackend(const DeployConfig& config, const std::string& runtime, const NcnnOptions& options)
        : config_(config), files_(config.runtime(runtime)), runtime_(runtime) {
        if (files_.backend != "ncnn") throw Error(config.path + ": runtime '" + runtime + "' is for " + files_.backend + ", not ncnn");
        if (!files_.fp16) {   // as the Python parity runner: fp32 storage and arithmetic throughout
            net_.opt.use_fp16_packed = false;
            net_.opt.use_fp16_storage = false;
            net_.opt.use_fp16_arithmetic = false;
            net_.opt.use_bf16_storage = false;
        }
        net_.opt.num_threads = options.threads;
        net_.opt.use_vulkan_compute = false;
        net_.opt.use_winograd_convolution = options.winograd;
        const std::string& param = files_.files.at("param");
        const std::string& bin = files_.files.at("bin");
        if (net_.load_param(param.c_str()) != 0) throw Error(param + ": ncnn cannot load the param file");
        if (net_.load_model(bin.c_str()) != 0) throw Error(bin + ": ncnn cannot load the weights");
    }

    Outputs infer(const Image& crop_bgr) override {
        const int height = config_.contract.height(), width = config_.contract.width();
        if (crop_bgr.width != width || crop_bgr.height != height || crop_bgr.channels != 3)
            throw Error("ncnn backend: expected a BGR crop of " + std::to_string(height) + " rows x " +
                        std::to_string(width) + " columns");
        std::vector<float> chw = pack_float_chw(config_.contract, crop_bgr);
        return infer_chw(chw.data(), height, width);
    }

    Outputs infer_chw(const float* chw, int height, int width) {
        ncnn::Mat in(width, height, 3);   // its own memory: channel steps are aligned, so copy plane by plane
        const size_t plane = size_t(width) * height;
        for (int c = 0; c < 3; ++c) std::memcpy(in.channel(c), chw + size_t(c) * plane, plane * sizeof(float));
        ncnn::Extractor ex = net_.create_extractor();
        if (ex.input(files_.input.c_str(), in) != 0) throw Error(files_.files.at("param") + ": no input blob '" + files_.input + "'");
        Outputs outputs;
        for (const auto& spec : config_.outputs) {
            const std::string& blob = files_.outputs.at(spec.name);
            ncnn::Mat out;
            if (ex.extract(blob.c_str(), out) != 0 || out.empty())
                throw Error(files_.files.at("param") + ": ncnn cannot extract blob '" + blob + "' (output '" + spec.name + "')");
            ncnn::Mat flat = out.reshape(out.w * out.h * out.d * out.c);
            const float* p = static_cast<const float*>(flat.data);
            outputs.values[spec.name].assign(p, p + flat.w);
        }
        return outputs;
    }

    std::string name() const override { return "ncnn:" + runtime_; }

private:
    DeployConfig config_;
    RuntimeFiles files_;
    std::string runtime_;
    ncnn::Net net_;
};

}  // namespace

std::unique_ptr<Backend> make_ncnn_backend(const DeployConfig& config, const std::string& runtime, const NcnnOptions& options) {
    return std::make_unique<NcnnBackend>(config, runtime, options);
}

Outputs ncnn_infer_chw(Backend& backend, const float* chw, int height, int width) {
    auto* ncnn_backend = dynamic_cast<NcnnBackend*>(&backend);
    if (!ncnn_backend) throw Error("ncnn_infer_chw: not an ncnn backend");
    return ncnn_backend->infer_chw(chw, height, width);
}

}  // namespace pfpld
