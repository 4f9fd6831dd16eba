#include "pfpld/backend.hpp"

#include "pfpld/error.hpp"
#include "pfpld/preprocess.hpp"

namespace pfpld {

FacePipeline::FacePipeline(DeployConfig config, std::unique_ptr<Backend> backend)
    : config_(std::move(config)), backend_(std::move(backend)) {}

FaceResult FacePipeline::predict(const Image& image, const Box& box) {
    Affine matrix;
    Image crop = crop_face(config_.contract, image, box, &matrix);
    return decode(config_, backend_->infer(crop), matrix);
}

FaceResult FacePipeline::predict(const Image& aligned_face) {
    if (!config_.contract.aligned())
        throw Error(config_.path + ": model '" + config_.model + "' crops around a face box (contract.crop.box_source '" +
                    config_.contract.crop.box_source + "'): give the detector's box");
    return predict(aligned_face, aligned_box(aligned_face));
}

}  // namespace pfpld
