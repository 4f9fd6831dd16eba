"""NNIE target: the log quantiser on hand-computed values, the numpy Caffe runner against OpenCV, mapper cfgs per
precision, the Caffe-1.0 / NNIE preflight (one message per forbidden construct, naming the layer), mapper-safe
names with `_hp` marks, the planar .bgr layout byte for byte, and the bundle written by `pfpld export`."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from convert.onnx2caffe import caffe_pb2
from convert.onnx2caffe.context import make_layer
from convert.runtimes import CaffeRunner
from pfpld.contract import PreprocessContract
from quant.nnie import (make_nnie_net, mapper_configs, nnie_name, parse_cfg, planar_bytes, preflight)
from quant.nnie_sim import LOG8, LOG16, CaffeGraph, log_quantize, log_zero_point, s32_output

PFPLD = [sys.executable, "-m", "pfpld_app.cli"]


# --- the quantiser -----------------------------------------------------------------------------------------------
def test_log8_quantiser_on_hand_computed_values():
    # c = 1: z = round(16 * 0) - 127 = -127; codes are round(16 log2 |x|) + 127, clamped to [0, 127] (x > 0) or
    # [1, 127] (x < 0); the value is 2^((code - 127) / 16).
    assert log_zero_point(1.0) == -127
    assert log_zero_point(6.0) == round(16 * np.log2(6.0)) - 127 == -86
    x = np.array([1.0, 0.5, 0.3, 2.0, 0.001, -0.3, -0.0025, 0.0, 2 ** (-127 / 16), 2 ** (-127 / 16 - 1) * 0.99])
    expected = np.array([
        1.0,                        # 16 log2 1 = 0 -> code 127
        0.5,                        # -16 -> code 111 -> 2^-1
        2 ** (-28 / 16),            # 16 log2 0.3 = -27.79 -> -28 -> 0.297302
        1.0,                        # above c: clamped to code 127
        0.0,                        # below half the smallest magnitude 2^(-127/16) = 0.004093: zero
        -(2 ** (-28 / 16)),         # sign-magnitude: same magnitude as +0.3
        -(2 ** (-126 / 16)),        # -0.0025 < -2^((z+1)/16 - 1) = -0.002136: code clamps to 1, not 0
        0.0,
        2 ** (-127 / 16),           # the smallest positive value is exact (code 0)
        0.0,                        # just under half of it: zero
    ])
    assert np.allclose(log_quantize(x, 1.0), expected, rtol=0, atol=1e-12), log_quantize(x, 1.0) - expected
    assert log_quantize(np.array([0.2973017787]), 1.0)[0] == pytest.approx(2 ** (-28 / 16), abs=1e-12)


def test_log16_quantiser_and_s32_outputs():
    # 16 bit ("1.5.7"): 128 steps per octave, codes 0..4095; z = round(128 log2 c) - 4095.
    assert log_zero_point(1.0, LOG16) == -4095
    x = np.array([0.3, 1.0, -0.7])
    expected = np.sign(x) * 2.0 ** (np.rint(128 * np.log2(np.abs(x))) / 128)
    assert np.allclose(log_quantize(x, 1.0, LOG16), expected, atol=1e-15)
    assert np.abs(log_quantize(x, 1.0, LOG16) / x - 1).max() < 2 ** (0.5 / 128) - 1 + 1e-12   # <= half a step
    assert np.abs(log_quantize(x, 1.0, LOG8) / x - 1).max() > 0.01                           # 8 bit is coarser
    assert s32_output(np.array([0.123456, -1.0 / 8192 + 1e-9])).tolist() == [506 / 4096, 0.0]


def test_numpy_caffe_runner_matches_opencv(random_export):
    folder, _ = random_export(0.25)
    graph = CaffeGraph(folder / "pfpld.prototxt", folder / "pfpld.caffemodel")
    x = np.random.default_rng(0).random((3, 3, 112, 112), dtype=np.float32)
    ours = graph.forward(x)
    opencv = CaffeRunner(folder / "pfpld.prototxt", folder / "pfpld.caffemodel",
                         folder / "pfpld.caffe.names.json").run(x)
    for name in ("landmarks", "pose"):
        assert np.abs(ours[name] - opencv[name]).max() < 1e-5


# --- mapper configs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision,mode", [("int8", "0"), ("int16", "1"), ("mixed", "2")])
def test_cfgs_come_from_the_contract_for_each_precision(precision, mode):
    files = mapper_configs("pfpld", PreprocessContract(), precision)
    assert set(files) == {"pfpld_inst.cfg", "pfpld_func.cfg"}
    for variant, simulation in (("inst", "0"), ("func", "1")):
        cfg = parse_cfg(files[f"pfpld_{variant}.cfg"])
        assert cfg == {"prototxt_file": "./pfpld.prototxt", "caffemodel_file": "./pfpld.caffemodel",
                       "batch_num": "1", "net_type": "0", "sparse_rate": "0", "compile_mode": mode,
                       "is_simulation": simulation, "log_level": "0", "instruction_name": f"./pfpld_{variant}",
                       "RGB_order": "RGB", "data_scale": "0.003921568627", "internal_stride": "16",
                       "image_list": "./image_list.txt", "image_type": "1", "mean_file": "null", "norm_type": "3"}


def test_cfg_with_a_mean_writes_a_channel_mean_file():
    contract = PreprocessContract(color_order="BGR", mean=(104.0, 117.0, 123.0), scale=0.017)
    files = mapper_configs("net", contract, "int8", internal_stride=32)
    cfg = parse_cfg(files["net_inst.cfg"])
    assert (cfg["norm_type"], cfg["mean_file"], cfg["RGB_order"], cfg["data_scale"], cfg["internal_stride"]) == \
        ("5", "./mean.txt", "BGR", "0.017", "32")
    assert files["mean.txt"].split() == ["104.000000", "117.000000", "123.000000"]
    plain = parse_cfg(mapper_configs("net", PreprocessContract(scale=1.0), "int8")["net_inst.cfg"])
    assert plain["norm_type"] == "0" and "data_scale" not in plain


# --- names and _hp ---------------------------------------------------------------------------------------------------
def test_names_are_mapper_safe_short_unique_and_never_end_in_a_marker():
    taken: set[str] = set()
    a = nnie_name("/conv3_1/conv/conv.0/Conv_output_0", taken)
    b = nnie_name("/conv3_1/conv/conv_0/Conv_output_0", taken)
    assert a == "conv3_1_conv_conv_0_Conv" and b != a
    long = nnie_name("/block5_6/conv/conv.6/Conv_output_0/with/a/very/long/tail", taken)
    assert len(long) <= 31
    for marked in ("fc_hp", "x/_cpu", "y_report"):
        name = nnie_name(marked, taken)
        assert not name.endswith(("_hp", "_cpu", "_report")), name


def test_mixed_marks_the_output_layers_hp_and_the_files_pass_preflight(random_export, tmp_path):
    folder, _ = random_export(0.25)
    names = json.loads((folder / "pfpld.caffe.names.json").read_text())
    for precision, expected in (("mixed", ["landmarks_hp", "pose_hp"]), ("int8", [])):
        net = make_nnie_net(folder / "pfpld.prototxt", folder / "pfpld.caffemodel", names, precision)
        assert sorted(net.hp_layers) == expected
        proto, model = tmp_path / f"{precision}.prototxt", tmp_path / f"{precision}.caffemodel"
        proto.write_text(net.prototxt_text)
        model.write_bytes(net.caffemodel)
        assert preflight(proto, model) == []
        assert "/" not in net.prototxt_text.split("\n", 1)[1]
        parsed = caffe_pb2.NetParameter()
        text_format.Parse(proto.read_text(), parsed)
        assert all(len(t) <= 31 for layer in parsed.layer for t in layer.top)
        # OpenCV runs the renamed files to the same numbers as the Caffe stage
        x = np.random.default_rng(1).random((1, 3, 112, 112), dtype=np.float32)
        ref = CaffeRunner(folder / "pfpld.prototxt", folder / "pfpld.caffemodel", names).run(x)
        got = CaffeRunner(proto, model, {"input": net.input_blob, "outputs": net.outputs}).run(x)
        assert all(np.array_equal(ref[k], got[k]) for k in ref)
    assert net.outputs == {"landmarks": "landmarks", "pose": "pose"}


# --- preflight ---------------------------------------------------------------------------------------------------------
def _net(mutate=None) -> tuple[caffe_pb2.NetParameter, dict]:
    """A small valid NNIE net: Input -> Convolution -> ReLU -> Pooling -> Flatten -> InnerProduct."""
    net = caffe_pb2.NetParameter(name="small")
    data = make_layer("Input", [], ["data"])
    data.input_param.shape.add().dim.extend([1, 3, 8, 8])
    conv = make_layer("Convolution", ["data"], ["conv"], (np.ones((4, 3, 3, 3)), np.zeros(4)))
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    relu = make_layer("ReLU", ["conv"], ["relu"])
    pool = make_layer("Pooling", ["relu"], ["pool"])
    pool.pooling_param.pool = caffe_pb2.PoolingParameter.AVE
    pool.pooling_param.kernel_size = 6
    flat = make_layer("Flatten", ["pool"], ["flat"])
    fc = make_layer("InnerProduct", ["flat"], ["out"], (np.ones((2, 4)), np.zeros(2)))
    fc.inner_product_param.num_output = 2
    net.layer.extend([data, conv, relu, pool, flat, fc])
    return net, {layer.name: layer for layer in net.layer}


def _write(tmp_path, net, extra_text: str = "") -> tuple[Path, Path]:
    proto, model = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    model.write_bytes(net.SerializeToString())
    structure = caffe_pb2.NetParameter()
    structure.CopyFrom(net)
    for layer in structure.layer:
        del layer.blobs[:]
    proto.write_text(text_format.MessageToString(structure) + extra_text)
    return proto, model


def test_preflight_passes_the_small_valid_net(tmp_path):
    assert preflight(*_write(tmp_path, _net()[0])) == []


def _one(violations: list[str], *fragments: str) -> str:
    assert len(violations) == 1, violations
    for fragment in fragments:
        assert fragment in violations[0], violations[0]
    return violations[0]


def test_preflight_rejects_a_layer_outside_the_proven_set_unless_allowed(tmp_path):
    net, layers = _net()
    layers["relu"].type = "Sigmoid"
    proto, model = _write(tmp_path, net)
    _one(preflight(proto, model), "layer 'relu' (Sigmoid)", "NNIE-proven", "--allow-layer Sigmoid")
    assert preflight(proto, model, allow_layers=["Sigmoid"]) == []


def test_preflight_rejects_an_input_batch_other_than_one(tmp_path):
    net, layers = _net()
    layers["data"].input_param.shape[0].dim[0] = 4
    _one(preflight(*_write(tmp_path, net)), "layer 'data' (Input)", "n = 4")


def test_preflight_rejects_in_place_flatten_and_reshape(tmp_path):
    net, layers = _net()
    flat = layers["flat"]
    flat.top[:] = ["pool"]
    layers["out"].bottom[:] = ["pool"]
    _one(preflight(*_write(tmp_path, net)), "layer 'flat' (Flatten)", "in place")


def test_preflight_rejects_duplicate_layer_names_and_tops(tmp_path):
    net, layers = _net()
    layers["relu"].name = "conv"
    _one(preflight(*_write(tmp_path, net)[:1]), "layer 'conv' (ReLU)", "duplicate layer name")
    net, layers = _net()
    layers["pool"].top[:] = ["relu"]
    layers["flat"].bottom[:] = ["relu"]
    _one(preflight(*_write(tmp_path, net)[:1]), "layer 'pool' (Pooling)", "top 'relu' is also written by layer "
                                                                         "'relu'")


def test_preflight_rejects_what_is_newer_than_caffe_1_0(tmp_path):
    net, _ = _net()
    clip = 'layer {\n  name: "clip6"\n  type: "Clip"\n  bottom: "out"\n  top: "clip6"\n  clip_param { min: 0 max: 6 }\n}\n'
    violations = preflight(_write(tmp_path, net, clip)[0])
    assert len(violations) == 2, violations
    assert "layer 'clip6' (Clip, line" in violations[0] and "clip_param is newer than Caffe 1.0" in violations[0]
    assert violations[1] == "layer 'clip6' (Clip): layer type Clip is newer than Caffe 1.0"
    net, layers = _net()
    pooled = 'layer {\n  name: "p2"\n  type: "Pooling"\n  bottom: "pool"\n  top: "p2"\n  pooling_param { pool: MAX ' \
             'kernel_size: 1 round_mode: FLOOR }\n}\n'
    _one(preflight(_write(tmp_path, net, pooled)[0]), "layer 'p2' (Pooling", "round_mode is newer than Caffe 1.0")


def test_preflight_rejects_v1_layers_net_level_inputs_missing_weights_and_global_pooling(tmp_path):
    net, _ = _net()
    proto, _ = _write(tmp_path, net, 'layers {\n  name: "old"\n  type: RELU\n}\n')
    _one(preflight(proto), "V1 `layers`")
    net, _ = _net()
    del net.layer[0]
    net.layer[0].bottom[:] = ["data"]
    proto, _ = _write(tmp_path, net)
    proto.write_text('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n' + proto.read_text())
    violations = preflight(proto)
    assert any("net-level `input`" in v for v in violations) and any("0 Input layers" in v for v in violations)
    assert any("bottom 'data' is produced by no earlier layer" in v for v in violations)
    net, layers = _net()
    proto, model = _write(tmp_path, net)
    weights = caffe_pb2.NetParameter()
    weights.CopyFrom(net)
    del weights.layer[5].blobs[:]            # the InnerProduct's weights gone
    model.write_bytes(weights.SerializeToString())
    _one(preflight(proto, model), "layer 'out' (InnerProduct)", "no weights")
    net, layers = _net()
    layers["pool"].pooling_param.global_pooling = True
    _one(preflight(*_write(tmp_path, net)), "layer 'pool' (Pooling)", "global_pooling")


# --- board inputs ------------------------------------------------------------------------------------------------------
def test_bgr_planar_layout_is_byte_exact():
    crop = np.zeros((112, 112, 3), np.uint8)
    crop[..., 0] = (np.arange(112)[:, None] + np.arange(112)[None, :]) % 256    # B: row + column
    crop[..., 1] = 200                                                          # G constant
    crop[..., 2] = np.arange(112)[None, :]                                      # R: column index
    data = planar_bytes(crop, "BGR")
    plane = 112 * 112
    assert len(data) == 37632 == 3 * plane
    assert data[0] == 0 and data[1] == 1 and data[112] == 1 and data[113] == 2      # B plane, row-major
    assert data[plane:2 * plane] == bytes([200]) * plane                           # then G
    assert data[2 * plane + 5 * 112 + 7] == 7                                       # then R, row 5 column 7
    assert np.array_equal(np.frombuffer(data, np.uint8).reshape(3, 112, 112).transpose(1, 2, 0), crop)
    rgb = planar_bytes(crop, "RGB")
    assert rgb[:plane] == data[2 * plane:] and rgb[2 * plane:] == data[:plane]


# --- the export and its bundle ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calib_set(prepared_dir, tmp_path_factory) -> Path:
    from quant.calibration import make_calibration_set
    out = tmp_path_factory.mktemp("calib") / "set"
    make_calibration_set(prepared_dir, out, n=12, seed=0)
    return out


def _export(*args, timeout=600):
    return subprocess.run(PFPLD + ["export", "--model", "pfpld", "--width", "0.25", "--init", "random",
                                   "--seed", "3"] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout)


def test_nnie_export_writes_a_checked_sdk_bundle(calib_set, tmp_path):
    out = tmp_path / "exp"
    proc = _export("--target", "nnie", "--calib", calib_set, "--out", out)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["targets"] == ["nnie"]                       # what was asked; stages hold what it needs too
    assert [s["name"] for s in manifest["stages"]] == ["torch", "onnx", "onnxsim", "caffe", "nnie"]
    info = next(s["info"] for s in manifest["stages"] if s["name"] == "nnie")
    assert info["precision"] == "mixed" and info["hp_layers"] == ["landmarks_hp", "pose_hp"]
    bundle = out / "nnie_sdk"
    model_dir = bundle / "data" / "nnie_model" / "pfpld"
    assert {p.name for p in model_dir.iterdir()} == {"pfpld.prototxt", "pfpld.caffemodel", "pfpld_inst.cfg",
                                                      "pfpld_func.cfg", "image_list.txt", "pfpld.names.json",
                                                      "deploy.json"}
    # What deploy_cpp's NNIE backend reads: the contract as exported, the .wk the inst cfg makes, the plane order of
    # the cfg's RGB_order, the report blob of every output by name, S32 / 4096.
    deploy = json.loads((model_dir / "deploy.json").read_text())
    assert deploy["format"] == "pfpld-deploy" and deploy["contract"] == manifest["contract"]
    assert [(o["name"], o["kind"]) for o in deploy["outputs"]] == [("landmarks", "landmarks"), ("pose", "pose")]
    instruction = next(line.split()[1] for line in (model_dir / "pfpld_inst.cfg").read_text().splitlines()
                       if line.startswith("[instruction_name]"))
    assert deploy["runtimes"] == {"nnie": {"backend": "nnie", "wk": f"{Path(instruction).name}.wk", "input": "input",
                                           "planes": ["R", "G", "B"],
                                           "outputs": {"landmarks": "landmarks_hp", "pose": "pose_hp"},
                                           "s32_scale": 4096}}
    listed = (model_dir / "image_list.txt").read_text().split()
    assert len(listed) == 12 and all((model_dir / p).is_file() for p in listed)
    bundle_manifest = json.loads((bundle / "manifest.json").read_text())
    for rel, record in bundle_manifest["files"].items():
        assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == record["sha256"], rel
    planar = sorted((bundle / "data" / "nnie_image" / "rgb_planar").glob("*.bgr"))
    assert len(planar) == 4 and all(p.stat().st_size == 37632 for p in planar)
    first = cv2.imread(str(model_dir / listed[0]))
    # The first calibration crop, planes in the cfg's RGB_order (the contract's RGB): R plane first.
    data = planar[0].read_bytes()
    assert data == planar_bytes(first, "RGB") and data[:112 * 112] == np.ascontiguousarray(first[:, :, 2]).tobytes()
    assert bundle_manifest["board_input"]["planes"] == "RGB"
    expected = json.loads(planar[0].with_suffix(".json").read_text())
    assert len(expected["float_outputs"]["landmarks"]) == 196 and "nnie_sim_mixed_outputs" in expected
    assert expected["layout"].startswith("planar U8, planes R, G, B")
    # The outputs of the wrong plane order are there, and differ, for the board-side check.
    swapped = np.array(expected["float_outputs_if_planes_swapped"]["landmarks"])
    assert swapped.shape == (196,) and np.abs(swapped - expected["float_outputs"]["landmarks"]).max() > 1e-4
    assert expected["swapped_planes_nme"] > 0
    readme = (bundle / "README.md").read_text()
    assert "nnie_mapper_12 pfpld_inst.cfg" in readme and "| Hi3516DV300 | NNIE 1.2 |" in readme
    # an existing bundle is replaced only with --force, and nothing is written next to it
    again = _export("--target", "nnie", "--calib", calib_set, "--out", out)
    assert again.returncode == 2 and "--force" in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_sdk_dir_bundle_and_a_refused_preflight(calib_set, tmp_path):
    sdk = tmp_path / "sdk"
    proc = _export("--target", "nnie", "--calib", calib_set, "--precision", "int8", "--sdk-dir", sdk, "--out",
                   tmp_path / "exp")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "exp" / "nnie_sdk").exists()
    cfg = parse_cfg((sdk / "data" / "nnie_model" / "pfpld" / "pfpld_inst.cfg").read_text())
    assert cfg["compile_mode"] == "0" and "_hp" not in (sdk / "data" / "nnie_model" / "pfpld" /
                                                          "pfpld.prototxt").read_text()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    refused = _export("--target", "nnie", "--calib", calib_set, "--sdk-dir", foreign, "--out", tmp_path / "exp2")
    assert refused.returncode == 2 and "not an NNIE bundle" in refused.stderr
    assert not (tmp_path / "exp2").exists() and sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
    hp = _export("--target", "nnie", "--calib", calib_set, "--hp-layer", "nope", "--out", tmp_path / "exp3")
    assert hp.returncode == 2 and "--hp-layer nope: no such layer" in hp.stderr


def test_a_folder_that_is_no_calibration_set_is_refused_before_any_export_work(tmp_path):
    (tmp_path / "not_calib").mkdir()
    out = tmp_path / "exp"
    proc = _export("--target", "nnie", "--calib", tmp_path / "not_calib", "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'not_calib'}: no image_list.txt (make a " \
                                                    f"calibration set with `pfpld calib`)"
    assert "onnx" not in proc.stdout and not out.exists()       # no stage ran, nothing written
