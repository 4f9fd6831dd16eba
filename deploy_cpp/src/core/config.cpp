#include "pfpld/config.hpp"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "pfpld/error.hpp"

namespace pfpld {
namespace {

using json = nlohmann::json;

constexpr const char* kFormat = "pfpld-deploy";
constexpr int kVersion = 1;

// Every lookup names the file and the key path, so a broken deploy.json is one line.
class Reader {
public:
    explicit Reader(std::string where) : where_(std::move(where)) {}

    const json& at(const json& node, const std::string& path, const std::string& key) const {
        if (!node.is_object() || !node.contains(key))
            throw Error(where_ + ": no key '" + join(path, key) + "' (expected a deploy.json written by `pfpld export`)");
        return node.at(key);
    }
    template <typename T>
    T get(const json& node, const std::string& path, const std::string& key) const {
        const json& value = at(node, path, key);
        try {
            return value.get<T>();
        } catch (const json::exception&) {
            throw Error(where_ + ": key '" + join(path, key) + "' has the wrong type (" + value.type_name() + ")");
        }
    }
    // An optional key: `fallback` when absent (older deploy.json files), otherwise checked as get() does.
    template <typename T>
    T get_or(const json& node, const std::string& path, const std::string& key, const T& fallback) const {
        return node.is_object() && node.contains(key) ? get<T>(node, path, key) : fallback;
    }
    const std::string& where() const { return where_; }
    static std::string join(const std::string& path, const std::string& key) { return path.empty() ? key : path + "." + key; }

private:
    std::string where_;
};

std::string folder_of(const std::string& path) {
    auto slash = path.find_last_of('/');
    return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

bool is_directory(const std::string& path) {
    struct stat info;
    return stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

}  // namespace

size_t OutputSpec::count() const {
    size_t n = 1;
    for (int d : shape) n *= size_t(d);
    return n;
}

DeployConfig DeployConfig::load(const std::string& path) {
    const std::string file = is_directory(path) ? path + "/deploy.json" : path;
    std::ifstream in(file, std::ios::binary);
    if (!in || is_directory(file))
        throw Error(file + ": cannot open (expected deploy.json from `pfpld export`, or the folder that holds it)");
    std::stringstream text;
    text << in.rdbuf();
    return parse(text.str(), file, folder_of(file));
}

DeployConfig DeployConfig::parse(const std::string& json_text, const std::string& where, const std::string& base_dir) {
    json root;
    try {
        root = json::parse(json_text);
    } catch (const json::parse_error& e) {
        throw Error(where + ": not valid JSON (byte " + std::to_string(e.byte) + ")");
    }
    Reader r(where);
    if (r.get<std::string>(root, "", "format") != kFormat)
        throw Error(where + ": format is not '" + std::string(kFormat) + "'");
    int version = r.get<int>(root, "", "version");
    if (version > kVersion)
        throw Error(where + ": deploy.json version " + std::to_string(version) + " is newer than this library (" +
                    std::to_string(kVersion) + ")");

    DeployConfig cfg;
    cfg.path = where;
    cfg.model = r.get<std::string>(root, "", "model");

    const json& c = r.at(root, "", "contract");
    cfg.contract.input_size = r.get<int>(c, "contract", "input_size");
    // absent in a square contract (and in every deploy.json written before rectangles): as wide as it is high
    cfg.contract.input_width = r.get_or<int>(c, "contract", "input_width", cfg.contract.input_size);
    cfg.contract.color_order = r.get<std::string>(c, "contract", "color_order");
    cfg.contract.scale = r.get<double>(c, "contract", "scale");
    auto mean = r.get<std::vector<double>>(c, "contract", "mean");
    if (mean.size() != 3) throw Error(where + ": contract.mean has " + std::to_string(mean.size()) + " values, expected 3");
    for (int i = 0; i < 3; ++i) cfg.contract.mean[i] = mean[i];
    cfg.contract.layout = r.get<std::string>(c, "contract", "layout");
    const json& crop = r.at(c, "contract", "crop");
    cfg.contract.crop.box_source = r.get<std::string>(crop, "contract.crop", "box_source");
    cfg.contract.crop.expand = r.get<double>(crop, "contract.crop", "expand");
    cfg.contract.crop.shift_y = r.get<double>(crop, "contract.crop", "shift_y");
    cfg.contract.crop.loose_k = r.get_or<double>(crop, "contract.crop", "loose_k", 0.0);
    cfg.contract.crop.side = r.get_or<std::string>(crop, "contract.crop", "side", "max");
    const std::string& source = cfg.contract.crop.box_source;
    if (source != "landmark_extent" && source != "aligned")
        throw Error(where + ": contract.crop.box_source '" + source + "', expected landmark_extent or aligned");
    if (cfg.contract.color_order != "RGB" && cfg.contract.color_order != "BGR")
        throw Error(where + ": contract.color_order '" + cfg.contract.color_order + "', expected RGB or BGR");
    if (cfg.contract.layout != "NCHW") throw Error(where + ": contract.layout '" + cfg.contract.layout + "', expected NCHW");
    if (cfg.contract.input_size < 16)
        throw Error(where + ": contract.input_size " + std::to_string(cfg.contract.input_size) + ", expected at least 16");
    if (cfg.contract.input_width < 16)
        throw Error(where + ": contract.input_width " + std::to_string(cfg.contract.input_width) + ", expected at least 16");
    if (cfg.contract.width() != cfg.contract.height() && !cfg.contract.aligned())
        throw Error(where + ": contract input " + std::to_string(cfg.contract.height()) + "x" +
                    std::to_string(cfg.contract.width()) + " (rows x columns) is not square: only an aligned contract "
                    "(crop.box_source aligned) takes a rectangle");
    if (!(cfg.contract.crop.expand > 0)) throw Error(where + ": contract.crop.expand must be > 0");
    if (!(cfg.contract.crop.loose_k >= 0)) throw Error(where + ": contract.crop.loose_k must be >= 0");
    if (cfg.contract.crop.side != "max" && cfg.contract.crop.side != "min")
        throw Error(where + ": contract.crop.side '" + cfg.contract.crop.side + "', expected max or min");

    const json& input = r.at(root, "", "input");
    cfg.input_name = r.get<std::string>(input, "input", "name");
    cfg.input_shape = r.get<std::vector<int>>(input, "input", "shape");
    if (cfg.input_shape.size() != 4 || cfg.input_shape[1] != 3 || cfg.input_shape[2] != cfg.contract.height() ||
        cfg.input_shape[3] != cfg.contract.width())
        throw Error(where + ": input.shape is not [N, 3, " + std::to_string(cfg.contract.height()) + ", " +
                    std::to_string(cfg.contract.width()) + "] (the contract's rows x columns)");

    const json& outputs = r.at(root, "", "outputs");
    if (!outputs.is_array() || outputs.empty()) throw Error(where + ": 'outputs' must be a non-empty list");
    for (size_t i = 0; i < outputs.size(); ++i) {
        std::string path = "outputs[" + std::to_string(i) + "]";
        OutputSpec o;
        o.name = r.get<std::string>(outputs[i], path, "name");
        o.kind = r.get<std::string>(outputs[i], path, "kind");
        o.shape = r.get<std::vector<int>>(outputs[i], path, "shape");
        o.meaning = r.get<std::string>(outputs[i], path, "meaning");
        if (o.kind == "landmarks" && o.count() % 2 != 0)
            throw Error(where + ": " + path + " is landmarks with an odd number of values");
        if ((o.kind == "pose" || o.kind == "pose_deg") && o.count() != 3)
            throw Error(where + ": " + path + " is " + o.kind + " but has not 3 values");
        if (o.kind == "embedding" && o.count() < 2)
            throw Error(where + ": " + path + " is embedding but has " + std::to_string(o.count()) +
                        " value(s), expected at least 2");
        cfg.outputs.push_back(o);
    }

    const json& runtimes = r.at(root, "", "runtimes");
    if (!runtimes.is_object()) throw Error(where + ": 'runtimes' must be an object");
    for (auto it = runtimes.begin(); it != runtimes.end(); ++it) {
        std::string path = "runtimes." + it.key();
        RuntimeFiles rt;
        rt.backend = r.get<std::string>(it.value(), path, "backend");
        rt.input = r.get<std::string>(it.value(), path, "input");
        rt.outputs = r.get<std::map<std::string, std::string>>(it.value(), path, "outputs");
        for (const char* key : {"param", "bin", "wk"})
            if (it.value().contains(key)) rt.files[key] = base_dir + "/" + r.get<std::string>(it.value(), path, key);
        if (it.value().contains("planes")) rt.planes = r.get<std::vector<std::string>>(it.value(), path, "planes");
        if (it.value().contains("fp16")) rt.fp16 = r.get<bool>(it.value(), path, "fp16");
        if (it.value().contains("s32_scale")) rt.s32_scale = r.get<double>(it.value(), path, "s32_scale");
        for (const auto& o : cfg.outputs)
            if (!rt.outputs.count(o.name))
                throw Error(where + ": " + path + ".outputs has no blob for output '" + o.name + "'");
        cfg.runtimes[it.key()] = rt;
    }
    return cfg;
}

const OutputSpec& DeployConfig::output(const std::string& name) const {
    for (const auto& o : outputs)
        if (o.name == name) return o;
    throw Error(path + ": model '" + model + "' has no output '" + name + "'");
}

const RuntimeFiles& DeployConfig::runtime(const std::string& name) const {
    auto it = runtimes.find(name);
    if (it == runtimes.end()) {
        std::string known;
        for (const auto& kv : runtimes) known += (known.empty() ? "" : ", ") + kv.first;
        throw Error(path + ": no runtime '" + name + "' (this export has: " + (known.empty() ? "none" : known) + ")");
    }
    return it->second;
}

}  // namespace pfpld
