"""AFLW2000-3D (68 3D-fitted points + pose, 2000 in-the-wild faces): reader into FaceRecord and writer.

The pose test set. The evaluation protocol drops faces with any |angle| > 99 degrees (2000 -> 1969); its jaw
points follow the 3D contour, so only the 43 points annotated like WFLW are marked valid.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.io

from ...landmarks import points_68_to_98
from ..record import DatasetError, FaceRecord
from .common import check_pose_para, load_mat, mat_points, pose_from_pose_para, require_dir, write_jpeg

NUM_POINTS_68 = 68
NUM_POINTS_21 = 21
PROTOCOL_MAX_ANGLE_RAD = math.radians(99.0)


def write_aflw2000(root: Path, name: str, image: np.ndarray, pose_para: np.ndarray, points3d_68: np.ndarray,
                   points2d_21: np.ndarray) -> None:
    """Write <root>/<name>.jpg and <root>/<name>.mat (Pose_Para 1x7, pt3d_68 3x68, pt2d 2x21 with -1 = missing)."""
    pts3d = np.asarray(points3d_68, dtype=np.float64)
    pts21 = np.asarray(points2d_21, dtype=np.float64)
    if pts3d.shape != (3, NUM_POINTS_68) or not np.all(np.isfinite(pts3d)):
        raise ValueError(f"{name}: points3d_68 must be a finite (3, {NUM_POINTS_68}) array, got {pts3d.shape}")
    if pts21.shape != (2, NUM_POINTS_21):
        raise ValueError(f"{name}: points2d_21 must be a (2, {NUM_POINTS_21}) array, got {pts21.shape}")
    root = Path(root)
    write_jpeg(root / f"{name}.jpg", image)
    scipy.io.savemat(str(root / f"{name}.mat"),
                     {"Pose_Para": check_pose_para(pose_para), "pt3d_68": pts3d, "pt2d": pts21})


def in_protocol(pose_rad: np.ndarray) -> bool:
    return bool(np.all(np.abs(pose_rad) <= PROTOCOL_MAX_ANGLE_RAD))


def read_face(mat_path: Path) -> FaceRecord:
    image_path = mat_path.with_suffix(".jpg")
    if not image_path.is_file():
        raise DatasetError(f"{mat_path}: image {image_path} not found")
    mat = load_mat(mat_path)
    pose = pose_from_pose_para(mat, mat_path)
    points3d = mat_points(mat, "pt3d_68", mat_path, NUM_POINTS_68, 3)
    points, mask = points_68_to_98(points3d[:, :2])      # x, y are image pixels; z (depth) is not a label
    return FaceRecord(image_path=image_path, points=points, point_mask=mask, source="aflw2000", split="test",
                      pose_rad=pose, name=mat_path.stem)


def iter_aflw2000(root: Path, protocol: bool = True) -> Iterator[FaceRecord]:
    root = require_dir(Path(root), "AFLW2000 root")
    mats = sorted(root.glob("*.mat"))
    if not mats:
        raise DatasetError(f"{root}: no .mat files: expected AFLW2000-3D <name>.jpg + <name>.mat pairs")
    for mat_path in mats:
        face = read_face(mat_path)
        if protocol and not in_protocol(face.pose_rad):
            continue
        yield face


def read_aflw2000(root: Path, protocol: bool = True) -> list[FaceRecord]:
    return list(iter_aflw2000(root, protocol))
