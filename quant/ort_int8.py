"""Reference int8: onnxruntime static quantisation of the simplified ONNX file, QDQ format (opset >= 13),
weights int8 per output channel limited to [-64, 64] (onnxruntime's reduce_range), activations uint8 (default) or
int8, ranges by MinMax over the calibration set.

uint8 activations with int8 weights is the pairing onnxruntime's x86 kernels run fastest (u8s8 integer GEMM, VNNI
where the CPU has it); int8 activations fall back to slower paths on x86. `pfpld bench` times the default (u8).

Why the weights stop at 64: on x86 CPUs without VNNI (AVX2 only) onnxruntime's u8s8 kernels add each pair of u8 x s8
products in 16 bits, which saturates past 32,767. With full-range weights (2 x 255 x 127 = 64,770) a bright input
and a channel's largest weights give wrong sums, so the same file lost accuracy on those CPUs only (landmark5's demo:
+0.88 NME points with the integer kernels against -0.19 for the same QDQ graph evaluated in float; int8 activations
saturated worse). With |w| <= 64 every pair fits (2 x 255 x 64 = 32,640): the integer kernels compute what the QDQ
graph says on every CPU, VNNI or not, for one bit of weight precision (PFPLD's demo: +0.23 NME points against +0.15
for full-range weights evaluated without saturation), at the same speed. u8 weights (u8u8 kernels) do not saturate
either but ran 1.1-1.4 x slower on AVX2.

Why a Conv output read only by PRelu stays float: onnxruntime has no integer PReLU, so a QDQ pair would sit on both
sides of it, rounding the conv's output once before PReLU and again after it, where the next conv reads it. Dropping
the first pair keeps one rounding per activation, as ReLU models have (onnxruntime folds ReLU into the conv's output
range). On the facerec demo (MobileFaceNet, 33 of 50 convs before a PReLU; two trainings, 6,000 synthetic pairs)
1 - cosine to float fell from 0.0099 / 0.0092 to 0.0066 / 0.0058; landmark5's NME against its float landmarks from
1.60 to 1.26 %; models without PReLU are unchanged. Measured and not taken (facerec, 1 - cosine from 0.0099):
Percentile ranges 0.0076-0.0094 (99.995-99.9999; worse worst faces; 99.9: 0.0209), Entropy (= MinMax: quantize_static
keeps all 128 bins), MinMax on 128 / 512 calibration images 0.0119 / 0.0140, moving-average MinMax 0.0150,
per-tensor weights 0.0118, s8 activations 0.0114, QuantizeBias off (no change); weights alone cost 0.0012.

That conv runs in float on its quantised input and its weights' int8 values, stored dequantised (the same numbers,
not dequantised again at every run). The cost is onnxruntime's: facerec's demo model runs at 2.25 ms a face on one
thread against 2.38 with every output quantised and 2.16 in float, its file 0.91 MB against 0.62 (float 1.53);
landmark5, where 5 of 7 convs precede a PReLU, 0.43 ms against 0.23 (float 0.21), 0.29 MB against 0.10 (float 0.30).
A PReLU network's QDQ model was not faster than float in onnxruntime before either (PReLU breaks the integer chain).
`pfpld export --qdq-prelu int8` quantises those outputs too (quantize_qdq's float_readers=()).

Before quantising, BatchNormalization after a Gemm (a user's Linear -> BatchNorm1d embedding layer) is folded into it
with convert.fold_bn, as the Caffe stage does: onnxruntime's QDQ BatchNormalization would quantise the 1-D BN scale
per channel on axis 1 (out of range: one warning each) and round the embedding once more between the two layers.
Standalone BatchNormalizations (pre-activation ResNets) keep their scale per channel on its only axis, 0.
quantize_qdq returns the recipe it used (QdqRecipe), also written into the int8 model's metadata (`pfpld.int8`).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from convert.fold_bn import fold_batchnorm_into_conv
from convert.onnx_export import read_metadata, save_onnx_atomic, set_metadata
from convert.onnx_graph import GraphIndex, opset_version, remove_dead_constants
from pfpld.errors import ConversionError, one_line

MIN_OPSET = 13
ACTIVATION_TYPES = ("u8", "s8")
WEIGHT_LIMIT = 64                   # onnxruntime's reduce_range for int8 weights: [-64, 64]
FLOAT_READERS = ("PRelu",)          # no integer kernel in onnxruntime: a Conv / Gemm output only they read stays float
MATMUL_OPS = ("Conv", "Gemm")


@dataclass(frozen=True)
class QdqRecipe:
    """How a QDQ model was made: what `pfpld.int8` metadata and the export's manifest record."""
    activations: str                # "u8" (asymmetric) or "s8" (symmetric)
    per_channel: bool
    calibration_images: int
    weight_limit: int = WEIGHT_LIMIT    # weights quantised to [-weight_limit, weight_limit]
    method: str = "MinMax"
    float_readers: tuple[str, ...] = FLOAT_READERS  # a Conv / Gemm output read only by these ops is not quantised
    float_conv_outputs: int | None = None           # how many the model had (None: not quantised yet)
    float_decode_nodes: int = 0                     # Softmax nodes and what is computed from them, left float

    @property
    def weights(self) -> str:
        granularity = "per-channel" if self.per_channel else "per-tensor"
        return f"s8 {granularity} in [-{self.weight_limit}, {self.weight_limit}]"

    @property
    def float_outputs(self) -> str:
        if not self.float_readers:
            return "every Conv/Gemm output quantised"
        count = "" if self.float_conv_outputs is None else f"{self.float_conv_outputs} "
        return (f"{count}Conv/Gemm outputs read only by {'/'.join(self.float_readers)} kept float, those layers run "
                f"in float on the int8 grid's weights (no integer kernel: one rounding after it, not two)")

    def info(self) -> dict:
        """What an onnx-int8 stage records in the manifest (and quant.int8.int8_detail reads back)."""
        return {"format": "QDQ", "activations": self.activations, "weights": self.weights,
                "calibration_images": self.calibration_images, "method": self.method,
                "float_conv_outputs": self.float_conv_outputs, "float_decode_nodes": self.float_decode_nodes,
                "recipe": self.describe()}

    def describe(self) -> str:
        decode = (f", {self.float_decode_nodes} nodes of a decode over a Softmax's probabilities left float"
                  if self.float_decode_nodes else "")
        return (f"onnxruntime QDQ, activations {self.activations}, weights {self.weights} (reduce_range: u8 x s8 "
                f"pairs fit 16 bits on CPUs without VNNI), {self.method} ranges over {self.calibration_images} "
                f"calibration images, {self.float_outputs}{decode}")


def quantize_qdq(onnx_path: Path, out_path: Path, calibration_x: np.ndarray, activations: str = "u8",
                 per_channel: bool = True, float_readers: tuple[str, ...] = FLOAT_READERS) -> QdqRecipe:
    """Write the QDQ int8 model of `onnx_path` to `out_path`, calibrated on the NCHW float inputs given; returns the
    recipe used. A Conv / Gemm output that only `float_readers` ops read stays float (() quantises every one, as
    onnxruntime alone does)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if activations not in ACTIVATION_TYPES:
        raise ConversionError(f"activations {activations!r}: expected one of {ACTIVATION_TYPES}")
    model = onnx.load(str(onnx_path))
    source_opset = opset_version(model)
    spec, contract = read_metadata(model)
    input_name = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}][0]
    x = np.ascontiguousarray(calibration_x, dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(x):
                return None
            self.i += 1
            return {input_name: x[self.i - 1:self.i]}

    if source_opset < MIN_OPSET:     # a user's opset-11 file: onnxruntime's per-channel QDQ needs 13
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:
            raise ConversionError(f"{onnx_path}: opset {source_opset}; onnxruntime's per-channel QDQ needs >= "
                                  f"{MIN_OPSET} and the ONNX version converter failed ({one_line(exc)}): export "
                                  f"the model with opset {MIN_OPSET}") from None
    model, _ = fold_batchnorm_into_conv(model)      # a user's Linear -> BatchNorm1d (see the module's docstring)
    decode = softmax_decode_nodes(model)
    with tempfile.TemporaryDirectory(prefix="pfpld-qdq-") as work:
        source, pre, quantized = (Path(work) / name for name in ("source.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, str(source))
        try:
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            reduce_range=True,
                            activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=decode,
                            extra_options={"ActivationSymmetric": activations == "s8",
                                           "QDQOpTypePerChannelSupportToAxis": {"BatchNormalization": 0}})
        except Exception as exc:
            raise ConversionError(f"{onnx_path}: onnxruntime quantisation failed ({one_line(exc)})") from None
        result = onnx.load(str(quantized))
    peak = weight_peak(result)
    if peak > WEIGHT_LIMIT:          # an onnxruntime whose reduce_range means something else: would saturate again
        raise ConversionError(f"{onnx_path}: onnxruntime wrote int8 weights up to {peak}, expected at most "
                              f"{WEIGHT_LIMIT} (reduce_range)")
    recipe = QdqRecipe(activations=activations, per_channel=per_channel, calibration_images=len(x),
                       float_readers=tuple(float_readers),
                       float_conv_outputs=len(keep_float_before(result, tuple(float_readers))),
                       float_decode_nodes=len(decode))
    if spec is not None and contract is not None:
        set_metadata(result, spec, contract)
    result.metadata_props.add(key="pfpld.int8", value=recipe.describe())
    save_onnx_atomic(result, Path(out_path))
    return recipe


def softmax_decode_nodes(model: onnx.ModelProto) -> list[str]:
    """The names of the Softmax nodes and of every node computed from their outputs (a decode over probabilities:
    HopeNet's expectation of the bin values), naming the unnamed ones in place: quantize_static leaves them float.
    Quantised, the HopeNet demo's decode rounded the probabilities and then the angles to 8 bits each (+0.23 degrees
    of MAE over 129 faces, one face 13 degrees off; float: +0.13, at most 7); it costs a few hundred multiply-adds."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"pfpld_node_{i}_{node.op_type}"
    index = GraphIndex(model)
    found: dict[int, str] = {}          # by node, not name: a user's graph may repeat a name
    stack = [n for n in model.graph.node if n.op_type == "Softmax"]
    while stack:
        node = stack.pop()
        if id(node) in found:
            continue
        found[id(node)] = node.name
        stack += [c for name in node.output for c in index.consumers.get(name, [])]
    return list(dict.fromkeys(found.values()))


def keep_float_before(model: onnx.ModelProto, readers: tuple[str, ...]) -> list[str]:
    """Remove, in place, the QuantizeLinear -> DequantizeLinear pair on every Conv / Gemm output of a QDQ model that
    only `readers` ops read (and the graph does not return): those ops run in float, and round again at their own
    output. Such a layer runs in float, so its weight and bias are stored as their dequantised values (the int8
    grid's, the same numbers): onnxruntime would otherwise dequantise them at every run (facerec demo: 3.29 ms a face
    against 2.40). Returns the tensors left float."""
    graph = model.graph
    index = GraphIndex(model)
    kept: list[str] = []
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        tensor = q.input[0]
        producer = index.producers.get(tensor)
        dequantize = index.consumers.get(q.output[0], [])
        if (producer is None or producer.op_type not in MATMUL_OPS or index.consumers.get(tensor) != [q]
                or not dequantize or any(d.op_type != "DequantizeLinear" for d in dequantize)
                or {tensor, q.output[0], *(d.output[0] for d in dequantize)} & index.graph_outputs):
            continue
        reading = [(r, d.output[0]) for d in dequantize for r in index.consumers.get(d.output[0], [])]
        if not reading or any(r.op_type not in readers for r, _ in reading):
            continue
        for reader, name in reading:
            reader.input[:] = [tensor if i == name else i for i in reader.input]
        for node in [q, *dequantize]:
            graph.node.remove(node)
        for k in (1, 2):
            weight = index.producers.get(producer.input[k]) if len(producer.input) > k else None
            if (weight is not None and weight.op_type == "DequantizeLinear"
                    and index.consumers.get(weight.output[0]) == [producer]):
                values = dequantized_constant(index, weight)
                if values is not None:
                    graph.initializer.append(onnx.numpy_helper.from_array(values, weight.output[0]))
                    graph.node.remove(weight)
        kept.append(tensor)
    remove_dead_constants(model)        # the scales, zero points and int8 weights nothing reads any more
    return kept


def dequantized_constant(index: GraphIndex, node: onnx.NodeProto) -> np.ndarray | None:
    """What a DequantizeLinear of constants computes, (q - zero_point) * scale in float32 along its axis; None when
    an input is not a constant."""
    values = [index.constant(name) for name in node.input if name]
    if any(v is None for v in values):
        return None
    q, scale = values[0], values[1].astype(np.float32)
    zero_point = values[2] if len(values) > 2 else np.zeros_like(scale, dtype=np.int64)
    if scale.ndim == 1 and q.ndim > 1:         # per channel
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (q.astype(np.int64) - zero_point.astype(np.int64)).astype(np.float32) * scale


def weight_peak(model: onnx.ModelProto) -> int:
    """The largest |q| of the int8 initializers a DequantizeLinear reads (the quantised weights) in a QDQ model."""
    dequantized = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    peaks = [int(np.abs(onnx.numpy_helper.to_array(t).astype(np.int32)).max()) for t in model.graph.initializer
             if t.name in dequantized and t.data_type == onnx.TensorProto.INT8 and np.prod(t.dims) > 0]
    return max(peaks, default=0)
