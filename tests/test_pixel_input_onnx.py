"""A recognition ONNX file as the MXNet conversions of ArcFace come: raw 0-255 pixels in, the normalisation as Sub and
Mul nodes at the head of the graph, opset 9, BatchNormalization kept (also after the Gemm), PRelu and a Dropout
exported as Identity. Its first ncnn layer then works in place on the input (BinaryOp), which used to crash the
process in ncnn's python binding."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from caffe_parity import EXPORT_WARNINGS
from cli_run import run

pytestmark = EXPORT_WARNINGS


class PixelInputNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0, self.bn0, self.prelu0 = nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.PReLU(8)
        self.conv1, self.bn1, self.prelu1 = nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.PReLU(16)
        self.drop = nn.Dropout(0.4)
        self.fc, self.bn_fc = nn.Linear(16 * 16 * 16, 32), nn.BatchNorm1d(32)

    def forward(self, x):
        x = (x - 127.5) * 0.0078125
        x = self.prelu0(self.bn0(self.conv0(x)))
        x = self.drop(self.prelu1(self.bn1(self.conv1(x))))
        return self.bn_fc(self.fc(torch.flatten(x, 1)))


@pytest.fixture(scope="module")
def pixel_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = PixelInputNet().train()
    with torch.no_grad():             # BatchNorm statistics that are not the identity
        for _ in range(3):
            model(torch.rand(8, 3, 64, 64) * 255)
    model.eval()
    path = tmp_path_factory.mktemp("pixel") / "arcface_mx.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, 64, 64) * 255,), str(path), dynamo=False, opset_version=9,
                      input_names=["data"], output_names=["fc1"], training=torch.onnx.TrainingMode.PRESERVE,
                      do_constant_folding=False)
    return path


def test_a_pixel_input_graph_passes_every_fp32_stage_and_int8_needs_a_deployed_stage(pixel_onnx, tmp_path):
    out = tmp_path / "export"
    proc = run("export", "--onnx", pixel_onnx, "--color-order", "RGB", "--scale", "1", "--crop-box-source", "aligned",
               "--output", "fc1=embedding", "--target", "all", "--out", out)
    assert proc.returncode == 0, proc.stderr
    proc = run("check-parity", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parity = json.loads((out / "manifest.json").read_text())["parity"]
    stages = {s["stage"]: s for s in parity["stages"]}
    assert parity["verdict"] == "pass" and {"onnxsim", "caffe", "ncnn"} <= set(stages), parity
    # no int8 format was exported and no --calib given: nothing deployed to judge, so no PASS
    proc = run("check-parity", out, "--int8", "--heldout", "16")
    assert proc.returncode != 0, proc.stdout
    assert "no deployed int8 stage to judge" in proc.stdout and "verdict: FAIL" in proc.stdout
