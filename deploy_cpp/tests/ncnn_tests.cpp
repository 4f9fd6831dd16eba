// The C++ ncnn backend against Python ncnn and against `pfpld predict --json` (fixtures by make_fixtures.py).
#include <algorithm>
#include <cstdio>
#include <set>

#include "check.hpp"
#include "pfpld/backend.hpp"
#include "pfpld/config.hpp"
#include "pfpld/image.hpp"
#include "pfpld/ncnn_backend.hpp"
#include "pfpld/preprocess.hpp"

using nlohmann::json;

namespace {

pfpld::Box box_of(const json& v) { return {v[0].get<double>(), v[1].get<double>(), v[2].get<double>(), v[3].get<double>()}; }

// Python ncnn's outputs on Python's input tensor, against this backend's, at 1 and 2 threads, for every model.
void outputs(const json& index, const std::string&) {
    for (const auto& model : index.at("models")) {
        const pfpld::DeployConfig config = pfpld::DeployConfig::load(model.at("deploy").get<std::string>());
        const int size = config.contract.input_size;
        for (int threads : {1, 2}) {
            auto backend = pfpld::make_ncnn_backend(config, "ncnn", pfpld::NcnnOptions{threads, false});
            double worst = 0;
            for (const auto& rec : model.at("faces")) {
                const auto chw = check::read_array<float>(rec.at("chw").get<std::string>());
                const pfpld::Outputs out = pfpld::ncnn_infer_chw(*backend, chw.data(), size, size);
                CHECK(out.values.size() == rec.at("ncnn_outputs").size());
                for (auto it = rec.at("ncnn_outputs").begin(); it != rec.at("ncnn_outputs").end(); ++it) {
                    const auto expected = check::read_array<float>(it.value().get<std::string>());
                    const auto& got = out.get(it.key());
                    CHECK_MSG(got.size() == expected.size(), it.key() << ": " << got.size() << " values, expected " << expected.size());
                    for (size_t i = 0; i < std::min(got.size(), expected.size()); ++i)
                        worst = std::max(worst, double(std::fabs(got[i] - expected[i])));
                }
            }
            CHECK_MSG(worst <= 1e-5, model.at("model") << " threads " << threads << ": max abs diff " << worst << " from Python ncnn");
            std::cout << "  " << model.at("model").get<std::string>() << " threads " << threads << ": " << model.at("faces").size()
                      << " faces, " << config.outputs.size() << " outputs, max abs diff " << worst << " from Python ncnn\n";
        }
    }
}

struct Gap {
    double px = 0, deg = 0;
};

// `pfpld predict --json` against ours (a FaceResult, or pfpld_predict's JSON read into one): the same keys, landmarks
// in pixels, pose in degrees.
Gap compare(const pfpld::FaceResult& r, const json& predict, const std::string& what) {
    Gap gap;
    CHECK_MSG(r.has_landmarks == predict.contains("landmarks_px"), what << ": landmarks " << r.has_landmarks);
    CHECK_MSG(r.has_pose == predict.contains("pose_deg"), what << ": pose " << r.has_pose);
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
    return gap;
}

// From the image file and the box, through crop, ncnn and decoding, against `pfpld predict --json` (PyTorch).
void end_to_end(const json& index, const std::string&) {
    int compared = 0;
    for (const auto& model : index.at("models")) {
        pfpld::DeployConfig config = pfpld::DeployConfig::load(model.at("deploy").get<std::string>());
        pfpld::FacePipeline pipeline(config, pfpld::make_ncnn_backend(config, "ncnn"));
        for (const auto& rec : model.at("faces")) {
            if (!rec.contains("predict")) continue;
            const std::string what = model.at("model").get<std::string>() + " " + rec.at("image").get<std::string>();
            const pfpld::FaceResult r = pipeline.predict(pfpld::read_image(rec.at("image").get<std::string>()), box_of(rec.at("box")));
            const Gap gap = compare(r, rec.at("predict"), what);
            CHECK_MSG(gap.px <= 1e-3 && gap.deg <= 1e-3, what << ": " << gap.px << " px, " << gap.deg << " deg from pfpld predict");
            std::cout << "  " << what << ": " << gap.px << " px, " << gap.deg << " deg from pfpld predict\n";
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
    return r;
}

std::set<std::string> keys_of(const json& object) {
    std::set<std::string> keys;
    for (auto it = object.begin(); it != object.end(); ++it) keys.insert(it.key());
    return keys;
}

// The same through the pfpld_predict program, as a user runs it: the keys of `pfpld predict --json` (plus
// "runtime"), the same numbers.
void app(const json& index, const std::string&) {
    int compared = 0;
    for (const auto& model : index.at("models")) {
        for (const auto& rec : model.at("faces")) {
            if (!rec.contains("predict")) continue;
            const std::string what = model.at("model").get<std::string>() + " " + rec.at("image").get<std::string>();
            const auto& b = rec.at("box");
            char box[160];
            std::snprintf(box, sizeof box, "%.17g,%.17g,%.17g,%.17g", b[0].get<double>(), b[1].get<double>(), b[2].get<double>(), b[3].get<double>());
            const std::string cmd = std::string("'") + PFPLD_PREDICT_EXE + "' '" + model.at("deploy").get<std::string>() + "' '" +
                                    rec.at("image").get<std::string>() + "' --box " + box;
            FILE* pipe = popen(cmd.c_str(), "r");
            CHECK(pipe != nullptr);
            if (!pipe) return;
            std::string text;
            char buf[4096];
            size_t n;
            while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) text.append(buf, n);
            CHECK_MSG(pclose(pipe) == 0, cmd);
            json got = json::parse(text);
            const auto& want = rec.at("predict");
            CHECK_MSG(got.contains("runtime"), what << ": no runtime");
            got.erase("runtime");
            CHECK_MSG(keys_of(got) == keys_of(want), what << ": pfpld_predict's keys " << got.dump().substr(0, 80) << "...");
            const Gap gap = compare(result_of(got), want, what);
            CHECK_MSG(gap.px <= 1e-3 && gap.deg <= 1e-3, what << ": pfpld_predict is " << gap.px << " px, " << gap.deg << " deg from pfpld predict");
            std::cout << "  pfpld_predict " << what << ": keys as pfpld predict --json, " << gap.px << " px, " << gap.deg
                      << " deg from it\n";
            ++compared;
        }
    }
    CHECK(compared > 0);
}

}  // namespace

int main(int argc, char** argv) {
    return check::run(argc, argv, {{"outputs", outputs}, {"end_to_end", end_to_end}, {"app", app}});
}
