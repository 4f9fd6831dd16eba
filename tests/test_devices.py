"""Devices: `--device` and `--amp` resolved once, with one clear line for what this machine lacks and nothing
written; the training loop with channels-last; checkpoints that load on the CPU whatever trained them."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pfpld.checkpoint import load_checkpoint
from pfpld.devices import resolve_amp, resolve_device
from pfpld.errors import InputError
from pfpld.train import TrainConfig, train

PFPLD = [sys.executable, "-m", "pfpld_app.cli"]


def test_auto_is_cuda_when_present_else_cpu_and_amp_is_off_on_the_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_amp("auto", torch.device("cpu")) is None and resolve_amp("off", torch.device("cpu")) is None
    # asked for explicitly, the CPU runs the same autocast (and, for fp16, GradScaler) code as a GPU
    assert resolve_amp("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_amp("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(InputError, match="--amp fp8: expected one of auto, bf16, fp16, off"):
        resolve_amp("fp8", torch.device("cpu"))
    with pytest.raises(InputError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_a_cuda_device_this_machine_lacks_is_one_line_and_nothing_is_written(prepared_dir, tmp_path):
    missing = f"cuda:{torch.cuda.device_count() + 7}"      # absent on every machine, with or without GPUs
    for command in (["train", "--data", prepared_dir, "--out", tmp_path / "run", "--width", "0.25", "--epochs",
                     "1", "--device", missing],
                    ["eval", tmp_path / "none.pt", "--data", prepared_dir, "--device", missing]):
        proc = subprocess.run(PFPLD + [str(c) for c in command], capture_output=True, text=True, timeout=300)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "--device" in lines[0] and "no CUDA device" in lines[0] or "has 0 CUDA" in lines[0] or \
            "CUDA device(s)" in lines[0], lines[0]
        assert not (tmp_path / "run").exists()


def test_fp16_mixed_precision_resumes_with_its_loss_scale_bitwise(tmp_path):
    """The mixed-precision path a GPU runs (autocast fp16, GradScaler skipping overflowing steps and halving its
    scale), run on the CPU: the scaler's state goes into last.pt, so a resumed run equals an uninterrupted one."""
    from pfpld.data.prepare import prepare_dataset
    from pfpld.data.synthetic import generate_dataset
    generate_dataset(tmp_path / "synth", n=60, seed=5, progress=False)
    data = tmp_path / "prepared"
    prepare_dataset(data, wflw=tmp_path / "synth" / "WFLW", progress=False)

    def config(out, epochs):
        return TrainConfig(data=str(data), out=str(out), width=0.25, epochs=epochs, batch_size=16, workers=0,
                           seed=4, device="cpu", amp="fp16", val_fraction=0.0)
    whole = train(config(tmp_path / "whole", 2), progress=False)
    train(config(tmp_path / "split", 1), progress=False)
    first = load_checkpoint(tmp_path / "split" / "last.pt")
    assert first.scaler is not None and first.scaler["scale"] < 2.0 ** 16     # fp16 overflowed: steps were skipped
    resumed = train(config(tmp_path / "split", 2), resume=str(tmp_path / "split" / "last.pt"), progress=False)
    a, b = (load_checkpoint(tmp_path / name / "last.pt") for name in ("whole", "split"))
    assert a.scaler == b.scaler and a.config["amp"] == "fp16"
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert resumed["train_loss"] == whole["train_loss"] and all(torch.isfinite(v).all() for v in a.state_dict.values()
                                                                if v.is_floating_point())


@pytest.mark.slow
def test_channels_last_trains_to_the_same_result_within_rounding(prepared_dir, tmp_path):
    rows = {}
    for channels_last in (False, True):
        out = tmp_path / f"cl_{channels_last}"
        cfg = TrainConfig(data=str(prepared_dir), out=str(out), width=0.25, epochs=1, batch_size=32, workers=0,
                          seed=2, augment=False, device="cpu", channels_last=channels_last)
        rows[channels_last] = train(cfg, progress=False)
        ckpt = load_checkpoint(out / "last.pt")
        assert all(t.device.type == "cpu" for t in ckpt.state_dict.values())   # device-independent checkpoint
        assert ckpt.config["device"] == "cpu" and ckpt.config["channels_last"] is channels_last
    # different convolution kernels round differently, and training amplifies it: close, not equal
    assert rows[True]["train_loss"] == pytest.approx(rows[False]["train_loss"], rel=1e-2)
    assert rows[True]["val_nme"] == pytest.approx(rows[False]["val_nme"], rel=5e-2)
