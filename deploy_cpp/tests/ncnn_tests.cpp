// The C++ ncnn backend against Python ncnn and against `pfpld predict --json` (fixtures by make_fixtures.py).
#include <algorithm>
#include <cstdio>

#include "check.hpp"
#include "pfpld/backend.hpp"
#include "pfpld/config.hpp"
#include "pfpld/image.hpp"
#include "pfpld/ncnn_backend.hpp"
#include "pfpld/preprocess.hpp"

using nlohmann::json;

namespace {

pfpld::Box box_of(const json& v) { return {v[0].get<double>(), v[1].get<double>(), v[2].get<double>(), v[3].get<double>()}; }

// Python ncnn's outputs on Python's input tensor, against this backend's, at 1 and 2 threads.
void outputs(const json& index, const std::string&) {
    const pfpld::DeployConfig config = pfpld::DeployConfig::load(index.at("deploy").get<std::string>());
    const int size = config.contract.input_size;
    for (int threads : {1, 2}) {
        auto backend = pfpld::make_ncnn_backend(config, "ncnn", pfpld::NcnnOptions{threads, false});
        double worst = 0;
        for (const auto& rec : index.at("faces")) {
            const auto chw = check::read_array<float>(rec.at("chw").get<std::string>());
            const pfpld::Outputs out = pfpld::ncnn_infer_chw(*backend, chw.data(), size, size);
            for (auto it = rec.at("ncnn_outputs").begin(); it != rec.at("ncnn_outputs").end(); ++it) {
                const auto expected = check::read_array<float>(it.value().get<std::string>());
                const auto& got = out.get(it.key());
                CHECK_MSG(got.size() == expected.size(), it.key() << ": " << got.size() << " values, expected " << expected.size());
                for (size_t i = 0; i < std::min(got.size(), expected.size()); ++i)
                    worst = std::max(worst, double(std::fabs(got[i] - expected[i])));
            }
        }
        CHECK_MSG(worst <= 1e-5, "threads " << threads << ": max abs diff " << worst << " from Python ncnn");
        std::cout << "  threads " << threads << ": " << index.at("faces").size() << " faces, max abs diff " << worst
                  << " from Python ncnn\n";
    }
}

struct Gap {
    double px = 0, deg = 0;
};

Gap compare(const pfpld::FaceResult& r, const json& predict) {
    Gap gap;
    const auto& points = predict.at("landmarks_px");
    CHECK(r.landmarks_px.size() == points.size());
    for (size_t i = 0; i < std::min(r.landmarks_px.size(), points.size()); ++i) {
        gap.px = std::max(gap.px, std::fabs(r.landmarks_px[i].x - points[i][0].get<double>()));
        gap.px = std::max(gap.px, std::fabs(r.landmarks_px[i].y - points[i][1].get<double>()));
    }
    const char* names[3] = {"yaw", "pitch", "roll"};
    for (int k = 0; k < 3; ++k) gap.deg = std::max(gap.deg, std::fabs(r.pose_deg[k] - predict.at("pose_deg").at(names[k]).get<double>()));
    return gap;
}

// From the image file and the box, through crop, ncnn and decoding, against `pfpld predict --json` (PyTorch).
void end_to_end(const json& index, const std::string&) {
    pfpld::DeployConfig config = pfpld::DeployConfig::load(index.at("deploy").get<std::string>());
    pfpld::FacePipeline pipeline(config, pfpld::make_ncnn_backend(config, "ncnn"));
    int compared = 0;
    for (const auto& rec : index.at("faces")) {
        if (!rec.contains("predict")) continue;
        const pfpld::FaceResult r = pipeline.predict(pfpld::read_image(rec.at("image").get<std::string>()), box_of(rec.at("box")));
        const Gap gap = compare(r, rec.at("predict"));
        CHECK_MSG(gap.px <= 1e-3 && gap.deg <= 1e-3, rec.at("image") << ": " << gap.px << " px, " << gap.deg << " deg from pfpld predict");
        std::cout << "  " << rec.at("image").get<std::string>() << ": " << gap.px << " px, " << gap.deg << " deg from pfpld predict\n";
        ++compared;
    }
    CHECK(compared > 0);
}

// The same through the pfpld_predict program, as a user runs it.
void app(const json& index, const std::string&) {
    int compared = 0;
    for (const auto& rec : index.at("faces")) {
        if (!rec.contains("predict")) continue;
        const auto& b = rec.at("box");
        char box[160];
        std::snprintf(box, sizeof box, "%.17g,%.17g,%.17g,%.17g", b[0].get<double>(), b[1].get<double>(), b[2].get<double>(), b[3].get<double>());
        const std::string cmd = std::string("'") + PFPLD_PREDICT_EXE + "' '" + index.at("deploy").get<std::string>() + "' '" +
                                rec.at("image").get<std::string>() + "' --box " + box;
        FILE* pipe = popen(cmd.c_str(), "r");
        CHECK(pipe != nullptr);
        if (!pipe) return;
        std::string text;
        char buf[4096];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) text.append(buf, n);
        CHECK_MSG(pclose(pipe) == 0, cmd);
        const json got = json::parse(text);
        double px = 0, deg = 0;
        const auto& want = rec.at("predict");
        for (size_t i = 0; i < want.at("landmarks_px").size(); ++i)
            for (int k = 0; k < 2; ++k)
                px = std::max(px, std::fabs(got["landmarks_px"][i][k].get<double>() - want["landmarks_px"][i][k].get<double>()));
        for (const char* name : {"yaw", "pitch", "roll"})
            deg = std::max(deg, std::fabs(got["pose_deg"][name].get<double>() - want["pose_deg"][name].get<double>()));
        CHECK_MSG(px <= 1e-3 && deg <= 1e-3, rec.at("image") << ": pfpld_predict is " << px << " px, " << deg << " deg from pfpld predict");
        std::cout << "  pfpld_predict " << rec.at("image").get<std::string>() << ": " << px << " px, " << deg << " deg from pfpld predict\n";
        ++compared;
    }
    CHECK(compared > 0);
}

}  // namespace

int main(int argc, char** argv) {
    return check::run(argc, argv, {{"outputs", outputs}, {"end_to_end", end_to_end}, {"app", app}});
}
