// 8-bit images in memory and on disk, with no image library: binary and ASCII PPM/PGM (P2, P3, P5, P6, maxval
// 255) and uncompressed BMP (8-bit palette, 24-bit, 32-bit; bottom-up or top-down). Colour images are held as
// interleaved BGR, as OpenCV holds them; grey files are expanded to BGR as cv2.imread(IMREAD_COLOR) does.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pfpld {

struct Image {
    int width = 0;
    int height = 0;
    int channels = 3;                // 3: B, G, R interleaved; 1: grey
    std::vector<uint8_t> pixels;     // rows of width * channels bytes, no padding

    Image() = default;
    Image(int w, int h, int c) : width(w), height(h), channels(c), pixels(size_t(w) * h * c, 0) {}
    size_t row_bytes() const { return size_t(width) * channels; }
    const uint8_t* row(int y) const { return pixels.data() + size_t(y) * row_bytes(); }
    uint8_t* row(int y) { return pixels.data() + size_t(y) * row_bytes(); }
};

// By the file's content (not its extension); throws pfpld::Error naming the file and what was expected.
Image read_image(const std::string& path);
Image read_pnm(const std::string& path);
Image read_bmp(const std::string& path);
void write_ppm(const std::string& path, const Image& image);   // P6 (or P5 for grey)

}  // namespace pfpld
