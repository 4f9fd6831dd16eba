"""int8 before the board: ncnn's int8 formats (table, tagged int8 weights, scales) as the ncnn runtime reads them,
the KL threshold, and `pfpld check-parity --int8` reporting NME / pose-MAE deltas of every int8 stage for a
small trained model."""
from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from convert.runtimes import NcnnRunner
from quant.ncnn_int8 import INT8_TAG, int8_round, kl_threshold_bin, read_table, read_weights, weight_scales

PFPLD = [sys.executable, "-m", "pfpld_app.cli"]


def test_kl_threshold_keeps_a_flat_range_and_clips_a_long_tail():
    flat = np.ones(2048)
    assert kl_threshold_bin(flat) >= 2000                     # nothing to gain from clipping a uniform range
    tail = np.zeros(2048)
    tail[:200] = 1000.0
    tail[2040] = 1.0                                          # one outlier far out: clip just past the bulk
    assert 190 <= kl_threshold_bin(tail) <= 260
    decaying = np.exp(-np.arange(2048) / 60.0)                # a ReLU-like long tail: clipped, not kept whole
    assert 300 < kl_threshold_bin(decaying) < 1500


def test_int8_round_is_c_round_clamped_to_127():
    assert int8_round(np.array([0.5, -0.5, 1.49, 126.6, 300.0, -300.0])).tolist() == [1, -1, 1, 127, 127, -127]


@pytest.fixture(scope="module")
def trained_export(prepared_dir, tmp_path_factory):
    """A PFPLD-0.25 trained for a few epochs on the synthetic set, exported to NNIE (mixed), ncnn and the int8
    models, with a calibration set from the training split."""
    from pfpld.losses import LossConfig
    from pfpld.train import TrainConfig, train
    from quant.calibration import make_calibration_set
    root = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    train(TrainConfig(data=str(prepared_dir), out=str(root / "run"), width=0.25, epochs=4, batch_size=32, lr=3e-3,
                      workers=0, milestones=(3,), seed=0, augment=False, loss=LossConfig()), progress=False)
    make_calibration_set(prepared_dir, root / "calib", n=16, seed=0)
    out = root / "export"
    proc = subprocess.run(PFPLD + ["export", str(root / "run" / "best.pt"), "--target", "nnie", "--target", "ncnn",
                                   "--int8", "--calib", str(root / "calib"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out, root


def test_ncnn_int8_files_follow_ncnn2table_and_ncnn2int8_formats(trained_export):
    out, _ = trained_export
    weights, blobs = read_table(out / "pfpld.ncnn.int8.table")
    layers, fp32, _ = read_weights(out / "pfpld.ncnn.param", out / "pfpld.ncnn.bin")
    assert set(weights) == set(blobs) == set(fp32)              # every conv / depthwise / fc is quantised
    for name, w in fp32.items():
        assert len(weights[name]) == w.rows and len(blobs[name]) == 1
        assert np.allclose(weights[name], weight_scales(w), rtol=1e-5)
    lines = {ln.split()[1]: ln.split() for ln in (out / "pfpld.int8.ncnn.param").read_text().splitlines()[2:]}
    terms = {name: int(next(t for t in lines[name] if t.startswith("8="))[2:]) for name in fp32}
    kinds = {name: fp32[name].layer.type for name in fp32}
    assert all(terms[n] in ((1, 101) if kinds[n] == "ConvolutionDepthWise" else (2, 102)) for n in fp32)
    assert any(t > 100 for t in terms.values())                  # some conv -> conv chains requantize
    # the first layer's record in the bin: int8 tag, its int8 weights, fp32 bias, scales
    data = (out / "pfpld.int8.ncnn.bin").read_bytes()
    first = layers[1].name
    w = fp32[first]
    assert struct.unpack_from("<I", data, 0)[0] == INT8_TAG
    q = np.frombuffer(data[4:4 + w.weight.size], np.int8)
    assert np.array_equal(q, int8_round(w.weight_rows * weights[first][:, None]).reshape(-1))
    # and the ncnn runtime runs it close to fp32 on the calibration crops
    from pfpld.contract import PreprocessContract
    from quant.calibration import read_calibration_set
    x = read_calibration_set(trained_export[1] / "calib", PreprocessContract()).inputs(PreprocessContract())[:4]
    ref = NcnnRunner(out / "pfpld.ncnn.param", out / "pfpld.ncnn.bin", out / "pfpld.ncnn.names.json").run(x)
    got = NcnnRunner(out / "pfpld.int8.ncnn.param", out / "pfpld.int8.ncnn.bin",
                     out / "pfpld.int8.ncnn.names.json").run(x)
    assert 0 < np.abs(got["landmarks"] - ref["landmarks"]).max() < 0.1


def test_check_parity_int8_reports_nme_and_pose_deltas(trained_export, prepared_dir, tmp_path):
    out, _ = trained_export
    proc = subprocess.run(PFPLD + ["check-parity", str(out), "--n", "2", "--int8", "--images", str(prepared_dir),
                                   "--heldout", "24", "--json", str(tmp_path / "result.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    assert "int8 on 24 held-out faces" in proc.stdout
    result = json.loads((tmp_path / "result.json").read_text())["int8"]
    stages = {s["stage"]: s for s in result["stages"]}
    # The deployed int8 formats come from the registry (nnie at its exported precision, mixed); the other NNIE
    # precisions are what-if rows.
    assert set(stages) == {"nnie", "nnie-sim int8", "nnie-sim int16", "onnx-int8", "ncnn-int8"}
    assert [s["stage"] for s in result["stages"] if s["deployed"]] == ["nnie", "onnx-int8", "ncnn-int8"]
    assert "precision mixed" in stages["nnie"]["detail"]
    assert 0 < result["float"]["nme_pct"] < 100 and result["float"]["pose_mae_deg"] > 0
    for s in stages.values():
        assert s["error"] is None, s
        for key in ("nme_pct", "delta_nme_points", "pose_mae_deg", "delta_pose_deg", "nme_vs_float_pct"):
            assert np.isfinite(s[key]), (s["stage"], key)
        assert abs(s["delta_nme_points"]) < 5 and abs(s["delta_pose_deg"]) < 10     # int8, not a broken model
        assert s["nme_vs_float_pct"] > 0                                             # real differences, no shortcut
    # 16 bit is closer to float than 8 bit, on the same files
    assert stages["nnie-sim int16"]["nme_vs_float_pct"] < stages["nnie-sim int8"]["nme_vs_float_pct"]
    verdict_ok = all(s["delta_nme_points"] <= 0.3 for s in stages.values() if s["deployed"])
    assert (result["verdict"] == "pass") == verdict_ok and (proc.returncode == 0) == verdict_ok
    assert "| nnie |" in (out / "int8.md").read_text()


def test_qdq_weights_fit_16_bit_pair_sums_so_integer_kernels_match_the_qdq_graph(tmp_path):
    """onnxruntime's u8s8 kernels on x86 CPUs without VNNI add each pair of u8 x s8 products in 16 bits. The QDQ model's
    weights must keep every pair within 32,767 on any CPU (|w| <= 64: 2 x 255 x 64 = 32,640), and on this CPU the
    integer kernels must give what the same QDQ graph gives evaluated in float (with full-range weights this model's
    first convolution saturated on AVX2: its landmarks 26 output steps away)."""
    import onnx

    from convert.artifacts import ExportFolder
    from convert.export import export, source_from_random_init
    from convert.parity import face_crops
    from convert.runtimes import OnnxRunner
    from quant.ort_int8 import quantize_qdq
    export(source_from_random_init("landmark5", 1.0, 3, {}), ["onnxsim"], tmp_path / "export", log=lambda *a: None)
    folder = ExportFolder.open(tmp_path / "export")
    crops, _ = face_crops(folder.contract, 24, None, 5)
    x = np.stack([folder.contract.to_tensor_layout(c) for c in crops]).astype(np.float32)
    path = tmp_path / "int8.onnx"      # every conv integer (the recipe's default runs landmark5's PReLU convs in float)
    recipe = quantize_qdq(folder.require("onnxsim"), path, x[:16], float_readers=())

    model = onnx.load(str(path))
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    dequantized_by = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    weights = [initializers[dequantized_by[n.input[1]].input[0]] for n in model.graph.node
               if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in dequantized_by]
    assert len(weights) == 7 and all(w.dtype == np.int8 for w in weights)        # every conv of landmark5
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == 64      # per channel, up to the limit

    landmarks = folder.spec.output_names[0]
    integer = OnnxRunner(path).run(x[16:])[landmarks]
    graph_in_float = OnnxRunner(path, optimize=False).run(x[16:])[landmarks]
    assert np.abs(integer - graph_in_float).max() < 2 / 255                      # landmarks in [0, 1]: two u8 steps
    quantize_qdq(folder.require("onnxsim"), tmp_path / "default.onnx", x[:16])
    assert np.abs(OnnxRunner(tmp_path / "default.onnx").run(x[16:])[landmarks]
                  - OnnxRunner(tmp_path / "default.onnx", optimize=False).run(x[16:])[landmarks]).max() < 2 / 255

    described = {p.key: p.value for p in model.metadata_props}["pfpld.int8"]
    assert described == recipe.describe() and "weights s8 per-channel in [-64, 64]" in described
    assert "activations u8" in described and "16 calibration images" in described
    assert "every Conv/Gemm output quantised" in described


def test_qdq_keeps_a_conv_output_only_prelu_reads_float_and_lands_closer_to_float(tmp_path):
    """onnxruntime has no integer PReLU: with every conv output quantised, a MobileFaceNet's activation is rounded
    before each PReLU and again after it, where the next conv reads it. The recipe drops the first rounding (the
    conv runs in float on its int8 weights), and the embedding comes closer to float than with both (random
    facerec at its demo size: 1 - cosine about 0.65-0.7 x the one with both roundings)."""
    import onnx

    from convert.artifacts import ExportFolder
    from convert.export import export, source_from_random_init
    from convert.onnx_graph import GraphIndex
    from convert.parity import face_crops, one_minus_cosine
    from convert.runtimes import OnnxRunner
    from pfpld.models import MODELS
    from quant.ort_int8 import quantize_qdq
    options = dict(MODELS["facerec"].demo_options)
    export(source_from_random_init("facerec", options.pop("width"), 3, options), ["onnxsim"], tmp_path / "export",
           log=lambda *a: None)
    folder = ExportFolder.open(tmp_path / "export")
    crops, _ = face_crops(folder.contract, 40, None, 5)
    x = np.stack([folder.contract.to_tensor_layout(c) for c in crops]).astype(np.float32)
    ours = quantize_qdq(folder.require("onnxsim"), tmp_path / "ours.onnx", x[:16])
    both = quantize_qdq(folder.require("onnxsim"), tmp_path / "both.onnx", x[:16], float_readers=())

    float_index = GraphIndex(onnx.load(str(folder.require("onnxsim"))))
    before_prelu = {n.input[0] for n in float_index.model.graph.node
                    if n.op_type == "PRelu" and float_index.producers[n.input[0]].op_type == "Conv"}
    assert ours.float_conv_outputs == len(before_prelu) > 0 and both.float_conv_outputs == 0
    model = onnx.load(str(tmp_path / "ours.onnx"))
    index = GraphIndex(model)
    quantised = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    prelus = [n for n in model.graph.node if n.op_type == "PRelu"]
    assert {n.input[0] for n in prelus} == before_prelu and not before_prelu & quantised   # the conv's float output
    assert {n.output[0] for n in prelus} <= quantised                                      # rounded once, after
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        if conv.output[0] in before_prelu:      # a float conv: its int8 weights stored dequantised, on their grid
            w = onnx.numpy_helper.to_array(index.initializers[conv.input[1]])
            steps = w.reshape(len(w), -1) * 64 / np.abs(w.reshape(len(w), -1)).max(axis=1, keepdims=True)
            assert w.dtype == np.float32 and np.abs(steps - steps.round()).max() < 1e-3
        else:
            weight = index.producers[conv.input[1]]
            assert weight.op_type == "DequantizeLinear"
            assert index.initializers[weight.input[0]].data_type == onnx.TensorProto.INT8

    embedding = folder.spec.output_names[0]
    reference = OnnxRunner(folder.require("onnxsim")).run(x[16:])[embedding].reshape(len(x) - 16, -1)
    error = {name: one_minus_cosine(reference, OnnxRunner(tmp_path / f"{name}.onnx").run(x[16:])[embedding]
                                    .reshape(len(x) - 16, -1)).mean() for name in ("ours", "both")}
    assert error["ours"] < 0.85 * error["both"], error
    described = {p.key: p.value for p in model.metadata_props}["pfpld.int8"]
    assert described == ours.describe()
    assert f"{len(before_prelu)} Conv/Gemm outputs read only by PRelu kept float" in described


def test_qdq_of_a_relu_model_quantises_every_conv_output(trained_export):
    """PFPLD has no PReLU: onnxruntime folds each ReLU into its conv's output range, and the recipe changes nothing;
    the manifest says how many conv outputs were kept float (none) and how the model was made."""
    import onnx

    from convert.artifacts import ExportFolder
    from convert.onnx_graph import GraphIndex
    out, _ = trained_export
    info = ExportFolder.open(out).info("onnx-int8")
    assert info["float_conv_outputs"] == 0 and info["method"] == "MinMax"
    assert info["recipe"].endswith(", 0 Conv/Gemm outputs read only by PRelu kept float, those layers run in float on "
                                   "the int8 grid's weights (no integer kernel: one rounding after it, not two)")
    model = onnx.load(str(out / "pfpld.int8.onnx"))
    index = GraphIndex(model)
    for node in (n for n in model.graph.node if n.op_type in ("Conv", "Gemm")):
        assert [c.op_type for c in index.consumers[node.output[0]]] == ["QuantizeLinear"], node.name
