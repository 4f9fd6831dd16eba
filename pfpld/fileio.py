"""Atomic file writing: every artifact is written to a temporary sibling and renamed into place, so a crash or
a user's mistake never leaves a half-written file behind. Output folders (synth, prepare-data, export, calib, the
NNIE bundle, align) also share one rule for when an existing folder may be replaced: output_folder() below. The one
reader of a user's picture (read_image) is here too."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import InputError


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
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_image(path: Path):
    """A picture as a BGR uint8 array (OpenCV decodes it), or an InputError naming the file. OpenCV is imported here,
    not with the module: most users of this module write files and never decode one."""
    import cv2
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not a readable image (expected a file OpenCV can decode: jpg, png, bmp, ...)")
    return image


def swap_in_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder `tmp` to `out`. A folder already at `out` (the caller has checked it may be
    replaced) is set aside first and deleted only once the new one is in place; on failure it is put back."""
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


# --- output folders: one rule for every command that writes one --------------------------------------------------

OUTPUT_MARKER = ".pfpld-output.json"        # {"kind": ..., "created": iso time, "pfpld": version}



def read_text_lines(path: Path, expected: str = "", error: type[Exception] = InputError) -> list[str]:
    """The lines of a user's text file (UTF-8, a byte-order mark allowed); one `error` naming the file when it cannot
    be read or is not text, with `expected` (what a line should hold) appended."""
    path = Path(path)
    tail = f"; {expected}" if expected else ""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}){tail}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc}){tail}") from None

@dataclass(frozen=True)
class OutputKind:
    name: str
    description: str            # with its article, as messages say it: "a calibration set"
    command: str                # what writes it, for --help
    legacy_file: str            # how a folder written before markers existed is recognised:
    legacy_key: str             # legacy_file (JSON, or the first line of a .jsonl) has legacy_key == legacy_value
    legacy_value: str


OUTPUT_KINDS = {kind.name: kind for kind in (
    OutputKind("synth", "a synthetic dataset", "pfpld synth", "synth.json", "generator", "pfpld.data.synthetic"),
    OutputKind("prepared", "a prepared dataset", "pfpld prepare-data", "index.jsonl", "format", "pfpld-prepared"),
    OutputKind("export", "an export", "pfpld export", "manifest.json", "format", "pfpld-export"),
    OutputKind("calib", "a calibration set", "pfpld calib", "calib.json", "format", "pfpld-calib"),
    OutputKind("nnie-bundle", "an NNIE bundle", "pfpld export --target nnie --sdk-dir", "manifest.json", "format",
               "pfpld-nnie-bundle"),
    OutputKind("aligned", "an aligned face folder", "pfpld align", "align.json", "format", "pfpld-aligned"),
)}

NEVER_REPLACED = "pfpld never replaces it, even with --force: choose another path"


def force_help(kind: str) -> str:
    """The --help text of --force for a command writing `kind`: the policy, the same words everywhere."""
    k = _kind(kind)
    return (f"Replace the output folder if it holds {k.description} written earlier by `{k.command}`. Without "
            f"--force it is kept and the command stops. A missing folder is created and an empty one filled; a "
            f"file or any other non-empty folder is never replaced, with or without --force.")


def _kind(kind: str) -> OutputKind:
    try:
        return OUTPUT_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown output kind {kind!r}: expected one of {', '.join(OUTPUT_KINDS)}") from None


def _read_json_object(path: Path, first_line_only: bool) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.readline() if first_line_only else f.read()
        data = json.loads(text)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def output_kind_of(folder: Path) -> str | None:
    """The kind of pfpld output `folder` holds: from its marker, else from what that kind wrote before markers
    existed; None for anything else (a folder with a marker that is not ours counts as anything else)."""
    folder = Path(folder)
    if (folder / OUTPUT_MARKER).exists():
        marker = _read_json_object(folder / OUTPUT_MARKER, first_line_only=False)
        kind = marker.get("kind") if marker else None
        return kind if kind in OUTPUT_KINDS else None
    for k in OUTPUT_KINDS.values():
        legacy = _read_json_object(folder / k.legacy_file, first_line_only=k.legacy_file.endswith(".jsonl"))
        if legacy is not None and legacy.get(k.legacy_key) == k.legacy_value:
            return k.name
    return None


def check_output_folder(out: Path, kind: str, force: bool) -> None:
    """Raise InputError (one line naming `out` and what to do) unless `out` may be written as `kind`: missing or
    an empty folder, or (only with force) a folder of the same kind written earlier by pfpld. A file, a link, a
    user's non-empty folder and a pfpld folder of another kind are never replaced."""
    k = _kind(kind)
    out = Path(out)
    if out.is_symlink():
        raise InputError(f"{out}: is a symbolic link, not a folder; {NEVER_REPLACED}")
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"{out}: is a file, not a folder; {NEVER_REPLACED}")
    if not any(out.iterdir()):
        return
    found = output_kind_of(out)
    if found == kind:
        if not force:
            raise InputError(f"{out}: holds {k.description} written earlier; pass --force to replace it")
        return
    if found is not None:
        raise InputError(f"{out}: holds {OUTPUT_KINDS[found].description} written by pfpld, not {k.description}; "
                         f"{NEVER_REPLACED}")
    raise InputError(f"{out}: is a folder with other files in it (not {k.description} written by pfpld); "
                     f"{NEVER_REPLACED}")


def temporary_sibling(out: Path) -> Path:
    """Create and return a new hidden folder beside `out`: the same filesystem, so renaming it to `out` is atomic.
    Made with the usual umask permissions (mkdtemp's 0700 would survive the rename)."""
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def write_output_marker(folder: Path, kind: str) -> None:
    from . import __version__
    write_json_atomic(Path(folder) / OUTPUT_MARKER, {
        "kind": _kind(kind).name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pfpld": __version__})


def commit_output_folder(tmp: Path, out: Path, kind: str, force: bool) -> None:
    """Mark the finished folder `tmp` as `kind` and swap it in at `out`, checking `out` again first (someone may
    have written there since the first check). An old folder is deleted only once the new one is in place."""
    write_output_marker(tmp, kind)
    check_output_folder(out, kind, force)
    try:
        swap_in_folder(tmp, out)
    except OSError as exc:
        raise InputError(f"{out}: cannot move the new folder into place ({exc.strerror or exc}); "
                         f"nothing was changed") from None


@contextlib.contextmanager
def output_folder(out: Path, kind: str, force: bool) -> Iterator[Path]:
    """Check `out`, yield a temporary sibling to fill, and put it in place at `out` when the block succeeds; on
    any exception the temporary folder is removed and `out` is left as it was."""
    check_output_folder(out, kind, force)
    tmp = temporary_sibling(out)
    try:
        yield tmp
        commit_output_folder(tmp, out, kind, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
