"""facerec through prepare-data, train, eval and the checkpoint: an ImageFolder of synthetic identities becomes a
prepared set with identity labels; training learns through the margin head (kept beside the model, never in its
weights), resumes exactly with it, and `pfpld eval --pairs` verifies held-out identities under the LFW protocol.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pfpld.checkpoint import load_checkpoint, load_model, save_checkpoint
from pfpld.data.dataset import PreparedFaces
from pfpld.data.identities import generate_identities
from pfpld.data.prepare import iter_prepared, prepare_dataset, read_prepared_header
from pfpld.data.sources.imagefolder import read_imagefolder
from pfpld.errors import DatasetError
from pfpld.losses import LossConfig
from pfpld.models import build_model
from pfpld.recognition import evaluate_pairs
from pfpld.train import TrainConfig, train

from cli_run import assert_user_error, run

INPUT = 32          # the smallest input facerec takes: fast enough to train in a test


@pytest.fixture(scope="module")
def identities(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("facerec") / "synth"
    generate_identities(out, 12, per_identity=6, heldout=10, pairs_per_fold=3, folds=5, seed=3, progress=False)
    return out


@pytest.fixture(scope="module")
def prepared(identities, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("facerec_prep") / "prepared"
    _, _, contract = build_model("facerec", input_size=INPUT)
    prepare_dataset(out, imagefolder=identities / "imagefolder", contract=contract, progress=False)
    return out


def small_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="facerec", width=0.25, epochs=2, batch_size=16, lr=3e-3,
                val_fraction=0.2, seed=1)
    return TrainConfig(**{**base, **kw})


def test_prepare_imagefolder_keeps_identities_and_crops_the_whole_aligned_image(identities, prepared):
    folder = read_imagefolder(identities / "imagefolder")
    header = read_prepared_header(prepared)
    assert header["identities"] == folder.classes and header["crop_size_px"] == INPUT   # no margin: never warped
    entries = list(iter_prepared(prepared))
    assert [e["identity"] for e in entries] == [label for _, label in folder.items]
    faces = PreparedFaces(prepared, "train")
    _, _, contract = build_model("facerec", input_size=INPUT)
    path, _ = folder.items[7]
    image = cv2.imread(str(path))
    expected, _ = contract.crop_image(image, (0, 0, image.shape[1], image.shape[0]))
    assert np.array_equal(faces.load_crop(7), expected)


def test_prepare_refuses_to_mix_identities_and_landmark_contracts(identities, tmp_path):
    with pytest.raises(DatasetError, match="aligned faces without landmarks"):
        prepare_dataset(tmp_path / "a", imagefolder=identities / "imagefolder", progress=False)     # pfpld's contract
    _, _, contract = build_model("facerec")
    with pytest.raises(DatasetError, match="not the landmark datasets"):
        prepare_dataset(tmp_path / "b", wflw=identities, contract=contract, progress=False)


def test_training_keeps_the_head_out_of_the_model_and_resumes_exactly(prepared, tmp_path):
    straight = tmp_path / "straight"
    train(small_config(prepared, straight), progress=False)
    split = tmp_path / "split"
    train(small_config(prepared, split, epochs=1), progress=False)
    train(small_config(prepared, split), resume=str(split / "last.pt"), progress=False)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(split / "last.pt")
    for name, value in a.state_dict.items():
        assert torch.equal(value, b.state_dict[name]), name
    assert a.head.keys() == b.head.keys() and all(torch.equal(a.head[k], b.head[k]) for k in a.head)
    assert a.head["weight"].shape == (12, 512)                       # one class weight per training identity
    model, _ = load_model(straight / "last.pt")                       # strict: the head is not in the weights
    assert a.metrics["val_id_error"] == b.metrics["val_id_error"] and 0 <= a.metrics["val_id_error"] <= 1
    assert model(torch.zeros(1, 3, INPUT, INPUT))[0].shape == (1, 512)


def test_resume_with_another_head_is_one_line(prepared, tmp_path):
    train(small_config(prepared, tmp_path, epochs=1), progress=False)
    r = run(*["train", "--model", "facerec", "--data", str(prepared), "--out", str(tmp_path), "--width", "0.25",
             "--epochs", "2", "--batch-size", "16", "--val-fraction", "0.2", "--seed", "1", "--head", "cosface",
             "--resume", str(tmp_path / "last.pt")])
    assert_user_error(r, "was trained with head 'arcface'")


def test_pairs_for_pfpld_and_an_unknown_head_are_one_line(prepared, identities, tmp_path):
    model, spec, contract = build_model("pfpld", width=0.25)
    save_checkpoint(tmp_path / "pfpld.pt", state_dict=model.state_dict(), spec=spec, contract=contract)
    r = run(*["eval", str(tmp_path / "pfpld.pt"), "--pairs", str(identities / "pairs.txt")])
    assert_user_error(r, "evaluate it with --data DIR")
    face = next((identities / "lfw").glob("*/*_0001.jpg"))
    assert_user_error(run("predict", tmp_path / "pfpld.pt", face), "give --box")
    assert_user_error(run("predict", tmp_path / "pfpld.pt", face, "--box", "0,0,50,50", "--compare", face),
                      "no embedding")
    r = run(*["train", "--model", "facerec", "--data", str(prepared), "--out", str(tmp_path / "x"), "--head",
             "normface", "--epochs", "1"])
    assert_user_error(r, "normface")


def test_eval_pairs_writes_the_lfw_protocol_roc_and_json(prepared, identities, tmp_path):
    train(small_config(prepared, tmp_path / "run", epochs=1), progress=False)
    ckpt = tmp_path / "run" / "last.pt"
    r = run(*["eval", str(ckpt), "--pairs", str(identities / "pairs.txt"), "--json", str(tmp_path / "eval.json")])
    assert r.returncode == 0, r.stderr
    assert "10-fold" not in r.stdout and "5-fold accuracy" in r.stdout and "raw pixels" in r.stdout
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["model"]["pairs"] == {"same": 15, "different": 15, "folds": 5}
    assert cv2.imread(str(tmp_path / "roc.png")) is not None
    r = run(*["eval", str(ckpt), "--data", str(prepared)])
    assert_user_error(r, "evaluate it with --pairs PAIRS")
    # the numbers are the protocol's on this model's cosines
    model, record = load_model(ckpt)
    again = evaluate_pairs(model, record.spec, record.contract, identities / "pairs.txt", progress=False)
    assert again.model.accuracy_mean == pytest.approx(result["model"]["accuracy"]["mean"])

    # predict: an aligned face needs no box; its embedding, and the cosine of two faces
    a, b = sorted((identities / "lfw").glob("*/*_0001.jpg"))[:2]
    r = run("predict", ckpt, a, "--json")
    assert r.returncode == 0, r.stderr
    embedding = np.array(json.loads(r.stdout)["embedding"])
    assert embedding.shape == (512,) and np.isfinite(embedding).all()
    r = run("predict", ckpt, a, "--compare", b, "--json")
    other = np.array(json.loads(run("predict", ckpt, b, "--json").stdout)["embedding"])
    expected = embedding @ other / np.linalg.norm(embedding) / np.linalg.norm(other)
    assert json.loads(r.stdout)["cosine"] == pytest.approx(expected, abs=1e-6)


@pytest.fixture(scope="module")
def learnable(tmp_path_factory) -> tuple[Path, Path]:
    """40 training identities x 8 faces and 20 held-out ones (10 folds of 10 same + 10 different pairs)."""
    root = tmp_path_factory.mktemp("facerec_learn")
    generate_identities(root / "synth", 40, per_identity=8, heldout=20, pairs_per_fold=10, seed=5, progress=False)
    _, _, contract = build_model("facerec", input_size=INPUT)
    prepare_dataset(root / "prepared", imagefolder=root / "synth" / "imagefolder", contract=contract, progress=False)
    return root / "synth", root / "prepared"


# The short run: width 0.25 at 32x32, 20 epochs, batch 16, lr 3e-3, 1 warm-up epoch, cosine, each head at its
# defaults. Measured over seeds 0/1/2 (10-fold accuracy %, ROC AUC) on the 200 pairs of the 20 held-out identities:
# arcface 59.0/0.700, 62.0/0.762, 57.5/0.672; cosface 71.5/0.736, 67.0/0.700, 64.5/0.714; sphereface 69.5/0.815,
# 68.5/0.803, 75.5/0.805; raw pixels 55.5/0.602. Accuracy on 200 pairs moves by about 3.5 points (its standard
# error), so the learning is asserted on the AUC, with the accuracy above chance.
SHORT_EPOCHS = 20
SHORT_MIN_AUC = 0.64                # chance: 0.5; the lowest measured 0.672
SHORT_AUC_OVER_PIXELS = 0.04        # the lowest measured margin over raw pixels 0.070


@pytest.mark.parametrize("head", ["arcface", "cosface", "sphereface"])
def test_a_short_run_verifies_people_it_never_saw_well_above_chance(learnable, tmp_path, head):
    """Each head learns identities that carry over to people it never saw: the LFW protocol on their pairs, above
    chance and above the raw pixels."""
    synth, prepared = learnable
    train(small_config(prepared, tmp_path, epochs=SHORT_EPOCHS, val_fraction=0.0, schedule="cosine",
                       warmup_epochs=1, seed=0, loss=LossConfig(head=head)), progress=False)
    model, record = load_model(tmp_path / "last.pt")
    result = evaluate_pairs(model, record.spec, record.contract, synth / "pairs.txt", progress=False)
    assert result.model.auc >= SHORT_MIN_AUC, result.table()
    assert result.model.auc >= result.baseline.auc + SHORT_AUC_OVER_PIXELS, result.table()
    assert result.model.accuracy_mean > 0.5, result.table()
