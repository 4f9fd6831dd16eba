"""What the outputs of a user's ONNX file mean (`pfpld export --onnx FILE --output NAME=KIND`): each declared kind
is checked against the output's shape with a one-line error, landmark outputs are normalised by the scheme their
point count names (98 WFLW, 68 iBUG, 5 points), and the int8 check reads the held-out faces' 98 labels as that
scheme's points."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from caffe_parity import EXPORT_WARNINGS
from cli_run import assert_user_error, run
from convert.onnx_export import declare_outputs, declared_output, spec_from_graph
from pfpld.errors import ConversionError
from pfpld.landmarks import FIVE_POINTS, IBUG_68, MAP_68_TO_98, WFLW_98, layout_for
from pfpld.models.landmark5 import points_from_98
from pfpld.models.spec import ModelSpec
from quant.int8 import HeldOut, model_points

pytestmark = EXPORT_WARNINGS


@pytest.mark.parametrize("points, norm", [(98, (60, 72)), (68, (36, 45)), (5, (0, 1)), (10, None)])
def test_declared_landmarks_take_the_normaliser_of_their_point_count(points, norm):
    out = declared_output("pts", (points * 2,), "landmarks")
    assert out.kind == "landmarks" and out.norm_points == norm and out.num_points == points
    assert ("no NME" in out.meaning) == (norm is None)


def test_the_68_point_scheme_puts_its_outer_eye_corners_on_the_98_point_ones():
    assert IBUG_68.num_points == 68 and layout_for(68) is IBUG_68
    assert [int(MAP_68_TO_98[i]) for i in IBUG_68.norm_points] == list(WFLW_98.norm_points)
    assert np.array_equal(FIVE_POINTS.from_98, points_from_98())         # landmark5 uses the same scheme


@pytest.mark.parametrize("shape, kind, message", [
    ((7,), "landmarks", "even, fixed number"), ((4,), "pose", "a pose is 3 values"),
    ((8, 2, 2), "embedding", "one vector per face"), ((3,), "pose_bins", "expected one of")])
def test_a_kind_the_output_cannot_hold_is_one_error_naming_the_output(shape, kind, message):
    with pytest.raises(ConversionError, match=message) as info:
        declared_output("out7", shape, kind)
    assert "'out7'" in str(info.value)


def test_declaring_an_output_the_graph_lacks_lists_its_outputs():
    spec = ModelSpec("m", "input", 112, (declared_output("fc1", (128,), ""),))
    assert declare_outputs(spec, {"fc1": "embedding"}, "m.onnx").outputs[0].kind == "embedding"
    with pytest.raises(ConversionError, match=r"m.onnx: --output fc2=...: the graph has no output 'fc2'; its "
                                              r"outputs are fc1"):
        declare_outputs(spec, {"fc2": "embedding"}, "m.onnx")


@pytest.mark.parametrize("layout", [IBUG_68, FIVE_POINTS])
def test_int8_ground_truth_of_a_users_landmark_model_is_its_schemes_points(layout):
    rng = np.random.default_rng(0)
    n = 3
    points98 = rng.uniform(0, 1, (n, 98, 2)).astype(np.float32)
    mask98 = np.ones((n, 98), bool)
    mask98[1, 64] = False               # an eye corner missing: the 5-point eye centre made of it is missing too
    faces = HeldOut(x=np.zeros((n, 3, 8, 8), np.float32), points=points98, mask=mask98,
                    pose=np.zeros((n, 3), np.float32), has_pose=np.zeros(n, bool), source="test")
    spec = ModelSpec("theirs", "input", 8, (declared_output("pts", (layout.num_points * 2,), "landmarks"),))
    points, mask = model_points(spec, spec.outputs[0], faces)
    assert points.shape == (n, layout.num_points, 2)
    for k, sources in enumerate(layout.sources_98):
        assert np.allclose(points[:, k], points98[:, list(sources)].mean(1))
        assert mask[1, k] == (64 not in sources)


class TinyLandmarks(nn.Module):
    def __init__(self, points: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.fc = nn.Linear(4 * 8 * 8, points * 2)

    def forward(self, x):
        return torch.sigmoid(self.fc(torch.flatten(torch.relu(self.conv(x)), 1)))


def test_a_users_68_point_onnx_declared_as_landmarks_is_judged_by_point_error(tmp_path):
    path = tmp_path / "theirs68.onnx"
    torch.onnx.export(TinyLandmarks(68).eval(), (torch.rand(1, 3, 32, 32),), str(path), dynamo=False,
                      opset_version=13, input_names=["data"], output_names=["out"])
    assert spec_from_graph(onnx.load(str(path)), "theirs68").outputs[0].kind == ""
    out = tmp_path / "export"
    proc = run("export", "--onnx", path, "--color-order", "BGR", "--scale", "1/255", "--output", "out=landmarks",
               "--target", "onnx", "--out", out)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["spec_from"] == "graph+options"
    (output,) = manifest["spec"]["outputs"]
    assert output["kind"] == "landmarks" and output["norm_points"] == [36, 45]


@pytest.mark.parametrize("args, message", [
    (["--output", "nosuch=embedding"], "the graph has no output 'nosuch'; its outputs are out"),
    (["--output", "out=bogus"], "kind 'bogus'; expected one of"),
    (["--output", "out"], "expected NAME=KIND"),       # click's usage error: exit 2, no traceback
])
def test_bad_output_declarations_are_one_line_errors_and_write_nothing(tmp_path, args, message):
    path = tmp_path / "theirs.onnx"
    torch.onnx.export(TinyLandmarks(5).eval(), (torch.rand(1, 3, 32, 32),), str(path), dynamo=False,
                      opset_version=13, input_names=["data"], output_names=["out"])
    out = tmp_path / "export"
    proc = run("export", "--onnx", path, "--color-order", "RGB", "--scale", "1/255", *args, "--target", "onnx",
               "--out", out)
    if "=" in args[1]:
        assert_user_error(proc, message)
    else:
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_output_kinds_are_refused_for_a_model_that_carries_its_own(tmp_path):
    proc = run("export", "--model", "landmark5", "--init", "random", "--output", "landmarks=landmarks", "--target",
               "onnx", "--out", tmp_path / "x")
    assert proc.returncode == 2 and "apply to --onnx only" in proc.stderr
