"""Test helpers for the ONNX -> Caffe converter: export a small torch net to an ONNX file, convert it, and
run the same input through onnxruntime (on the ONNX file) and OpenCV's Caffe reader (on the written files),
which are independent of our converter. Intermediate tensors are compared by name through blob_map."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from convert.onnx2caffe import CaffeConversion, convert_onnx_to_caffe

# What the TorchScript exporter always says with these settings (legacy exporter, PRESERVE mode, train-mode
# BN bookkeeping); silenced so that a new warning stands out.
EXPORT_WARNINGS = [pytest.mark.filterwarnings(f"ignore:{message}") for message in (
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed",
    "It is recommended that constant folding be turned off",
    "ONNX Preprocess - Removing mutation",
    "Converting a tensor to a Python boolean",
    "Using padding='same' with even kernel lengths",
)]


class Net(nn.Module):
    """A module whose forward is a function of the submodules given as keyword arguments."""

    def __init__(self, forward, **modules):
        super().__init__()
        self.fn = forward
        for name, module in modules.items():
            setattr(self, name, module)

    def forward(self, x):
        return self.fn(self, x)


def randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that folding and BatchNorm+Scale matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return module


def export(module: torch.nn.Module, shape: tuple[int, ...], path: Path, opset: int = 13,
           training: torch.onnx.TrainingMode = torch.onnx.TrainingMode.EVAL, seed: int = 0) -> np.ndarray:
    """Export `module` (TorchScript exporter) to `path`; returns the random input used for tracing."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    torch.onnx.export(module, x, str(path), dynamo=False, opset_version=opset, training=training)
    return x.numpy()


def run_onnxruntime(model: Path | onnx.ModelProto, x: np.ndarray,
                    extra_outputs: list[str] = ()) -> dict[str, np.ndarray]:
    """Graph outputs (and `extra_outputs`, intermediate tensors exposed as outputs) by name."""
    proto = onnx.load(str(model)) if isinstance(model, Path) else onnx.ModelProto.FromString(model.SerializeToString())
    for name in extra_outputs:
        if name not in {o.name for o in proto.graph.output}:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # No graph optimisation: the reference computes the graph as written, without ORT's own fusions.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))


def run_opencv(conversion: CaffeConversion, x: np.ndarray, blobs: list[str]) -> dict[str, np.ndarray]:
    net = cv2.dnn.readNetFromCaffe(str(conversion.prototxt), str(conversion.caffemodel))
    net.setInput(x, conversion.input_name)
    outs = net.forward(list(blobs))
    return {name: np.asarray(out) for name, out in zip(blobs, outs)}


@dataclass
class Parity:
    conversion: CaffeConversion
    diffs: dict[str, float]            # ONNX tensor name -> max |OpenCV - onnxruntime|
    scale: dict[str, float]            # ONNX tensor name -> max |onnxruntime|

    @property
    def worst(self) -> float:
        return max(self.diffs.values())

    def assert_close(self, atol: float = 1e-5, rtol: float = 1e-6) -> None:
        """atol, widened by rtol x magnitude for tensors whose values are large (float32 sums)."""
        for name, diff in self.diffs.items():
            assert diff <= atol + rtol * self.scale[name], (name, diff, self.scale[name])


def convert_and_compare(onnx_path: Path, x: np.ndarray, tmp_path: Path, intermediates: bool = False) -> Parity:
    """Convert, then compare every graph output (and with `intermediates`, every converted ONNX tensor)."""
    conversion = convert_onnx_to_caffe(onnx_path, tmp_path / "net.prototxt", tmp_path / "net.caffemodel")
    names = list(conversion.outputs)
    if intermediates:
        names += [n for n in conversion.blob_map if n not in conversion.outputs and n != conversion.input_name]
    reference = run_onnxruntime(onnx_path, x, names)
    caffe = run_opencv(conversion, x, sorted({conversion.blob_map[n] for n in names}))
    diffs, scale = {}, {}
    for name in names:
        ref = reference[name]
        got = caffe[conversion.blob_map[name]]
        assert got.size == ref.size, (name, got.shape, ref.shape)
        diffs[name] = float(np.abs(got.reshape(ref.shape) - ref).max()) if ref.size else 0.0
        scale[name] = float(np.abs(ref).max()) if ref.size else 0.0
    return Parity(conversion, diffs, scale)
