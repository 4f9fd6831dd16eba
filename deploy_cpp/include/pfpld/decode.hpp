// From the network's outputs, looked up by the spec's names, to what a caller wants: landmarks in image pixels
// (through the inverse of the crop matrix), the pose in radians and degrees, each only when the model has such an
// output (ModelSpec.decode: the first output of kind "landmarks", the first of "pose" or "pose_deg"); a
// recognition model's embedding as the network gives it, and the cosine that compares two of them; and NNIE's S32
// report blobs to float.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "pfpld/config.hpp"
#include "pfpld/preprocess.hpp"

namespace pfpld {

// Raw outputs of one forward pass, by the spec's output names.
struct Outputs {
    std::map<std::string, std::vector<float>> values;
    const std::vector<float>& get(const std::string& name) const;   // throws naming the missing output
};

struct Point {
    double x = 0, y = 0;
};

struct FaceResult {
    bool has_landmarks = false;                 // the model has a "landmarks" output
    std::vector<Point> landmarks_px;            // first "landmarks" output, image pixels (empty if none)
    std::vector<Point> landmarks_crop;          // the same in [0,1] of the crop
    bool has_pose = false;                      // the model has a "pose" or "pose_deg" output
    std::array<double, 3> pose_rad{};           // yaw, pitch, roll
    std::array<double, 3> pose_deg{};
    bool has_embedding = false;                 // the model has an "embedding" output
    std::vector<float> embedding;               // the first "embedding" output exactly as the network gives it: not
                                                // normalised (cosine() divides by the norms; `pfpld predict --json`
                                                // prints it unnormalised too)
    Outputs raw;                                // every output, by name
};

// K points x0,y0,x1,y1,... in [0,1] of the crop -> image pixels (PreprocessContract.points_from_crop).
std::vector<Point> landmarks_to_image(const Contract& contract, const std::vector<float>& values,
                                      const Affine& crop_matrix);
std::array<double, 3> radians_to_degrees(const std::array<double, 3>& radians);
// A "pose" or "pose_deg" output's 3 values -> radians, in double (pfpld.models.spec.pose_radians).
std::array<double, 3> pose_radians(const OutputSpec& spec, const std::vector<float>& values);

// Cosine of two embeddings (two faces: the same person scores near 1), in double as
// pfpld.verification.cosine_scores: a.b / (|a| |b|), clipped to [-1, 1]. Throws for different lengths or a zero
// vector (no direction to compare).
double cosine(const std::vector<float>& a, const std::vector<float>& b);

// Checks every output has the spec's size, then decodes each by its kind.
FaceResult decode(const DeployConfig& config, Outputs outputs, const Affine& crop_matrix);

// NNIE S32 blob (num x chn x height x width, each row `stride_bytes` long, aligned) -> float values / scale, the
// padding skipped: num * chn * height * width floats.
std::vector<float> s32_blob_to_float(const int32_t* blob, size_t num, size_t chn, size_t height, size_t width,
                                     size_t stride_bytes, double scale);

}  // namespace pfpld
