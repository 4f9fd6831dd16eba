"""`pfpld import --from nniefacelib`: state_dicts saved the way the original PFPLD code saves them (bare, wrapped
in a dict, with DataParallel's module. prefix, without num_batches_tracked) become pfpld checkpoints that
export, check-parity and predict accept; anything else is one line naming what was found, and nothing is written."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from convert.export import randomize_batchnorm
from pfpld.checkpoint import load_model
from pfpld.data.synthetic import render_face
from pfpld.models import build_model

PFPLD = [sys.executable, "-m", "pfpld_app.cli"]


def run(*args, timeout=300):
    return subprocess.run(PFPLD + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference_model():
    """A PFPLD-0.25 with non-trivial BatchNorm statistics, standing for a network trained by the original code."""
    torch.manual_seed(5)
    module, spec, _ = build_model("pfpld", width=0.25)
    randomize_batchnorm(module, spec.input_size, seed=5)
    return module.eval()


LAYOUTS = {
    "bare": lambda sd: sd,
    "wrapped": lambda sd: {"epoch": 80, "state_dict": sd, "optimizer_lr": 1e-4},
    "data_parallel": lambda sd: {"plfd_backbone": {f"module.{k}": v for k, v in sd.items()}},
    "old_torch": lambda sd: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reference_state_dicts_import_with_the_same_outputs(reference_model, tmp_path, layout):
    source = tmp_path / "pfpld_reference.pth"
    torch.save(LAYOUTS[layout](reference_model.state_dict()), source)
    out = tmp_path / "imported.pt"
    proc = run("import", source, "--from", "nniefacelib", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "pfpld width=0.25 input_size=112 (width from conv1.weight" in proc.stdout
    model, record = load_model(out)
    assert record.spec.name == "pfpld" and record.spec.options["width"] == 0.25
    assert record.contract.color_order == "RGB" and record.contract.input_size == 112
    assert record.config["imported_from"]["data_parallel_prefix"] is (layout == "data_parallel")
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        for got, want in zip(model(x), reference_model(x)):
            assert torch.equal(got, want)


def test_an_imported_checkpoint_exports_passes_parity_and_predicts(reference_model, tmp_path):
    source = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": reference_model.state_dict()}, source)
    ckpt = tmp_path / "imported.pt"
    assert run("import", source, "--from", "nniefacelib", "--out", ckpt).returncode == 0
    export_dir = tmp_path / "export"
    proc = run("export", ckpt, "--target", "all", "--out", export_dir, timeout=600)
    assert proc.returncode == 0, proc.stderr
    proc = run("check-parity", export_dir, "--n", "2", timeout=600)
    assert proc.returncode == 0 and "verdict: PASS" in proc.stdout, proc.stdout + proc.stderr
    face = render_face(np.random.default_rng(3), image_size=256)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), face.image)
    box = ",".join(f"{v:.1f}" for v in face.box)
    proc = run("predict", ckpt, image, "--box", box, "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["landmarks_px"]) == 98


def _refused(proc, out, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()


def test_foreign_state_dicts_are_refused_naming_what_was_found(reference_model, tmp_path):
    out = tmp_path / "out.pt"
    sd = reference_model.state_dict()
    cases = {
        "extra": ({**sd, "head.weight": torch.zeros(3)}, ["1 unexpected keys (head.weight)"]),
        "missing": ({k: v for k, v in sd.items() if not k.startswith("fc2_aux")},
                    ["2 missing keys (fc2_aux.bias, fc2_aux.weight)"]),
        "not_pfpld": ({"features.0.weight": torch.zeros(8, 3, 3, 3)}, ["no 'conv1.weight'", "features.0.weight"]),
        "two_dicts": ({"a": {"x": torch.zeros(1)}, "b": {"y": torch.zeros(1)}}, ["2 dicts of tensors (a, b)"]),
        "a_list": ([torch.zeros(1)], ["holds a list, not a state_dict"]),
    }
    for name, (content, needles) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(content, path)
        _refused(run("import", path, "--from", "nniefacelib", "--out", out), out, str(path), *needles)
    path = tmp_path / "ref.pth"
    torch.save(sd, path)
    _refused(run("import", path, "--from", "nniefacelib", "--width", "1.0", "--out", out), out,
             "shapes do not fit a PFPLD width 1", "conv1.weight (16, 3, 3, 3) (expected (64, 3, 3, 3))")


def test_a_pickled_module_is_refused_not_executed(reference_model, tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(reference_model, path)          # a module object: needs unpickling of arbitrary classes
    out = tmp_path / "out.pt"
    _refused(run("import", path, "--from", "nniefacelib", "--out", out), out, "weights_only=True",
             "save model.state_dict()")


def test_import_never_replaces_a_file_that_is_not_a_pfpld_checkpoint(reference_model, tmp_path):
    source = tmp_path / "ref.pth"
    torch.save(reference_model.state_dict(), source)
    notes = tmp_path / "notes.pt"
    notes.write_text("my notes")
    proc = run("import", source, "--from", "nniefacelib", "--out", notes, "--force")
    assert proc.returncode == 2 and "not a pfpld checkpoint" in proc.stderr
    assert notes.read_text() == "my notes"


def reference_hopenet_state_dict(backbone: str = "resnet18", seed: int = 6) -> dict[str, torch.Tensor]:
    """A state_dict in deep-head-pose's layout (a torchvision ResNet's names, fc_yaw / fc_pitch / fc_roll, the unused
    fc_finetune, no num_batches_tracked as torch 0.3 saved it), from a randomly initialised network."""
    torch.manual_seed(seed)
    module, spec, _ = build_model("hopenet", backbone=backbone)
    randomize_batchnorm(module, spec.input_size, seed=seed)
    sd = {k.removeprefix("backbone."): v for k, v in module.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    features = sd["fc_yaw.weight"].shape[1]
    return {**sd, "fc_finetune.weight": torch.randn(3, features + 3), "fc_finetune.bias": torch.zeros(3)}


def test_a_released_hopenet_imports_and_decodes_as_the_reference_code(tmp_path):
    sd = reference_hopenet_state_dict()
    source = tmp_path / "hopenet_robust_alpha1.pkl"
    torch.save({f"module.{k}": v for k, v in sd.items()}, source, _use_new_zipfile_serialization=False)
    out = tmp_path / "hopenet.pt"
    proc = run("import", source, "--from", "deep-head-pose", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "hopenet backbone=resnet18 input_size=224 width=1.0 decode=reference" in proc.stdout
    assert "dropped 2 unused tensors" in proc.stdout
    model, record = load_model(out)
    assert record.spec.options["decode"] == "reference" and record.contract.crop.loose_k > 0
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        yaw, pitch, roll, angles = model.eval()(x)
    # the reference code's decode: softmax over the 66 bins, expectation of idx * 3 - 99
    idx = torch.arange(66, dtype=torch.float32)
    for k, logits in enumerate((yaw, pitch, roll)):
        expected = (torch.softmax(logits, 1) * idx).sum(1) * 3 - 99
        assert torch.allclose(angles[:, k], expected, atol=1e-4)
    # the trunk computes what the reference's does: same weights under torchvision's names
    assert torch.equal(model.fc_roll.weight, sd["fc_roll.weight"])
    assert torch.equal(model.backbone.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    # and the export carries the reference decode in its graph
    export = tmp_path / "export"
    proc = run("export", out, "--target", "onnx", "--out", export, timeout=600)
    assert proc.returncode == 0, proc.stderr
    import onnxruntime as ort
    session = ort.InferenceSession(str(export / "hopenet.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(["angles_deg"], {"input": x[i:i + 1].numpy()})[0] for i in range(len(x))])
    assert np.abs(got - angles.numpy()).max() < 1e-3


def test_a_resnet_hopenet_does_not_have_is_refused_naming_its_blocks(tmp_path):
    sd = reference_hopenet_state_dict()
    resnet34ish = {**sd, **{k.replace("layer3.1.", "layer3.2."): v for k, v in sd.items() if "layer3.1." in k}}
    path = tmp_path / "r34.pkl"
    torch.save(resnet34ish, path)
    out = tmp_path / "out.pt"
    _refused(run("import", path, "--from", "deep-head-pose", "--out", out), out, "basic blocks [2, 2, 3, 2]",
             "ResNet-50 (bottleneck 3, 4, 6, 3)")
    torch.save({k: v for k, v in sd.items() if not k.startswith("fc_yaw")}, path)
    _refused(run("import", path, "--from", "deep-head-pose", "--out", out), out, "not a deep-head-pose HopeNet")
    _refused(run("import", path, "--from", "deep-head", "--out", out), out, "unknown origin",
             "nniefacelib, deep-head-pose")
