"""LFW (Labeled Faces in the Wild): its image layout and its verification pairs file, reader and writer.

Face-recognition models are verified on LFW's pairs.txt (10 person-disjoint folds of 300 "same" and 300
"different" pairs, accuracy by 10-fold cross-validation of a threshold). The synthetic identity generator writes
this layout for its held-out identities, so the verification code reads one format, real or synthetic.

Layout (the release's README): `<root>/<name>/<name>_<NNNN>.jpg`, NNNN the 1-based image number in 4 digits.
pairs.txt: first line `<folds>\t<n>` (LFW: `10\t300`); then per fold n same-person lines `name\tidx1\tidx2` and
n different-person lines `name1\tidx1\tname2\tidx2` (tabs in the release; any whitespace is read).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...fileio import write_text_atomic
from ..record import DatasetError
from .common import read_text_lines, require_file

PAIRS_FILE = "pairs.txt"


def image_name(name: str, index: int) -> str:
    """File name of image `index` (1-based) of person `name`: `name_0001.jpg`."""
    if index < 1:
        raise ValueError(f"LFW image numbers start at 1, got {index}")
    return f"{name}_{index:04d}.jpg"


def image_path(root: Path, name: str, index: int) -> Path:
    """`<root>/<name>/<name>_<NNNN>.jpg`."""
    return Path(root) / name / image_name(name, index)


@dataclass(frozen=True)
class SamePair:
    """Two images of one person, as a pairs.txt line `name idx1 idx2`."""
    name: str
    index_a: int
    index_b: int


@dataclass(frozen=True)
class DifferentPair:
    """Images of two people, as a pairs.txt line `name1 idx1 name2 idx2`."""
    name_a: str
    index_a: int
    name_b: str
    index_b: int


@dataclass(frozen=True)
class Fold:
    same: list[SamePair]
    different: list[DifferentPair]


@dataclass(frozen=True)
class PairRecord:
    """One verification pair read from pairs.txt, with the image paths resolved and checked."""
    path_a: Path
    path_b: Path
    same: bool
    fold: int                      # 0-based fold index
    line: int                      # 1-based line of pairs.txt, for messages


def write_pairs(path: Path, folds: Sequence[Fold]) -> None:
    """Write pairs.txt in LFW's format (tab separated). Every fold must hold the same number n of same and of
    different pairs, as the header has one n."""
    if not folds:
        raise ValueError("write_pairs: no folds")
    n = len(folds[0].same)
    for k, fold in enumerate(folds):
        if len(fold.same) != n or len(fold.different) != n:
            raise ValueError(f"write_pairs: fold {k} has {len(fold.same)} same and {len(fold.different)} different "
                             f"pairs: every fold needs {n} of each")
    lines = [f"{len(folds)}\t{n}"]
    for fold in folds:
        lines += [f"{p.name}\t{p.index_a}\t{p.index_b}" for p in fold.same]
        lines += [f"{p.name_a}\t{p.index_a}\t{p.name_b}\t{p.index_b}" for p in fold.different]
    write_text_atomic(Path(path), "\n".join(lines) + "\n")


def _shown(line: str) -> str:
    """A line as messages quote it: whitespace (the release's tabs) as single spaces."""
    return " ".join(line.split())


def _positive_int(token: str, where: str, line: str, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        value = 0
    if value < 1:
        raise DatasetError(f"{where}: {_shown(line)!r}: {what} {token!r} is not an image number (an integer >= 1)")
    return value


def _looks_like_pair(tokens: list[str], same: bool) -> bool:
    """Whether tokens read as a same-person line (name int int) or a different-person one (name int name int)."""
    def is_int(t):
        return t.lstrip("-").isdigit()
    if same:
        return len(tokens) == 3 and is_int(tokens[1]) and is_int(tokens[2])
    return len(tokens) == 4 and is_int(tokens[1]) and not is_int(tokens[2]) and is_int(tokens[3])


def _slot_problem(tokens: list[str], same: bool, fold: int, pos: int, n: int) -> str:
    """Why a line does not fit its place: a line of the other kind means a fold block of the wrong size."""
    kind, form, fields = ("same", "'name idx1 idx2'", 3) if same else ("different", "'name1 idx1 name2 idx2'", 4)
    number = pos + 1 if same else pos + 1 - n
    place = f"fold {fold + 1} expects {kind}-person pair {number} of {n} ({form}) here"
    if _looks_like_pair(tokens, same=not same):
        other = "different" if same else "same"
        return (f"{place}, not a {other}-person pair: each fold holds {n} same-person then {n} different-person "
                f"lines (the header says {n})")
    return f"{place} ({fields} fields, found {len(tokens)})"


def parse_pairs(pairs_file: Path) -> list[tuple[int, int, SamePair | DifferentPair]]:
    """pairs.txt -> (fold, line number, pair) in file order, checking the header and each fold block's size.
    Blank lines at the end are tolerated; images are not looked at."""
    pairs_file = Path(pairs_file)
    lines = read_text_lines(require_file(pairs_file, "LFW pairs file"))
    while lines and not lines[-1].strip():
        lines.pop()
    header = lines[0].split() if lines else []
    try:
        folds, n = (int(t) for t in header) if len(header) == 2 else (0, 0)
    except ValueError:
        folds, n = 0, 0
    if folds < 1 or n < 1:
        first = lines[0].strip() if lines else ""
        raise DatasetError(f"{pairs_file}:1: header {first!r}: expected '<folds> <pairs per fold>' (LFW: '10 300')")
    expected_lines = 1 + folds * 2 * n
    out = []
    for i, line in enumerate(lines[1:], start=2):
        fold, pos = divmod(i - 2, 2 * n)
        if fold >= folds:
            raise DatasetError(f"{pairs_file}:{i}: more lines than the header's {folds} folds x {2 * n} pairs "
                               f"({expected_lines} lines in all)")
        where = f"{pairs_file}:{i}"
        tokens = line.split()
        same = pos < n
        if len(tokens) != (3 if same else 4):
            raise DatasetError(f"{where}: {_shown(line)!r}: {_slot_problem(tokens, same, fold, pos, n)}")
        if same:
            pair = SamePair(tokens[0], _positive_int(tokens[1], where, line, "idx1"),
                            _positive_int(tokens[2], where, line, "idx2"))
        else:
            pair = DifferentPair(tokens[0], _positive_int(tokens[1], where, line, "idx1"), tokens[2],
                                 _positive_int(tokens[3], where, line, "idx2"))
        out.append((fold, i, pair))
    if len(lines) != expected_lines:
        fold, pos = divmod(len(lines) - 1, 2 * n)
        raise DatasetError(f"{pairs_file}: {len(lines) - 1} pair lines, expected {folds} folds x ({n} same + {n} "
                           f"different) = {expected_lines - 1}: fold {fold + 1} stops after {pos} lines")
    return out


def read_pairs(pairs_file: Path, images_root: Path) -> list[PairRecord]:
    """LFW pairs.txt -> one PairRecord per line, in file order, with both images checked to exist under
    images_root (`<name>/<name>_<NNNN>.jpg`). Every problem is a one-line DatasetError naming file:line."""
    pairs_file, images_root = Path(pairs_file), Path(images_root)
    if not images_root.is_dir():
        raise DatasetError(f"{images_root}: LFW images folder not found (expected <name>/<name>_0001.jpg inside)")
    records = []
    for fold, line, pair in parse_pairs(pairs_file):
        if isinstance(pair, SamePair):
            a, b = image_path(images_root, pair.name, pair.index_a), image_path(images_root, pair.name, pair.index_b)
        else:
            a = image_path(images_root, pair.name_a, pair.index_a)
            b = image_path(images_root, pair.name_b, pair.index_b)
        for p in (a, b):
            require_file(p, "image", where=f"{pairs_file}:{line}")
        records.append(PairRecord(path_a=a, path_b=b, same=isinstance(pair, SamePair), fold=fold, line=line))
    return records
