"""Shared fixtures: a small synthetic dataset in the real on-disk formats, and its prepared form. Generated once
per test session by the project's own generator (no mocks)."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from pfpld.data.synthetic import generate_dataset
    out = tmp_path_factory.mktemp("synth") / "faces"
    generate_dataset(out, n=240, seed=1, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared_dir(synth_dir, tmp_path_factory) -> Path:
    from pfpld.data.prepare import prepare_dataset
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare_dataset(out, wflw=synth_dir / "WFLW", lapa=synth_dir / "LaPa", w300lp=synth_dir / "300W_LP",
                    aflw2000=synth_dir / "AFLW2000", progress=False)
    return out


@pytest.fixture(scope="session")
def random_export(tmp_path_factory):
    """`pfpld export --model pfpld --width W --init random --target all` run as a user runs it (a subprocess),
    once per width per session; returns (export folder, the finished process)."""
    import subprocess
    import sys
    done = {}

    def make(width: float):
        if width not in done:
            out = tmp_path_factory.mktemp(f"export_{width}") / "pfpld"
            proc = subprocess.run([sys.executable, "-m", "pfpld_app.cli", "export", "--model", "pfpld", "--width",
                                   str(width), "--init", "random", "--seed", "3", "--target", "all", "--out",
                                   str(out)], capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr
            done[width] = (out, proc)
        return done[width]
    return make


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A checkpoint of an untrained PFPLD-0.25 saved the way training saves one (for CLI and error tests)."""
    import torch
    from pfpld.checkpoint import save_checkpoint
    from pfpld.models import build_model
    torch.manual_seed(0)
    model, spec, contract = build_model("pfpld", width=0.25)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, state_dict=model.state_dict(), spec=spec, contract=contract)
    return path
