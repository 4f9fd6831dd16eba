// pfpld_bench: what one face costs on this machine with the C++ side, as one JSON line for `pfpld bench`. The image
// is read once; then the preprocessing (crop_face + pack_float_chw into a buffer kept between faces) is timed per
// face, and the ncnn backend's infer on the crop (packing, network, output copies: what an application calls) after
// a warm-up. Each: median and best of the runs, and how many. A user's mistake is one line on stderr and exit 2.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "pfpld/backend.hpp"
#include "pfpld/config.hpp"
#include "pfpld/error.hpp"
#include "pfpld/image.hpp"
#include "pfpld/ncnn_backend.hpp"
#include "pfpld/preprocess.hpp"
#include "face_args.hpp"

namespace {

const char* kUsage =
    "usage: pfpld_bench DEPLOY_JSON_OR_FOLDER IMAGE [--box X1,Y1,X2,Y2] [--runtime ncnn] [--threads N] [--winograd]\n"
    "                   [--seconds S]\n"
    "  S: timing budget of the inference (default 1.5); the preprocessing gets a quarter of it\n";

using Clock = std::chrono::steady_clock;

std::string number(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
}

struct Timing {
    std::vector<double> seconds;   // one per run

    double median() const {
        std::vector<double> s = seconds;
        std::sort(s.begin(), s.end());
        const size_t n = s.size();
        return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    }
    double best() const { return *std::min_element(seconds.begin(), seconds.end()); }
    // {"median": ..., "best": ..., "runs": N} in `unit` (1e3: ms, 1e6: us).
    std::string json(double unit) const {
        return "{\"median\": " + number(median() * unit) + ", \"best\": " + number(best() * unit) +
               ", \"runs\": " + std::to_string(seconds.size()) + "}";
    }
};

// The rule of pfpld_app/bench.py's median_latency_ms: time each run until `budget_s` is spent and `min_runs` are
// done, at most `max_runs`; a configuration that crawls (threads spinning against another process) stops after 5
// runs at 3x the budget.
Timing time_runs(const std::function<void()>& run, double budget_s, size_t min_runs, size_t max_runs) {
    Timing t;
    const Clock::time_point start = Clock::now();
    while (t.seconds.size() < max_runs) {
        const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
        if ((t.seconds.size() >= min_runs && elapsed > budget_s) || (t.seconds.size() >= 5 && elapsed > 3 * budget_s))
            break;
        const Clock::time_point t0 = Clock::now();
        run();
        t.seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    return t;
}

}  // namespace

int main(int argc, char** argv) {
    return pfpld_app::run_main([&] {
        double seconds = 1.5;
        const pfpld_app::FaceArgs args = pfpld_app::parse_face_args(argc, argv, [&](const std::string& arg, auto& value) {
            if (arg != "--seconds") return false;
            seconds = std::atof(value().c_str());
            return true;
        });
        if (args.help) {
            std::cout << kUsage;
            return 0;
        }
        if (!(seconds > 0)) throw pfpld::Error("--seconds: expected a positive number of seconds");
        const pfpld_app::FaceInputs in = pfpld_app::load_face_inputs(args);
        const pfpld::DeployConfig& config = in.config;
        const pfpld::Contract& contract = config.contract;
        const pfpld::Box& box = in.box;
        const pfpld::Image& image = in.image;
        const std::string runtime = args.runtime.empty() ? "ncnn" : args.runtime;
        const int threads = args.threads;
        const bool winograd = args.winograd;
        // Loads the model (and says which runtime is missing) before anything is timed.
        std::unique_ptr<pfpld::Backend> backend =
            pfpld::make_ncnn_backend(config, runtime, pfpld::NcnnOptions{threads, winograd});

        // Preprocessing: many runs of ~100 us each, so a quarter of the budget is plenty.
        std::vector<float> input(3 * size_t(contract.height()) * contract.width());
        volatile float sink = 0;   // keeps the compiler from dropping work whose result nobody reads
        const Timing preprocess = time_runs([&] {
            const pfpld::Image crop = pfpld::crop_face(contract, image, box);
            pfpld::pack_float_chw(contract, crop, input.data());
            sink = sink + input[input.size() / 2];
        }, seconds / 4, 100, 100000);

        const pfpld::Image crop = pfpld::crop_face(contract, image, box);
        // Warm-up as median_latency_ms: 10 runs, or fewer once the budget is spent (at least 2).
        const Clock::time_point warm = Clock::now();
        int warmup = 0;
        while (warmup < 10) {
            sink = sink + float(backend->infer(crop).values.size());
            ++warmup;
            if (warmup >= 2 && std::chrono::duration<double>(Clock::now() - warm).count() > seconds) break;
        }
        const Timing infer = time_runs([&] { sink = sink + float(backend->infer(crop).values.size()); },
                                       seconds, 30, 1000);

        std::cout << "{\"runtime\": \"" << runtime << "\", \"threads\": " << threads
                  << ", \"winograd\": " << (winograd ? "true" : "false") << ", \"image\": [" << image.width << ", "
                  << image.height << "], \"input_size\": " << contract.input_size
                  << ", \"input_width\": " << contract.width()
                  << ", \"preprocess_us\": " << preprocess.json(1e6) << ", \"warmup_runs\": " << warmup
                  << ", \"infer_ms\": " << infer.json(1e3) << "}\n";
        return 0;
    });
}
