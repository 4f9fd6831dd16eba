"""Helpers every format module shares: file checks, .mat loading and the 300W-LP/AFLW2000 pose convention.

They turn whatever numpy, scipy or the file system raises into a one-line DatasetError that names the file, so
a bad release never surfaces as a traceback.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import scipy.io

from ... import fileio
from ...errors import one_line
from ..record import DatasetError

JPEG_QUALITY = 95


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} folder not found")
    return path


def require_file(path: Path, what: str, where: str | None = None) -> Path:
    """`where` is the file (and line) that references `path`, so the message leads to both."""
    if not path.is_file():
        prefix = f"{where}: " if where else ""
        raise DatasetError(f"{prefix}{what} {path} not found")
    return path


def read_text_lines(path: Path) -> list[str]:
    """A dataset's annotation file as lines (fileio.read_text_lines), its errors DatasetErrors."""
    return fileio.read_text_lines(path, error=DatasetError)


def write_jpeg(path: Path, image: np.ndarray) -> None:
    """Write a BGR uint8 image as JPEG (quality 95, as the writers promise), creating parent folders."""
    write_image(path, image, ".jpg")


def write_image(path: Path, image: np.ndarray, extension: str | None = None) -> None:
    """Write a BGR uint8 image in the format its extension names (the path's, unless given): JPEG at quality 95,
    anything else OpenCV encodes (png, bmp) losslessly; parent folders are created. imencode + write_bytes rather
    than imwrite: imwrite silently returns False on a bad path."""
    extension = (extension or path.suffix).lower()
    jpeg = extension in (".jpg", ".jpeg")
    ok, buf = cv2.imencode(".jpg" if jpeg else extension, image,
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if jpeg else [])
    if not ok:
        raise ValueError(f"cannot encode image of shape {np.shape(image)} as {extension} for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())


def load_mat(path: Path) -> dict:
    """scipy.io.loadmat with every failure (truncated, not a .mat, MATLAB v7.3/HDF5) as a DatasetError."""
    try:
        return scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises ValueError, TypeError, OSError, MatReadError, NotImplementedError...
        raise DatasetError(f"{path}: cannot read .mat file ({type(e).__name__}: {one_line(e)})") from None


def mat_array(mat: dict, key: str, path: Path) -> np.ndarray:
    """A numeric field of a loaded .mat as float64, finite. MATLAB saves doubles; ints are accepted too."""
    if key not in mat:
        fields = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path}: no field {key!r} (fields: {', '.join(fields) or 'none'})")
    try:
        arr = np.asarray(mat[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: field {key!r} is not a numeric array") from None
    if not np.all(np.isfinite(arr)):
        raise DatasetError(f"{path}: field {key!r} has NaN or inf values")
    return arr


def mat_points(mat: dict, key: str, path: Path, n: int, dims: int) -> np.ndarray:
    """A point array stored either as dims x n (MATLAB's habit) or n x dims; returns (n, dims).
    The two layouts can only be confused when n == dims, which never happens here."""
    arr = mat_array(mat, key, path)
    if arr.shape == (dims, n):
        return arr.T.copy()
    if arr.shape == (n, dims):
        return arr
    raise DatasetError(f"{path}: field {key!r} has shape {arr.shape}: expected {dims}x{n} or {n}x{dims}")


def pose_from_pose_para(mat: dict, path: Path) -> np.ndarray:
    """`Pose_Para` (1x7 or 7x1: pitch, yaw, roll in radians, tx, ty, tz, scale) -> (yaw, pitch, roll)."""
    para = mat_array(mat, "Pose_Para", path)
    if para.size != 7 or max(para.shape) != 7:   # 1x7, 7x1 or a flat 7
        raise DatasetError(f"{path}: field 'Pose_Para' has shape {para.shape}: expected 1x7 "
                           "(pitch, yaw, roll, tx, ty, tz, scale)")
    pitch, yaw, roll = para.reshape(7)[:3]
    return np.array([yaw, pitch, roll], dtype=np.float64)


def check_pose_para(pose_para: np.ndarray) -> np.ndarray:
    """Writers' argument check: the 7 Pose_Para numbers as a 1x7 float64 row, the layout MATLAB saved."""
    para = np.asarray(pose_para, dtype=np.float64).reshape(-1)
    if para.size != 7:
        raise ValueError(f"pose_para has {para.size} values: expected 7 (pitch, yaw, roll, tx, ty, tz, scale)")
    return para.reshape(1, 7)
