// The C++ ncnn backend against Python ncnn and against `pfpld predict --json` (fixtures by make_fixtures.py).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <set>

#include "check.hpp"
#include "pfpld/backend.hpp"
#include "pfpld/config.hpp"
#include "pfpld/error.hpp"
#include "pfpld/image.hpp"
#include "pfpld/ncnn_backend.hpp"
#include "pfpld/preprocess.hpp"

using nlohmann::json;

namespace {

pfpld::Box box_of(const json& v) { return {v[0].get<double>(), v[1].get<double>(), v[2].get<double>(), v[3].get<double>()}; }

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
    if (a.size() != b.size()) return INFINITY;
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
    return worst;
}

std::vector<float> floats(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

// Python ncnn's outputs on Python's input tensor, against this backend's, at 1 and 2 threads, for every model.
void outputs(const json& index, const std::string&) {
    for (const auto& model : index.at("models")) {
        const pfpld::DeployConfig config = pfpld::DeployConfig::load(model.at("deploy").get<std::string>());
        const int height = config.contract.height(), width = config.contract.width();
        for (int threads : {1, 2}) {
            auto backend = pfpld::make_ncnn_backend(config, "ncnn", pfpld::NcnnOptions{threads, false});
            double worst = 0, worst_cosine = 1;
            for (const auto& rec : model.at("faces")) {
                const auto chw = check::read_array<float>(rec.at("chw").get<std::string>());
                const pfpld::Outputs out = pfpld::ncnn_infer_chw(*backend, chw.data(), height, width);
                for (const auto& spec : config.outputs)   // an embedding is judged by its direction too
                    if (spec.kind == "embedding")
                        worst_cosine = std::min(worst_cosine, pfpld::cosine(out.get(spec.name),
                            check::read_array<float>(rec.at("ncnn_outputs").at(spec.name).get<std::string>())));
                CHECK(out.values.size() == rec.at("ncnn_outputs").size());
                for (auto it = rec.at("ncnn_outputs").begin(); it != rec.at("ncnn_outputs").end(); ++it) {
                    const auto expected = check::read_array<float>(it.value().get<std::string>());
                    const auto& got = out.get(it.key());
                    CHECK_MSG(got.size() == expected.size(), it.key() << ": " << got.size() << " values, expected " << expected.size());
                    // Python parity's rule: a pose in degrees is compared in radians (a decoded angle averages bin
                    // values up to 97.5 degrees: the wheel's ncnn and this build differ there by 1.9e-5 degrees on
                    // an AVX2 CPU), any other output relative to max(1, max |expected|)
                    double scale = 1;
                    for (float v : expected) scale = std::max(scale, double(std::fabs(v)));
                    for (const auto& spec : config.outputs)
                        if (spec.name == it.key() && spec.kind == "pose_deg") scale = 180.0 / M_PI;
                    for (size_t i = 0; i < std::min(got.size(), expected.size()); ++i)
                        worst = std::max(worst, double(std::fabs(got[i] - expected[i])) / scale);
                }
            }
            CHECK_MSG(worst <= 1e-5 && worst_cosine >= 1 - 1e-9,
                      model.at("model") << " threads " << threads << ": max scaled diff " << worst << ", cosine " << worst_cosine
                                        << " from Python ncnn");
            std::cout << "  " << model.at("model").get<std::string>() << " threads " << threads << ": " << model.at("faces").size()
                      << " faces, " << config.outputs.size() << " outputs, max diff " << worst
                      << " (degrees as radians, else x max(1, max |value|)) from Python ncnn";
            if (worst_cosine < 1) std::cout << ", embedding cosine >= " << std::setprecision(12) << worst_cosine << std::setprecision(6);
            std::cout << "\n";
        }
    }
}

struct Gap {
    double px = 0, deg = 0;
    double embedding = 0, cosine = 1;   // max abs diff of the embedding's values, and the cosine of the two
    bool within() const { return px <= 1e-3 && deg <= 1e-3 && embedding <= 1e-3 && cosine >= 1 - 1e-6; }
};

std::ostream& operator<<(std::ostream& out, const Gap& gap) {
    out << gap.px << " px, " << gap.deg << " deg";
    if (gap.cosine < 1 || gap.embedding > 0)
        out << ", embedding " << gap.embedding << " max abs, cosine " << std::setprecision(12) << gap.cosine << std::setprecision(6);
    return out;
}

// `pfpld predict --json` against ours (a FaceResult and its box, or pfpld_predict's JSON read into them): the same
// keys, the same box, landmarks in pixels, pose in degrees, the embedding's values and direction.
Gap compare(const pfpld::FaceResult& r, const pfpld::Box& box, const json& predict, const std::string& what) {
    Gap gap;
    CHECK_MSG(r.has_landmarks == predict.contains("landmarks_px"), what << ": landmarks " << r.has_landmarks);
    CHECK_MSG(r.has_pose == predict.contains("pose_deg"), what << ": pose " << r.has_pose);
    CHECK_MSG(r.has_embedding == predict.contains("embedding"), what << ": embedding " << r.has_embedding);
    const auto& want_box = predict.at("box");
    CHECK_MSG(box.x1 == want_box[0].get<double>() && box.y1 == want_box[1].get<double>() &&
                  box.x2 == want_box[2].get<double>() && box.y2 == want_box[3].get<double>(),
              what << ": box differs from pfpld predict's " << want_box);
    if (r.has_landmarks && predict.contains("landmarks_px")) {
        const auto& points = predict.at("landmarks_px");
        CHECK(r.landmarks_px.size() == points.size());
        for (size_t i = 0; i < std::min(r.landmarks_px.size(), points.size()); ++i) {
            gap.px = std::max(gap.px, std::fabs(r.landmarks_px[i].x - points[i][0].get<double>()));
            gap.px = std::max(gap.px, std::fabs(r.landmarks_px[i].y - points[i][1].get<double>()));
        }
    }
    const char* names[3] = {"yaw", "pitch", "roll"};
    if (r.has_pose && predict.contains("pose_deg"))
        for (int k = 0; k < 3; ++k) gap.deg = std::max(gap.deg, std::fabs(r.pose_deg[k] - predict.at("pose_deg").at(names[k]).get<double>()));
    if (r.has_embedding && predict.contains("embedding")) {
        const auto want = predict.at("embedding").get<std::vector<double>>();
        gap.embedding = max_abs_diff(std::vector<double>(r.embedding.begin(), r.embedding.end()), want);
        gap.cosine = want.size() == r.embedding.size() ? pfpld::cosine(r.embedding, floats(want)) : -1;
    }
    return gap;
}

// From the image file and the box (none for an aligned face: the whole picture), through crop, ncnn and decoding,
// against `pfpld predict --json` (PyTorch).
void end_to_end(const json& index, const std::string&) {
    int compared = 0;
    for (const auto& model : index.at("models")) {
        pfpld::DeployConfig config = pfpld::DeployConfig::load(model.at("deploy").get<std::string>());
        pfpld::FacePipeline pipeline(config, pfpld::make_ncnn_backend(config, "ncnn"));
        for (const auto& rec : model.at("faces")) {
            if (!rec.contains("predict")) continue;
            const std::string what = model.at("model").get<std::string>() + " " + rec.at("image").get<std::string>();
            const pfpld::Image image = pfpld::read_image(rec.at("image").get<std::string>());
            const pfpld::Box box = config.contract.aligned() ? pfpld::aligned_box(image) : box_of(rec.at("box"));
            const pfpld::FaceResult r = config.contract.aligned() ? pipeline.predict(image) : pipeline.predict(image, box);
            const Gap gap = compare(r, box, rec.at("predict"), what);
            CHECK_MSG(gap.within(), what << ": " << gap << " from pfpld predict");
            if (!config.contract.aligned())   // a face box model has no whole-picture predict
                check::expect_error<pfpld::Error>([&] { pipeline.predict(image); }, "crops around a face box");
            std::cout << "  " << what << ": " << gap << " from pfpld predict\n";
            ++compared;
        }
    }
    CHECK(compared > 0);
}

// pfpld_predict's JSON back into a FaceResult (the keys it has, nothing else).
pfpld::FaceResult result_of(const json& got) {
    pfpld::FaceResult r;
    if ((r.has_landmarks = got.contains("landmarks_px")))
        for (const auto& p : got.at("landmarks_px")) r.landmarks_px.push_back({p.at(0).get<double>(), p.at(1).get<double>()});
    if ((r.has_pose = got.contains("pose_deg"))) {
        const char* names[3] = {"yaw", "pitch", "roll"};
        for (int k = 0; k < 3; ++k) {
            r.pose_deg[k] = got.at("pose_deg").at(names[k]).get<double>();
            r.pose_rad[k] = got.at("pose_rad").at(names[k]).get<double>();
        }
    }
    if ((r.has_embedding = got.contains("embedding"))) r.embedding = floats(got.at("embedding").get<std::vector<double>>());
    return r;
}

std::set<std::string> keys_of(const json& object) {
    std::set<std::string> keys;
    for (auto it = object.begin(); it != object.end(); ++it) keys.insert(it.key());
    return keys;
}

// pfpld_predict with these arguments (shell-quoted by the caller): its stdout as JSON.
json run_predict(const std::string& arguments) {
    const std::string cmd = std::string("'") + PFPLD_PREDICT_EXE + "' " + arguments;
    FILE* pipe = popen(cmd.c_str(), "r");
    if (!pipe) throw std::runtime_error("cannot run " + cmd);
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) text.append(buf, n);
    if (pclose(pipe) != 0) throw std::runtime_error(cmd + " failed");
    return json::parse(text);
}

// The arguments of pfpld_predict for one fixture face: no --box for an aligned model (the whole picture is the face).
std::string face_arguments(const json& model, const json& rec) {
    std::string args = "'" + model.at("deploy").get<std::string>() + "' '" + rec.at("image").get<std::string>() + "'";
    if (pfpld::DeployConfig::load(model.at("deploy").get<std::string>()).contract.aligned()) return args;
    const auto& b = rec.at("box");
    char box[160];
    std::snprintf(box, sizeof box, " --box %.17g,%.17g,%.17g,%.17g", b[0].get<double>(), b[1].get<double>(), b[2].get<double>(),
                  b[3].get<double>());
    return args + box;
}

// The same through the pfpld_predict program, as a user runs it: the keys of `pfpld predict --json` (plus
// "runtime"), the same numbers.
void app(const json& index, const std::string&) {
    int compared = 0;
    for (const auto& model : index.at("models")) {
        for (const auto& rec : model.at("faces")) {
            if (!rec.contains("predict")) continue;
            const std::string what = model.at("model").get<std::string>() + " " + rec.at("image").get<std::string>();
            json got = run_predict(face_arguments(model, rec));
            const auto& want = rec.at("predict");
            CHECK_MSG(got.contains("runtime"), what << ": no runtime");
            got.erase("runtime");
            CHECK_MSG(keys_of(got) == keys_of(want), what << ": pfpld_predict's keys " << got.dump().substr(0, 80) << "...");
            const Gap gap = compare(result_of(got), box_of(got.at("box")), want, what);
            CHECK_MSG(gap.within(), what << ": pfpld_predict is " << gap << " from pfpld predict");
            std::cout << "  pfpld_predict " << what << ": keys as pfpld predict --json, " << gap << " from it\n";
            ++compared;
        }
    }
    CHECK(compared > 0);
}

// pfpld_predict A --compare B on the recognition model against `pfpld predict A --compare B --json` (PyTorch): the
// same keys (plus "runtime"), the cosine within 1e-6; and against cosine() of this library's own two embeddings.
void compare_faces(const json& index, const std::string&) {
    int compared = 0;
    for (const auto& model : index.at("models")) {
        if (!model.contains("compare")) continue;
        const json& faces = model.at("faces");
        const json& a = faces.at(model.at("compare").at("faces")[0].get<size_t>());
        const json& b = faces.at(model.at("compare").at("faces")[1].get<size_t>());
        const json& want = model.at("compare").at("predict");
        json got = run_predict(face_arguments(model, a) + " --compare '" + b.at("image").get<std::string>() + "'");
        CHECK_MSG(got.contains("runtime"), got.dump());
        got.erase("runtime");
        CHECK_MSG(keys_of(got) == keys_of(want), "pfpld_predict --compare printed " << got.dump() << ", pfpld predict " << want.dump());
        const double printed = got.at("cosine").get<double>(), python = want.at("cosine").get<double>();
        pfpld::DeployConfig config = pfpld::DeployConfig::load(model.at("deploy").get<std::string>());
        pfpld::FacePipeline pipeline(config, pfpld::make_ncnn_backend(config, "ncnn"));
        const double ours = pfpld::cosine(pipeline.predict(pfpld::read_image(a.at("image").get<std::string>())).embedding,
                                          pipeline.predict(pfpld::read_image(b.at("image").get<std::string>())).embedding);
        CHECK_MSG(std::fabs(printed - ours) <= 1e-8 && std::fabs(printed - python) <= 1e-6,
                  model.at("model") << ": --compare printed " << printed << ", this library " << ours << ", pfpld predict " << python);
        std::cout << std::setprecision(12) << "  pfpld_predict " << model.at("model").get<std::string>() << " "
                  << a.at("image").get<std::string>() << " --compare " << b.at("image").get<std::string>() << ": cosine "
                  << printed << ", pfpld predict --compare " << python << " (" << std::fabs(printed - python) << " apart)\n"
                  << std::setprecision(6);
        ++compared;
    }
    CHECK(compared > 0);
}

}  // namespace

int main(int argc, char** argv) {
    return check::run(argc, argv, {{"outputs", outputs}, {"end_to_end", end_to_end}, {"app", app},
                                   {"compare", compare_faces}});
}
