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
