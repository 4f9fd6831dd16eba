"""LaPa (106 points per face, one face per image): reader into FaceRecord and writer of the release layout.

PFPLD uses LaPa for its closed-eye faces, which WFLW lacks: the reader maps 106 -> 98 points and by default
keeps only faces with a closed eye. The `labels/` segmentation folders of the release are not read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...landmarks import NUM_POINTS, has_closed_eye, points_106_to_98
from ..record import DatasetError, FaceRecord
from .common import read_text_lines, require_dir, require_file, write_jpeg

NUM_POINTS_106 = 106
SPLITS = ("train", "val", "test")
# LaPa has a validation split; our prepared data has only train and test, and val faces are held out too.
RECORD_SPLIT = {"train": "train", "val": "test", "test": "test"}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"LaPa split {split!r}: expected one of {SPLITS}")


def write_lapa(root: Path, split: str, name: str, image: np.ndarray, points_106: np.ndarray) -> None:
    """Write <root>/<split>/images/<name>.jpg and <root>/<split>/landmarks/<name>.txt (count line, then x y)."""
    _check_split(split)
    points = np.asarray(points_106, dtype=np.float64)
    if points.shape != (NUM_POINTS_106, 2) or not np.all(np.isfinite(points)):
        raise ValueError(f"{name}: points_106 must be a finite ({NUM_POINTS_106}, 2) array, got {points.shape}")
    split_dir = Path(root) / split
    write_jpeg(split_dir / "images" / f"{name}.jpg", image)
    txt = split_dir / "landmarks" / f"{name}.txt"
    txt.parent.mkdir(parents=True, exist_ok=True)
    txt.write_text(f"{NUM_POINTS_106}\n" + "".join(f"{x:.6f} {y:.6f}\n" for x, y in points), encoding="utf-8")


def parse_landmarks_106(path: Path) -> np.ndarray:
    """A LaPa landmarks file -> (106, 2) float64. Blank lines at the end are tolerated."""
    lines = read_text_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or lines[0].strip() != str(NUM_POINTS_106):
        first = lines[0].strip() if lines else ""
        raise DatasetError(f"{path}:1: first line {first!r}: expected the point count {NUM_POINTS_106}")
    rows = lines[1:]
    if len(rows) != NUM_POINTS_106:
        raise DatasetError(f"{path}: {len(rows)} point lines after the count line, expected {NUM_POINTS_106}")
    points = np.empty((NUM_POINTS_106, 2), dtype=np.float64)
    for i, row in enumerate(rows):
        where = f"{path}:{i + 2}"
        tokens = row.split()
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            values = []
        if len(values) != 2:
            raise DatasetError(f"{where}: {row.strip()!r}: expected two numbers 'x y'")
        if not all(np.isfinite(values)):
            raise DatasetError(f"{where}: {row.strip()!r}: expected finite coordinates")
        points[i] = values
    return points


def iter_lapa(root: Path, split: str, closed_eye_only: bool = True) -> Iterator[FaceRecord]:
    """Faces of one LaPa split (train, val or test), sorted by name; val and test become split "test"."""
    _check_split(split)
    split_dir = require_dir(Path(root) / split, f"LaPa {split}")
    landmarks_dir = require_dir(split_dir / "landmarks", f"LaPa {split} landmarks")
    images_dir = require_dir(split_dir / "images", f"LaPa {split} images")
    txt_files = sorted(landmarks_dir.glob("*.txt"))
    if not txt_files:
        raise DatasetError(f"{landmarks_dir}: no .txt landmark files: expected one per image")
    for txt in txt_files:
        points_98 = points_106_to_98(parse_landmarks_106(txt))
        if closed_eye_only and not has_closed_eye(points_98):
            continue
        image_path = require_file(images_dir / f"{txt.stem}.jpg", "image", str(txt))
        yield FaceRecord(
            image_path=image_path, points=points_98, point_mask=np.ones(NUM_POINTS, dtype=bool), source="lapa",
            split=RECORD_SPLIT[split], name=f"{split}/{txt.stem}",
        )


def read_lapa(root: Path, split: str, closed_eye_only: bool = True) -> list[FaceRecord]:
    return list(iter_lapa(root, split, closed_eye_only))
