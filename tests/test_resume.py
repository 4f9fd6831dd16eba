"""A training run killed with SIGKILL in the middle of an epoch, then resumed from last.pt, ends with the same
weights and metrics as a run that was never interrupted (bitwise on the CPU); last.pt is never half-written."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pytest
import torch

import pfpld.checkpoint as checkpoint_module
from pfpld.checkpoint import load_checkpoint, save_checkpoint
from pfpld.models import build_model

PFPLD = [sys.executable, "-m", "pfpld_app.cli"]
TIMING_COLUMNS = {"train_images_per_s", "epoch_seconds", "data_seconds"}


def train_args(data, out, *extra):
    return PFPLD + ["train", "--data", str(data), "--out", str(out), "--width", "0.25", "--epochs", "3",
                    "--batch-size", "32", "--lr", "3e-3", "--workers", "0", "--schedule", "cosine",
                    "--warmup-epochs", "0.5", "--seed", "4", *map(str, extra)]


def kill_in_epoch(args, epoch: int, env: dict) -> None:
    """Start training and SIGKILL it once the progress lines show a batch of `epoch` done (not its last)."""
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        for line in proc.stderr:
            if line.startswith(f"epoch {epoch}/") and " batch (" in line and "done" not in line:
                done, total = (int(v) for v in line.split(":")[1].split()[0].split("/"))
                if 0 < done < total:
                    proc.send_signal(signal.SIGKILL)
                    break
        else:
            pytest.fail("training ended before it could be killed mid-epoch")
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(prepared_dir, tmp_path):
    env = dict(os.environ, PFPLD_PROGRESS_SECONDS="0")      # a progress line per batch: the kill lands mid-epoch
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = subprocess.run(train_args(prepared_dir, straight), capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]

    kill_in_epoch(train_args(prepared_dir, killed), epoch=2, env=env)
    interrupted = load_checkpoint(killed / "last.pt")           # whole and readable: the end of epoch 1
    assert interrupted.epoch == 1
    proc = subprocess.run(train_args(prepared_dir, killed, "--resume", killed / "last.pt"), capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a.epoch == b.epoch == 3
    assert a.state_dict.keys() == b.state_dict.keys()
    for name in a.state_dict:
        assert torch.equal(a.state_dict[name], b.state_dict[name]), name
    for row_a, row_b in zip(a.history, b.history, strict=True):
        # the same numbers bitwise; a column the model has no output for is NaN on both sides (NaN != NaN)
        assert row_a.keys() == row_b.keys()
        for k in row_a.keys() - set(TIMING_COLUMNS):
            same_nan = isinstance(row_a[k], float) and math.isnan(row_a[k]) and math.isnan(row_b[k])
            assert same_nan or row_a[k] == row_b[k], (k, row_a[k], row_b[k])
    assert a.optimizer["state"].keys() == b.optimizer["state"].keys()
    for key, state in a.optimizer["state"].items():
        assert torch.equal(state["exp_avg"], b.optimizer["state"][key]["exp_avg"])
    assert (killed / "metrics.csv").read_text().count("\n") == 4          # header + 3 epochs, none repeated


def test_a_save_that_fails_midway_leaves_the_previous_last_pt_whole(tmp_path, monkeypatch):
    model, spec, contract = build_model("pfpld", width=0.25)
    path = tmp_path / "last.pt"
    save_checkpoint(path, state_dict=model.state_dict(), spec=spec, contract=contract, epoch=1)
    before = path.read_bytes()

    def dies_halfway(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(before[: len(before) // 2])       # a partial file on disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, state_dict=model.state_dict(), spec=spec, contract=contract, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]     # no temporary file left behind
