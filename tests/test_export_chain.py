"""`pfpld export` as a user runs it: the whole chain (torch -> onnx -> onnxsim -> caffe -> ncnn) for PFPLD 1.0
and 0.25 with random weights and randomized BatchNorm statistics, the manifest, the ONNX metadata, no BatchNorm
reaching Caffe, the ncnn name map, the folder rules, and one-line errors for files that are not ONNX."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from caffe_parity import EXPORT_WARNINGS
from cli_run import assert_one_line_error, run
from convert.export import export, source_from_onnx, source_from_random_init
from convert.ncnn import convert_onnx_to_ncnn
from convert.onnx2caffe import read_caffe
from convert.onnx_export import read_metadata
from convert.parity import check_parity
from convert.runtimes import NcnnRunner, OnnxRunner
from pfpld.errors import ConversionError, PfpldError
from pfpld.fileio import OUTPUT_MARKER

pytestmark = EXPORT_WARNINGS
NNIE_PROVEN_LAYERS = {"Input", "Convolution", "ReLU", "Eltwise", "Pooling", "Flatten", "Concat", "InnerProduct"}


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_export_all_writes_every_stage_with_matching_hashes(random_export, width):
    out, proc = random_export(width)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["torch", "onnx", "onnxsim", "caffe", "ncnn"]
    assert set(manifest["files"]) == {"pfpld.pt", "pfpld.onnx", "pfpld.sim.onnx", "pfpld.prototxt",
                                      "pfpld.caffemodel", "pfpld.caffe.names.json", "pfpld.ncnn.param",
                                      "pfpld.ncnn.bin", "pfpld.ncnn.names.json", "deploy.json"}
    assert {p.name for p in out.iterdir()} == set(manifest["files"]) | {"manifest.json", OUTPUT_MARKER}
    for name, record in manifest["files"].items():
        data = (out / name).read_bytes()
        assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest(), name
    assert manifest["spec"]["options"]["width"] == width and manifest["contract"]["color_order"] == "RGB"
    assert manifest["source"] == {"kind": "random", "model": "pfpld", "options": {"width": width, "input_size": 112},
                                  "seed": 3, "batchnorm": "random affine, statistics measured on random inputs"}
    assert manifest["opset"] == 13 and manifest["parity"] is None
    assert all(manifest["tools"][t] for t in ("torch", "onnx", "onnxruntime", "onnxsim", "ncnn", "pnnx"))
    assert all(s["seconds"] > 0 for s in manifest["stages"])
    for stage in manifest["stages"]:                      # the CLI reports every stage as it finishes
        assert stage["name"] in proc.stdout
    assert not list(out.parent.glob(".*"))               # no temporary folder left beside it


def test_onnx_files_carry_spec_and_contract_in_metadata(random_export):
    out, _ = random_export(1.0)
    for name in ("pfpld.onnx", "pfpld.sim.onnx"):
        model = onnx.load(str(out / name))
        onnx.checker.check_model(model)
        spec, contract = read_metadata(model)
        assert spec.output_names == ["landmarks", "pose"] and spec.options == {"width": 1.0, "input_size": 112}
        assert contract.input_size == 112 and contract.color_order == "RGB" and contract.scale == pytest.approx(1 / 255)
        assert [i.name for i in model.graph.input] == ["input"]
        assert [o.name for o in model.graph.output] == ["landmarks", "pose"]
        assert model.opset_import[0].version == 13


def test_no_batchnorm_reaches_caffe(random_export):
    out, _ = random_export(0.25)
    caffe = read_caffe(out / "pfpld.prototxt", out / "pfpld.caffemodel")
    types = {layer.type for layer in caffe.net.layer}
    assert types <= NNIE_PROVEN_LAYERS, types - NNIE_PROVEN_LAYERS
    assert "layers" not in (out / "pfpld.prototxt").read_text().split()     # Caffe 1.0 `layer`, never V1
    info = next(s for s in json.loads((out / "manifest.json").read_text())["stages"] if s["name"] == "caffe")["info"]
    assert info["batchnorm_layers_left"] == 0


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_ncnn_name_map_points_at_the_spec_outputs(random_export, width):
    out, _ = random_export(width)
    names = json.loads((out / "pfpld.ncnn.names.json").read_text())
    assert names["inputs"] == {"input": "in0"} and set(names["outputs"]) == {"landmarks", "pose"}
    assert names["fp16"] is False
    # Independently of the map's own check: the blob it names holds what onnxruntime calls that output.
    x = np.random.default_rng(11).random((1, 3, 112, 112), dtype=np.float32)
    reference = OnnxRunner(out / "pfpld.sim.onnx").run(x)
    raw = NcnnRunner(out / "pfpld.ncnn.param", out / "pfpld.ncnn.bin",
                     {"inputs": {"input": "in0"}, "outputs": {}, "fp16": False}).run_intermediates(
        x, list(names["outputs"].values()))
    for spec_name, blob in names["outputs"].items():
        assert np.abs(raw[blob].reshape(-1) - reference[spec_name].reshape(-1)).max() < 1e-5, spec_name


def test_deploy_json_lists_every_device_runtime_from_the_same_records(random_export):
    """deploy.json, what deploy_cpp reads: the manifest's contract, the spec's outputs by name and kind, and every
    ncnn-run format with its files and its own blob names (deploy_cpp's ctest runs it against Python ncnn)."""
    out, _ = random_export(0.25)
    manifest = json.loads((out / "manifest.json").read_text())
    deploy = json.loads((out / "deploy.json").read_text())
    assert deploy["format"] == "pfpld-deploy" and deploy["model"] == "pfpld"
    assert deploy["contract"] == manifest["contract"] and deploy["input"] == {"name": "input",
                                                                              "shape": [1, 3, 112, 112]}
    assert [(o["name"], o["kind"], o["shape"]) for o in deploy["outputs"]] == [
        (o["name"], o["kind"], o["shape"]) for o in manifest["spec"]["outputs"]]
    assert set(deploy["runtimes"]) == {s["name"] for s in manifest["stages"] if s["name"].startswith("ncnn")}
    for name, runtime in deploy["runtimes"].items():
        names = json.loads((out / f"pfpld.{name}.names.json").read_text())
        assert runtime == {"backend": "ncnn", "param": f"pfpld.{name}.param", "bin": f"pfpld.{name}.bin",
                           "input": names["inputs"]["input"], "outputs": names["outputs"], "fp16": names["fp16"]}
    assert manifest["files"]["deploy.json"]["sha256"]       # covered by the manifest like every other file


class TwoHeads(nn.Module):
    """Two outputs of the same size, listed in the graph in the opposite order to the one they are computed in:
    only values, not positions or sizes, can tell pnnx's out0 / out1 apart."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        early = self.a(x)
        late = self.b(torch.relu(early))
        return late.flatten(1), early[:, :, :6, :6].flatten(1)[:, :64]


def test_ncnn_name_map_is_matched_by_values_not_sizes(tmp_path):
    path = tmp_path / "two.onnx"
    torch.onnx.export(TwoHeads().eval(), (torch.rand(1, 3, 10, 10),), str(path), dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["late", "early"])
    result = convert_onnx_to_ncnn(path, tmp_path / "ncnn", "two")
    assert {p.name for p in (tmp_path / "ncnn").iterdir()} == {"two.ncnn.param", "two.ncnn.bin",
                                                              "two.ncnn.names.json"}
    x = np.random.default_rng(2).random((1, 3, 10, 10), dtype=np.float32)
    expected = OnnxRunner(path).run(x)
    got = NcnnRunner(result.param, result.bin, result.name_map_path).run(x)
    for name in ("late", "early"):
        assert got[name].shape == expected[name].shape
        assert np.abs(got[name] - expected[name]).max() < 1e-5, name


def test_out_folder_rules_refuse_foreign_folders_and_need_force(tmp_path):
    source = source_from_random_init("pfpld", 0.25, seed=0)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not yours")
    with pytest.raises(PfpldError, match="other files in it.*never replaces it, even with --force"):
        export(source, ["onnx"], foreign, force=True)
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]

    out = tmp_path / "export"
    first = export(source, ["onnx"], out)
    with pytest.raises(PfpldError, match="pass --force"):
        export(source, ["onnx"], out)
    second = export(source, ["onnx"], out, force=True)
    assert second.manifest.created >= first.manifest.created
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "deploy.json", "manifest.json", "pfpld.onnx",
                                                     "pfpld.pt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("content", [b"this is not a model\n", "truncated"])
def test_a_file_that_is_not_onnx_is_one_line_error_and_no_folder(random_export, tmp_path, content):
    bad = tmp_path / "model.onnx"
    if content == "truncated":
        src, _ = random_export(0.25)
        content = (src / "pfpld.onnx").read_bytes()[:5000]
    bad.write_bytes(content)
    out = tmp_path / "out"
    proc = run("export", "--onnx", bad, "--color-order", "RGB", "--scale", "1/255", "--target", "all", "--out", out)
    assert_one_line_error(proc, str(bad))
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_users_onnx_without_metadata_needs_and_takes_contract_options(random_export, tmp_path):
    src, _ = random_export(0.25)
    model = onnx.load(str(src / "pfpld.sim.onnx"))
    del model.metadata_props[:]
    bare = tmp_path / "theirs.onnx"
    onnx.save(model, str(bare))

    proc = run("export", "--onnx", bare, "--target", "caffe", "--out", tmp_path / "refused")
    assert_one_line_error(proc, "no pfpld contract", "--color-order")
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "theirs"
    proc = run("export", "--onnx", bare, "--color-order", "BGR", "--scale", "1/255", "--mean", "1,2,3",
               "--target", "all", "--out", out)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["onnx", "onnxsim", "caffe", "ncnn"]   # no torch model
    assert manifest["source"]["kind"] == "onnx" and manifest["source"]["spec_from"] == "graph"
    assert manifest["source"]["contract_from"] == "options"
    assert manifest["contract"]["color_order"] == "BGR" and manifest["contract"]["mean"] == [1.0, 2.0, 3.0]
    assert [o["name"] for o in manifest["spec"]["outputs"]] == ["landmarks", "pose"]
    spec, contract = read_metadata(onnx.load(str(out / "theirs.onnx")))     # now it carries them
    assert spec.input_size == 112 and contract.color_order == "BGR"

    report = check_parity(out, n=2)      # the user's file is the reference
    assert report.passed and report.rows[0].stage == "onnx" and len(report.rows) == 4


def test_onnx_metadata_contract_is_kept_and_options_override_it(random_export):
    src, _ = random_export(0.25)
    kept = source_from_onnx(src / "pfpld.onnx")
    assert kept.record.contract_from == "metadata" and kept.record.spec_from == "metadata"
    assert kept.spec.options == {"width": 0.25, "input_size": 112}
    changed = source_from_onnx(src / "pfpld.onnx", {"expand": 1.4})
    assert changed.contract.crop.expand == 1.4 and changed.contract.color_order == "RGB"
    assert changed.record.contract_from == "metadata+options"


class SineHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.sin(self.conv(x))


def test_an_op_caffe_cannot_express_names_stage_and_node_and_leaves_no_folder(tmp_path):
    path = tmp_path / "sine.onnx"
    torch.onnx.export(SineHead().eval(), (torch.rand(1, 3, 16, 16),), str(path), dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["wave"])
    source = source_from_onnx(path, {"color_order": "RGB", "scale": "1/255"})
    with pytest.raises(ConversionError, match=r"export stage caffe: node '/Sin' \(Sin\): op Sin is not supported"):
        export(source, ["caffe"], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sine.onnx"]
