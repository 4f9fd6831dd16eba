"""A user's HopeNet-style ONNX (three outputs of 66 bin logits, no angles), declared with --output NAME=yaw_bins /
pitch_bins / roll_bins: the decode is appended to the graph (convert/onnx_bins.py), as the reference code decodes
(bin index x 3 - 99), and every stage then carries and judges the angles."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from caffe_parity import EXPORT_WARNINGS
from cli_run import assert_user_error, run
from convert.onnx_bins import declare_bin_outputs
from convert.onnx_export import spec_from_graph
from pfpld.errors import ConversionError

pytestmark = EXPORT_WARNINGS
BINS = ["--output", "fc_yaw=yaw_bins", "--output", "fc_pitch=pitch_bins", "--output", "fc_roll=roll_bins"]
CONTRACT = ["--color-order", "RGB", "--scale", "1/58", "--mean", "124,116,104"]


class TheirHopeNet(nn.Module):
    """Shaped like deep-head-pose's export: a trunk, then fc_yaw / fc_pitch / fc_roll of 66 logits."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc_yaw, self.fc_pitch, self.fc_roll = nn.Linear(16, 66), nn.Linear(16, 66), nn.Linear(16, 66)

    def forward(self, x):
        f = self.trunk(x)
        return self.fc_yaw(f), self.fc_pitch(f), self.fc_roll(f)


@pytest.fixture(scope="module")
def their_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = TheirHopeNet().eval()
    with torch.no_grad():
        for fc in (model.fc_yaw, model.fc_pitch, model.fc_roll):
            fc.weight.mul_(20)            # spread softmaxes, so that the decode is not the mean of the values
    path = tmp_path_factory.mktemp("theirs") / "hopenet_theirs.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, 64, 64),), str(path), dynamo=False, opset_version=11,
                      input_names=["input"], output_names=["fc_yaw", "fc_pitch", "fc_roll"],
                      dynamic_axes={"input": {0: "batch"}})
    return path


def reference_decode(logits: np.ndarray) -> np.ndarray:
    """deep-head-pose's decode: softmax . [0..65] * 3 - 99."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return p @ (np.arange(66) * 3.0 - 99.0)


def test_the_appended_decode_is_the_reference_codes(their_onnx):
    model = onnx.load(str(their_onnx))
    spec = spec_from_graph(model, "theirs")
    kinds = {"fc_yaw": "yaw_bins", "fc_pitch": "pitch_bins", "fc_roll": "roll_bins", "fc_roll_x": "embedding"}
    decoded, new_spec, rest = declare_bin_outputs(model, spec, kinds, "theirs.onnx")
    assert rest == {"fc_roll_x": "embedding"}
    assert [o.kind for o in new_spec.outputs] == ["pose_bins"] * 3 + ["pose_deg"]
    assert new_spec.outputs[-1].name == "angles_deg" and new_spec.outputs[-1].shape == (3,)
    assert [o.name for o in decoded.graph.output] == ["fc_yaw", "fc_pitch", "fc_roll", "angles_deg"]
    x = np.random.default_rng(0).uniform(0, 1, (5, 3, 64, 64)).astype(np.float32)
    yaw, pitch, roll, angles = ort.InferenceSession(decoded.SerializeToString()).run(None, {"input": x})
    want = np.stack([reference_decode(v.astype(np.float64)) for v in (yaw, pitch, roll)], 1)
    assert np.abs(angles - want).max() < 1e-4 and np.ptp(want) > 5.0


@pytest.mark.parametrize("kinds, message", [
    ({"fc_yaw": "yaw_bins", "fc_pitch": "pitch_bins"}, "declare exactly one output each of yaw_bins, pitch_bins, "
                                                       "roll_bins (found yaw_bins: 1, pitch_bins: 1, roll_bins: 0)"),
    ({"fc_yaw": "yaw_bins", "fc_pitch": "yaw_bins", "fc_roll": "roll_bins"}, "found yaw_bins: 2"),
    ({"fc_yaw": "yaw_bins", "fc_pitch": "pitch_bins", "nope": "roll_bins"}, "the graph has no output 'nope'"),
])
def test_partial_or_wrong_bin_declarations_are_one_error(their_onnx, kinds, message):
    model = onnx.load(str(their_onnx))
    with pytest.raises(ConversionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        declare_bin_outputs(model, spec_from_graph(model, "theirs"), kinds, "theirs.onnx")


def test_bins_of_the_wrong_size_are_refused_from_the_command_line(tmp_path):
    path = tmp_path / "three.onnx"
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 60)).eval()
    torch.onnx.export(net, (torch.rand(1, 3, 32, 32),), str(path), dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["fc_yaw"])
    proc = run("export", "--onnx", path, *CONTRACT, "--output", "fc_yaw=yaw_bins", "--output", "fc_yaw2=pitch_bins",
               "--output", "fc_yaw3=roll_bins", "--target", "onnx", "--out", tmp_path / "out")
    assert_user_error(proc, "output 'fc_yaw' has shape [60]: yaw_bins are 66 bin logits per face")
    proc = run("export", "--onnx", path, *CONTRACT, "--output", "fc_yaw=yaw_bins", "--target", "onnx",
               "--out", tmp_path / "out")
    assert_user_error(proc, "declare exactly one output each")
    assert not (tmp_path / "out").exists()


def test_their_hopenet_goes_through_every_fp32_stage_judged_on_the_angles(their_onnx, tmp_path):
    out = tmp_path / "export"
    hopenet_crop = ["--crop-loose-k", "0.3", "--crop-side", "min", "--crop-expand", str(224 / 240)]
    proc = run("export", "--onnx", their_onnx, *CONTRACT, *hopenet_crop, *BINS, "--target", "all", "--out", out)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["spec_from"] == "graph+options"
    assert manifest["contract"]["crop"] == {"box_source": "landmark_extent", "expand": 224 / 240, "shift_y": 0.0,
                                            "loose_k": 0.3, "side": "min"}
    assert [(o["name"], o["kind"]) for o in manifest["spec"]["outputs"]] == [
        ("fc_yaw", "pose_bins"), ("fc_pitch", "pose_bins"), ("fc_roll", "pose_bins"), ("angles_deg", "pose_deg")]
    proc = run("check-parity", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parity = json.loads((out / "manifest.json").read_text())["parity"]
    stages = {s["stage"]: s for s in parity["stages"]}
    assert parity["verdict"] == "pass" and {"onnxsim", "caffe", "ncnn"} <= set(stages)
    assert "pose diff (deg)" in proc.stdout


def test_a_crop_side_that_does_not_exist_is_one_line(their_onnx, tmp_path):
    proc = run("export", "--onnx", their_onnx, *CONTRACT, "--crop-side", "middle", "--target", "onnx",
               "--out", tmp_path / "out")
    assert_user_error(proc, "crop side 'middle': expected one of max, min")
    assert not (tmp_path / "out").exists()
