// deploy.json, the file `pfpld export` writes in every export folder and NNIE bundle (convert/deploy.py): the
// preprocessing contract, the model's outputs by name and kind, and the files and blob names of each runtime.
// Nothing here re-types a value of the Python side; everything comes from that file.
#pragma once
#include <array>
#include <map>
#include <string>
#include <vector>

namespace pfpld {

// The square crop around a face box, as pfpld/contract.py's CropRule.square (crop_matrix applies it); for a
// rectangular input (an aligned contract only) the window of the input's aspect, side = its height.
struct CropRule {
    std::string box_source;   // "landmark_extent": a face box (the landmarks' extent in training, a detector's box
                              // at deployment); "aligned": the image is an aligned face and the box is the whole
                              // image (aligned_box in preprocess.hpp)
    double expand = 0.0;      // side of the square = expand * max (or min, see side) of the box's w, h
    double shift_y = 0.0;     // centre shift, as a fraction of the side (down is +)
    double loose_k = 0.0;     // HopeNet's loose box before the square (0: none): x1 -= 0.6 k w, y1 -= 2 k h, then
                              // x2 += 0.6 k w', y2 += 0.6 k h' on the moved corners
    std::string side = "max"; // "min": the square fits inside the (loosened) box
};

struct Contract {
    int input_size = 0;               // rows of the input (and its columns unless input_width)
    int input_width = 0;              // columns of a rectangular input (SphereFace's 112x96: 96); 0 = square
    std::string color_order;          // "RGB" or "BGR": channel order of the network input
    double scale = 0.0;               // input = (pixel - mean) * scale, in float32
    std::array<double, 3> mean{};     // per network channel (in color_order)
    CropRule crop;
    std::string layout;               // "NCHW"

    bool aligned() const { return crop.box_source == "aligned"; }   // no face box: the whole image is the face
    int height() const { return input_size; }
    int width() const { return input_width > 0 ? input_width : input_size; }
};

struct OutputSpec {
    std::string name;                 // the spec's name ("landmarks", "pose")
    std::string kind;                 // "landmarks": K points x,y in [0,1] of the crop; "pose": yaw, pitch, roll
                                      // in radians; "pose_deg": the same in degrees; "pose_bins": one angle's bin
                                      // logits (HopeNet; decoded in the graph into its pose_deg output, so not
                                      // here); "embedding": a face embedding (>= 2 values, compared by cosine);
                                      // "": anything else. Every output is also returned raw.
    std::vector<int> shape;           // without the batch dimension
    std::string meaning;
    size_t count() const;             // number of values
};

struct RuntimeFiles {
    std::string backend;                          // "ncnn", "nnie"
    std::map<std::string, std::string> files;     // "param", "bin", "wk": paths made absolute on load
    std::string input;                            // the runtime's blob name of the input
    std::map<std::string, std::string> outputs;   // spec output name -> the runtime's blob name
    std::vector<std::string> planes;              // nnie: planar input plane order (the cfg's RGB_order)
    double s32_scale = 0.0;                       // nnie: report blob value = s32 / s32_scale
    bool fp16 = false;                            // ncnn: fp16 weights and arithmetic allowed (ncnn-fp16)
};

struct DeployConfig {
    std::string path;                 // the deploy.json read
    std::string model;
    Contract contract;
    std::string input_name;
    std::vector<int> input_shape;     // N, C, H, W
    std::vector<OutputSpec> outputs;
    std::map<std::string, RuntimeFiles> runtimes;   // "ncnn", "ncnn-int8", "nnie", ...

    // Reads deploy.json (or the deploy.json inside a folder). Throws pfpld::Error naming the file and the key.
    static DeployConfig load(const std::string& path);
    static DeployConfig parse(const std::string& json_text, const std::string& where, const std::string& base_dir);

    const OutputSpec& output(const std::string& name) const;
    const RuntimeFiles& runtime(const std::string& name) const;
};

}  // namespace pfpld
