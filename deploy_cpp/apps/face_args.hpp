// What pfpld_predict and pfpld_bench share: the command line `DEPLOY IMAGE [--box X1,Y1,X2,Y2] [--runtime NAME]
// [--threads N] [--winograd]` plus each program's own options, the inputs it names (deploy.json, image, box checked
// against it; no box for an aligned face: the whole image), and main's error rule (a user's mistake: one line on
// stderr, exit code 2).
#pragma once
#include <cstdlib>
#include <functional>
#include <iostream>
#include <string>

#include "pfpld/config.hpp"
#include "pfpld/error.hpp"
#include "pfpld/image.hpp"
#include "pfpld/preprocess.hpp"

namespace pfpld_app {

struct FaceArgs {
    std::string deploy, image, box, runtime;
    int threads = 1;
    bool winograd = false;
    bool help = false;
};

// `extra(arg, value)` takes the program's own options: it returns true when `arg` is one of them (calling value()
// for its value).
using ExtraOption = std::function<bool(const std::string& arg, const std::function<std::string()>& value)>;

inline FaceArgs parse_face_args(int argc, char** argv, const ExtraOption& extra) {
    FaceArgs a;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        const std::function<std::string()> value = [&] {
            if (i + 1 >= argc) throw pfpld::Error(arg + " needs a value");
            return std::string(argv[++i]);
        };
        if (arg == "--box") a.box = value();
        else if (arg == "--runtime") a.runtime = value();
        else if (arg == "--threads") a.threads = std::atoi(value().c_str());
        else if (arg == "--winograd") a.winograd = true;
        else if (arg == "-h" || arg == "--help") a.help = true;
        else if (extra && extra(arg, value)) continue;
        else if (!arg.empty() && arg[0] == '-') throw pfpld::Error("unknown option " + arg);
        else if (a.deploy.empty()) a.deploy = arg;
        else if (a.image.empty()) a.image = arg;
        else throw pfpld::Error("unexpected argument " + arg);
    }
    if (!a.help && (a.deploy.empty() || a.image.empty()))
        throw pfpld::Error("expected DEPLOY_JSON_OR_FOLDER IMAGE [--box X1,Y1,X2,Y2] (see --help)");
    if (a.threads < 1) throw pfpld::Error("--threads: expected a positive number");
    return a;
}

struct FaceInputs {
    pfpld::DeployConfig config;
    pfpld::Box box;
    pfpld::Image image;
};

// The face box of `image`: `box_text` when given, else the whole image for an aligned contract (facerec's); a model
// that crops around a face box needs one.
inline pfpld::Box face_box(const pfpld::DeployConfig& config, const std::string& box_text, const pfpld::Image& image,
                           const std::string& what) {
    if (box_text.empty()) {
        if (!config.contract.aligned())
            throw pfpld::Error(what + ": model '" + config.model + "' crops around a face box (contract.crop.box_source '" +
                               config.contract.crop.box_source + "'): give it as X1,Y1,X2,Y2");
        return pfpld::aligned_box(image);
    }
    pfpld::Box box = pfpld::parse_box(box_text, what);
    pfpld::check_box(box, image.width, image.height);
    return box;
}

// Reads deploy.json, the image and the box (checked to overlap the image), before any model is loaded.
inline FaceInputs load_face_inputs(const FaceArgs& a) {
    FaceInputs in{pfpld::DeployConfig::load(a.deploy), {}, pfpld::read_image(a.image)};
    in.box = face_box(in.config, a.box, in.image, "--box");
    return in;
}

// main's body under the error rule: pfpld::Error (a user's mistake) -> one line and exit code 2.
inline int run_main(const std::function<int()>& body) {
    try {
        return body();
    } catch (const pfpld::Error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}

}  // namespace pfpld_app
