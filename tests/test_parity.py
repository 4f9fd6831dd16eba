"""`pfpld check-parity`: every stage of an export against torch on random inputs and synthetic face crops, real
numbers under the stated tolerance, the verdict in manifest.json; and a stage made to diverge (one Caffe weight
blob, one ncnn weight) fails with exit code 1 and names the layer."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.onnx2caffe import caffe_pb2
from convert.parity import FP16_MAX_ABS, FP32_MAX_ABS, check_parity
from convert.runtimes import read_ncnn_param

PFPLD = [sys.executable, "-m", "pfpld_app.cli"]
CAFFE_LAYER = "/block3_3/conv/conv.3/Conv_output_0"      # a depthwise conv in the middle of the net


def check_parity_cli(*args):
    return subprocess.run(PFPLD + ["check-parity"] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=600)


def row(stdout: str, stage: str) -> list[str]:
    return next(line.split() for line in stdout.splitlines() if line.split()[:1] == [stage])


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_every_stage_matches_torch_within_tolerance(random_export, width, tmp_path):
    out = tmp_path / "export"     # a copy: check-parity writes into the folder, other tests read the original
    shutil.copytree(random_export(width)[0], out)
    proc = check_parity_cli(out, "--n", 6, "--json", tmp_path / "parity.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in ("onnx", "onnxsim", "caffe", "ncnn"):
        cells = row(proc.stdout, stage)
        assert cells[1] == "torch" and cells[-1] == "pass", cells
    result = json.loads((tmp_path / "parity.json").read_text())
    assert result["verdict"] == "pass" and result["inputs"]["random"] == 6 and result["inputs"]["faces"] == 6
    for stage in result["stages"][1:]:
        assert 0 < stage["max_abs"] <= FP32_MAX_ABS, stage       # real numbers, not zeros from a shortcut
        assert stage["cosine"] > 0.999999 and stage["nme"] < 1e-4 and stage["pose_deg"] < 1e-3
        assert stage["first_divergence"] is None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"]["verdict"] == "pass" and manifest["parity"]["modified_files"] == []
    report = (out / "parity.md").read_text()
    assert "| caffe | torch |" in report and "parity.png" in report
    picture = cv2.imread(str(out / "parity.png"))
    assert picture.shape[1] == 5 * 224 and picture.shape[0] > 4 * 224


def perturb_caffe_layer(caffemodel: Path, layer_name: str) -> None:
    net = caffe_pb2.NetParameter()
    net.ParseFromString(caffemodel.read_bytes())
    layer = next(layer for layer in net.layer if layer.name == layer_name)
    weights = layer.blobs[0].data
    for i in range(len(weights)):
        weights[i] *= 1.05
    caffemodel.write_bytes(net.SerializeToString())


def test_a_perturbed_caffe_layer_fails_and_is_named(random_export, tmp_path):
    src, _ = random_export(0.25)
    out = tmp_path / "export"
    shutil.copytree(src, out)
    perturb_caffe_layer(out / "pfpld.caffemodel", CAFFE_LAYER)
    proc = check_parity_cli(out, "--n", 2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert row(proc.stdout, "caffe")[-1] == "FAIL"
    assert row(proc.stdout, "ncnn")[-1] == "pass" and row(proc.stdout, "onnxsim")[-1] == "pass"
    assert f"caffe: first diverging layer: Caffe layer '{CAFFE_LAYER}'" in proc.stdout
    assert "files changed since export" in proc.stdout and "pfpld.caffemodel" in proc.stdout
    assert json.loads((out / "manifest.json").read_text())["parity"]["verdict"] == "fail"


def test_a_perturbed_onnx_weight_fails_and_the_node_is_named(random_export, tmp_path):
    """torch and ONNX share no tensor names: the diverging node is found by matching values to the torch
    submodules' tensors."""
    import onnx
    from onnx import numpy_helper
    src, _ = random_export(0.25)
    out = tmp_path / "export"
    shutil.copytree(src, out)
    model = onnx.load(str(out / "pfpld.onnx"))
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    target = convs[len(convs) // 2]
    weights = {t.name: t for t in model.graph.initializer}
    tensor = weights[target.input[1]]
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(1.05), tensor.name))
    onnx.save(model, str(out / "pfpld.onnx"))

    report = check_parity(out, n=2)
    verdicts = {r.stage: r.verdict for r in report.rows}
    assert verdicts == {"torch": "reference", "onnx": "FAIL", "onnxsim": "pass", "caffe": "pass", "ncnn": "pass"}
    onnx_row = report.rows[1]
    assert onnx_row.first_divergence.startswith(f"first diverging layer: ONNX Conv '{target.name}'"), \
        onnx_row.first_divergence


def test_torch_tensors_are_recorded_in_execution_order(random_export):
    from convert.runtimes import TorchRunner
    from pfpld.checkpoint import load_model
    src, _ = random_export(0.25)
    module, ckpt = load_model(src / "pfpld.pt")
    x = np.random.default_rng(0).random((1, 3, 112, 112), dtype=np.float32)
    seen = TorchRunner(module, ckpt.spec.output_names).module_tensors(x)
    labels = [label for label, _ in seen]
    assert labels[0] == "conv1 input" and labels.index("conv1 output") < labels.index("conv2 output")
    first_input = seen[0][1]
    assert np.array_equal(first_input, x)
    # A conv output is recorded before the in-place ReLU after it changes the tensor: negatives survive.
    assert (dict(seen)["bn1 output"] < 0).any()


def ncnn_weight_offset(param: Path, layer_name: str) -> int:
    """Byte offset of a layer's first weight in the .ncnn.bin: every weight blob is a 4-byte storage tag then
    floats (fp32 files), a bias is raw floats; PFPLD's ncnn layers with weights are the three below."""
    offset = 0
    for layer in read_ncnn_param(param):
        values = dict(kv.split("=") for kv in layer.params.split())
        if layer.name == layer_name:
            return offset + 4
        if layer.type in ("Convolution", "ConvolutionDepthWise"):
            offset += 4 + 4 * int(values["6"]) + (4 * int(values["0"]) if values.get("5") == "1" else 0)
        elif layer.type == "InnerProduct":
            offset += 4 + 4 * int(values["2"]) + (4 * int(values["0"]) if values.get("1") == "1" else 0)
        else:
            assert layer.type in ("Input", "Split", "BinaryOp", "Pooling", "Flatten", "Concat"), layer.type
    raise KeyError(layer_name)


def test_a_perturbed_ncnn_weight_fails_and_is_named(random_export, tmp_path):
    src, _ = random_export(0.25)
    out = tmp_path / "export"
    shutil.copytree(src, out)
    layers = [layer for layer in read_ncnn_param(out / "pfpld.ncnn.param") if layer.type == "Convolution"]
    target = layers[len(layers) // 2].name
    offset = ncnn_weight_offset(out / "pfpld.ncnn.param", target)
    data = bytearray((out / "pfpld.ncnn.bin").read_bytes())
    (weight,) = struct.unpack_from("<f", data, offset)
    struct.pack_into("<f", data, offset, weight + 0.5)
    (out / "pfpld.ncnn.bin").write_bytes(bytes(data))

    report = check_parity(out, n=2)
    assert not report.passed
    verdicts = {r.stage: r.verdict for r in report.rows}
    assert verdicts == {"torch": "reference", "onnx": "pass", "onnxsim": "pass", "caffe": "pass", "ncnn": "FAIL"}
    ncnn_row = report.rows[-1]
    assert f"'{target}'" in ncnn_row.first_divergence and "first diverging layer" in ncnn_row.first_divergence


def test_parity_on_a_folder_of_face_crops_and_of_images_with_boxes(random_export, tmp_path):
    from pfpld.contract import PreprocessContract
    from pfpld.data.synthetic import render_face
    out, _ = random_export(0.25)        # write=False below: the shared export is not modified
    contract = PreprocessContract()
    crops, whole = tmp_path / "crops", tmp_path / "whole"
    crops.mkdir()
    whole.mkdir()
    rng = np.random.default_rng(4)
    lines = []
    for i in range(3):
        face = render_face(rng, image_size=200)
        cv2.imwrite(str(crops / f"{i}.png"), contract.crop_image(face.image, face.box)[0])
        cv2.imwrite(str(whole / f"{i}.png"), face.image)
        lines.append(f"{i}.png " + " ".join(str(v) for v in face.box))
    (whole / "boxes.txt").write_text("\n".join(lines) + "\n")
    a = check_parity(out, images=crops, n=3, write=False)
    b = check_parity(out, images=whole, n=3, write=False)
    assert a.passed and b.passed and a.n_faces == b.n_faces == 3
    # the same faces either way: the folder's crops are what the contract cuts from the boxes
    assert np.allclose(a.rows[0].outputs["landmarks"][3:], b.rows[0].outputs["landmarks"][3:], atol=1e-6)


def test_fp16_ncnn_is_held_to_its_stated_looser_tolerance(tmp_path):
    out = tmp_path / "fp16"
    proc = subprocess.run(PFPLD + ["export", "--model", "pfpld", "--width", "0.25", "--init", "random", "--target",
                                   "ncnn", "--fp16", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # --fp16 is the ncnn-fp16 format beside the fp32 one: each held to its own tolerance
    assert json.loads((out / "pfpld.fp16.ncnn.names.json").read_text())["fp16"] is True
    assert json.loads((out / "pfpld.ncnn.names.json").read_text())["fp16"] is False
    report = check_parity(out, n=3)
    rows = {r.stage: r for r in report.rows}
    assert rows["ncnn"].tolerance == FP32_MAX_ABS and rows["ncnn"].max_abs <= FP32_MAX_ABS
    assert rows["ncnn-fp16"].tolerance == FP16_MAX_ABS
    assert FP32_MAX_ABS < rows["ncnn-fp16"].max_abs <= FP16_MAX_ABS and report.passed


def test_a_pose_decoded_from_bins_may_differ_by_what_its_logits_may_carried_through_the_decode():
    """HopeNet's angles_deg is the softmax expectation of its bin logits: float32 rounding of large logits moves it
    by more than the plain 1e-5 rad (ResNet-50 at 224: 1.5e-5 rad in Caffe and ncnn), by at most the logits' own
    limit x the span of the bin centres; a real fault (degrees off) still fails."""
    import numpy as np
    from convert.parity import BIN_DECODE_GAIN_RAD, compare_outputs, output_limit
    from pfpld.models.hopenet import hopenet_spec
    spec = hopenet_spec(backbone="mobilenetv2", input_size=64, width=0.25)
    rng = np.random.default_rng(0)
    reference = {o.name: rng.uniform(-5, 5, (4,) + o.shape) for o in spec.outputs}
    reference["yaw_logits"][0, 3] = 13.0
    reference["angles_deg"] = rng.uniform(-60, 60, (4, 3))
    assert BIN_DECODE_GAIN_RAD == pytest.approx(np.radians(195.0))
    limit = output_limit(spec, "angles_deg", 1e-5, np.radians(reference["angles_deg"]), reference)
    assert limit == pytest.approx(1e-5 * 13.0 * np.radians(195.0))
    assert output_limit(spec, "angles_deg", 1e-5, np.radians(reference["angles_deg"])) == 1e-5   # no logits: plain
    close = {k: v.copy() for k, v in reference.items()}
    close["angles_deg"] += np.degrees(1.5e-5)
    assert compare_outputs(reference, close, slice(0, 0), 1e-5, spec)["passed"]
    off = {k: v.copy() for k, v in reference.items()}
    off["angles_deg"][1, 0] += 1.0
    assert not compare_outputs(reference, off, slice(0, 0), 1e-5, spec)["passed"]
