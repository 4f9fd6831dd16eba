// The ncnn backend: runs the `.ncnn.param/.bin` of a deploy.json runtime ("ncnn", "ncnn-fp16", "ncnn-int8") on
// the float CHW input that pack_float_chw makes, and returns the outputs by the spec's names.
#pragma once
#include <memory>
#include <string>

#include "pfpld/backend.hpp"

namespace pfpld {

struct NcnnOptions {
    int threads = 1;
    bool winograd = false;   // off: the arithmetic `pfpld check-parity` verified; on: ncnn's default, faster
};

std::unique_ptr<Backend> make_ncnn_backend(const DeployConfig& config, const std::string& runtime = "ncnn",
                                           const NcnnOptions& options = {});

// The float input already packed (3 x H x W), for tests that feed Python's tensor directly.
Outputs ncnn_infer_chw(Backend& backend, const float* chw, int height, int width);

}  // namespace pfpld
