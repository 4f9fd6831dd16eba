// A runtime that turns a contract crop into the network's outputs by name. Each backend packs its input through
// the core (pack_float_chw for ncnn, pack_planar_u8 for NNIE), so the host tests of the core cover the board.
#pragma once
#include <memory>
#include <string>

#include "pfpld/config.hpp"
#include "pfpld/decode.hpp"
#include "pfpld/image.hpp"

namespace pfpld {

class Backend {
public:
    virtual ~Backend() = default;
    // crop_bgr: the contract's height() rows x width() columns, BGR, as crop_face makes it.
    virtual Outputs infer(const Image& crop_bgr) = 0;
    virtual std::string name() const = 0;
};

// One face at a time: crop with the contract, infer, decode.
class FacePipeline {
public:
    FacePipeline(DeployConfig config, std::unique_ptr<Backend> backend);
    FaceResult predict(const Image& image, const Box& box);
    // An aligned face (a contract with crop.box_source "aligned", e.g. facerec): the box is the whole image. Throws
    // for a model that crops around a face box.
    FaceResult predict(const Image& aligned_face);
    const DeployConfig& config() const { return config_; }
    Backend& backend() { return *backend_; }

private:
    DeployConfig config_;
    std::unique_ptr<Backend> backend_;
};

}  // namespace pfpld
