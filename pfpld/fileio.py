"""Atomic file writing: every artifact is written to a temporary sibling and renamed into place, so a crash or
a user's mistake never leaves a half-written file behind."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path` (same suffix); on success rename it to `path`, else delete it.
    The temporary file is created with the usual umask permissions (mkstemp's 0600 would survive the rename,
    and artifacts are meant to be shared)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    with open(tmp, "xb"):
        pass
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data) -> None:
    import json
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def swap_in_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder `tmp` to `out`. A folder already at `out` (the caller has checked it may be
    replaced) is set aside first and deleted only once the new one is in place; on failure it is put back."""
    import shutil
    tmp, out = Path(tmp), Path(out)
    if not out.exists():
        tmp.rename(out)
        return
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
