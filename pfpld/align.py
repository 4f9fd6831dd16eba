"""The standard 5-point face alignment of recognition models: a similarity transform (rotation, uniform scale,
translation; no reflection, no shear) fitted by least squares (Umeyama) from a face's eye centres, nose tip and
mouth corners onto ArcFace's 112x112 template (or SphereFace's 112x96, the same frame less 8 columns each side),
then one warp. Training sets (CASIA-WebFace, MS1M) and LFW are
used aligned this way, so a recognition model only ever sees faces in this frame; the synthetic identity
generator aligns its renders with it too.

Points are (x, y) pixels, image-left first, in the order of ARCFACE_TEMPLATE_112 (left eye, right eye, nose,
left mouth corner, right mouth corner), which is the project's 5-point order (pfpld.models.landmark5).
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

# insightface's arcface_dst: where the 5 points sit in a 112x112 aligned crop. SphereFace's template for its 112
# rows x 96 columns is the same one 8 px to the left (x 30.2946, 65.5318, 48.0252, 33.5493, 62.7299): the two frames
# share the face's scale and height, ArcFace's adds 8 columns each side.
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
TEMPLATE_SIZE = 112


def rows_cols(size: int | tuple[int, int]) -> tuple[int, int]:
    """An alignment size, a side or (rows, columns), as (rows, columns)."""
    height, width = (size, size) if np.isscalar(size) else size
    if height < 1 or width < 1:
        raise ValueError(f"alignment size must be positive, got {size}")
    return int(height), int(width)


def template(size: int | tuple[int, int] = TEMPLATE_SIZE) -> np.ndarray:
    """The 5-point template of a size x size crop (the 112 template scaled by size / 112), or of a rows x columns
    crop: scaled by rows / 112 and centred in the columns, so (112, 96) is SphereFace's template exactly."""
    height, width = rows_cols(size)
    return ARCFACE_TEMPLATE_112 * (height / TEMPLATE_SIZE) + np.array([(width - height) / 2.0, 0.0])


def template_name(size: int | tuple[int, int]) -> str:
    """The template of template(size) in words, for reports."""
    height, width = rows_cols(size)
    if height == width:
        return "ArcFace" if height == TEMPLATE_SIZE else f"ArcFace (scaled to {height}x{width})"
    if (height, width) == (112, 96):
        return "SphereFace 112x96"
    return f"ArcFace's scaled to {height} rows, centred in {width} columns"


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix M of the similarity (s R x + t, det R = +1) that maps src points onto dst points with the
    least sum of squared distances (Umeyama 1991). src, dst: (N, 2), N >= 2, src not all one point."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"similarity_transform needs matching (N, 2) arrays with N >= 2, got {src.shape} and "
                         f"{dst.shape}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("similarity_transform: points must be finite")
    mean_src, mean_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mean_src, dst - mean_dst
    var_src = float(np.mean(np.sum(src_c ** 2, axis=1)))
    if var_src <= 1e-12:
        raise ValueError("similarity_transform: the source points all coincide")
    cov = dst_c.T @ src_c / len(src)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:      # the best orthogonal map would mirror: take the best rotation
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = float(np.sum(sv * d)) / var_src
    translation = mean_dst - scale * rotation @ mean_src
    return np.hstack([scale * rotation, translation[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (N, 2) through a 2x3 affine matrix."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p @ np.asarray(matrix, dtype=np.float64)[:, :2].T + np.asarray(matrix, dtype=np.float64)[:, 2]


def align_face(image: np.ndarray, points5: np.ndarray, size: int | tuple[int, int] = TEMPLATE_SIZE,
               border_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Warp `image` (BGR, any size) so the face's 5 points land on the template for size x size (or rows x
    columns, template()): returns the aligned image and the 2x3 matrix (image pixels -> aligned pixels). Outside
    the image is border_value (black, as insightface's norm_crop)."""
    points5 = np.asarray(points5, dtype=np.float64)
    if points5.shape != (5, 2):
        raise ValueError(f"align_face needs 5 (x, y) points, got an array of shape {points5.shape}")
    height, width = rows_cols(size)
    matrix = similarity_transform(points5, template(size))
    aligned = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(border_value,) * 3)
    return aligned, matrix


@functools.lru_cache(maxsize=1)
def _weights_98() -> np.ndarray:
    from .models.landmark5 import points_from_98      # the one 5-point definition (it imports torch: lazily)
    w = points_from_98()
    w.setflags(write=False)
    return w


def five_points(points98: np.ndarray) -> np.ndarray:
    """The 5 alignment points of a face from its 98 WFLW points (landmark5's definition: eye centres = midpoints
    of corners 60/64 and 68/72, nose tip 54, mouth corners 76 and 82), image-left first: (5, 2)."""
    p = np.asarray(points98, dtype=np.float64)
    w = _weights_98()
    if p.shape != (w.shape[1], 2):
        raise ValueError(f"five_points needs ({w.shape[1]}, 2) points, got an array of shape {p.shape}")
    return w @ p


def five_points_of(points: np.ndarray) -> np.ndarray:
    """The 5 alignment points of a face from the points a landmark model outputs: 5 (landmark5's order, as they
    are), 98 (WFLW: five_points) or 68 (iBUG, placed in the 98 scheme first; the 5 sources are all among them)."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape == (5, 2):
        return p.copy()
    if p.shape == (68, 2):
        from .landmarks import points_68_to_98
        p, _ = points_68_to_98(p)
    if p.shape == (98, 2):
        return five_points(p)
    raise ValueError(f"five alignment points come from 5, 68 or 98 (x, y) points, got an array of shape {p.shape}")
