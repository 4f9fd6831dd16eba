// The core library against the Python side's own outputs (fixtures written by make_fixtures.py).
#include <algorithm>
#include <cstring>

#include "check.hpp"
#include "pfpld/config.hpp"
#include "pfpld/decode.hpp"
#include "pfpld/error.hpp"
#include "pfpld/image.hpp"
#include "pfpld/preprocess.hpp"

using nlohmann::json;

namespace {

pfpld::Affine affine_of(const json& values) {
    pfpld::Affine a;
    for (size_t i = 0; i < 6; ++i) a.m[i] = values.at(i).get<double>();
    return a;
}

pfpld::Box box_of(const json& v) { return {v[0].get<double>(), v[1].get<double>(), v[2].get<double>(), v[3].get<double>()}; }

size_t differing(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
    if (a.size() != b.size()) return std::max(a.size(), b.size());
    size_t n = 0;
    for (size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
    return n;
}

// One model's fixtures (make_fixtures.py's FIXTURE_MODELS): its export's deploy.json and its faces.
const json& model_fixtures(const json& index, const std::string& model) {
    for (const auto& rec : index.at("models"))
        if (rec.at("model") == model) return rec;
    throw std::runtime_error("the fixtures have no model '" + model + "' (make_fixtures.py --models)");
}

pfpld::DeployConfig model_config(const json& model) { return pfpld::DeployConfig::load(model.at("deploy").get<std::string>()); }

void images(const json& index, const std::string&) {
    for (const auto& rec : index.at("images")) {
        const pfpld::Image image = pfpld::read_image(rec.at("file").get<std::string>());
        const auto expected = check::read_bytes(rec.at("bgr").get<std::string>());
        CHECK_MSG(image.width == rec.at("width").get<int>() && image.height == rec.at("height").get<int>(), rec.at("file"));
        CHECK_MSG(image.channels == 3 && image.pixels == expected, rec.at("file") << ": pixels differ from cv2.imread");
        std::cout << "  " << rec.at("file").get<std::string>() << ": " << image.width << "x" << image.height << " equal\n";
    }
}

void warp(const json& index, const std::string&) {
    size_t total = 0, bad = 0;
    for (const auto& rec : index.at("warps")) {
        const pfpld::Image src = pfpld::read_image(rec.at("src").get<std::string>());
        const pfpld::Image out = pfpld::warp_affine(src, affine_of(rec.at("matrix")), rec.at("width"), rec.at("height"));
        const auto expected = check::read_bytes(rec.at("expected").get<std::string>());
        const size_t n = differing(out.pixels, expected);
        CHECK_MSG(n == 0, rec.at("expected") << ": " << n << " bytes differ from cv2.warpAffine");
        total += expected.size();
        bad += n;
    }
    std::cout << "  " << index.at("warps").size() << " warps, " << total << " bytes, " << bad << " differ from cv2.warpAffine\n";
}

// The contract's matrix bit for bit and the crop byte for byte, for every model's contract on the face pictures (an
// aligned contract's box made here from the picture alone: the whole image); then the matrix alone for every branch
// of the crop rule (loose or not, side max or min, shifted) and for the aligned rule on pictures of several sizes.
void crop(const json& index, const std::string&) {
    for (const auto& model : index.at("models")) {
        const pfpld::Contract contract = model_config(model).contract;
        for (const auto& rec : model.at("faces")) {
            const pfpld::Image image = pfpld::read_image(rec.at("image").get<std::string>());
            pfpld::Box box = box_of(rec.at("box"));
            if (contract.aligned()) {
                box = pfpld::aligned_box(image);
                CHECK_MSG(box.x1 == 0 && box.y1 == 0 && box.x2 == image.width && box.y2 == image.height &&
                              box.x2 == rec.at("box")[2].get<double>() && box.y2 == rec.at("box")[3].get<double>(),
                          rec.at("image") << ": aligned box differs from PreprocessContract.aligned_box " << rec.at("box"));
            }
            pfpld::Affine matrix;
            const pfpld::Image out = pfpld::crop_face(contract, image, box, &matrix);
            const pfpld::Affine expected = affine_of(rec.at("matrix"));
            for (size_t k = 0; k < 6; ++k)
                CHECK_MSG(matrix.m[k] == expected.m[k], model.at("model") << " " << rec.at("image") << ": matrix[" << k << "] "
                                                                         << matrix.m[k] << " != " << expected.m[k]);
            const size_t n = differing(out.pixels, check::read_bytes(rec.at("crop").get<std::string>()));
            CHECK_MSG(n == 0, model.at("model") << " " << rec.at("image") << ": " << n
                                                << " crop bytes differ from PreprocessContract.crop_image");
            std::cout << "  " << model.at("model").get<std::string>() << " " << rec.at("image").get<std::string>()
                      << ": matrix bit-equal, " << out.pixels.size() << " crop bytes, " << n << " differ\n";
        }
    }
    size_t differ = 0, aligned = 0;
    for (const auto& rec : index.at("crop_rules")) {
        pfpld::Contract contract;
        contract.input_size = rec.at("input_size");
        contract.input_width = rec.value("input_width", 0);   // a rectangular aligned input (SphereFace's 112x96)
        const json& rule = rec.at("crop");
        contract.crop.box_source = rule.at("box_source");
        contract.crop.expand = rule.at("expand");
        contract.crop.shift_y = rule.at("shift_y");
        contract.crop.loose_k = rule.at("loose_k");
        contract.crop.side = rule.at("side");
        pfpld::Box box = box_of(rec.at("box"));
        if (contract.aligned()) {   // only the picture's size: the box is the whole of it
            box = pfpld::aligned_box(pfpld::Image(rec.at("image_size")[0], rec.at("image_size")[1], 3));
            CHECK_MSG(box.x2 == rec.at("box")[2].get<double>() && box.y2 == rec.at("box")[3].get<double>(), rec.at("box"));
            ++aligned;
        }
        const pfpld::Affine matrix = pfpld::crop_matrix(contract, box);
        const pfpld::Affine expected = affine_of(rec.at("matrix"));
        for (size_t k = 0; k < 6; ++k) {
            differ += matrix.m[k] != expected.m[k];
            CHECK_MSG(matrix.m[k] == expected.m[k], "rule " << rule.dump() << " box " << rec.at("box").dump() << ": matrix["
                                                            << k << "] " << matrix.m[k] << " != " << expected.m[k]);
        }
    }
    CHECK(aligned > 0);
    std::cout << "  " << index.at("crop_rules").size() << " matrices of CropRule variants (" << aligned
              << " of the aligned rule on whole pictures), " << differ << " values differ from PreprocessContract.crop_matrix\n";
}

void pack(const json& index, const std::string&) {
    for (const auto& model : index.at("models")) {
        const pfpld::Contract contract = model_config(model).contract;
        for (const auto& rec : model.at("faces")) {
            pfpld::Image crop(contract.width(), contract.height(), 3);
            crop.pixels = check::read_bytes(rec.at("crop").get<std::string>());
            CHECK(crop.pixels.size() == size_t(3) * contract.width() * contract.height());
            const auto planes = rec.at("planes").get<std::vector<std::string>>();
            for (const auto& p : rec.at("planar")) {
                const size_t stride = pfpld::aligned_stride(size_t(contract.width()), p.at("align").get<size_t>());
                CHECK(stride == p.at("stride").get<size_t>());
                std::vector<uint8_t> buffer(3 * stride * size_t(contract.height()), 0xAB);
                pfpld::pack_planar_u8(crop, planes, buffer.data(), stride);
                CHECK_MSG(buffer == check::read_bytes(p.at("file").get<std::string>()), p.at("file") << ": planar U8 differs");
            }
            const auto chw = pfpld::pack_float_chw(contract, crop);
            const auto expected = check::read_array<float>(rec.at("chw").get<std::string>());
            CHECK(chw.size() == expected.size());
            double worst = 0;
            for (size_t i = 0; i < std::min(chw.size(), expected.size()); ++i) worst = std::max(worst, double(std::fabs(chw[i] - expected[i])));
            CHECK_MSG(worst <= 1e-6, rec.at("chw") << ": float input differs by " << worst);
            std::cout << "  " << rec.at("crop").get<std::string>() << ": planar U8 equal at every stride, float max diff " << worst << "\n";
        }
    }
}

// Python's decoding (the spec's, in float64) of the recorded ncnn outputs: landmarks only for a model with a landmark
// output, the pose only for one with a pose output (radians or degrees).
void decode(const json& index, const std::string&) {
    for (const auto& model : index.at("models")) {
        const pfpld::DeployConfig config = model_config(model);
        for (const auto& rec : model.at("faces")) {
            pfpld::Outputs outputs;
            for (auto it = rec.at("ncnn_outputs").begin(); it != rec.at("ncnn_outputs").end(); ++it)
                outputs.values[it.key()] = check::read_array<float>(it.value().get<std::string>());
            const pfpld::FaceResult r = pfpld::decode(config, outputs, affine_of(rec.at("matrix")));
            const auto& expected = rec.at("decoded");
            CHECK_MSG(r.has_landmarks == expected.contains("landmarks_px") && r.has_pose == expected.contains("pose_rad") &&
                          r.has_embedding == expected.contains("embedding"),
                      model.at("model") << ": landmarks " << r.has_landmarks << ", pose " << r.has_pose << "; Python decoded "
                                        << expected.size() << " things");
            double worst_px = 0, worst_rad = 0, worst_deg = 0;
            if (expected.contains("landmarks_px")) {
                CHECK(r.landmarks_px.size() == expected.at("landmarks_px").size());
                for (size_t i = 0; i < std::min(r.landmarks_px.size(), expected.at("landmarks_px").size()); ++i) {
                    worst_px = std::max(worst_px, std::fabs(r.landmarks_px[i].x - expected["landmarks_px"][i][0].get<double>()));
                    worst_px = std::max(worst_px, std::fabs(r.landmarks_px[i].y - expected["landmarks_px"][i][1].get<double>()));
                }
            }
            if (expected.contains("pose_rad"))
                for (int k = 0; k < 3; ++k) {
                    worst_rad = std::max(worst_rad, std::fabs(r.pose_rad[k] - expected["pose_rad"][k].get<double>()));
                    worst_deg = std::max(worst_deg, std::fabs(r.pose_deg[k] - expected["pose_deg"][k].get<double>()));
                }
            // Python rounds the pixels to float32 (PreprocessContract.points_from_crop): 1e-4 px covers that.
            CHECK_MSG(worst_px <= 1e-4 && worst_rad <= 1e-12 && worst_deg <= 1e-9,
                      model.at("model") << " " << rec.at("image") << ": " << worst_px << " px, " << worst_rad << " rad, " << worst_deg << " deg");
            std::cout << "  " << model.at("model").get<std::string>() << " " << rec.at("image").get<std::string>() << ": ";
            if (r.has_landmarks) std::cout << r.landmarks_px.size() << " landmarks within " << worst_px << " px";
            else std::cout << "no landmarks";
            if (r.has_pose) std::cout << ", pose within " << worst_rad << " rad, " << worst_deg << " deg";
            else std::cout << ", no pose";
            if (expected.contains("embedding")) {   // untouched: the very floats Python read
                const auto want = expected.at("embedding").get<std::vector<double>>();
                size_t differ = want.size() != r.embedding.size();
                for (size_t i = 0; i < std::min(want.size(), r.embedding.size()); ++i) differ += double(r.embedding[i]) != want[i];
                CHECK_MSG(differ == 0, model.at("model") << " " << rec.at("image") << ": " << differ << " embedding values differ");
                std::cout << ", embedding of " << r.embedding.size() << " values, " << differ << " differ";
            }
            std::cout << " of Python's decoding\n";
        }
        // cosine() against pfpld.verification.cosine_scores on every pair of the faces' embeddings
        if (!model.contains("cosines")) continue;
        double worst = 0;
        for (const auto& pair : model.at("cosines")) {
            const auto& faces = model.at("faces");
            const auto embedding = [&](size_t i) {
                const auto values = faces.at(i).at("decoded").at("embedding").get<std::vector<double>>();
                return std::vector<float>(values.begin(), values.end());
            };
            const double c = pfpld::cosine(embedding(pair.at("faces")[0]), embedding(pair.at("faces")[1]));
            worst = std::max(worst, std::fabs(c - pair.at("cosine").get<double>()));
        }
        CHECK_MSG(worst <= 1e-12, model.at("model") << ": cosine " << worst << " from cosine_scores");
        std::cout << "  " << model.at("model").get<std::string>() << ": cosine of " << model.at("cosines").size()
                  << " face pairs within " << worst << " of pfpld.verification.cosine_scores\n";
    }
}

// A recognition model's deploy.json: the aligned crop rule and the embedding kind load; a box_source or an embedding
// this library does not know is one line naming the file and the value.
void config(const json& index, const std::string& folder) {
    using pfpld::Error;
    const json& facerec = model_fixtures(index, "facerec");
    const pfpld::DeployConfig config = model_config(facerec);
    CHECK(config.contract.aligned() && config.contract.crop.box_source == "aligned" && config.contract.crop.expand == 1.0);
    CHECK(config.outputs.size() == 1 && config.outputs[0].kind == "embedding" && config.outputs[0].count() == 512);
    CHECK(!model_config(model_fixtures(index, "pfpld")).contract.aligned());
    std::cout << "  " << config.path << ": box_source " << config.contract.crop.box_source << ", output '"
              << config.outputs[0].name << "' of kind " << config.outputs[0].kind << ", " << config.outputs[0].count() << " values\n";

    const std::string tmp = folder + "/bad";
    std::system(("mkdir -p '" + tmp + "'").c_str());
    std::ifstream in(facerec.at("deploy").get<std::string>());
    const json good = json::parse(in);
    const auto load = [&](const std::string& name, const json& j) {
        std::ofstream(tmp + "/" + name, std::ios::binary) << j.dump();
        return pfpld::DeployConfig::load(tmp + "/" + name);
    };
    json detector = good;
    detector["contract"]["crop"]["box_source"] = "detector";
    check::expect_error<Error>([&] { load("deploy_box_source.json", detector); },
                               "deploy_box_source.json: contract.crop.box_source 'detector', expected landmark_extent or aligned");
    json one_value = good;
    one_value["outputs"][0]["shape"] = {1};
    check::expect_error<Error>([&] { load("deploy_embedding.json", one_value); },
                               "deploy_embedding.json: outputs[0] is embedding but has 1 value(s), expected at least 2");
    json two_values = good;   // any count from 2 up
    two_values["outputs"][0]["shape"] = {2};
    CHECK(load("deploy_embedding2.json", two_values).outputs[0].count() == 2);
    // a rectangular input (SphereFace's 112 rows x 96 columns, written by `pfpld export --onnx`); a square contract
    // (every deploy.json before rectangles) has no input_width and is as wide as it is high
    const pfpld::DeployConfig sphere = model_config(model_fixtures(index, "sphereface"));
    CHECK(sphere.contract.height() == 112 && sphere.contract.width() == 96 && sphere.contract.aligned() &&
          sphere.contract.crop.side == "min" && sphere.input_shape == std::vector<int>({1, 3, 112, 96}));
    CHECK(!good.at("contract").contains("input_width") && config.contract.width() == config.contract.height());
    std::cout << "  " << sphere.path << ": input " << sphere.contract.height() << "x" << sphere.contract.width()
              << " (rows x columns), crop side " << sphere.contract.crop.side << "\n";
    std::ifstream sphere_in(sphere.path);
    const json rectangle = json::parse(sphere_in);
    json landmark_rectangle = rectangle;
    landmark_rectangle["contract"]["crop"]["box_source"] = "landmark_extent";
    check::expect_error<Error>([&] { load("deploy_landmark_rectangle.json", landmark_rectangle); },
                               "deploy_landmark_rectangle.json: contract input 112x96 (rows x columns) is not square: "
                               "only an aligned contract");
    json wrong_shape = rectangle;
    wrong_shape["input"]["shape"] = {1, 3, 96, 112};
    check::expect_error<Error>([&] { load("deploy_shape.json", wrong_shape); },
                               "deploy_shape.json: input.shape is not [N, 3, 112, 96]");
    check::expect_error<Error>([&] { pfpld::cosine({1, 2}, {1, 2, 3}); }, "embeddings of 2 and 3 values");
    check::expect_error<Error>([&] { pfpld::cosine({0, 0}, {1, 2}); }, "norm 0");
    // by hand: parallel (double rounding may put it a step off 1), orthogonal, opposite (clipped to [-1, 1])
    CHECK(std::fabs(pfpld::cosine({1, 2}, {2, 4}) - 1.0) <= 1e-15 && pfpld::cosine({1, 0}, {0, 3}) == 0.0 &&
          pfpld::cosine({1, 1}, {-1, -1}) >= -1.0 && std::fabs(pfpld::cosine({3, 4}, {4, 3}) - 0.96) <= 1e-15);
}

void s32(const json& index, const std::string&) {
    for (const auto& rec : index.at("s32")) {
        const auto blob = check::read_array<int32_t>(rec.at("file").get<std::string>());
        const auto values = pfpld::s32_blob_to_float(blob.data(), rec.at("num"), rec.at("chn"), rec.at("height"), rec.at("width"),
                                                     rec.at("stride"), rec.at("scale").get<double>());
        const auto expected = check::read_array<float>(rec.at("expected").get<std::string>());
        CHECK_MSG(values == expected, rec.at("file") << ": S32 decoding differs");
        std::cout << "  " << rec.at("file").get<std::string>() << ": " << values.size() << " values equal (stride "
                  << rec.at("stride").get<int>() << " bytes)\n";
    }
}

void errors(const json& index, const std::string& folder) {
    using pfpld::Error;
    const std::string tmp = folder + "/bad";
    std::system(("mkdir -p '" + tmp + "'").c_str());
    auto write = [&](const std::string& name, const std::string& text) {
        std::ofstream(tmp + "/" + name, std::ios::binary) << text;
        return tmp + "/" + name;
    };
    check::expect_error<Error>([&] { pfpld::read_image(tmp + "/missing.ppm"); }, "missing.ppm: cannot open");
    check::expect_error<Error>([&] { pfpld::read_image(write("header.ppm", "P6\n12 x\n255\n")); }, "no height");
    check::expect_error<Error>([&] { pfpld::read_image(write("maxval.ppm", "P6\n2 2\n65535\n")); }, "maxval 65535");
    check::expect_error<Error>([&] { pfpld::read_image(write("short.ppm", "P6\n4 4\n255\nabc")); }, "truncated");
    check::expect_error<Error>([&] { pfpld::read_image(write("short.bmp", "BM" + std::string(60, '\0'))); }, "BMP");
    check::expect_error<Error>([&] { pfpld::read_image(write("text.jpg", "\xff\xd8\xff")); }, "not a PPM, PGM or BMP");
    const json& pfpld_model = model_fixtures(index, "pfpld");
    const pfpld::Contract contract = model_config(pfpld_model).contract;
    const pfpld::Image image(64, 48, 3);
    check::expect_error<Error>([&] { pfpld::crop_face(contract, image, {70, 10, 90, 30}); }, "does not overlap the 64x48 image");
    check::expect_error<Error>([&] { pfpld::crop_face(contract, image, {30, 10, 20, 30}); }, "is empty");
    // deploy.json without a key, and broken: each names the file and the key.
    {
        const std::string deploy = pfpld_model.at("deploy");
        std::ifstream in(deploy);
        json good = json::parse(in);
        json no_expand = good;
        no_expand["contract"]["crop"].erase("expand");
        check::expect_error<Error>([&] { pfpld::DeployConfig::load(write("deploy_no_expand.json", no_expand.dump())); },
                                   "no key 'contract.crop.expand'");
        json no_blob = good;
        no_blob["runtimes"]["ncnn"]["outputs"].erase("pose");
        check::expect_error<Error>([&] { pfpld::DeployConfig::load(write("deploy_no_blob.json", no_blob.dump())); },
                                   "runtimes.ncnn.outputs has no blob for output 'pose'");
        json wrong_type = good;
        wrong_type["contract"]["input_size"] = "112";
        check::expect_error<Error>([&] { pfpld::DeployConfig::load(write("deploy_type.json", wrong_type.dump())); },
                                   "'contract.input_size' has the wrong type");
        json loose_type = good;
        loose_type["contract"]["crop"]["loose_k"] = "0.3";
        check::expect_error<Error>([&] { pfpld::DeployConfig::load(write("deploy_loose_type.json", loose_type.dump())); },
                                   "'contract.crop.loose_k' has the wrong type");
        json side_type = good;
        side_type["contract"]["crop"]["side"] = 1;
        check::expect_error<Error>([&] { pfpld::DeployConfig::load(write("deploy_side_type.json", side_type.dump())); },
                                   "'contract.crop.side' has the wrong type");
        json side_unknown = good;
        side_unknown["contract"]["crop"]["side"] = "median";
        check::expect_error<Error>([&] { pfpld::DeployConfig::load(write("deploy_side.json", side_unknown.dump())); },
                                   "contract.crop.side 'median', expected max or min");
        json loose_negative = good;
        loose_negative["contract"]["crop"]["loose_k"] = -0.1;
        check::expect_error<Error>([&] { pfpld::DeployConfig::load(write("deploy_loose.json", loose_negative.dump())); },
                                   "contract.crop.loose_k must be >= 0");
        // A deploy.json written before loose_k and side existed: the old rule (no loosening, side max).
        json older = good;
        older["contract"]["crop"].erase("loose_k");
        older["contract"]["crop"].erase("side");
        const pfpld::DeployConfig old_config = pfpld::DeployConfig::load(write("deploy_older.json", older.dump()));
        CHECK(old_config.contract.crop.loose_k == 0.0 && old_config.contract.crop.side == "max");
        const pfpld::Box box = box_of(pfpld_model.at("faces").at(0).at("box"));
        CHECK(pfpld::crop_matrix(old_config.contract, box).m == pfpld::crop_matrix(contract, box).m);
        std::cout << "  deploy.json without contract.crop.loose_k and .side: loads as loose_k 0, side max\n";
        std::ifstream hopenet_in(model_fixtures(index, "hopenet").at("deploy").get<std::string>());
        json pose_deg_4 = json::parse(hopenet_in);
        for (auto& o : pose_deg_4["outputs"])
            if (o["kind"] == "pose_deg") o["shape"] = {4};
        check::expect_error<Error>([&] { pfpld::DeployConfig::load(write("deploy_pose_deg.json", pose_deg_4.dump())); },
                                   "is pose_deg but has not 3 values");
        const pfpld::DeployConfig config = model_config(pfpld_model);
        check::expect_error<Error>([&] { config.runtime("nnie"); }, "no runtime 'nnie'");
        pfpld::Outputs short_outputs;
        short_outputs.values["landmarks"] = std::vector<float>(10);
        short_outputs.values["pose"] = std::vector<float>(3);
        check::expect_error<Error>([&] { pfpld::decode(config, short_outputs, pfpld::Affine{{1, 0, 0, 0, 1, 0}}); },
                                   "output 'landmarks' has 10 values, expected");
    }
    check::expect_error<Error>([&] { pfpld::DeployConfig::load(write("broken.json", "{\"format\": ")); }, "not valid JSON");
    check::expect_error<Error>([&] { pfpld::DeployConfig::load(tmp + "/nowhere.json"); }, "nowhere.json: cannot open");
    std::vector<int32_t> blob(4);
    check::expect_error<Error>([&] { pfpld::s32_blob_to_float(blob.data(), 1, 1, 1, 4, 8, 4096); }, "stride 8 bytes");
}

}  // namespace

int main(int argc, char** argv) {
    return check::run(argc, argv, {{"images", images}, {"warp", warp}, {"crop", crop}, {"pack", pack},
                                   {"decode", decode}, {"s32", s32}, {"errors", errors},
                                   {"config", config}});
}
