#include "pfpld/preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "pfpld/error.hpp"

namespace pfpld {
namespace {

// OpenCV's fixed-point constants for bilinear warps on 8-bit images (imgproc: AB_BITS, INTER_BITS,
// INTER_REMAP_COEF_BITS).
constexpr int kAbBits = 10;                       // sub-pixel bits of the running coordinates
constexpr int kAbScale = 1 << kAbBits;
constexpr int kInterBits = 5;                     // 32 interpolation positions per pixel
constexpr int kInterTab = 1 << kInterBits;
constexpr int kCoefBits = 15;                     // bilinear weights sum to 1 << 15
constexpr int kRoundDelta = kAbScale / kInterTab / 2;

// cvRound: nearest, ties to even (the default rounding mode).
inline int round_int(double v) { return int(std::lrint(v)); }

inline int saturate_short(int v) {
    return std::min<int>(std::max<int>(v, std::numeric_limits<int16_t>::min()), std::numeric_limits<int16_t>::max());
}

std::string box_text(const Box& b) {
    std::ostringstream s;
    s << b.x1 << "," << b.y1 << "," << b.x2 << "," << b.y2;
    return s.str();
}

int bgr_index(const std::string& plane) {
    if (plane == "B") return 0;
    if (plane == "G") return 1;
    if (plane == "R") return 2;
    throw Error("plane '" + plane + "': expected B, G or R");
}

}  // namespace

Affine Affine::inverse() const {
    const double det = m[0] * m[4] - m[1] * m[3];
    if (det == 0) throw Error("affine matrix is singular");
    const double a = m[4] / det, b = -m[1] / det, d = -m[3] / det, e = m[0] / det;
    return Affine{{a, b, -(a * m[2] + b * m[5]), d, e, -(d * m[2] + e * m[5])}};
}

Box parse_box(const std::string& text, const std::string& what) {
    Box b;
    char c1 = 0, c2 = 0, c3 = 0;
    std::istringstream in(text);
    if (!(in >> b.x1 >> c1 >> b.y1 >> c2 >> b.x2 >> c3 >> b.y2) || c1 != ',' || c2 != ',' || c3 != ',' || !in.eof() ||
        !(b.x2 > b.x1 && b.y2 > b.y1))
        throw Error(what + " '" + text + "': expected X1,Y1,X2,Y2 in pixels with X1 < X2 and Y1 < Y2");
    return b;
}

void check_box(const Box& box, int image_width, int image_height) {
    if (!(box.x2 > box.x1 && box.y2 > box.y1))
        throw Error("face box " + box_text(box) + " is empty: expected x1 < x2 and y1 < y2");
    if (box.x2 <= 0 || box.y2 <= 0 || box.x1 >= image_width || box.y1 >= image_height)
        throw Error("face box " + box_text(box) + " does not overlap the " + std::to_string(image_width) + "x" +
                    std::to_string(image_height) + " image (expected x1 < width, y1 < height, x2 > 0 and y2 > 0)");
}

Box aligned_box(const Image& image) { return Box{0.0, 0.0, double(image.width), double(image.height)}; }

Affine crop_matrix(const Contract& contract, const Box& box, double context) {
    if (!(box.x2 > box.x1 && box.y2 > box.y1))
        throw Error("face box " + box_text(box) + " is empty: expected x1 < x2 and y1 < y2");
    // Term by term as CropRule.square and PreprocessContract.crop_matrix (the same operations in the same order
    // give the same doubles: the tests compare the matrices bit for bit).
    const CropRule& rule = contract.crop;
    double x1 = box.x1, y1 = box.y1, x2 = box.x2, y2 = box.y2;
    if (rule.loose_k != 0) {   // the far corners grow with the box already widened by the near ones
        const double k = rule.loose_k;
        x1 -= 0.6 * k * (x2 - x1);
        y1 -= 2.0 * k * (y2 - y1);
        x2 += 0.6 * k * (x2 - x1);
        y2 += 0.6 * k * (y2 - y1);
    }
    // a rectangular input: the window of its aspect (side = its height); aspect 1 gives exactly max(w, h) or min
    const double aspect = double(contract.width()) / double(contract.height());
    const double w = (x2 - x1) / aspect, h = y2 - y1;
    const double side = rule.expand * (rule.side == "min" ? std::min(w, h) : std::max(w, h));
    const double cx = (x1 + x2) / 2.0;
    const double cy = (y1 + y2) / 2.0 + rule.shift_y * side;
    const double s = double(contract.height()) / side;
    const double out_x = double(contract.width()) * context, out_y = double(contract.height()) * context;
    return Affine{{s, 0.0, out_x / 2.0 - s * cx, 0.0, s, out_y / 2.0 - s * cy}};
}

Image warp_affine(const Image& src, const Affine& matrix, int out_width, int out_height) {
    if (out_width <= 0 || out_height <= 0) throw Error("warp_affine: empty output size");
    // The inverse map, computed as cv::warpAffine does (same operations, same order).
    double M[6];
    std::copy(matrix.m.begin(), matrix.m.end(), M);
    double D = M[0] * M[4] - M[1] * M[3];
    D = D != 0 ? 1. / D : 0;
    const double A11 = M[4] * D, A22 = M[0] * D;
    M[0] = A11;
    M[1] *= -D;
    M[3] *= -D;
    M[4] = A22;
    const double b1 = -M[0] * M[2] - M[1] * M[5];
    const double b2 = -M[3] * M[2] - M[4] * M[5];
    M[2] = b1;
    M[5] = b2;

    std::vector<int> adelta(static_cast<size_t>(out_width)), bdelta(static_cast<size_t>(out_width));
    for (int x = 0; x < out_width; ++x) {
        adelta[size_t(x)] = round_int(M[0] * x * kAbScale);
        bdelta[size_t(x)] = round_int(M[3] * x * kAbScale);
    }
    const int channels = src.channels;
    Image dst(out_width, out_height, channels);
    const long width = src.width, height = src.height;
    for (int y = 0; y < out_height; ++y) {
        const int X0 = round_int((M[1] * y + M[2]) * kAbScale) + kRoundDelta;
        const int Y0 = round_int((M[4] * y + M[5]) * kAbScale) + kRoundDelta;
        uint8_t* out = dst.row(y);
        for (int x = 0; x < out_width; ++x) {
            const int X = (X0 + adelta[size_t(x)]) >> (kAbBits - kInterBits);
            const int Y = (Y0 + bdelta[size_t(x)]) >> (kAbBits - kInterBits);
            const long sx = saturate_short(X >> kInterBits), sy = saturate_short(Y >> kInterBits);
            const int fx = X & (kInterTab - 1), fy = Y & (kInterTab - 1);
            // Weights (1 - fy, fy) x (1 - fx, fx) in units of 2^-15: exact integers for 32 positions.
            const int w[4] = {(kInterTab - fy) * (kInterTab - fx) * 32, (kInterTab - fy) * fx * 32,
                              fy * (kInterTab - fx) * 32, fy * fx * 32};
            uint8_t* o = out + size_t(x) * channels;
            if (sx >= 0 && sy >= 0 && sx + 1 < width && sy + 1 < height) {   // all four taps inside
                const uint8_t* p0 = src.row(int(sy)) + sx * channels;
                const uint8_t* p1 = p0 + src.row_bytes();
                auto tap = [&](int c) {
                    const int sum = p0[c] * w[0] + p0[c + channels] * w[1] + p1[c] * w[2] + p1[c + channels] * w[3];
                    return uint8_t(std::min((sum + (1 << (kCoefBits - 1))) >> kCoefBits, 255));
                };
                if (channels == 3) {        // the usual case, unrolled
                    o[0] = tap(0);
                    o[1] = tap(1);
                    o[2] = tap(2);
                } else {
                    for (int c = 0; c < channels; ++c) o[c] = tap(c);
                }
                continue;
            }
            const long ys[2] = {sy, sy + 1}, xs[2] = {sx, sx + 1};
            for (int c = 0; c < channels; ++c) {
                int sum = 0;
                for (int k = 0; k < 4; ++k) {
                    const long yy = ys[k >> 1], xx = xs[k & 1];
                    if (yy >= 0 && yy < height && xx >= 0 && xx < width)   // taps outside: the border value 0
                        sum += int(src.row(int(yy))[xx * channels + c]) * w[k];
                }
                const int v = (sum + (1 << (kCoefBits - 1))) >> kCoefBits;
                o[c] = uint8_t(std::min(std::max(v, 0), 255));
            }
        }
    }
    return dst;
}

Image crop_face(const Contract& contract, const Image& image, const Box& box, Affine* matrix) {
    check_box(box, image.width, image.height);
    const Affine m = crop_matrix(contract, box);
    if (matrix) *matrix = m;
    return warp_affine(image, m, contract.width(), contract.height());
}

size_t aligned_stride(size_t row_bytes, size_t align) {
    if (align == 0) return row_bytes;
    return (row_bytes + align - 1) / align * align;
}

void pack_planar_u8(const Image& crop_bgr, const std::vector<std::string>& plane_order, uint8_t* dst, size_t row_stride) {
    if (crop_bgr.channels != 3) throw Error("pack_planar_u8: expected a 3-channel BGR crop");
    if (plane_order.size() != 3) throw Error("pack_planar_u8: expected 3 planes");
    if (row_stride < size_t(crop_bgr.width)) throw Error("pack_planar_u8: row stride shorter than the row");
    const size_t plane_bytes = row_stride * size_t(crop_bgr.height);
    for (size_t p = 0; p < 3; ++p) {
        const int c = bgr_index(plane_order[p]);
        for (int y = 0; y < crop_bgr.height; ++y) {
            uint8_t* out = dst + p * plane_bytes + size_t(y) * row_stride;
            const uint8_t* in = crop_bgr.row(y);
            for (int x = 0; x < crop_bgr.width; ++x) out[x] = in[3 * x + c];
            std::fill(out + crop_bgr.width, out + row_stride, uint8_t(0));
        }
    }
}

void pack_float_chw(const Contract& contract, const Image& crop_bgr, float* dst) {
    if (crop_bgr.channels != 3) throw Error("pack_float_chw: expected a 3-channel BGR crop");
    const bool rgb = contract.color_order == "RGB";
    const float scale = float(contract.scale);
    const size_t plane = size_t(crop_bgr.width) * crop_bgr.height;
    for (int c = 0; c < 3; ++c) {
        const int src_c = rgb ? 2 - c : c;
        const float mean = float(contract.mean[size_t(c)]);
        float* out = dst + size_t(c) * plane;
        for (int y = 0; y < crop_bgr.height; ++y) {
            const uint8_t* in = crop_bgr.row(y);
            for (int x = 0; x < crop_bgr.width; ++x) out[size_t(y) * crop_bgr.width + x] = (float(in[3 * x + src_c]) - mean) * scale;
        }
    }
}

std::vector<float> pack_float_chw(const Contract& contract, const Image& crop_bgr) {
    std::vector<float> out(3 * size_t(crop_bgr.width) * crop_bgr.height);
    pack_float_chw(contract, crop_bgr, out.data());
    return out;
}

}  // namespace pfpld
