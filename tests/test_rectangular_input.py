"""A recognition model with a non-square input, SphereFace's 112 rows x 96 columns, end to end: the contract carries
rows and columns (a square contract serialises as it always did, and old files load), only an aligned contract may
be a rectangle, `pfpld align --size 112x96` aligns to SphereFace's template, and a SphereFace-like ONNX built from
outside the project goes through export --onnx, parity over every fp32 stage, the NNIE bundle and the int8 check
in verification terms, with every artifact at 112x96."""
from __future__ import annotations

import dataclasses
import json
import shutil

import cv2
import numpy as np
import onnx
import pytest
import torch

from caffe_parity import EXPORT_WARNINGS
from cli_run import assert_one_line_error, run
from convert.onnx2caffe import caffe_pb2
from convert.parity import check_parity
from convert.stages import FP32_EMBEDDING_1MCOS
from pfpld.align import ARCFACE_TEMPLATE_112, template
from pfpld.contract import ALIGNED_CROP, ContractError, CropRule, PreprocessContract, aligned_crop, parse_hw
from pfpld.data import identities as ids
from pfpld.models.spec import ModelSpec, OutputSpec
from outside_models import SPHEREFACE_HW as SPHEREFACE
from outside_models import sphereface_like_onnx
from quant.nnie import parse_cfg
from test_align import SEED, faces, write_points  # noqa: F401  (the raw renders fixture, shared)

pytestmark = EXPORT_WARNINGS

# SphereFace's published 5-point template for its 96x112 (width x height) aligned faces
SPHEREFACE_TEMPLATE = [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
                       [62.7299, 92.2041]]
CONTRACT_OPTIONS = ["--color-order", "RGB", "--mean", "127.5,127.5,127.5", "--scale", "1/128",
                    "--crop-box-source", "aligned", "--output", "fc5=embedding"]


# --- the contract --------------------------------------------------------------------------------------------------

def test_a_square_contract_serialises_as_before_and_old_dicts_load():
    old = {"input_size": 112, "color_order": "RGB", "scale": 1 / 128, "mean": [127.5] * 3, "layout": "NCHW",
           "crop": {"box_source": "aligned", "expand": 1.0, "shift_y": 0.0}}       # written before loose_k, side
    contract = PreprocessContract.from_dict(old)
    assert contract.input_hw == (112, 112) and contract.is_square and contract.size_text == "112x112"
    assert set(contract.to_dict()) == {"input_size", "color_order", "scale", "mean", "crop", "layout"}
    assert PreprocessContract(input_size=64, input_width=64) == PreprocessContract(input_size=64)
    assert PreprocessContract(input_size=64, input_width=64).to_dict() == PreprocessContract(input_size=64).to_dict()
    spec = ModelSpec("m", "input", 112, (OutputSpec("fc", (64,), "", kind="embedding"),), input_width=112)
    assert "input_width" not in spec.to_dict() and ModelSpec.from_dict(spec.to_dict()) == spec


def test_a_rectangular_aligned_contract_round_trips_with_its_width():
    contract = PreprocessContract(input_size=112, input_width=96, crop=aligned_crop(*SPHEREFACE))
    d = json.loads(contract.to_json())
    assert d["input_size"] == 112 and d["input_width"] == 96 and d["crop"]["side"] == "min"
    assert PreprocessContract.from_dict(d) == contract and contract.input_hw == SPHEREFACE
    spec = ModelSpec("m", "input", 112, (OutputSpec("fc", (64,), "", kind="embedding"),), input_width=96)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).input_hw == SPHEREFACE
    assert aligned_crop(112, 112) == ALIGNED_CROP
    assert parse_hw("112") == (112, 112) and parse_hw("112x96") == SPHEREFACE
    with pytest.raises(ContractError, match="expected SIDE or ROWSxCOLUMNS"):
        parse_hw("112x")


def test_a_rectangular_landmark_contract_is_refused_in_one_line():
    with pytest.raises(ContractError, match=r"input size 112x96 \(rows x columns\) is not square: only an aligned "
                                            r"contract"):
        PreprocessContract(input_size=112, input_width=96, crop=CropRule())


def test_an_aligned_rectangle_is_the_image_whole_or_the_sphereface_window_of_an_arcface_face(faces):  # noqa: F811
    _, _, png, _ = faces
    contract = PreprocessContract(input_size=112, input_width=96, crop=aligned_crop(*SPHEREFACE))
    face = next(iter(png.values()))
    sphere = ids.render_identity_face(ids.sample_identity(SEED, 0), SEED, 0, size=SPHEREFACE).image
    assert sphere.shape == (112, 96, 3)
    crop, matrix = contract.crop_image(sphere, contract.aligned_box(sphere))      # aligned at its size: taken whole
    assert np.array_equal(matrix, [[1, 0, 0], [0, 1, 0]]) and np.array_equal(crop, sphere)
    # an ArcFace-aligned 112x112 face gives the SphereFace frame: its middle 96 columns
    crop, matrix = contract.crop_image(face.image, contract.aligned_box(face.image))
    assert np.array_equal(matrix, [[1, 0, -8], [0, 1, 0]]) and np.array_equal(crop, face.image[:, 8:104])
    assert np.abs(crop.astype(int) - sphere).max() <= 1
    # a square crop's matrix is what it always was: side max(w, h) x expand, centred
    square = PreprocessContract(input_size=112)
    s = 112 / (1.2 * 100.0)
    assert np.array_equal(square.crop_matrix((10.0, 20.0, 90.0, 120.0)),
                          [[s, 0.0, 56.0 - s * 50.0], [0.0, s, 56.0 - s * 70.0]])


# --- pfpld align --size 112x96 ----------------------------------------------------------------------------------------

def test_the_template_at_112x96_is_spherefaces():
    assert np.allclose(template(SPHEREFACE), SPHEREFACE_TEMPLATE, atol=1e-9)
    assert np.array_equal(template(112), ARCFACE_TEMPLATE_112)
    assert np.allclose(template((56, 48)), np.array(SPHEREFACE_TEMPLATE) / 2)


def test_align_size_112x96_writes_spherefaces_aligned_faces(faces, tmp_path):  # noqa: F811
    root, _, png, _ = faces
    out = tmp_path / "aligned"
    proc = run("align", root / "raw_png", "--points", write_points(tmp_path / "points.txt", png), "--size", "112x96",
               "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"aligned {len(png)} images to 112x96")
    for rel, face in png.items():
        got = cv2.imread(str(out / rel))
        identity = ids.sample_identity(SEED, int(rel.split("/")[0].split("_")[1]))
        expected = ids.render_identity_face(identity, SEED, int(rel.split("/")[1][:4]) - 1, size=SPHEREFACE)
        assert got.shape == (112, 96, 3) and np.array_equal(got, expected.image), rel
        # least squares onto SphereFace's template: the points' centroid lands on the template's
        assert np.allclose(expected.points5.mean(0), np.mean(SPHEREFACE_TEMPLATE, 0), atol=1e-9)
    record = json.loads((out / "align.json").read_text())
    assert record["size_hw"] == [112, 96] and "size" not in record and "SphereFace" in record["template"]
    proc = run("align", root / "raw_png", "--points", tmp_path / "points.txt", "--size", "112x9x6", "--out",
               tmp_path / "bad")
    assert proc.returncode == 2 and "expected SIDE or ROWSxCOLUMNS" in proc.stderr and "Traceback" not in proc.stderr
    assert "ROWSxCOLUMNS, e.g. 112x96" in run("align", "--help").stdout


# --- a SphereFace-like ONNX from outside ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sphere(faces, tmp_path_factory):  # noqa: F811
    """As a user runs it: the raw training and LFW-layout renders aligned with `pfpld align --size 112x96`, a
    calibration set of the aligned training faces (its size from their align.json), and the ONNX exported to every
    target with the NNIE bundle and the int8 formats."""
    root, reference, png, lfw = faces
    work = tmp_path_factory.mktemp("sphere")
    for name, raw, found in (("train", "raw_png", png), ("lfw", "raw_lfw", lfw)):
        out = work / "aligned" / name if name == "train" else work / "lfw96" / "lfw"
        proc = run("align", root / raw, "--points", write_points(work / f"{name}.txt", found), "--size", "112x96",
                   "--out", out)
        assert proc.returncode == 0, proc.stderr
    shutil.copyfile(reference / "pairs.txt", work / "lfw96" / "pairs.txt")
    proc = run("calib", work / "aligned" / "train", "--out", work / "calib", "--n", 6)
    assert proc.returncode == 0, proc.stderr
    onnx_path = sphereface_like_onnx(work / "sphere20ish.onnx")
    out = work / "export"
    proc = run("export", "--onnx", onnx_path, *CONTRACT_OPTIONS, "--target", "all", "--target", "nnie", "--int8",
               "--calib", work / "calib", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return work, out


def test_the_export_carries_the_rectangle_in_every_artifact(sphere):
    work, out = sphere
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["contract"]["input_size"] == 112 and manifest["contract"]["input_width"] == 96
    assert manifest["contract"]["crop"] == dataclasses.asdict(aligned_crop(*SPHEREFACE))
    assert manifest["spec"]["input_size"] == 112 and manifest["spec"]["input_width"] == 96
    from convert.onnx_export import read_metadata
    spec, contract = read_metadata(onnx.load(str(out / "sphere20ish.sim.onnx")))      # the contract in the ONNX
    assert contract.input_hw == spec.input_hw == SPHEREFACE and contract.crop.side == "min"
    assert json.loads((out / "deploy.json").read_text())["input"]["shape"] == [1, 3, 112, 96]
    net = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Parse((out / "sphere20ish.prototxt").read_text(), net)
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 112, 96]
    assert json.loads((out / "sphere20ish.ncnn.names.json").read_text())["input_shape"] == [1, 3, 112, 96]
    calib = json.loads((work / "calib" / "calib.json").read_text())
    assert calib["contract"]["input_width"] == 96 and calib["spread_over"] == "identities"


def test_the_nnie_bundle_is_made_at_112x96(sphere):
    work, out = sphere
    bundle = out / "nnie_sdk" / "data"
    calib_images = sorted((bundle / "nnie_image" / "calib" / "sphere20ish").iterdir())
    assert len(calib_images) == 6 and all(cv2.imread(str(p)).shape == (112, 96, 3) for p in calib_images)
    cfg = parse_cfg((bundle / "nnie_model" / "sphere20ish" / "sphere20ish_inst.cfg").read_text())
    assert cfg["RGB_order"] == "RGB" and cfg["norm_type"] == "5" and float(cfg["data_scale"]) == 1 / 128
    prototxt = (bundle / "nnie_model" / "sphere20ish" / "sphere20ish.prototxt").read_text()
    assert "dim: 112\n      dim: 96" in prototxt
    samples = sorted((bundle / "nnie_image" / "rgb_planar").glob("*.bgr"))
    assert samples and all(p.stat().st_size == 3 * 112 * 96 for p in samples)
    record = json.loads(samples[0].with_suffix(".json").read_text())
    assert record["bytes"] == 3 * 112 * 96 and record["board_row_stride_bytes"] == 96
    assert "112 rows x 96 columns" in record["layout"]
    deploy = json.loads((bundle / "nnie_model" / "sphere20ish" / "deploy.json").read_text())
    assert deploy["input"]["shape"] == [1, 3, 112, 96] and deploy["contract"]["input_width"] == 96
    readme = (out / "nnie_sdk" / "README.md").read_text()
    assert "each plane 112 rows of 96 bytes" in readme and "3x112x96 = 32256 bytes" in readme


def test_every_fp32_stage_passes_parity_on_112x96_faces(sphere):
    work, out = sphere
    report = check_parity(out, write=False)
    assert report.verdict == "pass", report.table()
    assert [r.stage for r in report.rows] == ["onnx", "onnxsim", "caffe", "ncnn"]
    assert "SphereFace 112x96 template" in report.inputs
    for row in report.rows[1:]:
        assert row.embedding_1mcos <= FP32_EMBEDDING_1MCOS and row.max_abs <= row.per_output_limit["fc5"]
    report = check_parity(out, images=work / "lfw96" / "lfw", n=4, write=False)
    assert report.verdict == "pass" and "4 aligned faces of 4 identities" in report.inputs


def test_int8_with_pairs_on_112x96_faces_is_judged_in_verification_terms(sphere, tmp_path):
    work, out = sphere
    proc = run("check-parity", out, "--n", 2, "--int8", "--pairs", work / "lfw96" / "pairs.txt", "--json",
               tmp_path / "result.json")
    assert proc.returncode in (0, 1), proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())["int8"]
    assert result["judged_on"] == "verification" and result["n_pairs"] == 12       # 2 + 2 pairs x 3 folds
    stages = {s["stage"]: s for s in result["stages"]}
    assert set(stages) == {"nnie", "onnx-int8", "ncnn-int8", "nnie-sim int8", "nnie-sim int16"}
    for stage in stages.values():
        assert stage["error"] is None and np.isfinite(stage["verification_pct"]), stage
        assert stage["cosine_mean"] > 0.99, stage


def test_calibration_crops_of_another_size_are_one_line(sphere, faces, tmp_path):  # noqa: F811
    work, out = sphere
    _, reference, _, _ = faces
    proc = run("calib", reference / "imagefolder", "--size", "112", "--out", tmp_path / "calib112", "--n", 3)
    assert proc.returncode == 0, proc.stderr
    proc = run("export", "--onnx", work / "sphere20ish.onnx", *CONTRACT_OPTIONS, "--target", "nnie", "--calib",
               tmp_path / "calib112", "--out", tmp_path / "no")
    assert_one_line_error(proc, "calib112: made for input size 112x112", "the model's contract says 112x96")
    assert not (tmp_path / "no").exists()


def test_a_rectangle_without_an_aligned_contract_or_fixed_size_is_one_line(sphere, tmp_path):
    work, _ = sphere
    proc = run("export", "--onnx", work / "sphere20ish.onnx", "--color-order", "RGB", "--scale", "1/128", "--target",
               "onnx", "--out", tmp_path / "no")
    assert_one_line_error(proc, "sphere20ish.onnx: the graph input is 112x96 (rows x columns), not square",
                          "--crop-box-source aligned")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    path = tmp_path / "any_size.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, *SPHEREFACE),), str(path), dynamo=False, opset_version=11,
                      input_names=["data"], output_names=["fc"], dynamic_axes={"data": {0: "n", 2: "h", 3: "w"}})
    proc = run("export", "--onnx", path, *CONTRACT_OPTIONS[:-2], "--target", "onnx", "--out", tmp_path / "no")
    assert_one_line_error(proc, "any_size.onnx: input 'data' has shape [None, 3, None, None]",
                          "expected [N, 3, H, W] with fixed H and W")
    assert not (tmp_path / "no").exists()

