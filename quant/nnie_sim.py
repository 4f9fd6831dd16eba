"""NNIE-style quantisation on the PC: the Caffe graph handed to nnie_mapper, run layer by layer in numpy, with the
NNIE's per-layer logarithmic quantisation of weights and layer inputs. Part (a) of the int8 estimate before the
board (quant/int8.py); its float mode is checked against OpenCV's Caffe reader.

The log format (FACTS section 6, MQBench's NNIE documentation): a magnitude is coded as an integer in
log2 steps of 1/F, relative to a per-layer zero point z = round(F log2 c) - M fixed by the clipping value c,
sign-magnitude:
    x >= 2^(z/F - 1)         ->  2^((clamp(round(F log2 x) - z, 0, M) + z) / F)
    x <  -2^((z+1)/F - 1)    -> -2^((clamp(round(F log2 -x) - z, 1, M) + z) / F)
    otherwise                ->  0
8 bit is the "1.3.4" code (F = 16 steps per octave, M = 127); 16 bit is the "1.5.7" code (F = 128, M = 4095),
the format the mapper's dumps name for 16-bit data. Outputs of the network (report blobs) are S32 fixed point
with 12 fractional bits (value = s32 / 4096), as the board returns them.

What is modelled, and why: every compute layer (Convolution, InnerProduct, Pooling, Eltwise, Concat, ...)
quantises its inputs with one range per layer (the largest |value| any of its inputs reached on the
calibration set) and its weights with one range per layer (max |w|); biases and accumulation stay exact.
ReLU, Flatten and Reshape do not re-quantise (the mapper fuses them). The network input is U8 pixels times
data_scale, exactly representable, and is not re-quantised. A layer whose name ends in `_hp` (compile_mode 2),
or every layer under compile_mode 1, uses the 16-bit code. The mapper's own calibration algorithm is not
public; the maximum is what MQBench's NNIE observer uses.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convert.onnx2caffe import caffe_pb2, read_caffe
from convert.onnx2caffe.geometry import caffe_pool_out
from convert.runtimes import Runner
from pfpld.errors import ConversionError, one_line

HP_SUFFIX = "_hp"
OUTPUT_FRACTION_BITS = 12          # report blobs: S32 with 12 fractional bits (value = s32 / 4096)
QUANTISED_INPUT_TYPES = {"Convolution", "Deconvolution", "InnerProduct", "Pooling", "Eltwise", "Concat", "Scale",
                         "BatchNorm", "PReLU"}
WEIGHTED_TYPES = {"Convolution", "Deconvolution", "InnerProduct"}


# --- the log quantiser ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogFormat:
    name: str
    int_bits: int                  # integer part of the log2 code
    frac_bits: int                 # fractional part of the log2 code

    @property
    def steps_per_octave(self) -> int:
        return 1 << self.frac_bits

    @property
    def max_code(self) -> int:
        return (1 << (self.int_bits + self.frac_bits)) - 1


LOG8 = LogFormat("int8", 3, 4)       # 1.3.4: 16 steps per octave, codes 0..127
LOG16 = LogFormat("int16", 5, 7)     # 1.5.7: 128 steps per octave, codes 0..4095


def log_zero_point(c: float, fmt: LogFormat = LOG8) -> int:
    """z = round(F log2 c) - M: the code 0 then stands for 2^(z/F), the smallest magnitude kept."""
    return int(np.rint(fmt.steps_per_octave * np.log2(float(c)))) - fmt.max_code


def log_quantize(x, c: float, fmt: LogFormat = LOG8) -> np.ndarray:
    """x fake-quantised with clipping value c (values dequantised back to float64)."""
    x = np.asarray(x, dtype=np.float64)
    if not c > 0:
        return np.zeros_like(x)
    f, m = fmt.steps_per_octave, fmt.max_code
    z = log_zero_point(c, fmt)
    out = np.zeros_like(x)
    positive = x >= 2.0 ** (z / f - 1.0)
    negative = x < -(2.0 ** ((z + 1) / f - 1.0))
    if positive.any():
        code = np.rint(f * np.log2(x[positive])) - z
        out[positive] = 2.0 ** ((np.clip(code, 0, m) + z) / f)
    if negative.any():
        code = np.rint(f * np.log2(-x[negative])) - z
        out[negative] = -(2.0 ** ((np.clip(code, 1, m) + z) / f))
    return out


def s32_output(x: np.ndarray) -> np.ndarray:
    """What the board returns for a report blob: round(x * 4096) as S32, divided by 4096."""
    scale = float(1 << OUTPUT_FRACTION_BITS)
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * scale), -2 ** 31, 2 ** 31 - 1) / scale


# --- the layers, in numpy --------------------------------------------------------------------------------------
def _pair(repeated, single_h, single_w, default: int) -> tuple[int, int]:
    if single_h or single_w:
        return int(single_h), int(single_w)
    values = list(repeated)
    if not values:
        return default, default
    return (int(values[0]), int(values[-1]))


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride, pad, dilation,
           group: int) -> np.ndarray:
    """Caffe Convolution (symmetric padding, floor output size), batched, grouped and depthwise."""
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else x

    def tap(src, i, j):
        return src[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]

    if group == c == o and cg == 1:       # depthwise: one multiply-add per tap
        out = np.zeros((n, c, oh, ow), dtype=x.dtype)
        product = np.empty_like(out)
        for i in range(kh):
            for j in range(kw):
                out += np.multiply(tap(xp, i, j), weight[:, 0, i, j][None, :, None, None], out=product)
    else:   # torch's float64 convolution (im2col + BLAS): 10-20 x numpy's, equal to 1e-13; slow for depthwise
        out = torch.nn.functional.conv2d(torch.from_numpy(np.ascontiguousarray(xp, dtype=np.float64)),
                                         torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float64)),
                                         stride=(sh, sw), dilation=(dh, dw), groups=group).numpy()
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


def pool2d(x: np.ndarray, method: int, kernel, stride, pad) -> np.ndarray:
    """Caffe 1.0 Pooling: ceil output size, AVE divides by the window clipped to the padded extent."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    oh, ow = caffe_pool_out(h, kh, sh, ph), caffe_pool_out(w, kw, sw, pw)
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    for i in range(oh):
        h0 = i * sh - ph
        h1 = min(h0 + kh, h + ph)
        for j in range(ow):
            w0 = j * sw - pw
            w1 = min(w0 + kw, w + pw)
            window = x[:, :, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w)]
            if method == caffe_pb2.PoolingParameter.MAX:
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                out[:, :, i, j] = window.sum(axis=(2, 3)) / ((h1 - h0) * (w1 - w0))
    return out


def _canonical_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@dataclass
class CaffeLayer:
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: caffe_pb2.LayerParameter = field(repr=False)
    blobs: list[np.ndarray] = field(default_factory=list, repr=False)


class CaffeGraph:
    """A Caffe 1.0 prototxt + caffemodel as a list of layers that numpy can run (the layer set our converter
    writes, plus BatchNorm / Scale / Softmax / Sigmoid / Dropout)."""

    SUPPORTED = {"Input", "Convolution", "ReLU", "PReLU", "Sigmoid", "Softmax", "Eltwise", "Pooling", "Flatten",
                 "Reshape", "Concat", "InnerProduct", "BatchNorm", "Scale", "Dropout"}

    def __init__(self, prototxt: Path, caffemodel: Path):
        files = read_caffe(prototxt, caffemodel)
        self.prototxt = Path(prototxt)
        self.layers: list[CaffeLayer] = []
        for p in files.net.layer:
            if p.type not in self.SUPPORTED:
                raise ConversionError(f"{prototxt}: layer '{p.name}' ({p.type}) is not run by the NNIE simulation "
                                      f"(supported: {', '.join(sorted(self.SUPPORTED))})")
            blobs = [b.astype(np.float64) for b in files.weights.get(p.name, [])]
            self.layers.append(CaffeLayer(p.name, p.type, list(p.bottom), list(p.top), p, blobs))
        inputs = [layer for layer in self.layers if layer.type == "Input"]
        if len(inputs) != 1:
            raise ConversionError(f"{prototxt}: {len(inputs)} Input layers; the simulation takes exactly one")
        self.input_blob = inputs[0].tops[0]
        consumers: dict[str, list[CaffeLayer]] = {}
        for layer in self.layers:
            for b in layer.bottoms:
                consumers.setdefault(b, []).append(layer)
        produced = [t for layer in self.layers for t in layer.tops]
        self.graph_outputs = [t for t in produced if t not in consumers]
        self._weight_cache: dict[tuple[str, str], np.ndarray] = {}

    def quantised_layers(self) -> list[CaffeLayer]:
        return [layer for layer in self.layers if layer.type in QUANTISED_INPUT_TYPES]

    def forward(self, x: np.ndarray, plan: "NniePlan | None" = None, observe: dict | None = None,
                keep: set[str] | None = None) -> dict[str, np.ndarray]:
        """Run the net on an NCHW batch. With `plan`, weights and layer inputs are log-quantised and the graph
        outputs rounded as S32/4096; with `observe` (a dict), the largest |input| of every quantised layer is
        accumulated into it (the calibration pass). Returns the graph outputs (and the blobs named in keep)."""
        blobs: dict[str, np.ndarray] = {}
        keep = set(keep or ())
        remaining = {b: sum(b in layer.bottoms for layer in self.layers) for layer in self.layers
                     for b in layer.bottoms}
        for layer in self.layers:
            if layer.type == "Input":
                blobs[layer.tops[0]] = np.asarray(x, dtype=np.float64)
                continue
            inputs = [blobs[b] for b in layer.bottoms]
            if layer.type in QUANTISED_INPUT_TYPES:
                if observe is not None:
                    peak = max(float(np.abs(v).max()) if v.size else 0.0 for v in inputs)
                    observe[layer.name] = max(observe.get(layer.name, 0.0), peak)
                if plan is not None:
                    fmt = plan.format_of(layer.name)
                    c = plan.input_range(layer.name)
                    inputs = [v if b == self.input_blob else log_quantize(v, c, fmt)
                              for b, v in zip(layer.bottoms, inputs)]
            weights = layer.blobs
            if plan is not None and layer.type in WEIGHTED_TYPES and weights:
                weights = [self._quantised_weight(layer, plan.format_of(layer.name))] + weights[1:]
            outputs = self._run_layer(layer, inputs, weights)
            for top, value in zip(layer.tops, outputs):
                if plan is not None and top in self.graph_outputs:
                    value = s32_output(value)
                blobs[top] = value
            for b in layer.bottoms:          # free what no later layer reads
                remaining[b] -= 1
                if remaining[b] == 0 and b not in keep and b not in self.graph_outputs:
                    blobs.pop(b, None)
        return {name: blobs[name] for name in self.graph_outputs + sorted(keep - set(self.graph_outputs))}

    def _quantised_weight(self, layer: CaffeLayer, fmt: LogFormat) -> np.ndarray:
        """The layer's weight log-quantised to its own largest |w| (computed once per format)."""
        key = (layer.name, fmt.name)
        if key not in self._weight_cache:
            w = layer.blobs[0]
            self._weight_cache[key] = log_quantize(w, float(np.abs(w).max()), fmt)
        return self._weight_cache[key]

    def _run_layer(self, layer: CaffeLayer, inputs: list[np.ndarray], weights: list[np.ndarray]) -> list[np.ndarray]:
        p, t = layer.param, layer.type
        x = inputs[0]
        if t == "Convolution":
            cp = p.convolution_param
            kernel = _pair(cp.kernel_size, cp.kernel_h, cp.kernel_w, 1)
            stride = _pair(cp.stride, cp.stride_h, cp.stride_w, 1)
            pad = _pair(cp.pad, cp.pad_h, cp.pad_w, 0)
            dilation = _pair(cp.dilation, 0, 0, 1)
            bias = weights[1] if cp.bias_term and len(weights) > 1 else None
            weight = weights[0].reshape(cp.num_output, -1, *kernel)
            return [conv2d(x, weight, bias, stride, pad, dilation, cp.group)]
        if t == "InnerProduct":
            ip = p.inner_product_param
            axis = _canonical_axis(ip.axis, x.ndim)
            flat = x.reshape(*x.shape[:axis], -1)
            weight = weights[0].reshape(ip.num_output, -1) if not ip.transpose else weights[0].reshape(-1,
                                                                                                      ip.num_output).T
            y = flat @ weight.T
            if ip.bias_term and len(weights) > 1:
                y = y + weights[1].reshape(-1)
            return [y]
        if t == "ReLU":
            slope = p.relu_param.negative_slope
            return [np.where(x > 0, x, x * slope) if slope else np.maximum(x, 0.0)]
        if t == "PReLU":
            slope = weights[0].reshape(-1)
            slope = slope.reshape(1, -1, *([1] * (x.ndim - 2))) if slope.size > 1 else slope.reshape(())
            return [np.where(x > 0, x, x * slope)]
        if t == "Sigmoid":
            return [1.0 / (1.0 + np.exp(-x))]
        if t == "Softmax":
            axis = _canonical_axis(p.softmax_param.axis, x.ndim)
            e = np.exp(x - x.max(axis=axis, keepdims=True))
            return [e / e.sum(axis=axis, keepdims=True)]
        if t == "Eltwise":
            ep = p.eltwise_param
            if ep.operation == caffe_pb2.EltwiseParameter.PROD:
                return [np.prod(np.stack(inputs), axis=0)]
            if ep.operation == caffe_pb2.EltwiseParameter.MAX:
                return [np.max(np.stack(inputs), axis=0)]
            coeff = list(ep.coeff) or [1.0] * len(inputs)
            return [sum(cf * v for cf, v in zip(coeff, inputs))]
        if t == "Pooling":
            pp = p.pooling_param
            if pp.global_pooling:
                kernel, stride, pad = x.shape[2:], (1, 1), (0, 0)
            else:
                kernel = _pair([pp.kernel_size] if pp.HasField("kernel_size") else [], pp.kernel_h, pp.kernel_w, 1)
                stride = _pair([pp.stride] if pp.HasField("stride") else [], pp.stride_h, pp.stride_w, 1)
                pad = _pair([pp.pad] if pp.HasField("pad") else [], pp.pad_h, pp.pad_w, 0)
            return [pool2d(x, pp.pool, kernel, stride, pad)]
        if t == "Flatten":
            fp = p.flatten_param
            a, e = _canonical_axis(fp.axis, x.ndim), _canonical_axis(fp.end_axis, x.ndim)
            return [x.reshape(*x.shape[:a], -1, *x.shape[e + 1:])]
        if t == "Reshape":
            rp = p.reshape_param
            dims = [x.shape[i] if d == 0 else int(d) for i, d in enumerate(rp.shape.dim)]
            return [x.reshape(dims)]
        if t == "Concat":
            return [np.concatenate(inputs, axis=_canonical_axis(p.concat_param.axis, x.ndim))]
        if t == "BatchNorm":
            mean, var, factor = weights[0], weights[1], float(weights[2].reshape(-1)[0]) if len(weights) > 2 else 1.0
            factor = 1.0 / factor if factor != 0 else 0.0
            shape = (1, -1) + (1,) * (x.ndim - 2)
            return [(x - (mean * factor).reshape(shape)) / np.sqrt((var * factor).reshape(shape)
                                                                  + p.batch_norm_param.eps)]
        if t == "Scale":
            shape = (1, -1) + (1,) * (x.ndim - 2)
            y = x * weights[0].reshape(shape)
            if p.scale_param.bias_term and len(weights) > 1:
                y = y + weights[1].reshape(shape)
            return [y]
        if t == "Dropout":
            return [x]
        raise ConversionError(f"layer '{layer.name}' ({t}) is not run by the NNIE simulation")


# --- the plan: which layer runs at which precision, with which input range ---------------------------------------
PRECISIONS = {"int8": 0, "int16": 1, "mixed": 2}        # --precision -> nnie_mapper compile_mode


@dataclass
class NniePlan:
    precision: str                                  # int8 | int16 | mixed
    input_ranges: dict[str, float]                  # quantised layer -> clipping value c of its inputs
    hp_layers: frozenset[str] = frozenset()         # 16-bit layers under `mixed` (names with the _hp suffix)

    def format_of(self, layer: str) -> LogFormat:
        if self.precision == "int16" or (self.precision == "mixed" and layer in self.hp_layers):
            return LOG16
        return LOG8

    def input_range(self, layer: str) -> float:
        try:
            return self.input_ranges[layer]
        except KeyError:
            raise ConversionError(f"no calibrated input range for layer '{layer}': recalibrate (pfpld export "
                                  f"--target nnie --calib DIR)") from None


def calibrate_ranges(graph: CaffeGraph, x: np.ndarray, batch: int = 16) -> dict[str, float]:
    """Largest |input| of every quantised layer over the calibration inputs (float forward passes)."""
    observed: dict[str, float] = {}
    for i in range(0, len(x), batch):
        graph.forward(x[i:i + batch], observe=observed)
    return observed


def hp_layers_of(graph: CaffeGraph) -> frozenset[str]:
    return frozenset(layer.name for layer in graph.layers if layer.name.endswith(HP_SUFFIX))


def write_ranges(path: Path, ranges: dict[str, float], n_images: int, source: str) -> None:
    from pfpld.fileio import write_json_atomic
    write_json_atomic(path, {"format": "pfpld-nnie-ranges", "method": "max |layer input| over the calibration set",
                             "images": n_images, "calibration": source, "input_ranges": ranges})


def read_ranges(path: Path) -> dict[str, float]:
    try:
        data = json.loads(Path(path).read_text())
        return {str(k): float(v) for k, v in data["input_ranges"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConversionError(f"{path}: not a pfpld NNIE ranges file ({one_line(exc)})") from None


class NnieSimRunner(Runner):
    """The NNIE simulation as a Runner: outputs by the model spec's names (through the NNIE name map)."""
    backend = "nnie-sim"

    def __init__(self, graph: CaffeGraph, outputs: dict[str, str], plan: NniePlan | None, batch: int = 16):
        self.graph, self.outputs, self.plan, self.batch = graph, dict(outputs), plan, batch
        self.output_names = list(self.outputs)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by spec name. An output that later layers also read (a _report blob) is kept from the forward
        pass and, as the board reports it, rounded to S32 / 4096 (the layers after it read the unrounded value)."""
        keep = set(self.outputs.values())
        parts = [self.graph.forward(x[i:i + self.batch], self.plan, keep=keep) for i in range(0, len(x), self.batch)]
        out = {}
        for name, blob in self.outputs.items():
            value = np.concatenate([p[blob] for p in parts])
            if self.plan is not None and blob not in self.graph.graph_outputs:
                value = s32_output(value)
            out[name] = value.astype(np.float32)
        return out

    def _run_one(self, x1, names):
        out = self.run(x1)
        return {n: out[n] for n in names}
