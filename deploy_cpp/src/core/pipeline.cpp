#include "pfpld/backend.hpp"

#include "pfpld/preprocess.hpp"

namespace pfpld {

FacePipeline::FacePipeline(DeployConfig config, std::unique_ptr<Backend> backend)
    : config_(std::move(config)), backend_(std::move(backend)) {}

FaceResult FacePipeline::predict(const Image& image, const Box& box) {
    Affine matrix;
    Image crop = crop_face(config_.contract, image, box, &matrix);
    return decode(config_, backend_->infer(crop), matrix);
}

}  // namespace pfpld
