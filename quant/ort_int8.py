"""Reference int8: onnxruntime static quantisation of the simplified ONNX file, QDQ format (opset >= 13),
weights int8 per output channel, activations uint8 (default) or int8, ranges by MinMax over the calibration set.

uint8 activations with int8 weights is the pairing onnxruntime's x86 kernels run fastest (u8s8 integer GEMM, VNNI
where the CPU has it); int8 activations fall back to slower paths on x86. `pfpld bench` times the default (u8).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from convert.onnx_export import read_metadata, save_onnx_atomic, set_metadata
from convert.onnx_graph import opset_version
from pfpld.errors import ConversionError, one_line

MIN_OPSET = 13
ACTIVATION_TYPES = ("u8", "s8")


def quantize_qdq(onnx_path: Path, out_path: Path, calibration_x: np.ndarray, activations: str = "u8",
                 per_channel: bool = True) -> Path:
    """Write the QDQ int8 model of `onnx_path` to `out_path`, calibrated on the NCHW float inputs given."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if activations not in ACTIVATION_TYPES:
        raise ConversionError(f"activations {activations!r}: expected one of {ACTIVATION_TYPES}")
    model = onnx.load(str(onnx_path))
    if opset_version(model) < MIN_OPSET:
        raise ConversionError(f"{onnx_path}: opset {opset_version(model)}; onnxruntime's per-channel QDQ needs "
                              f">= {MIN_OPSET} (export with --opset 13)")
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

    with tempfile.TemporaryDirectory(prefix="pfpld-qdq-") as work:
        pre = Path(work) / "pre.onnx"
        quantized = Path(work) / "int8.onnx"
        try:
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": activations == "s8"})
        except Exception as exc:
            raise ConversionError(f"{onnx_path}: onnxruntime quantisation failed ({one_line(exc)})") from None
        result = onnx.load(str(quantized))
    if spec is not None and contract is not None:
        set_metadata(result, spec, contract)
    result.metadata_props.add(key="pfpld.int8", value=f"onnxruntime QDQ, activations {activations}, weights s8 "
                                                         f"{'per-channel' if per_channel else 'per-tensor'}, MinMax")
    save_onnx_atomic(result, Path(out_path))
    return Path(out_path)
