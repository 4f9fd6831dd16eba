// The contract's crop and the network input, with exactly the Python side's arithmetic (pfpld/contract.py):
//  - crop_matrix: the square around the box, in double precision, term by term as PreprocessContract.crop_matrix;
//  - warp_affine: the Python side crops with cv2.warpAffine (INTER_LINEAR, BORDER_CONSTANT 0, uint8); this is that
//    definition written out: the inverse matrix as OpenCV computes it, coordinates in 1/1024 pixel rounded to 1/32,
//    integer bilinear weights summing to 2^15, (sum + 2^14) >> 15. tests/core_tests.cpp checks it byte for byte
//    against cv2 on random rotations, flips, scales and shears and on the contract's crops, on x86 and under qemu;
//  - packing: planar U8 at a given row stride (NNIE), float NCHW as (pixel - mean) * scale in float32.
// Build with -ffp-contract=off (the CMake project does): a fused multiply-add would change the rounding.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "pfpld/config.hpp"
#include "pfpld/image.hpp"

namespace pfpld {

struct Box {
    double x1 = 0, y1 = 0, x2 = 0, y2 = 0;
};

// 2x3 affine matrix [a b c; d e f]: (x, y) -> (a x + b y + c, d x + e y + f).
struct Affine {
    std::array<double, 6> m{};
    std::array<double, 2> apply(double x, double y) const { return {m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]}; }
    Affine inverse() const;
};

// "X1,Y1,X2,Y2" in pixels -> Box; `what` names where the text came from in the error ("--box", a file:line).
Box parse_box(const std::string& text, const std::string& what);
// Checks the box is not empty and overlaps the image (a box partly outside is fine: the crop is padded with zero).
void check_box(const Box& box, int image_width, int image_height);
// The box of an aligned face (a contract whose crop.box_source is "aligned"): the whole image, (0, 0, width,
// height), as PreprocessContract.aligned_box; the crop rule then squares it (side max) and resamples it.
Box aligned_box(const Image& image);
// Image pixels -> crop pixels. With context > 1 the crop keeps the pixel scale but covers context x the square.
Affine crop_matrix(const Contract& contract, const Box& box, double context = 1.0);
// dst(x, y) = src(M^-1 (x, y)), bilinear, zero outside: OpenCV's warpAffine on uint8, bit for bit.
Image warp_affine(const Image& src, const Affine& matrix, int out_width, int out_height);
// The contract crop (width() x height(), BGR like the image); `matrix` receives the matrix used.
Image crop_face(const Contract& contract, const Image& image, const Box& box, Affine* matrix = nullptr);

// Row stride in bytes rounded up to `align` (NNIE: 16 bytes for U8 images on Hi3516CV500/DV300, 32 on some SDKs).
size_t aligned_stride(size_t row_bytes, size_t align);
// The crop's three planes in `plane_order` (e.g. {"R","G","B"}), each `height` rows of `row_stride` bytes; the
// padding bytes of each row are set to zero. dst holds 3 * height * row_stride bytes.
void pack_planar_u8(const Image& crop_bgr, const std::vector<std::string>& plane_order, uint8_t* dst,
                    size_t row_stride);
// The network input: channels in the contract's colour order, (pixel - mean) * scale in float32, CHW.
void pack_float_chw(const Contract& contract, const Image& crop_bgr, float* dst);
std::vector<float> pack_float_chw(const Contract& contract, const Image& crop_bgr);

}  // namespace pfpld
