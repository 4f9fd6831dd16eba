import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from pfpld.checkpoint import CheckpointError, load_checkpoint, load_model
from pfpld.data.augment import AugmentConfig
from pfpld.data.dataset import PreparedFaces
from pfpld.evaluate import evaluate_model, evaluate_predictions, predict_dataset
from pfpld.losses import LossConfig
from pfpld.models import build_model
from pfpld.train import TrainConfig, train

PFPLD = [sys.executable, "-m", "pfpld_app.cli"]


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), width=0.25, epochs=2, batch_size=32, lr=3e-3, workers=0,
                milestones=(1,), seed=3)
    base.update(kw)
    return TrainConfig(**base)


def network_sample(ds: PreparedFaces, index: int) -> dict:
    """One face as the training loop sees it: collated, then through network_batch (the batched augmentation)."""
    return {k: v[0] for k, v in ds.network_batch(default_collate([ds[index]])).items()}


def test_dataset_without_augmentation_is_the_contract_crop(prepared_dir):
    ds = PreparedFaces(prepared_dir, "test")
    sample = network_sample(ds, 0)
    crop = ds.load_crop(0)
    off = (ds.crop_size_px - ds.contract.input_size) // 2
    centre = crop[off:off + 112, off:off + 112]
    assert torch.equal(sample["image"], torch.from_numpy(ds.contract.to_tensor_layout(centre)))
    assert np.allclose(sample["points"].numpy().reshape(98, 2), ds.points[0])


def test_augmentation_keeps_landmarks_on_the_pixels_they_label(prepared_dir, tmp_path):
    """Replace a stored crop (its row of crops.npy) by a black image with one white dot on the nose tip, augment
    it as training does (rotation, scale, shift, mirror, batched), and find the dot where the augmented label
    says it is."""
    import shutil
    import cv2
    data = tmp_path / "data"
    shutil.copytree(prepared_dir, data)
    crops = np.load(data / "crops.npy", mmap_mode="r+")
    ds = PreparedFaces(data, "train", AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0,
                                                    grayscale_p=0, erasing_p=0, flip_p=1.0))
    off = (ds.crop_size_px - 112) / 2
    for index in range(5):
        marker = np.zeros((ds.crop_size_px, ds.crop_size_px, 3), np.uint8)
        x, y = ds.points[index, 54] * 112 + off
        cv2.circle(marker, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)
        crops[ds.array_rows[index]] = marker
        crops.flush()
        s = network_sample(ds, index)
        img = s["image"].numpy()[0]
        ys, xs = np.nonzero(img > 0.5)
        px, py = s["points"].numpy().reshape(98, 2)[54] * 112     # the mirror keeps the nose tip at index 54
        assert abs(px - xs.mean()) <= 1.0 and abs(py - ys.mean()) <= 1.0


def test_flip_augmentation_negates_yaw_and_roll(prepared_dir):
    no_geo = dict(rotation_deg=0, shift_frac=0, scale_range=(1, 1), brightness=0, contrast=0, saturation=0,
                  hue=0, grayscale_p=0, erasing_p=0)
    plain = PreparedFaces(prepared_dir, "train", AugmentConfig(flip_p=0.0, **no_geo))
    flipped = PreparedFaces(prepared_dir, "train", AugmentConfig(flip_p=1.0, **no_geo))
    i = int(np.flatnonzero(plain.has_pose)[0])
    a, b = network_sample(plain, i), network_sample(flipped, i)
    assert np.allclose(b["pose"].numpy(), a["pose"].numpy() * np.array([-1, 1, -1]), atol=1e-5)
    pa, pb = a["points"].numpy().reshape(98, 2), b["points"].numpy().reshape(98, 2)
    assert pb[60, 0] == pytest.approx(111 / 112 - pa[72, 0], abs=1e-5)    # the mirrored outer corner
    assert torch.equal(b["image"], torch.flip(a["image"], dims=[2]))


# The seed of the short training run; the test was run for seeds 0-9 with PFPLD_TEST_SEED (see the issue notes).
SHORT_RUN_SEED = int(os.environ.get("PFPLD_TEST_SEED", "3"))


@pytest.mark.slow
def test_short_training_halves_the_untrained_nme_and_beats_the_mean_shape(prepared_dir, tmp_path):
    """The issue's criterion (below half of the untrained model's held-out NME), and a stricter one: training
    must also beat the mean-shape start that the landmark head is initialised to by a clear margin. The pose term
    is weighted 10 here, not the reference's 1000: at 1000 it dominates the total loss in a run this short, and
    the landmark margin then depends on the CPU's rounding (0.996 x the mean shape on one machine, 0.82-0.90 on
    another); at 10 the ten seeds 0-9 land at 0.76-0.88 x (best.pt, chosen on the 5 % of the training split held
    out for validation; 0.68-0.83 x when it was chosen on the test split itself)."""
    torch.manual_seed(SHORT_RUN_SEED)
    untrained, spec, _ = build_model("pfpld", width=0.25)
    before = evaluate_model(untrained.eval(), spec, prepared_dir).landmarks["nme"]
    untrained.init_landmark_head(torch.from_numpy(PreparedFaces(prepared_dir, "train").mean_landmarks()))
    mean_shape = evaluate_model(untrained.eval(), spec, prepared_dir).landmarks["nme"]
    row = train(_cfg(prepared_dir, tmp_path / "run", epochs=20, batch_size=16, milestones=(15,), augment=False,
                     seed=SHORT_RUN_SEED, loss=LossConfig(pose_weight=10.0)), progress=False)
    model, ckpt = load_model(tmp_path / "run" / "best.pt")
    after = evaluate_model(model, ckpt.spec, prepared_dir).landmarks["nme"]
    assert after < 0.5 * before, (before, after)
    assert after < 0.95 * mean_shape, (mean_shape, after)
    assert ckpt.epoch >= 1 and row["epoch"] == 20
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 21))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # the time waiting for data is part of each epoch's time, never all of it
    assert all(0 < float(r["data_seconds"]) < float(r["epoch_seconds"]) for r in rows)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


@pytest.mark.slow
def test_checkpoint_round_trip_and_exact_resume(prepared_dir, tmp_path):
    straight = tmp_path / "straight"
    train(_cfg(prepared_dir, straight), progress=False)
    first = tmp_path / "resumed"
    train(_cfg(prepared_dir, first, epochs=1), progress=False)
    train(_cfg(prepared_dir, first, epochs=2), resume=str(first / "last.pt"), progress=False)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(first / "last.pt")
    assert a.epoch == b.epoch == 2
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert a.history[-1]["val_nme"] == b.history[-1]["val_nme"]
    n_train = len(PreparedFaces(prepared_dir, "train", val_fraction=TrainConfig.val_fraction))
    steps = n_train // 32 if n_train >= 64 else math.ceil(n_train / 32)         # the scheduler steps per batch
    assert a.scheduler["last_epoch"] == b.scheduler["last_epoch"] == 2 * steps
    # round trip: spec, contract and record survive weights_only loading
    assert a.spec.options["width"] == 0.25 and a.contract.input_size == 112
    assert a.config["epochs"] == 2 and "torch" in a.versions
    assert len(list(csv.DictReader(open(first / "metrics.csv")))) == 2
    # the scheduler state is a step count: resuming it on another learning-rate curve is refused, not silent
    with pytest.raises(CheckpointError, match="schedule 'step', this run asks for 'cosine'"):
        train(_cfg(prepared_dir, first, epochs=3, schedule="cosine"), resume=str(first / "last.pt"), progress=False)


@pytest.mark.slow
def test_two_process_ddp_run_on_cpu(prepared_dir, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pfpld_app.cli", "train", "--data", str(prepared_dir), "--out", str(out), "--width", "0.25",
           "--epochs", "1", "--batch-size", "32", "--workers", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.config["world_size"] == 2
    assert ckpt.history[0]["train_images_per_s"] > 0
    n_train = len(PreparedFaces(prepared_dir, "train", val_fraction=TrainConfig.val_fraction))
    # both processes trained: the all-reduced image count covers the whole (drop-last) epoch
    assert ckpt.history[0]["train_images"] >= n_train - 32
    assert not math.isnan(ckpt.history[0]["val_nme"])


def test_validation_faces_are_held_out_of_the_training_split_and_choose_best(prepared_dir, tmp_path):
    """best.pt is chosen on faces held out of the training split (never the test split eval reports): the held-out
    rows are disjoint from those trained on, together they are the whole split, the same every time, and the
    val_nme of best.pt is the NME of best.pt's own weights on exactly those faces. --val-fraction 0: no validation,
    no best.pt."""
    full = PreparedFaces(prepared_dir, "train")
    kept = PreparedFaces(prepared_dir, "train", val_fraction=0.1)
    held = PreparedFaces(prepared_dir, "val", val_fraction=0.1)
    assert len(held) == max(1, round(0.1 * len(full))) and not set(held.array_rows) & set(kept.array_rows)
    assert sorted([*held.array_rows, *kept.array_rows]) == sorted(full.array_rows)
    assert not set(held.array_rows) & set(PreparedFaces(prepared_dir, "test").array_rows)
    assert np.array_equal(PreparedFaces(prepared_dir, "val", val_fraction=0.1).array_rows, held.array_rows)
    assert len(set(held.sources)) > 1                          # spread over the sources, not the first rows
    train(_cfg(prepared_dir, tmp_path / "run", val_fraction=0.1), progress=False)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best.metrics["val_nme"] == min(h["val_nme"] for h in best.history)
    model, _ = load_model(tmp_path / "run" / "best.pt")
    lmk, pose = predict_dataset(model, best.spec, held)
    assert evaluate_predictions(held, best.spec, lmk, pose).landmarks["nme"] == pytest.approx(best.metrics["val_nme"], rel=1e-5)
    proc = subprocess.run(PFPLD + ["train", "--data", str(prepared_dir), "--out", str(tmp_path / "none"), "--width",
                                   "0.25", "--epochs", "1", "--batch-size", "32", "--val-fraction", "0"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no validation faces" in proc.stdout and not (tmp_path / "none" / "best.pt").exists()
    assert math.isnan(load_checkpoint(tmp_path / "none" / "last.pt").history[0]["val_nme"])


def test_eval_prints_the_mean_shape_baseline_beside_the_model(prepared_dir):
    """The baseline is the training split's mean landmarks and mean pose predicted for every test face; the
    model whose landmark head starts at that mean shape (with its weights zeroed) scores exactly the same."""
    model, spec, _ = build_model("pfpld", width=0.25)
    train_faces = PreparedFaces(prepared_dir, "train")
    model.init_landmark_head(torch.from_numpy(train_faces.mean_landmarks()))
    with torch.no_grad():
        model.fc.weight.zero_()
    report = evaluate_model(model.eval(), spec, prepared_dir)
    base = report.baseline["landmarks"]
    assert base["n"] == report.landmarks["n"] and 0 < base["nme"] < 1
    assert report.landmarks["nme"] == pytest.approx(base["nme"], rel=1e-5)
    assert report.nme_vs_mean_shape == pytest.approx(1.0, rel=1e-5)
    assert report.baseline["pose"]["n"] > 0 and report.baseline["pose"]["mean"] > 0
    table = report.table()
    assert "mean shape (baseline)" in table and "model NME = 1.00 x the mean shape's" in table
    assert "mean pose (baseline)" in table and report.to_dict()["baseline"] == report.baseline


def test_lr_schedule_per_step(tmp_path):
    """The scheduler steps once per batch: the step schedule changes exactly where an epoch-stepped MultiStepLR
    does; the warm-up rises linearly from lr/100; the cosine ends at lr x final_lr_frac; a wrong name is one line."""
    from pfpld.errors import InputError
    from pfpld.train import lr_factor
    steps = 7
    step_cfg = TrainConfig(data="", out="", epochs=8, milestones=(3, 6), gamma=0.1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = torch.optim.lr_scheduler.MultiStepLR(opt, [3, 6], gamma=0.1)
    f = lr_factor(step_cfg, steps)
    for epoch in range(8):
        expected = opt.param_groups[0]["lr"]
        assert [f(epoch * steps + i) for i in range(steps)] == pytest.approx([expected] * steps, rel=1e-12)
        reference.step()
    warm = lr_factor(TrainConfig(data="", out="", epochs=4, schedule="cosine", warmup_epochs=1.0), steps)
    assert warm(0) == pytest.approx(0.01)
    assert warm(steps // 2) == pytest.approx(0.01 + 0.99 * (steps // 2) / steps)
    assert warm(steps) == pytest.approx(1.0)
    ramp = [warm(i) for i in range(4 * steps + 1)]
    assert all(b <= a + 1e-12 for a, b in zip(ramp[steps:], ramp[steps + 1:]))     # decays monotonically
    assert ramp[-1] == pytest.approx(0.01)
    with pytest.raises(InputError, match="schedule 'linear'"):
        lr_factor(TrainConfig(data="", out="", schedule="linear"), steps)
