"""300W-LP (68 points + 3DMM pose, profile faces synthesised from 300W): reader into FaceRecord and writer.

The training source of the pose labels. Pose_Para on disk is pitch, yaw, roll; FaceRecord carries yaw, pitch,
roll. Only the 43 points annotated like WFLW are supervised (landmarks.SUPERVISED_300WLP_98).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.io

from ...landmarks import points_68_to_98
from ..record import DatasetError, FaceRecord
from .common import check_pose_para, load_mat, mat_points, pose_from_pose_para, require_dir, write_jpeg

KNOWN_DBS = ("AFW", "HELEN", "IBUG", "LFPW", "AFW_Flip", "HELEN_Flip", "IBUG_Flip", "LFPW_Flip")
LANDMARKS_DIR = "landmarks"
NUM_POINTS_68 = 68


def landmarks_path(root: Path, db: str, name: str) -> Path:
    return Path(root) / LANDMARKS_DIR / db / f"{name}_pts.mat"


def write_300wlp(root: Path, db: str, name: str, image: np.ndarray, pose_para: np.ndarray, points_68: np.ndarray,
                 *, landmarks_file: bool = True) -> None:
    """Write <db>/<name>.jpg, <db>/<name>.mat (Pose_Para 1x7, pt2d 2x68) and, unless landmarks_file is False,
    landmarks/<db>/<name>_pts.mat (pts_2d 68x2). The real release has no landmarks/ files for the _Flip
    folders: landmarks_file=False reproduces that."""
    points = np.asarray(points_68, dtype=np.float64)
    if points.shape != (NUM_POINTS_68, 2) or not np.all(np.isfinite(points)):
        raise ValueError(f"{db}/{name}: points_68 must be a finite ({NUM_POINTS_68}, 2) array, got {points.shape}")
    db_dir = Path(root) / db
    write_jpeg(db_dir / f"{name}.jpg", image)
    scipy.io.savemat(str(db_dir / f"{name}.mat"), {"Pose_Para": check_pose_para(pose_para), "pt2d": points.T})
    if landmarks_file:
        lm = landmarks_path(root, db, name)
        lm.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(lm), {"pts_2d": points})


def find_db_folders(root: Path) -> list[Path]:
    """The known db folders, plus any other folder (except landmarks/) holding a .mat next to a same-named .jpg,
    so a re-packed or partial copy still reads."""
    folders = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name != LANDMARKS_DIR):
        mats = list(d.glob("*.mat"))
        if not mats:
            continue
        if d.name in KNOWN_DBS or any(m.with_suffix(".jpg").is_file() for m in mats):
            folders.append(d)
    return folders


def read_face(root: Path, mat_path: Path) -> FaceRecord:
    db, name = mat_path.parent.name, mat_path.stem
    image_path = mat_path.with_suffix(".jpg")
    if not image_path.is_file():
        raise DatasetError(f"{mat_path}: image {image_path} not found")
    mat = load_mat(mat_path)
    pose = pose_from_pose_para(mat, mat_path)
    lm_path = landmarks_path(root, db, name)
    if lm_path.is_file():
        points_68 = mat_points(load_mat(lm_path), "pts_2d", lm_path, NUM_POINTS_68, 2)
    else:                               # the _Flip folders of the release have no landmarks/ file
        points_68 = mat_points(mat, "pt2d", mat_path, NUM_POINTS_68, 2)
    points, mask = points_68_to_98(points_68)
    return FaceRecord(image_path=image_path, points=points, point_mask=mask, source="300wlp", split="train",
                      pose_rad=pose, name=f"{db}/{name}")


def iter_300wlp(root: Path) -> Iterator[FaceRecord]:
    root = require_dir(Path(root), "300W-LP root")
    folders = find_db_folders(root)
    if not folders:
        raise DatasetError(f"{root}: no 300W-LP db folders ({', '.join(KNOWN_DBS[:4])} ... with .jpg + .mat pairs)")
    for folder in folders:
        for mat_path in sorted(folder.glob("*.mat")):
            yield read_face(root, mat_path)


def read_300wlp(root: Path) -> list[FaceRecord]:
    return list(iter_300wlp(root))
