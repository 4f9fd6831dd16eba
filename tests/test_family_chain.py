"""The conversion chain for every model of the family, in each model's own terms: the 5-point aligner (48x48 BGR,
PReLU, Sigmoid) and HopeNet (MobileNetV2-style trunk at 112, bin logits and in-graph Softmax expectation in
degrees) exported with random weights through `pfpld export --model NAME --model-option ... --target all --target
nnie --int8`, then parity against torch (landmark NME or pose degrees), a clean NNIE preflight with deploy.json
listing the outputs by kind, and the int8 estimate in the metric the model's task selects on."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest

from caffe_parity import EXPORT_WARNINGS
from convert.export import parse_model_options
from convert.parity import BIN_DECODE_GAIN_RAD, FP32_MAX_ABS, check_parity
from pfpld.contract import PreprocessContract
from pfpld.data.check_faces import synthetic_check_faces
from pfpld.errors import ConversionError
from quant.int8 import BUDGET_NME_POINTS, BUDGET_POSE_MAE_DEG, check_int8
from quant.nnie import NNIE_DOCUMENTED_LAYERS, preflight

pytestmark = EXPORT_WARNINGS
PFPLD = [sys.executable, "-m", "pfpld_app.cli"]
# name -> (export options, input size the spec gives, NNIE layers beyond the proven set the net uses)
FAMILY = {
    "landmark5": ([], 48, ["PReLU", "Sigmoid"]),
    "hopenet": (["--model-option", "backbone=mobilenetv2", "--model-option", "input_size=112", "--width", "0.25"],
                112, ["Softmax"]),
}


def run(*args):
    return subprocess.run(PFPLD + [str(a) for a in args], capture_output=True, text=True, timeout=600)


def write_calibration_crops(folder, contract: PreprocessContract, n: int = 8):
    """A calibration folder (image_list.txt + PNG crops at the input size) of synthetic faces cut with the model's
    own contract."""
    folder.mkdir(parents=True)
    faces = synthetic_check_faces(contract, n, seed=11)
    for i, crop in enumerate(faces.crops_bgr):
        cv2.imwrite(str(folder / f"{i:03d}.png"), crop)
    (folder / "image_list.txt").write_text("".join(f"{i:03d}.png\n" for i in range(n)))
    return folder


@pytest.fixture(scope="module", params=sorted(FAMILY))
def family_export(request, tmp_path_factory):
    """(model name, export folder): the model exported with random weights to every float format, NNIE (mixed) and
    the int8 formats, as a user runs it."""
    from pfpld.models import build_model
    name = request.param
    options, _, _ = FAMILY[name]
    root = tmp_path_factory.mktemp(f"family_{name}")
    width = float(options[options.index("--width") + 1]) if "--width" in options else 1.0
    model_options = parse_model_options(options[i + 1] for i, a in enumerate(options) if a == "--model-option")
    _, _, contract = build_model(name, width=width, **model_options)
    calib = write_calibration_crops(root / "calib", contract)
    out = root / "export"
    proc = run("export", "--model", name, *options, "--init", "random", "--seed", "3", "--target", "all",
               "--target", "nnie", "--int8", "--calib", calib, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return name, out


def test_export_runs_at_the_models_own_input_size(family_export):
    name, out = family_export
    _, size, _ = FAMILY[name]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["name"] == name and manifest["spec"]["input_size"] == size
    assert manifest["contract"]["input_size"] == size
    assert [s["name"] for s in manifest["stages"]] == ["torch", "onnx", "onnxsim", "caffe", "ncnn", "nnie",
                                                       "onnx-int8", "ncnn-int8"]
    graph_input = onnx.load(str(out / f"{name}.onnx")).graph.input[0]
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 3, size, size]
    if name == "hopenet":
        assert manifest["source"]["options"] == {"backbone": "mobilenetv2", "input_size": 112, "width": 0.25}


def test_every_fp32_stage_passes_parity_in_the_models_terms(family_export):
    name, out = family_export
    report = check_parity(out)
    assert report.verdict == "pass", report.table()
    stages = {r.stage: r for r in report.rows}
    assert list(stages) == ["torch", "onnx", "onnxsim", "caffe", "ncnn"]
    spec = json.loads((out / "manifest.json").read_text())["spec"]
    kinds = {o["name"]: o["kind"] for o in spec["outputs"]}
    for row in report.rows[1:]:
        assert row.verdict == "pass" and row.tolerance == FP32_MAX_ABS, (row.stage, row.error)
        assert set(row.per_output_max_abs) == set(kinds)
        for output, diff in row.per_output_max_abs.items():
            assert diff <= row.per_output_limit[output], (row.stage, output, diff)
            if kinds[output] == "landmarks":                    # absolute
                assert row.per_output_limit[output] == FP32_MAX_ABS
            if kinds[output] == "pose_deg":     # in radians; at least the logits' limit through the decode
                logits = max(float(np.abs(stages["torch"].outputs[o]).max()) for o, k in kinds.items()
                             if k == "pose_bins")
                assert row.per_output_limit[output] == pytest.approx(
                    max(FP32_MAX_ABS, FP32_MAX_ABS * max(1.0, logits) * BIN_DECODE_GAIN_RAD))
        if name == "landmark5":
            assert row.nme is not None and row.nme < 1e-4 and row.pose_deg is None
        else:
            assert row.nme is None and row.pose_deg is not None
            assert row.pose_deg == pytest.approx(np.degrees(row.per_output_max_abs["angles_deg"]), rel=1e-6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"]["verdict"] == "pass"
    picture = cv2.imread(str(out / "parity.png"))
    assert picture is not None and picture.shape[1] == 5 * 2 * FAMILY[name][1]    # one column per stage
    shows = "landmarks" if name == "landmark5" else "pose axes"
    assert f"![{shows} of every stage](parity.png)" in (out / "parity.md").read_text()


def test_nnie_preflight_is_clean_and_deploy_lists_outputs_by_kind(family_export):
    name, out = family_export
    _, _, documented = FAMILY[name]
    manifest = json.loads((out / "manifest.json").read_text())
    info = next(s["info"] for s in manifest["stages"] if s["name"] == "nnie")
    assert info["preflight"] == "pass" and info["documented_layers_used"] == documented
    assert preflight(out / f"{name}.nnie.prototxt", out / f"{name}.nnie.caffemodel",
                     allow_layers=NNIE_DOCUMENTED_LAYERS) == []
    # Without the documented layers, preflight names each of them (the proven set stays what it was).
    assert {v.split("(")[1].split(")")[0] for v in preflight(out / f"{name}.nnie.prototxt")} == set(documented)
    deploy = json.loads((out / "nnie_sdk" / "data" / "nnie_model" / name / "deploy.json").read_text())
    kinds = [(o["name"], o["kind"]) for o in manifest["spec"]["outputs"]]
    assert [(o["name"], o["kind"]) for o in deploy["outputs"]] == kinds
    blobs = deploy["runtimes"]["nnie"]["outputs"]
    assert list(blobs) == [n for n, _ in kinds]
    if name == "hopenet":
        # the bin logits feed the Softmax: reported as intermediate outputs; the decoded angles are 16 bit
        assert [blobs[f"{a}_logits"] for a in ("yaw", "pitch", "roll")] == \
            ["yaw_logits_report", "pitch_logits_report", "roll_logits_report"]
        assert blobs["angles_deg"] == "angles_deg_hp" and len(info["hp_layers"]) == 4
        assert info["report_layers"] == ["yaw_logits_report", "pitch_logits_report", "roll_logits_report"]
    else:
        assert blobs == {"landmarks": "landmarks_hp"} and info["report_layers"] == []
    test_json = json.loads(next((out / "nnie_sdk" / "data" / "nnie_image" / "rgb_planar").glob("*.json")).read_text())
    key = "swapped_planes_nme" if name == "landmark5" else "swapped_planes_pose_deg"
    assert np.isfinite(test_json[key])


def test_int8_estimate_is_in_the_models_metric(family_export):
    name, out = family_export
    report = check_int8(out, n=6)
    result = report.to_dict()
    stages = {r.stage: r for r in report.rows}
    assert set(stages) == {"nnie", "onnx-int8", "ncnn-int8", "nnie-sim int8", "nnie-sim int16"}
    for row in report.rows:
        assert row.error is None, (row.stage, row.error)
    if name == "landmark5":                     # NME on its own 5 points, inter-ocular between the eye centres
        assert result["judged_on"] == "nme" and result["budget_nme_points"] == BUDGET_NME_POINTS
        assert 0 < report.float_metrics.nme_pct and report.float_metrics.pose_mae_deg is None
        for row in report.rows:
            assert np.isfinite([row.nme_pct, row.delta_nme_points, row.nme_vs_float_pct]).all(), row.stage
            assert row.pose_mae_deg is None
    else:                                       # pose MAE in degrees, on faces with a pose label within +-99
        assert result["judged_on"] == "pose_mae_deg" and result["budget_pose_mae_deg"] == BUDGET_POSE_MAE_DEG
        assert result["n_pose_faces"] == 6 and "budget_nme_points" not in result
        assert 0 < report.float_metrics.pose_mae_deg and report.float_metrics.nme_pct is None
        for row in report.rows:
            assert np.isfinite([row.pose_mae_deg, row.delta_pose_deg, row.max_pose_diff_deg]).all(), row.stage
            assert row.nme_pct is None
    for row in report.rows:
        if row.deployed:
            delta = row.delta_nme_points if name == "landmark5" else row.delta_pose_deg
            budget = BUDGET_NME_POINTS if name == "landmark5" else BUDGET_POSE_MAE_DEG
            assert row.verdict == ("ok" if delta <= budget else "OVER")
    assert "budget" in report.table() and (out / "int8.md").is_file()


def test_ncnn_int8_keeps_the_layers_that_read_a_softmax_float(family_export):
    """HopeNet's expectation layers (an InnerProduct over each angle's bin softmax) get no table entry and stay fp32
    in the int8 param, and the int8 row says so; landmark5 has no such layer. (KL calibration clipped the
    probabilities of a trained HopeNet's peaked softmax: +3.4 degrees MAE with them int8, +0.04 without.)"""
    from convert.runtimes import read_ncnn_param
    from quant.int8 import int8_detail
    from quant.ncnn_int8 import parse_params
    name, out = family_export
    info = json.loads((out / f"{name}.int8.ncnn.names.json").read_text())["int8"]
    entries = {line.split()[0] for line in (out / f"{name}.ncnn.int8.table").read_text().splitlines()}
    layers = {layer.name: layer for layer in read_ncnn_param(out / f"{name}.int8.ncnn.param")}
    producers = {top: layer for layer in layers.values() for top in layer.tops}
    readers = info["softmax_readers_float"]
    assert len(readers) == (3 if name == "hopenet" else 0)
    for layer_name in readers:
        layer = layers[layer_name]
        assert layer.type == "InnerProduct" and 8 not in parse_params(layer.params)      # fp32 in the int8 model
        assert layer_name not in entries and f"{layer_name}_param_0" not in entries
        source = producers[layer.bottoms[0]]
        while source.type != "Softmax":
            assert source.type in ("Reshape", "Flatten", "Split"), source
            source = producers[source.bottoms[0]]
    quantised = [n for n, layer in layers.items() if int(parse_params(layer.params).get(8, "0"))]
    assert quantised and not set(quantised) & set(readers) and set(info["quantised_layers"]) == set(quantised)
    detail = int8_detail("ncnn-int8", info)
    assert ("3 layers reading a Softmax float" in detail) == (name == "hopenet")


def test_onnx_int8_leaves_the_decode_after_a_softmax_float(family_export):
    """HopeNet's decode (Softmax, the expectation MatMul, the Concat of the three angles) runs float in the QDQ file:
    nothing it computes is quantised, angles_deg included; the bin logits still are. landmark5 has no Softmax."""
    from convert.artifacts import ExportFolder
    from quant.int8 import int8_detail
    name, out = family_export
    model = onnx.load(str(out / f"{name}.int8.onnx"))
    info = ExportFolder.open(out).info("onnx-int8")
    quantised = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    decode = [n for n in model.graph.node if n.op_type in ("Softmax", "MatMul", "Concat")]
    recipe = next(m.value for m in model.metadata_props if m.key == "pfpld.int8")
    if name == "hopenet":
        assert len(decode) == 7 and not {o for n in decode for o in n.output} & quantised
        # (onnxruntime renames a graph output it quantises: yaw_logits_QuantizeLinear_Input)
        assert not any(q.startswith("angles_deg") for q in quantised)
        assert all(any(q.startswith(f"{a}_logits") for q in quantised) for a in ("yaw", "pitch", "roll"))
        assert "7 nodes of a decode over a Softmax's probabilities left float" in recipe
        assert info["float_decode_nodes"] == 7
        assert "7 decode nodes after a Softmax float" in int8_detail("onnx-int8", info)
    else:
        assert not decode and "Softmax" not in recipe and info["float_decode_nodes"] == 0


def test_model_options_parse_to_typed_values_and_refuse_malformed_pairs():
    assert parse_model_options(["backbone=mobilenetv2", "input_size=112", "width=0.5"]) == \
        {"backbone": "mobilenetv2", "input_size": 112, "width": 0.5}
    for bad in (["backbone"], ["=x"], ["a=1", "a=2"], ["input size=1"]):
        with pytest.raises(ConversionError):
            parse_model_options(bad)


def test_a_wrong_model_option_is_one_line(tmp_path):
    proc = run("export", "--model", "hopenet", "--model-option", "backbone=vgg", "--init", "random", "--out",
               tmp_path / "x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "backbone 'vgg'" in lines[0], proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("choice, float_outputs", [("float", 5), ("int8", 0)])
def test_qdq_prelu_choice_reaches_the_onnx_int8_file_and_its_manifest(tmp_path, choice, float_outputs):
    """landmark5: 5 of its 7 convs feed a PReLU. `--qdq-prelu float` (the default) leaves their outputs unquantised,
    `int8` quantises every conv output (quant/ort_int8.py says what each costs)."""
    from pfpld.models import build_model
    _, _, contract = build_model("landmark5")
    calib = write_calibration_crops(tmp_path / "calib", contract)
    out = tmp_path / "export"
    proc = run("export", "--model", "landmark5", "--init", "random", "--target", "onnx-int8", "--calib", calib,
               "--qdq-prelu", choice, "--out", out)
    assert proc.returncode == 0, proc.stderr
    info = {s["name"]: s for s in json.loads((out / "manifest.json").read_text())["stages"]}["onnx-int8"]["info"]
    assert info["float_conv_outputs"] == float_outputs
    model = onnx.load(str(out / "landmark5.int8.onnx"))
    quantised = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    convs = [n.output[0] for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 7 and sum(c not in quantised for c in convs) == float_outputs
