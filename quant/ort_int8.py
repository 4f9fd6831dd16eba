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
either but ran 1.1-1.4 x slower on AVX2. quantize_qdq returns the recipe it used (QdqRecipe), also written into the
int8 model's metadata (`pfpld.int8`).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from convert.onnx_export import read_metadata, save_onnx_atomic, set_metadata
from convert.onnx_graph import opset_version
from pfpld.errors import ConversionError, one_line

MIN_OPSET = 13
ACTIVATION_TYPES = ("u8", "s8")
WEIGHT_LIMIT = 64                   # onnxruntime's reduce_range for int8 weights: [-64, 64]


@dataclass(frozen=True)
class QdqRecipe:
    """How a QDQ model was made: what `pfpld.int8` metadata and the export's manifest record."""
    activations: str                # "u8" (asymmetric) or "s8" (symmetric)
    per_channel: bool
    calibration_images: int
    weight_limit: int = WEIGHT_LIMIT    # weights quantised to [-weight_limit, weight_limit]
    method: str = "MinMax"

    @property
    def weights(self) -> str:
        granularity = "per-channel" if self.per_channel else "per-tensor"
        return f"s8 {granularity} in [-{self.weight_limit}, {self.weight_limit}]"

    def describe(self) -> str:
        return (f"onnxruntime QDQ, activations {self.activations}, weights {self.weights} (reduce_range: u8 x s8 "
                f"pairs fit 16 bits on CPUs without VNNI), {self.method} ranges over {self.calibration_images} "
                f"calibration images")


def quantize_qdq(onnx_path: Path, out_path: Path, calibration_x: np.ndarray, activations: str = "u8",
                 per_channel: bool = True) -> QdqRecipe:
    """Write the QDQ int8 model of `onnx_path` to `out_path`, calibrated on the NCHW float inputs given; returns the
    recipe used."""
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
    recipe = QdqRecipe(activations=activations, per_channel=per_channel, calibration_images=len(x))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(x):
                return None
            self.i += 1
            return {input_name: x[self.i - 1:self.i]}

    with tempfile.TemporaryDirectory(prefix="pfpld-qdq-") as work:
        pre = Path(work) / "pre.onnx"
        quantized = Path(work) / "int8.onnx"
        source = onnx_path
        if source_opset < MIN_OPSET:     # a user's opset-11 file: onnxruntime's per-channel QDQ needs 13
            source = Path(work) / f"opset{MIN_OPSET}.onnx"
            try:
                onnx.save(onnx.version_converter.convert_version(model, MIN_OPSET), str(source))
            except Exception as exc:
                raise ConversionError(f"{onnx_path}: opset {source_opset}; onnxruntime's per-channel QDQ needs >= "
                                      f"{MIN_OPSET} and the ONNX version converter failed ({one_line(exc)}): export "
                                      f"the model with opset {MIN_OPSET}") from None
        try:
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            reduce_range=True,
                            activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": activations == "s8"})
        except Exception as exc:
            raise ConversionError(f"{onnx_path}: onnxruntime quantisation failed ({one_line(exc)})") from None
        result = onnx.load(str(quantized))
    peak = weight_peak(result)
    if peak > WEIGHT_LIMIT:          # an onnxruntime whose reduce_range means something else: would saturate again
        raise ConversionError(f"{onnx_path}: onnxruntime wrote int8 weights up to {peak}, expected at most "
                              f"{WEIGHT_LIMIT} (reduce_range)")
    if spec is not None and contract is not None:
        set_metadata(result, spec, contract)
    result.metadata_props.add(key="pfpld.int8", value=recipe.describe())
    save_onnx_atomic(result, Path(out_path))
    return recipe


def weight_peak(model: onnx.ModelProto) -> int:
    """The largest |q| of the int8 initializers a DequantizeLinear reads (the quantised weights) in a QDQ model."""
    dequantized = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    peaks = [int(np.abs(onnx.numpy_helper.to_array(t).astype(np.int32)).max()) for t in model.graph.initializer
             if t.name in dequantized and t.data_type == onnx.TensorProto.INT8 and np.prod(t.dims) > 0]
    return max(peaks, default=0)
