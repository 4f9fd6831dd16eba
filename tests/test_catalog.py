"""`pfpld models`: the registry's table, the README's copy of it, and the parity verdict it finds on disk."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pfpld.models import MODELS
from pfpld_app.catalog import last_parity

ROOT = Path(__file__).resolve().parents[1]
PFPLD = [sys.executable, "-m", "pfpld_app.cli"]


def test_readme_holds_the_models_table_of_the_registry():
    proc = subprocess.run(PFPLD + ["models", "--markdown"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 + len(MODELS)
    readme = (ROOT / "README.md").read_text()
    missing = [line for line in lines if line not in readme]
    assert not missing, f"README.md's models table is stale: run `pfpld models --markdown` ({missing[0][:80]})"


def test_models_lists_every_model_with_the_newest_parity_verdict_under_the_folder(tmp_path):
    def manifest(folder: Path, name: str, created: str, verdict: str | None) -> None:
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({
            "format": "pfpld-export", "spec": {"name": name}, "created": created,
            **({"parity": {"verdict": verdict}} if verdict else {})}))

    manifest(tmp_path / "old" / "export", "landmark5", "2026-01-01T00:00:00+00:00", "fail")
    manifest(tmp_path / "new" / "export", "landmark5", "2026-02-01T00:00:00+00:00", "pass")
    manifest(tmp_path / "hp", "hopenet", "2026-03-01T00:00:00+00:00", None)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("not json")          # someone else's file: ignored
    found = last_parity(tmp_path)
    assert found["landmark5"].startswith("PASS (") and str(tmp_path / "new" / "export") in found["landmark5"]
    assert found["hopenet"].startswith("not checked (") and "pfpld" not in found
    proc = subprocess.run(PFPLD + ["models"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    blocks = proc.stdout.strip().split("\n\n")
    assert [b.splitlines()[0].split()[-1] for b in blocks] == list(MODELS)
    by_model = {b.splitlines()[0].split()[-1]: b for b in blocks}
    assert "last parity here       PASS" in by_model["landmark5"]
    assert "last parity here       no export here" in by_model["pfpld"]
    assert "angles_deg: pose_deg [3]" in by_model["hopenet"]
