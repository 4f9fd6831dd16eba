#include "pfpld/decode.hpp"

#include <algorithm>
#include <cmath>

#include "pfpld/error.hpp"

namespace pfpld {

const std::vector<float>& Outputs::get(const std::string& name) const {
    auto it = values.find(name);
    if (it == values.end()) throw Error("no output named '" + name + "' in this forward pass");
    return it->second;
}

std::vector<Point> landmarks_to_image(const Contract& contract, const std::vector<float>& values, const Affine& crop_matrix) {
    if (values.size() % 2 != 0) throw Error("landmarks: odd number of values (" + std::to_string(values.size()) + ")");
    const Affine inv = crop_matrix.inverse();
    std::vector<Point> points(values.size() / 2);
    for (size_t i = 0; i < points.size(); ++i) {
        const double qx = double(values[2 * i]) * contract.width(), qy = double(values[2 * i + 1]) * contract.height();
        const auto p = inv.apply(qx, qy);
        points[i] = {p[0], p[1]};
    }
    return points;
}

std::array<double, 3> radians_to_degrees(const std::array<double, 3>& radians) {
    const double k = 180.0 / 3.14159265358979323846;
    return {radians[0] * k, radians[1] * k, radians[2] * k};
}

std::array<double, 3> pose_radians(const OutputSpec& spec, const std::vector<float>& values) {
    if (values.size() != 3) throw Error("output '" + spec.name + "': a pose needs 3 values, got " + std::to_string(values.size()));
    if (spec.kind == "pose") return {values[0], values[1], values[2]};
    if (spec.kind == "pose_deg") {
        const double k = 3.141592653589793 / 180.0;   // as Python: values * (pi / 180)
        return {values[0] * k, values[1] * k, values[2] * k};
    }
    throw Error("output '" + spec.name + "' of kind '" + spec.kind + "' holds no pose");
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size() || a.empty())
        throw Error("cosine: embeddings of " + std::to_string(a.size()) + " and " + std::to_string(b.size()) +
                    " values, expected two of the same non-zero length");
    double dot = 0, norm_a = 0, norm_b = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        dot += double(a[i]) * double(b[i]);
        norm_a += double(a[i]) * double(a[i]);
        norm_b += double(b[i]) * double(b[i]);
    }
    if (!(std::isfinite(dot) && std::isfinite(norm_a) && std::isfinite(norm_b)))
        throw Error("cosine: an embedding is not finite (NaN or inf)");
    if (norm_a == 0 || norm_b == 0) throw Error("cosine: an embedding has norm 0: a zero vector has no direction to compare");
    return std::min(1.0, std::max(-1.0, dot / (std::sqrt(norm_a) * std::sqrt(norm_b))));
}

FaceResult decode(const DeployConfig& config, Outputs outputs, const Affine& crop_matrix) {
    FaceResult result;
    for (const auto& spec : config.outputs) {
        const std::vector<float>& v = outputs.get(spec.name);
        if (v.size() != spec.count())
            throw Error(config.path + ": output '" + spec.name + "' has " + std::to_string(v.size()) + " values, expected " +
                        std::to_string(spec.count()));
        if (spec.kind == "landmarks" && !result.has_landmarks) {
            result.has_landmarks = true;
            result.landmarks_px = landmarks_to_image(config.contract, v, crop_matrix);
            for (size_t i = 0; i + 1 < v.size(); i += 2) result.landmarks_crop.push_back({v[i], v[i + 1]});
        } else if ((spec.kind == "pose" || spec.kind == "pose_deg") && !result.has_pose) {
            result.has_pose = true;
            result.pose_rad = pose_radians(spec, v);
            result.pose_deg = radians_to_degrees(result.pose_rad);
        } else if (spec.kind == "embedding" && !result.has_embedding) {
            result.has_embedding = true;
            result.embedding = v;   // untouched: normalising is the comparison's business (cosine)
        }   // "pose_bins" and "": only in raw
    }
    result.raw = std::move(outputs);
    return result;
}

std::vector<float> s32_blob_to_float(const int32_t* blob, size_t num, size_t chn, size_t height, size_t width,
                                     size_t stride_bytes, double scale) {
    if (stride_bytes < width * sizeof(int32_t) || stride_bytes % sizeof(int32_t) != 0)
        throw Error("S32 blob: stride " + std::to_string(stride_bytes) + " bytes cannot hold a row of " +
                    std::to_string(width) + " values");
    if (!(scale > 0)) throw Error("S32 blob: scale must be > 0");
    const size_t stride = stride_bytes / sizeof(int32_t);
    std::vector<float> out;
    out.reserve(num * chn * height * width);
    for (size_t row = 0; row < num * chn * height; ++row)
        for (size_t x = 0; x < width; ++x) out.push_back(float(double(blob[row * stride + x]) / scale));
    return out;
}

}  // namespace pfpld
