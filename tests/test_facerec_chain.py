"""The recognition model `facerec` (MobileFaceNet-style, 112x112 aligned face -> 512-d embedding) through the
conversion chain: exported with random weights at width 0.5 through onnx, onnxsim, caffe, ncnn, NNIE and the int8
formats as a user runs it; parity judged as embedding cosine on aligned faces (and a Caffe file with one weight
changed failing it); a clean NNIE preflight naming the embedding output; calibration spread over identities; and
the int8 estimate in verification terms on a tiny identity set made by pfpld.data.identities."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from caffe_parity import EXPORT_WARNINGS
from cli_run import run
from convert.onnx2caffe import caffe_pb2
from convert.onnx_graph import GraphIndex
from convert.parity import check_parity, one_minus_cosine, synthetic_aligned_faces
from convert.stages import FP16_EMBEDDING_1MCOS, FP32_EMBEDDING_1MCOS
from quant.int8 import BUDGET_EMBEDDING_COSINE, BUDGET_VERIFICATION_POINTS, check_int8
from quant.nnie import NNIE_DOCUMENTED_LAYERS, parse_cfg, preflight

pytestmark = EXPORT_WARNINGS
SEED = 3


def facerec_contract():
    from pfpld.models import build_model
    return build_model("facerec", width=0.5)[2]


@pytest.fixture(scope="module")
def identities(tmp_path_factory):
    """A tiny identity set: 3 training identities (ImageFolder) and 4 held-out ones (LFW layout, pairs.txt in 2
    folds of 2 same + 2 different pairs)."""
    from pfpld.data.identities import generate_identities
    out = tmp_path_factory.mktemp("facerec_ids") / "ids"
    generate_identities(out, identities=3, per_identity=3, heldout=4, pairs_per_fold=2, folds=2, seed=0,
                        progress=False)
    return out


@pytest.fixture(scope="module")
def prepared(identities, tmp_path_factory):
    from pfpld.data.prepare import prepare_dataset
    out = tmp_path_factory.mktemp("facerec_prepared") / "data"
    prepare_dataset(out, imagefolder=identities / "imagefolder", contract=facerec_contract(), progress=False)
    return out


@pytest.fixture(scope="module")
def calib(prepared, tmp_path_factory):
    """`pfpld calib` on the prepared ImageFolder set, as a user runs it."""
    out = tmp_path_factory.mktemp("facerec_calib") / "set"
    proc = run("calib", prepared, "--out", out, "--n", 6)
    assert proc.returncode == 0, proc.stderr
    assert "over 3 identities" in proc.stdout
    return out


@pytest.fixture(scope="module")
def export(calib, tmp_path_factory):
    out = tmp_path_factory.mktemp("facerec_export") / "export"
    proc = run("export", "--model", "facerec", "--width", "0.5", "--init", "random", "--seed", SEED, "--target", "all",
               "--target", "nnie", "--int8", "--calib", calib, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_calibration_is_spread_over_identities(calib, prepared):
    manifest = json.loads((calib / "calib.json").read_text())
    assert manifest["spread_over"] == "identities" and manifest["bins"]["identities"] == ["id_00000", "id_00001",
                                                                                        "id_00002"]
    picked = [image["identity"] for image in manifest["images"]]
    assert len(picked) == 6 and {picked.count(k) for k in set(picked)} == {2}     # round-robin: 2 each
    assert "spread over identities" in (calib / "report.md").read_text()
    crops = [cv2.imread(str(calib / image["file"])) for image in manifest["images"]]
    assert all(c.shape == (112, 112, 3) for c in crops)


def test_calibration_from_a_folder_of_aligned_images(identities, tmp_path):
    out = tmp_path / "set"
    proc = run("calib", identities / "lfw", "--model", "facerec", "--out", out, "--n", 4)
    assert proc.returncode == 0, proc.stderr
    picked = [image["identity"] for image in json.loads((out / "calib.json").read_text())["images"]]
    assert sorted(picked) == ["id_00003", "id_00004", "id_00005", "id_00006"]
    # the images are the LFW files resized whole: the first one equals its source
    source = cv2.imread(str(identities / "lfw" / json.loads((out / "calib.json").read_text())["images"][0]["origin"]))
    first = cv2.imread(str(out / "images" / "000.png"))
    assert np.array_equal(first, source)


def test_every_fp32_stage_passes_parity_as_embedding_cosine(export):
    report = check_parity(export)
    assert report.verdict == "pass", report.table()
    stages = {r.stage: r for r in report.rows}
    assert list(stages) == ["torch", "onnx", "onnxsim", "caffe", "ncnn"]
    torch_embeddings = stages["torch"].outputs["embedding"]
    assert torch_embeddings.shape == (16, 512)
    for row in report.rows[1:]:
        assert row.cosine_tolerance == FP32_EMBEDDING_1MCOS
        # and the max abs diff within the fp32 tolerance relative to the embedding's magnitude, as any output
        assert row.per_output_limit["embedding"] == pytest.approx(1e-5 * max(1.0, np.abs(torch_embeddings).max()))
        assert row.per_output_max_abs["embedding"] <= row.per_output_limit["embedding"]
        worst = one_minus_cosine(torch_embeddings, row.outputs["embedding"]).max()
        assert row.embedding_1mcos == pytest.approx(worst) and worst <= FP32_EMBEDDING_1MCOS, row.stage
        assert row.max_abs is not None and row.max_abs > 0
    # the face inputs are aligned faces (not landmark-box crops), and the report says how it judges
    assert "aligned on their five points" in report.inputs
    expected, _ = synthetic_aligned_faces(facerec_contract(), 8, seed=0)
    contract = facerec_contract()
    from convert.artifacts import ExportFolder
    runner = ExportFolder.open(export).runner("torch")
    again = runner.run(np.stack([contract.to_tensor_layout(c) for c in expected]))["embedding"]
    assert np.allclose(again, torch_embeddings[8:], atol=1e-5)
    text = (export / "parity.md").read_text()
    assert "1 - embedding cosine (worst)" in text and "judged on embedding cosine" in text
    assert json.loads((export / "manifest.json").read_text())["parity"]["judged_on"] == "embedding cosine"
    assert FP16_EMBEDDING_1MCOS > FP32_EMBEDDING_1MCOS


def test_parity_takes_aligned_faces_of_a_folder_spread_over_identities(export, identities):
    report = check_parity(export, images=identities / "lfw", n=4, write=False)
    assert report.verdict == "pass" and report.n_faces == 4
    assert "4 aligned faces of 4 identities" in report.inputs


def broken_copy(export: Path, tmp_path: Path, pick, factor: float = 1.01) -> Path:
    """A copy of the export whose caffemodel has one weight of the layer `pick` chooses multiplied by `factor`
    (manifest re-hashed: the numbers are judged, not the file)."""
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    net = caffe_pb2.NetParameter()
    path = broken / "facerec.caffemodel"
    net.ParseFromString(path.read_bytes())
    layer = pick(net)
    weights = np.array(layer.blobs[0].data, dtype=np.float32)
    weights[len(weights) // 2] *= factor
    del layer.blobs[0].data[:]
    layer.blobs[0].data.extend(weights.tolist())
    path.write_bytes(net.SerializeToString())
    manifest = json.loads((broken / "manifest.json").read_text())
    from convert.artifacts import sha256_of
    manifest["files"][path.name]["sha256"] = sha256_of(path)
    (broken / "manifest.json").write_text(json.dumps(manifest))
    return broken


def test_a_caffe_file_with_one_weight_changed_fails_the_cosine_verdict(export, tmp_path):
    # one weight of the first conv (of 864), 1 % off
    broken = broken_copy(export, tmp_path, lambda net: next(x for x in net.layer if x.type == "Convolution"))
    report = check_parity(broken, write=False)
    stages = {r.stage: r for r in report.rows}
    assert report.verdict == "fail" and stages["caffe"].verdict == "FAIL"
    assert stages["caffe"].embedding_1mcos > FP32_EMBEDDING_1MCOS > stages["ncnn"].embedding_1mcos
    assert stages["caffe"].embedding_1mcos < 1e-6          # a cosine of 0.999999 would have passed it
    assert stages["caffe"].first_divergence.startswith("first diverging layer: Caffe layer '/features/features.0/")


def test_a_fault_the_cosine_misses_fails_on_the_max_abs_diff(export, tmp_path):
    # one weight of the global depthwise convolution 1.5 % off: the direction barely moves (1 - cosine about 6e-10),
    # the values do (max abs about 1.3e-4 on values up to about 9)
    broken = broken_copy(export, tmp_path, lambda net: next(x for x in net.layer if "gdconv" in x.name and
                                                            x.type == "Convolution"), factor=1.015)
    report = check_parity(broken, write=False)
    caffe = next(r for r in report.rows if r.stage == "caffe")
    assert caffe.embedding_1mcos <= FP32_EMBEDDING_1MCOS                   # the cosine alone would pass it
    assert caffe.per_output_max_abs["embedding"] > caffe.per_output_limit["embedding"]
    assert caffe.verdict == "FAIL" and report.verdict == "fail"


def test_nnie_preflight_is_clean_and_names_the_embedding_output(export):
    info = next(s["info"] for s in json.loads((export / "manifest.json").read_text())["stages"] if s["name"] == "nnie")
    assert info["preflight"] == "pass" and info["documented_layers_used"] == ["PReLU"]
    assert preflight(export / "facerec.nnie.prototxt", export / "facerec.nnie.caffemodel",
                     allow_layers=NNIE_DOCUMENTED_LAYERS) == []
    types = {line.split('"')[1] for line in (export / "facerec.nnie.prototxt").read_text().splitlines()
             if line.strip().startswith("type:")}
    assert {"Convolution", "PReLU", "Eltwise"} <= types and "BatchNorm" not in types
    names = json.loads((export / "facerec.nnie.names.json").read_text())
    assert names["outputs"] == {"embedding": "embedding_hp"}
    model_dir = export / "nnie_sdk" / "data" / "nnie_model" / "facerec"
    cfg = parse_cfg((model_dir / "facerec_inst.cfg").read_text())
    assert cfg["RGB_order"] == "RGB" and cfg["norm_type"] == "5" and float(cfg["data_scale"]) == 1 / 128
    readme = (export / "nnie_sdk" / "README.md").read_text()
    assert "| `embedding` | embedding | `embedding_hp` |" in readme
    deploy = json.loads((model_dir / "deploy.json").read_text())
    assert [(o["name"], o["kind"]) for o in deploy["outputs"]] == [("embedding", "embedding")]
    test = json.loads(next((export / "nnie_sdk" / "data" / "nnie_image" / "rgb_planar").glob("*.json")).read_text())
    assert 0 < test["swapped_planes_embedding_cosine"] < 1


def test_int8_report_is_in_verification_terms(export, identities):
    from pfpld.verification import cosine_scores, verify
    from pfpld.data.sources.lfw import read_pairs
    from pfpld.recognition import read_aligned
    report = check_int8(export, pairs=identities / "pairs.txt")
    result = report.to_dict()
    assert result["judged_on"] == "verification" and result["budget_verification_points"] == BUDGET_VERIFICATION_POINTS
    assert result["n_pairs"] == 8 and result["pair_resolution_points"] == pytest.approx(12.5)
    # the float accuracy is the protocol's on the torch model's embeddings of the pairs' images
    from convert.artifacts import ExportFolder
    contract = facerec_contract()
    pairs = read_pairs(identities / "pairs.txt", identities / "lfw")
    torch_runner = ExportFolder.open(export).runner("torch")
    embed = lambda path: torch_runner.run(contract.to_tensor_layout(read_aligned(path, contract))[None])  # noqa: E731
    a = np.concatenate([embed(p.path_a)["embedding"] for p in pairs])
    b = np.concatenate([embed(p.path_b)["embedding"] for p in pairs])
    expected = verify(cosine_scores(a, b), np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]))
    assert report.float_metrics.verification_pct == pytest.approx(100 * expected.accuracy_mean)
    stages = {r.stage: r for r in report.rows}
    assert set(stages) == {"nnie", "onnx-int8", "ncnn-int8", "nnie-sim int8", "nnie-sim int16"}
    assert stages["onnx-int8"].detail.endswith(", 33 conv outputs before PRelu float")   # of 50 convs: quant/ort_int8.py
    for row in report.rows:
        assert row.error is None, (row.stage, row.error)
        assert 0 <= row.verification_pct <= 100
        assert row.delta_verification_points == pytest.approx(row.verification_pct - expected.accuracy_mean * 100)
        assert -1 < row.cosine_worst <= row.cosine_mean < 1
        if row.deployed:
            assert row.verdict == ("ok" if -row.delta_verification_points <= BUDGET_VERIFICATION_POINTS else "OVER")
    # int16 keeps the embedding closer to float than int8 does
    assert stages["nnie-sim int16"].cosine_mean > stages["nnie-sim int8"].cosine_mean
    assert "verification accuracy lost <= 1 points" in report.table() and "one pair weighs 12" in report.table()
    assert "verification acc %" in (export / "int8.md").read_text()


def test_int8_without_pairs_judges_the_mean_embedding_cosine(export):
    report = check_int8(export, n=4, write=False)
    assert report.to_dict()["budget_embedding_cosine"] == BUDGET_EMBEDDING_COSINE
    for row in report.rows:
        assert row.verification_pct is None and row.cosine_mean is not None
        if row.deployed:
            assert row.verdict == ("ok" if row.cosine_mean >= BUDGET_EMBEDDING_COSINE else "OVER")


def test_pairs_for_a_model_without_embeddings_is_one_line(identities, tmp_path):
    from cli_run import assert_user_error
    out = tmp_path / "lm5"
    proc = run("export", "--model", "landmark5", "--init", "random", "--target", "onnx", "--out", out)
    assert proc.returncode == 0, proc.stderr
    proc = run("check-parity", out, "--int8", "--pairs", identities / "pairs.txt")
    assert_user_error(proc, "pairs.txt", "no embedding output")


def test_bench_takes_facerec_at_its_demo_options_with_an_aligned_calibration_set():
    from convert.export import source_from_random_init
    from pfpld.models import MODELS
    from pfpld_app.bench import BenchSettings, run_format_benchmark
    source = source_from_random_init("facerec", None, seed=0, options=dict(MODELS["facerec"].demo_options))
    settings = BenchSettings(threads=(1,), budget_s=0.05, min_runs=3, formats=("onnx",))
    results, _, _ = run_format_benchmark([(source, "facerec", False)], settings, log=lambda line: None)
    rows = {r.format: r for r in results[0].rows}
    assert set(rows) == {"reference", "torch", "onnx"}
    assert rows["onnx"].parity.startswith("pass (1-cos ") and rows["onnx"].latency_ms[1] > 0
    assert results[0].macs > 0 and "aligned synthetic identities" in settings.calibration


class PreActBlock(torch.nn.Module):
    """An insightface-IResNet-style block: BN before the first conv (a BatchNorm no conv produces), PReLU, a strided
    second conv, a projection shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.PReLU(cout), nn.Conv2d(cout, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout))
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.body(x) + self.down(x)


def outside_recognition_onnx(path: Path) -> Path:
    """A recognition network from outside the project, saved the way such files come: opset 11, a dynamic batch,
    the graph's own names, pre-activation BatchNorms, and the embedding layer Linear -> BatchNorm1d."""
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.PReLU(8),
                        PreActBlock(8, 16), PreActBlock(16, 16), PreActBlock(16, 32), PreActBlock(32, 32),
                        nn.BatchNorm2d(32), nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.BatchNorm1d(64)).eval()
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    torch.onnx.export(net, (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False, opset_version=11,
                      input_names=["input.1"], output_names=["fc1"],
                      dynamic_axes={"input.1": {0: "batch"}, "fc1": {0: "batch"}})
    return path


def test_a_recognition_onnx_from_outside_goes_through_the_chain_judged_as_an_embedding(calib, identities, tmp_path):
    theirs = outside_recognition_onnx(tmp_path / "r18ish.onnx")
    contract = ["--color-order", "RGB", "--mean", "127.5,127.5,127.5", "--scale", "1/127.5"]
    declared = [*contract, "--crop-box-source", "aligned", "--output", "fc1=embedding"]
    # the pre-activation BatchNorms stay BatchNorm + Scale in Caffe: outside the NNIE-proven set, said once per type
    proc = run("export", "--onnx", theirs, *declared, "--target", "nnie", "--calib", calib, "--out", tmp_path / "no")
    assert proc.returncode == 2 and not (tmp_path / "no").exists()
    assert "layers BatchNorm x5 (" in proc.stderr and "--allow-layer BatchNorm --allow-layer Scale" in proc.stderr
    out = tmp_path / "export"
    proc = run("export", "--onnx", theirs, *declared, "--target", "all", "--target", "nnie", "--int8", "--calib", calib,
               "--allow-layer", "BatchNorm", "--allow-layer", "Scale", "--out", out)
    assert proc.returncode == 0, proc.stderr
    # onnxruntime's QDQ quantises a BatchNormalization's 1-D scale per channel on axis 1 unless told 0: one "Axis 1 is
    # out-of-range" warning for each BN; the one after the Gemm is folded into it in the copy that is quantised
    assert "out-of-range" not in proc.stderr, proc.stderr
    qdq = onnx.load(str(out / "r18ish.int8.onnx"))
    index = GraphIndex(qdq)
    gemm = next(n for n in qdq.graph.node if n.op_type == "Gemm")
    assert [n.op_type for n in index.consumers[gemm.output[0]]] == ["QuantizeLinear"]     # no BN reads it
    batchnorms = [n for n in qdq.graph.node if n.op_type == "BatchNormalization"]
    assert len(batchnorms) == 5                                                           # the pre-activation ones
    for bn in batchnorms:
        scale = index.producers[bn.input[1]]
        assert scale.op_type == "DequantizeLinear"
        assert [a.i for a in scale.attribute if a.name == "axis"] == [0]                  # per channel
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["spec_from"] == "graph+options" and manifest["source"]["contract_from"] == "options"
    assert [(o["name"], o["kind"]) for o in manifest["spec"]["outputs"]] == [("fc1", "embedding")]
    assert manifest["contract"]["crop"]["box_source"] == "aligned" and manifest["contract"]["crop"]["expand"] == 1.0
    net = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Parse((out / "r18ish.prototxt").read_text(), net)
    types = [layer.type for layer in net.layer]
    assert types[-1] == "InnerProduct" and types.count("BatchNorm") == 5     # Linear -> BatchNorm1d folded
    report = check_parity(out, images=identities / "lfw", n=4, write=False)
    assert report.verdict == "pass" and "aligned faces" in report.inputs
    assert all(r.embedding_1mcos <= FP32_EMBEDDING_1MCOS for r in report.rows[1:])
    proc = run("check-parity", out, "--n", 2, "--int8", "--pairs", identities / "pairs.txt", "--no-what-if",
               "--json", tmp_path / "result.json")
    assert proc.returncode in (0, 1), proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())["int8"]
    assert result["judged_on"] == "verification"
    # the deployed stages only: --no-what-if skips the NNIE simulation at the precisions not deployed; the opset-11
    # file is raised to opset 13 for onnxruntime's QDQ, and ncnn int8 keeps the standalone BatchNorms in float
    assert [(s["stage"], s["deployed"]) for s in result["stages"]] == [("nnie", True), ("onnx-int8", True),
                                                                        ("ncnn-int8", True)]
    assert all(s["error"] is None and np.isfinite(s["verification_pct"]) for s in result["stages"])
    assert min(s["cosine_mean"] for s in result["stages"]) > 0.99


def test_an_aligned_contract_keeps_an_expand_given_with_it(tmp_path):
    from convert.export import source_from_onnx
    theirs = outside_recognition_onnx(tmp_path / "r.onnx")
    options = {"color_order": "RGB", "scale": "1/128", "box_source": "aligned"}
    assert source_from_onnx(theirs, options).contract.crop.expand == 1.0
    assert source_from_onnx(theirs, {**options, "expand": 1.1}).contract.crop.expand == 1.1
