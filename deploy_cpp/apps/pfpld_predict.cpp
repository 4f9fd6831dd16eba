// pfpld_predict: one image (PPM/PGM/BMP) and a face box -> landmarks in image pixels and/or the head pose, or a
// recognition model's embedding of an aligned face (no box: the whole image), as JSON with the keys of `pfpld predict
// --json`; with --compare IMAGE2, the cosine of two aligned faces' embeddings instead, as `pfpld predict --compare`.
// The model comes from the deploy.json of an export folder (or NNIE bundle). A user's mistake is one line on stderr
// and exit code 2.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "pfpld/backend.hpp"
#include "pfpld/config.hpp"
#include "pfpld/error.hpp"
#include "pfpld/image.hpp"
#include "pfpld/preprocess.hpp"
#include "face_args.hpp"
#ifdef PFPLD_WITH_NCNN
#include "pfpld/ncnn_backend.hpp"
#endif
#ifdef PFPLD_WITH_NNIE
#include "pfpld/nnie_backend.hpp"
#endif

namespace {

const char* kUsage =
    "usage: pfpld_predict DEPLOY_JSON_OR_FOLDER IMAGE [--box X1,Y1,X2,Y2] [--runtime NAME] [--threads N] [--winograd]\n"
    "                     [--compare IMAGE2] [--init-mpp]\n"
    "  --box        the detector's face box; not needed for an aligned face (facerec: the whole image is the face)\n"
    "  --compare    a second aligned face: print {\"cosine\": C, ...} of the two embeddings (embedding models)\n"
    "  --init-mpp   NNIE builds: set up the MPP system as the SDK samples do, for a board where no other program has\n";

std::string number(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", v);
    return buf;
}

std::unique_ptr<pfpld::Backend> make_backend(const pfpld::DeployConfig& config, const std::string& runtime, int threads,
                                             bool winograd) {
    const std::string& backend = config.runtime(runtime).backend;
#ifdef PFPLD_WITH_NCNN
    if (backend == "ncnn") return pfpld::make_ncnn_backend(config, runtime, pfpld::NcnnOptions{threads, winograd});
#endif
#ifdef PFPLD_WITH_NNIE
    if (backend == "nnie") return pfpld::make_nnie_backend(config, runtime);
#endif
    (void)threads;
    (void)winograd;
    throw pfpld::Error("runtime '" + runtime + "' needs the " + backend + " backend, which this build does not include");
}

}  // namespace

int main(int argc, char** argv) {
    return pfpld_app::run_main([&] {
        bool init_mpp = false;
        std::string compare_image;
        const pfpld_app::FaceArgs args = pfpld_app::parse_face_args(argc, argv, [&](const std::string& arg, auto& value) {
            if (arg == "--compare") compare_image = value();
            return arg == "--compare" || (arg == "--init-mpp" && (init_mpp = true));
        });
        if (args.help) {
            std::cout << kUsage;
            return 0;
        }
        pfpld_app::FaceInputs in = pfpld_app::load_face_inputs(args);
        pfpld::Image second;
        pfpld::Box second_box;
        if (!compare_image.empty()) {   // read and checked before any model is loaded, as the first face
            bool has_embedding = false;
            for (const auto& o : in.config.outputs) has_embedding |= o.kind == "embedding";
            if (!has_embedding)
                throw pfpld::Error("--compare: model '" + in.config.model + "' has no embedding output (" + in.config.path + ")");
            second = pfpld::read_image(compare_image);
            second_box = pfpld_app::face_box(in.config, "", second, "--compare");
        }
        std::string runtime = args.runtime;
        if (runtime.empty()) {
            if (in.config.runtimes.empty()) throw pfpld::Error(in.config.path + ": no runtime this program can run");
            runtime = in.config.runtimes.count("ncnn") ? "ncnn" : in.config.runtimes.begin()->first;
        }
#ifdef PFPLD_WITH_NNIE
        std::unique_ptr<pfpld::NnieMppSystem> mpp;
        if (init_mpp) mpp = std::make_unique<pfpld::NnieMppSystem>();
#else
        if (init_mpp) throw pfpld::Error("--init-mpp: this build has no NNIE backend");
#endif
        pfpld::FacePipeline pipeline(in.config, make_backend(in.config, runtime, args.threads, args.winograd));
        const pfpld::FaceResult r = pipeline.predict(in.image, in.box);
        if (!compare_image.empty()) {   // as `pfpld predict IMAGE --compare IMAGE2 --json`: the cosine alone
            const pfpld::FaceResult other = pipeline.predict(second, second_box);
            std::cout << "{\"cosine\": " << number(pfpld::cosine(r.embedding, other.embedding)) << ", \"runtime\": \""
                      << runtime << "\"}\n";
            return 0;
        }
        const pfpld::Box& box = in.box;

        std::ostringstream out;
        out << "{\"box\": [" << number(box.x1) << ", " << number(box.y1) << ", " << number(box.x2) << ", " << number(box.y2)
            << "], \"runtime\": \"" << runtime << "\"";
        if (r.has_landmarks) {   // the keys of `pfpld predict --json`: only what the model has
            out << ", \"landmarks_px\": [";
            for (size_t i = 0; i < r.landmarks_px.size(); ++i)
                out << (i ? ", " : "") << "[" << number(r.landmarks_px[i].x) << ", " << number(r.landmarks_px[i].y) << "]";
            out << "]";
        }
        if (r.has_pose) {
            const char* names[3] = {"yaw", "pitch", "roll"};
            out << ", \"pose_rad\": {";
            for (int k = 0; k < 3; ++k) out << (k ? ", " : "") << "\"" << names[k] << "\": " << number(r.pose_rad[k]);
            out << "}, \"pose_deg\": {";
            for (int k = 0; k < 3; ++k) out << (k ? ", " : "") << "\"" << names[k] << "\": " << number(r.pose_deg[k]);
            out << "}";
        }
        if (r.has_embedding) {   // as the network gives it, not normalised (as `pfpld predict --json`)
            out << ", \"embedding\": [";
            for (size_t i = 0; i < r.embedding.size(); ++i) out << (i ? ", " : "") << number(r.embedding[i]);
            out << "]";
        }
        out << "}\n";
        std::cout << out.str();
        return 0;
    });
}
