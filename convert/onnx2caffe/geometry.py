"""Window arithmetic of ONNX and Caffe 1.0 convolution / pooling, one spatial axis at a time. The converter
compares the two and emits a layer only when Caffe reads exactly the same input windows (and, for average
pooling, divides by the same counts) as ONNX; otherwise it refuses. Pure functions, no graph in sight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AxisWindows:
    """One spatial axis of a sliding-window op: input size, kernel extent (dilation included), stride and the
    ONNX begin / end padding."""
    size: int
    kernel: int
    stride: int
    pad_begin: int
    pad_end: int


def explicit_pads(auto_pad: str, size: int, kernel: int, stride: int, pads: tuple[int, int]) -> tuple[int, int]:
    """(begin, end) padding of one axis, resolving ONNX auto_pad the way the ONNX spec does."""
    if auto_pad in ("", "NOTSET"):
        return pads
    if auto_pad == "VALID":
        return 0, 0
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    small, large = total // 2, total - total // 2
    return (small, large) if auto_pad == "SAME_UPPER" else (large, small)


def caffe_conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe Convolution output size (floor, symmetric pad), `kernel` already dilated."""
    return (size + 2 * pad - kernel) // stride + 1


def caffe_deconv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return stride * (size - 1) + kernel - 2 * pad


def caffe_pool_out(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe 1.0 Pooling output size: ceil rounding, then the last window is dropped when it would start in
    the end padding (pooling_layer.cpp)."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def caffe_ave_divisors(axis: AxisWindows, out: int) -> list[int]:
    """Per-window divisor of Caffe AVE pooling along one axis with symmetric pad = pad_begin: the window is
    clipped to the padded extent, so padding counts (count_include_pad) but nothing past it."""
    p = axis.pad_begin
    return [min(i * axis.stride - p + axis.kernel, axis.size + p) - (i * axis.stride - p) for i in range(out)]


def onnx_ave_divisors(axis: AxisWindows, out: int, count_include_pad: bool) -> list[int]:
    """Per-window divisor of ONNX AveragePool along one axis (the spec's reference implementation)."""
    divisors = []
    for i in range(out):
        start = i * axis.stride - axis.pad_begin
        end = min(start + axis.kernel, axis.size + axis.pad_end)
        divisors.append(end - start if count_include_pad else min(end, axis.size) - max(start, 0))
    return divisors
