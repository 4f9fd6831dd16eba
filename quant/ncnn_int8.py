"""ncnn int8 without ncnn's C++ tools: what `ncnn2table` (calibration table) and `ncnn2int8` (int8 param + bin)
would write for the fp32 model of the export's ncnn stage, in ncnn's documented formats, run by the ncnn runtime.

Table (ncnn2table's text format), one line per entry, values separated by spaces:
    <layer>_param_0 s_0 s_1 ...   weight scales: per output channel (Convolution, InnerProduct) or per group
                                  (ConvolutionDepthWise); s = 127 / max|w| (31 / max|w| for 3x3 stride-1
                                  dilation-1 Convolution, whose int8 Winograd kernel needs 6-bit weights)
    <layer> s                     scale of the layer's input blob: 127 / threshold, the threshold chosen by
                                  KL divergence over a 2048-bin histogram of |x| (ncnn2table's default method)
A layer that reads a Softmax's output (a decode over probabilities, softmax_readers) gets no table entry and stays
fp32, as ncnn2int8 leaves any layer the table does not name. Calibration inputs are the calibration crops
preprocessed by the contract, which is what ncnn2table's mean, norm, shape and pixel options would do (mean =
contract mean, norm = contract scale, pixel = contract colour order).

int8 model (ncnn2int8): each quantised layer gets `8=2` (Convolution, InnerProduct) or `8=1`
(ConvolutionDepthWise) in the param; in the bin its weights become int8 (tag 0x000D4B38, then the int8 values
round(w * s) clamped to +-127, padded to 4 bytes), the fp32 bias follows, then the weight scales and the input
scale as raw fp32. A Convolution / ConvolutionDepthWise whose output feeds only such layers (directly or through
a Split) also gets the next layer's input scale (`8=102` / `8=101`, one more fp32 after the scales) so ncnn
hands int8 straight on ("fuse_requantize").
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convert.runtimes import NcnnLayer, NcnnRunner, read_ncnn_param
from pfpld.errors import ConversionError

INT8_TAG = 0x000D4B38
FP16_TAG = 0x01306B47
QUANTISED_TYPES = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
HISTOGRAM_BINS = 2048
TARGET_BINS = 128
NO_WEIGHT_TYPES = {"Input", "Split", "BinaryOp", "Pooling", "Concat", "Flatten", "Reshape", "ReLU", "Eltwise",
                   "Sigmoid", "Softmax", "Permute", "Crop", "Padding", "Interp", "Clip", "Dropout", "Noop",
                   "Squeeze", "ExpandDims", "Slice", "UnaryOp", "HardSigmoid", "HardSwish", "Swish"}


def raw_float_count(layer_type: str, params: dict[int, str]) -> int | None:
    """How many raw fp32 values (no tag) a layer that stays in float keeps in the bin: PReLU's slopes (0=num_slope);
    BatchNorm's slope, mean, var and bias (0=channels each: a BatchNorm no convolution absorbs, as in pre-activation
    ResNets); Scale's scales (0=scale_data_size) and its bias when 1=bias_term. None for a type this writer does not
    know to carry such weights."""
    if layer_type == "PReLU":
        return int(params.get(0, "0"))
    if layer_type == "BatchNorm":
        return 4 * int(params.get(0, "0"))
    if layer_type == "Scale" and int(params.get(0, "0")) >= 0:
        return int(params.get(0, "0")) * (2 if int(params.get(1, "0")) else 1)
    return None


def parse_params(text: str) -> dict[int, str]:
    out = {}
    for token in text.split():
        key, _, value = token.partition("=")
        out[int(key)] = value
    return out


def format_params(params: dict[int, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


@dataclass
class WeightedLayer:
    layer: NcnnLayer
    params: dict[int, str]
    weight: np.ndarray                  # float32, flat
    bias: np.ndarray | None
    num_output: int
    groups: int                         # ConvolutionDepthWise: group; else 1
    rows: int                           # how many scale rows: num_output, or group for depthwise

    @property
    def weight_rows(self) -> np.ndarray:
        return self.weight.reshape(self.rows, -1)


def _read_tagged(data: bytes, offset: int, count: int, where: str) -> tuple[np.ndarray, int]:
    tag = struct.unpack_from("<I", data, offset)[0]
    if tag == 0:
        end = offset + 4 + 4 * count
        return np.frombuffer(data[offset + 4:end], dtype="<f4").copy(), end
    if tag == FP16_TAG:
        size = (2 * count + 3) // 4 * 4
        return np.frombuffer(data[offset + 4:offset + 4 + 2 * count], dtype="<f2").astype(np.float32), \
            offset + 4 + size
    raise ConversionError(f"{where}: weights with tag {tag:#x}; expected an fp32 (tag 0) or fp16 ncnn model")


def read_weights(param: Path, bin_path: Path) -> tuple[list[NcnnLayer], dict[str, WeightedLayer], bytes]:
    """The layers of an fp32/fp16 ncnn model and the weights of its Convolution, ConvolutionDepthWise and
    InnerProduct layers (refusing any other layer type that carries weights)."""
    layers = read_ncnn_param(param)
    data = Path(bin_path).read_bytes()
    weighted: dict[str, WeightedLayer] = {}
    offset = 0
    for layer in layers:
        params = parse_params(layer.params)
        if layer.type in QUANTISED_TYPES:
            num_output = int(params.get(0, "0"))
            bias_term = int(params.get(1 if layer.type == "InnerProduct" else 5, "0"))
            size = int(params.get(2 if layer.type == "InnerProduct" else 6, "0"))
            if int(params.get(8, "0")):
                raise ConversionError(f"{param}: layer '{layer.name}' is already int8 (8={params[8]})")
            where = f"{bin_path} layer '{layer.name}'"
            weight, offset = _read_tagged(data, offset, size, where)
            bias = None
            if bias_term:
                bias = np.frombuffer(data[offset:offset + 4 * num_output], dtype="<f4").copy()
                offset += 4 * num_output
            groups = int(params.get(7, "1")) if layer.type == "ConvolutionDepthWise" else 1
            weighted[layer.name] = WeightedLayer(layer, params, weight, bias, num_output, groups,
                                                 groups if layer.type == "ConvolutionDepthWise" else num_output)
        elif raw_float_count(layer.type, params) is not None:
            offset += 4 * raw_float_count(layer.type, params)          # stays fp32: copied as it is
        elif layer.type not in NO_WEIGHT_TYPES:
            raise ConversionError(f"{param}: layer '{layer.name}' ({layer.type}) may carry weights; the int8 writer "
                                  f"handles {', '.join(QUANTISED_TYPES)}, PReLU, BatchNorm, Scale and weightless "
                                  f"layers only")
    if offset != len(data):
        raise ConversionError(f"{bin_path}: {len(data) - offset} bytes left after the last layer's weights: the "
                              f"param and bin do not match")
    return layers, weighted, data


# --- scales ----------------------------------------------------------------------------------------------------------
def is_winograd_conv(w: WeightedLayer) -> bool:
    p = w.params
    kw, kh = int(p.get(1, "0")), int(p.get(11, p.get(1, "0")))
    dw, dh = int(p.get(2, "1")), int(p.get(12, p.get(2, "1")))
    sw, sh = int(p.get(3, "1")), int(p.get(13, p.get(3, "1")))
    return w.layer.type == "Convolution" and (kw, kh, dw, dh, sw, sh) == (3, 3, 1, 1, 1, 1)


def weight_scales(w: WeightedLayer) -> np.ndarray:
    absmax = np.abs(w.weight_rows).max(axis=1).astype(np.float64)
    levels = 31.0 if is_winograd_conv(w) else 127.0
    return np.where(absmax > 0, levels / np.where(absmax > 0, absmax, 1.0), 1.0).astype(np.float32)


def kl_threshold_bin(histogram: np.ndarray, target_bins: int = TARGET_BINS, eps: float = 1e-4) -> int:
    """The clipping bin t (>= target_bins) minimising KL(P || Q): P is the histogram cut at t with everything
    beyond folded into its last bin (what clipping at t does), Q the histogram's first t bins averaged over
    target_bins equal levels and spread back evenly (what int8 can tell apart), without the folded mass. Both get
    eps added to every bin, as ncnn2table does; levels here have whole-bin edges (ncnn splits bins fractionally)."""
    hist = np.asarray(histogram, dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        return len(hist)
    hist = hist / total
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])      # tail[t] = mass at or beyond bin t
    best_t, best_kl = len(hist), math.inf
    for t in range(target_bins, len(hist) + 1):
        p = hist[:t].copy()
        p[t - 1] += tail[t]
        edges = np.floor(np.arange(target_bins) * t / target_bins).astype(int)
        lengths = np.diff(np.append(edges, t))
        q = np.repeat(np.add.reduceat(hist[:t], edges) / lengths, lengths)
        p, q = p + eps, q + eps
        kl = float(np.sum(p * np.log(p / q)))
        if kl < best_kl:
            best_kl, best_t = kl, t
    return best_t


@dataclass
class BlobStats:
    absmax: float = 0.0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS))

    def threshold(self) -> float:
        if self.absmax <= 0:
            return 1.0
        t = kl_threshold_bin(self.histogram)
        return (t + 0.5) * self.absmax / HISTOGRAM_BINS


def input_scales(runner: NcnnRunner, weighted: dict[str, WeightedLayer], x: np.ndarray) -> dict[str, float]:
    """127 / KL threshold of every quantised layer's input blob over the calibration inputs (fp32 model)."""
    bottoms = {name: w.layer.bottoms[0] for name, w in weighted.items()}
    # In graph order: ncnn's light-mode extractor frees a blob once its consumers ran, so a blob asked for after
    # a later one may be gone.
    order = [t for layer in runner.layers for t in layer.tops]
    blobs = sorted(set(bottoms.values()), key=order.index)
    values = [runner.run_intermediates(x[i:i + 1], blobs) for i in range(len(x))]
    stats = {}
    for blob in blobs:
        s = BlobStats(absmax=max(float(np.abs(v[blob]).max()) for v in values))
        if s.absmax > 0:
            for v in values:
                a = np.abs(v[blob].reshape(-1))
                a = a[a != 0]
                idx = np.minimum((a / s.absmax * HISTOGRAM_BINS).astype(int), HISTOGRAM_BINS - 1)
                s.histogram += np.bincount(idx, minlength=HISTOGRAM_BINS)
        stats[blob] = s
    thresholds = {blob: s.threshold() for blob, s in stats.items()}
    return {name: float(127.0 / thresholds[blob]) for name, blob in bottoms.items()}


# --- table, param, bin -------------------------------------------------------------------------------------------------
def table_text(weighted: dict[str, WeightedLayer], w_scales: dict[str, np.ndarray], in_scales: dict[str, float]) -> str:
    lines = [f"{name}_param_0 " + " ".join(f"{v:f}" for v in w_scales[name]) for name in weighted]
    lines += [f"{name} {in_scales[name]:f}" for name in weighted]
    return "\n".join(lines) + "\n"


def read_table(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(weight scales by layer, blob scales by layer) of an ncnn2table file, as ncnn2int8 reads it."""
    weights, blobs = {}, {}
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if not fields:
            continue
        values = np.array([float(v) for v in fields[1:]], dtype=np.float32)
        (weights if "_param_" in fields[0] else blobs)[fields[0].replace("_param_0", "") if "_param_" in fields[0]
                                                       else fields[0]] = values
    return weights, blobs


def int8_round(x: np.ndarray) -> np.ndarray:
    """C round() (half away from zero), clamped to +-127: ncnn's float2int8."""
    return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), -127, 127).astype(np.int8)


def requantize_targets(layers: list[NcnnLayer], quantised: set[str]) -> dict[str, str]:
    """producer conv -> the quantised consumer whose input scale becomes its output scale (ncnn2int8's
    fuse_requantize: conv -> conv, or conv -> Split -> convs only)."""
    consumer_of: dict[str, list[NcnnLayer]] = {}
    for layer in layers:
        for b in layer.bottoms:
            consumer_of.setdefault(b, []).append(layer)
    convs = ("Convolution", "ConvolutionDepthWise")
    out = {}
    for layer in layers:
        if layer.type not in convs or layer.name not in quantised:
            continue
        users = consumer_of.get(layer.tops[0], [])
        if len(users) != 1:
            continue
        user = users[0]
        if user.type in convs and user.name in quantised and len(user.bottoms) == 1:
            out[layer.name] = user.name
        elif user.type == "Split":
            branches = [consumer_of.get(t, []) for t in user.tops]
            if all(len(b) == 1 and b[0].type in convs and b[0].name in quantised and len(b[0].bottoms) == 1
                   for b in branches):
                out[layer.name] = branches[0][0].name
    return out


def write_int8_model(param: Path, bin_path: Path, table: Path, out_param: Path, out_bin: Path) -> dict:
    """ncnn2int8: the fp32 model + the table -> int8 param and bin. Returns what was quantised."""
    layers, weighted, data = read_weights(param, bin_path)
    w_scales, b_scales = read_table(table)
    quantised = {name for name in weighted if name in w_scales and name in b_scales}
    requant = requantize_targets(layers, quantised)
    lines = Path(param).read_text().splitlines()
    out_lines = lines[:2]
    out = bytearray()
    offset = 0
    for layer, line in zip(layers, lines[2:]):
        if layer.name not in weighted:
            raw = raw_float_count(layer.type, parse_params(layer.params))
            if raw:
                out += data[offset:offset + 4 * raw]
                offset += 4 * raw
            out_lines.append(line)
            continue
        w = weighted[layer.name]
        size = w.weight.size
        tag = struct.unpack_from("<I", data, offset)[0]
        end = offset + 4 + (4 * size if tag == 0 else (2 * size + 3) // 4 * 4)
        bias_bytes = 4 * w.num_output if w.bias is not None else 0
        if layer.name not in quantised:
            out += data[offset:end + bias_bytes]
            out_lines.append(line)
            offset = end + bias_bytes
            continue
        scales = w_scales[layer.name]
        if len(scales) != w.rows:
            raise ConversionError(f"{table}: {len(scales)} weight scales for layer '{layer.name}', expected {w.rows}")
        q = int8_round(w.weight_rows.astype(np.float64) * scales.astype(np.float64)[:, None]).reshape(-1)
        out += struct.pack("<I", INT8_TAG) + q.tobytes() + b"\0" * ((-size) % 4)
        if w.bias is not None:
            out += w.bias.astype("<f4").tobytes()
        out += scales.astype("<f4").tobytes() + b_scales[layer.name][:1].astype("<f4").tobytes()
        term = 1 if layer.type == "ConvolutionDepthWise" else 2
        if layer.name in requant:
            term += 100
            out += b_scales[requant[layer.name]][:1].astype("<f4").tobytes()
        params = dict(w.params)
        params[8] = str(term)
        head = line.split()
        n_in, n_out = int(head[2]), int(head[3])
        fixed = head[:4 + n_in + n_out]
        out_lines.append(" ".join(f"{t:<24}" if i < 2 else t for i, t in enumerate(fixed)) + " "
                         + format_params(params))
        offset = end + bias_bytes
    Path(out_param).write_text("\n".join(out_lines) + "\n")
    Path(out_bin).write_bytes(bytes(out))
    return {"quantised_layers": sorted(quantised), "requantized": requant,
            "float_layers": sorted(set(weighted) - quantised)}


# Layers that hand a blob on with its values unchanged: what lies between a Softmax and the layer reading it.
PASS_THROUGH_TYPES = ("Split", "Reshape", "Flatten", "Noop", "Dropout", "Squeeze", "ExpandDims")


def softmax_readers(layers: list[NcnnLayer], weighted: dict[str, WeightedLayer]) -> list[str]:
    """The weighted layers whose input is a Softmax's output, directly or through PASS_THROUGH_TYPES: a decode over
    probabilities (HopeNet's expectation of the bin values). They stay fp32 (no table entry): KL calibration clips
    a blob of probabilities where one is large, and such a face's decoded angle moved by up to 66 degrees (a
    HopeNet demo model, 3.4 degrees MAE over 129 faces); the layers cost a few multiply-adds."""
    producer = {top: layer for layer in layers for top in layer.tops}
    readers = []
    for name, w in weighted.items():
        source = producer.get(w.layer.bottoms[0])
        while source is not None and source.type in PASS_THROUGH_TYPES and source.bottoms:
            source = producer.get(source.bottoms[0])
        if source is not None and source.type == "Softmax":
            readers.append(name)
    return sorted(readers)


def make_int8(param: Path, bin_path: Path, names: dict, x: np.ndarray, out_dir: Path, stem: str,
              pixel: str, mean, norm) -> dict[str, Path]:
    """Calibration table + int8 param/bin + name map for the fp32 ncnn model (param, bin) of an export. Every
    Convolution, ConvolutionDepthWise and InnerProduct is in the table but the softmax_readers."""
    layers, weighted, _ = read_weights(param, bin_path)
    kept_float = softmax_readers(layers, weighted)
    weighted = {name: w for name, w in weighted.items() if name not in kept_float}
    runner = NcnnRunner(param, bin_path, names, threads=1)
    w_scales = {name: weight_scales(w) for name, w in weighted.items()}
    in_scales = input_scales(runner, weighted, x)
    table = out_dir / f"{stem}.ncnn.int8.table"
    table.write_text(table_text(weighted, w_scales, in_scales))
    out_param, out_bin = out_dir / f"{stem}.int8.ncnn.param", out_dir / f"{stem}.int8.ncnn.bin"
    info = write_int8_model(param, bin_path, table, out_param, out_bin)
    name_map = dict(names)
    name_map["int8"] = {"table": table.name, "calibration_images": int(len(x)),
                        "ncnn2table_options": {"mean": list(mean), "norm": [norm] * 3, "pixel": pixel,
                                               "shape": list(x.shape[:1:-1]) + [x.shape[1]], "method": "kl"},
                        **info, "softmax_readers_float": kept_float}
    names_path = out_dir / f"{stem}.int8.ncnn.names.json"
    names_path.write_text(json.dumps(name_map, indent=1) + "\n")
    return {"ncnn-int8.param": out_param, "ncnn-int8.bin": out_bin, "ncnn-int8.table": table,
            "ncnn-int8.names": names_path}
