#include "pfpld/image.hpp"

#include <cctype>
#include <cstring>
#include <fstream>
#include <sstream>

#include "pfpld/error.hpp"

namespace pfpld {
namespace {

std::vector<uint8_t> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(path + ": cannot open (no such file, or not readable)");
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return bytes;
}

// PNM header tokens: whitespace separated, '#' comments to the end of the line.
class PnmTokens {
public:
    PnmTokens(const std::vector<uint8_t>& bytes, const std::string& path) : bytes_(bytes), path_(path) {}
    long number(const char* what) {
        skip();
        size_t start = pos_;
        long value = 0;
        while (pos_ < bytes_.size() && std::isdigit(bytes_[pos_])) {
            value = value * 10 + (bytes_[pos_++] - '0');
            if (value > 1000000) throw Error(path_ + ": PNM " + what + " is too large");
        }
        if (pos_ == start) throw Error(path_ + ": PNM header has no " + what + " (expected 'P5|P6 width height 255')");
        return value;
    }
    size_t after_header() {  // exactly one whitespace byte ends the header of a binary PNM
        if (pos_ >= bytes_.size() || !std::isspace(bytes_[pos_])) throw Error(path_ + ": PNM header not followed by whitespace");
        return pos_ + 1;
    }
    size_t pos() const { return pos_; }

private:
    void skip() {
        while (pos_ < bytes_.size()) {
            if (std::isspace(bytes_[pos_])) {
                ++pos_;
            } else if (bytes_[pos_] == '#') {
                while (pos_ < bytes_.size() && bytes_[pos_] != '\n') ++pos_;
            } else {
                break;
            }
        }
    }
    const std::vector<uint8_t>& bytes_;
    const std::string& path_;
    size_t pos_ = 2;
};

Image grey_to_bgr(const Image& grey) {
    Image out(grey.width, grey.height, 3);
    for (size_t i = 0; i < grey.pixels.size(); ++i) out.pixels[3 * i] = out.pixels[3 * i + 1] = out.pixels[3 * i + 2] = grey.pixels[i];
    return out;
}

uint32_t le32(const std::vector<uint8_t>& b, size_t at) {
    return uint32_t(b[at]) | uint32_t(b[at + 1]) << 8 | uint32_t(b[at + 2]) << 16 | uint32_t(b[at + 3]) << 24;
}
uint16_t le16(const std::vector<uint8_t>& b, size_t at) { return uint16_t(b[at] | b[at + 1] << 8); }

}  // namespace

Image read_pnm(const std::string& path) {
    std::vector<uint8_t> bytes = read_file(path);
    if (bytes.size() < 3 || bytes[0] != 'P' || (bytes[1] != '2' && bytes[1] != '3' && bytes[1] != '5' && bytes[1] != '6'))
        throw Error(path + ": not a PPM/PGM file (expected the magic P2, P3, P5 or P6)");
    const bool colour = bytes[1] == '3' || bytes[1] == '6';
    const bool ascii = bytes[1] == '2' || bytes[1] == '3';
    PnmTokens tokens(bytes, path);
    long width = tokens.number("width"), height = tokens.number("height"), maxval = tokens.number("maxval");
    if (width <= 0 || height <= 0) throw Error(path + ": PNM size " + std::to_string(width) + "x" + std::to_string(height) + " is empty");
    if (maxval != 255) throw Error(path + ": PNM maxval " + std::to_string(maxval) + ", expected 255 (8-bit)");
    const int channels = colour ? 3 : 1;
    Image image(int(width), int(height), channels);
    const size_t count = image.pixels.size();
    if (ascii) {
        for (size_t i = 0; i < count; ++i) {
            long v = tokens.number("sample");
            if (v > 255) throw Error(path + ": PNM sample " + std::to_string(v) + " above maxval 255");
            image.pixels[i] = uint8_t(v);
        }
    } else {
        size_t start = tokens.after_header();
        if (bytes.size() - start < count)
            throw Error(path + ": PNM data is truncated (" + std::to_string(bytes.size() - start) + " bytes, expected " +
                        std::to_string(count) + ")");
        std::memcpy(image.pixels.data(), bytes.data() + start, count);
    }
    if (!colour) return grey_to_bgr(image);
    for (size_t i = 0; i < count; i += 3) std::swap(image.pixels[i], image.pixels[i + 2]);  // RGB on disk -> BGR
    return image;
}

Image read_bmp(const std::string& path) {
    std::vector<uint8_t> b = read_file(path);
    if (b.size() < 54 || b[0] != 'B' || b[1] != 'M') throw Error(path + ": not a BMP file (expected the magic 'BM')");
    const uint32_t data_at = le32(b, 10), dib = le32(b, 14);
    if (dib < 40) throw Error(path + ": BMP header of " + std::to_string(dib) + " bytes (expected BITMAPINFOHEADER or newer)");
    const int32_t width = int32_t(le32(b, 18)), signed_height = int32_t(le32(b, 22));
    const uint16_t bpp = le16(b, 28);
    const uint32_t compression = le32(b, 30);
    if (compression != 0 && !(compression == 3 && bpp == 32))
        throw Error(path + ": BMP compression " + std::to_string(compression) + " (expected uncompressed)");
    if (bpp != 8 && bpp != 24 && bpp != 32) throw Error(path + ": BMP of " + std::to_string(bpp) + " bits per pixel (expected 8, 24 or 32)");
    if (width <= 0 || signed_height == 0) throw Error(path + ": BMP size is empty");
    const bool top_down = signed_height < 0;
    const int height = top_down ? -signed_height : signed_height;
    const size_t stride = (size_t(width) * bpp / 8 + 3) & ~size_t(3);
    if (data_at > b.size() || b.size() - data_at < stride * size_t(height))
        throw Error(path + ": BMP pixel data is truncated (expected " + std::to_string(stride * size_t(height)) + " bytes)");
    std::vector<uint8_t> palette;
    if (bpp == 8) {
        uint32_t colours = le32(b, 46);
        if (colours == 0) colours = 256;
        const size_t at = 14 + dib;
        if (colours > 256 || at + 4 * size_t(colours) > b.size()) throw Error(path + ": BMP palette is truncated");
        palette.assign(b.begin() + long(at), b.begin() + long(at + 4 * colours));
    }
    Image image(width, height, 3);
    for (int y = 0; y < height; ++y) {
        const uint8_t* src = b.data() + data_at + stride * size_t(top_down ? y : height - 1 - y);
        uint8_t* dst = image.row(y);
        for (int x = 0; x < width; ++x) {
            if (bpp == 8) {
                const size_t entry = size_t(src[x]) * 4;
                if (entry + 3 > palette.size()) throw Error(path + ": BMP pixel refers past the palette");
                std::memcpy(dst + 3 * x, palette.data() + entry, 3);
            } else {
                std::memcpy(dst + 3 * x, src + size_t(x) * (bpp / 8), 3);  // B, G, R (alpha dropped)
            }
        }
    }
    return image;
}

Image read_image(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(path + ": cannot open (no such file, or not readable)");
    char magic[2] = {0, 0};
    in.read(magic, 2);
    if (magic[0] == 'B' && magic[1] == 'M') return read_bmp(path);
    if (magic[0] == 'P') return read_pnm(path);
    throw Error(path + ": not a PPM, PGM or BMP file (this library reads no other format)");
}

void write_ppm(const std::string& path, const Image& image) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary);
        if (!out) throw Error(path + ": cannot write");
        out << (image.channels == 3 ? "P6" : "P5") << "\n" << image.width << " " << image.height << "\n255\n";
        std::vector<uint8_t> row(image.row_bytes());
        for (int y = 0; y < image.height; ++y) {
            std::memcpy(row.data(), image.row(y), row.size());
            if (image.channels == 3)
                for (size_t i = 0; i < row.size(); i += 3) std::swap(row[i], row[i + 2]);
            out.write(reinterpret_cast<const char*>(row.data()), long(row.size()));
        }
        if (!out) throw Error(path + ": write failed");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw Error(path + ": cannot rename the temporary file into place");
}

}  // namespace pfpld
