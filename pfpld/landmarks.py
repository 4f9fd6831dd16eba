"""Index maps between the landmark schemes the project reads (WFLW 98, iBUG 68, LaPa 106).

Pure data and small functions; every parser, the flip augmentation, the synthetic generator and the metrics
use these tables, so no module re-types an index.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import asarray_like, namespace

NUM_POINTS = 98

# Horizontal-flip order of the WFLW 98-point scheme: in the mirrored image, point i of the face is point
# MIRROR_98[i] of the original.
MIRROR_98 = np.array(
    list(range(32, -1, -1))
    + [46, 45, 44, 43, 42, 50, 49, 48, 47, 37, 36, 35, 34, 33, 41, 40, 39, 38]
    + [51, 52, 53, 54, 59, 58, 57, 56, 55]
    + [72, 71, 70, 69, 68, 75, 74, 73, 64, 63, 62, 61, 60, 67, 66, 65]
    + [82, 81, 80, 79, 78, 77, 76, 87, 86, 85, 84, 83, 92, 91, 90, 89, 88, 95, 94, 93]
    + [97, 96],
    dtype=np.int64,
)

EYE_POINTS = np.arange(60, 76)          # both 8-point eyes; weighted x5 in the loss
LEFT_EYE_8 = np.arange(60, 68)          # image-left eye (subject's right), corners 60 and 64
RIGHT_EYE_8 = np.arange(68, 76)         # corners 68 and 72
PUPILS = np.array([96, 97])
INTER_OCULAR = (60, 72)                 # outer eye corners: the NME normaliser

# iBUG 68 -> WFLW 98 placement: 98-index of each 68-point.
MAP_68_TO_98 = np.array(
    [2 * i for i in range(17)]
    + [33, 34, 35, 36, 37, 42, 43, 44, 45, 46]
    + list(range(51, 60))
    + [60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75]
    + list(range(76, 96)),
    dtype=np.int64,
)

# The 98-indices PFPLD supervises on 300W-LP: the rest are annotated differently there (3D jaw contour,
# 6-point eyes) and would teach the wrong place.
SUPERVISED_300WLP_98 = np.array(
    [33, 34, 35, 36, 37, 42, 43, 44, 45, 46] + list(range(51, 61)) + [64, 68, 72] + list(range(76, 96)),
    dtype=np.int64,
)

# LaPa 106 -> WFLW 98: drop these 0-based LaPa indices, the rest are in WFLW order.
LAPA_DROPPED_106 = np.array([55, 56, 57, 63, 64, 65, 74, 83], dtype=np.int64)
LAPA_KEPT_106 = np.array([i for i in range(106) if i not in set(LAPA_DROPPED_106.tolist())], dtype=np.int64)

CLOSED_EYE_EAR = 0.1


@dataclass(frozen=True)
class PointLayout:
    """A landmark scheme a model can output, as a map from the 98 WFLW points every prepared face carries: each of
    its K points a weighted mean of 98-points (from_98, rows summing to 1), and the two points whose distance
    normalises its NME. Lets the chain judge a landmark output it did not train (a user's ONNX) by its point count."""
    name: str
    sources_98: tuple[tuple[int, ...], ...]     # the 98-indices each point is the mean of
    norm_points: tuple[int, int]

    @property
    def num_points(self) -> int:
        return len(self.sources_98)

    @property
    def from_98(self) -> np.ndarray:
        """(K, 98) weights."""
        w = np.zeros((self.num_points, NUM_POINTS))
        for i, sources in enumerate(self.sources_98):
            w[i, list(sources)] = 1.0 / len(sources)
        return w


WFLW_98 = PointLayout("WFLW 98", tuple((i,) for i in range(NUM_POINTS)), INTER_OCULAR)
# iBUG 68 as placed in WFLW 98 (MAP_68_TO_98); NME by the outer eye corners 36 and 45 (98-points 60 and 72)
IBUG_68 = PointLayout("iBUG 68", tuple((int(i),) for i in MAP_68_TO_98), (36, 45))
# five points (left: image left, the subject's right): eye centres (mean of each eye's corners), nose tip, mouth
# corners; NME by the distance between the eye centres
FIVE_POINTS = PointLayout("5 points: eye centres, nose tip, mouth corners", ((60, 64), (68, 72), (54,), (76,), (82,)),
                          (0, 1))
POINT_LAYOUTS = {layout.num_points: layout for layout in (WFLW_98, IBUG_68, FIVE_POINTS)}


def map_points_98(weights: np.ndarray, points98, mask98):
    """(..., 98, 2) points and (..., 98) mask, numpy or torch -> (..., K, 2) points and (..., K) mask through (K, 98)
    weights: a point is valid when every 98-point it is made of is."""
    weights = np.asarray(weights, dtype=np.float64)
    w = asarray_like(weights, points98).to(points98.dtype) if namespace(points98) is not np else \
        weights.astype(points98.dtype)
    points = w @ points98                                               # (K, 98) @ (..., 98, 2)
    used = asarray_like(weights != 0, mask98)                           # (K, 98)
    invalid = ~asarray_like(mask98, mask98)
    return points, ~(invalid[..., None, :] & used).any(-1)


def layout_for(num_points: int) -> PointLayout | None:
    """The known scheme with that many points (98, 68, 5), or None."""
    return POINT_LAYOUTS.get(int(num_points))


def mirror_matrix(size_px: int) -> np.ndarray:
    """2x3 matrix of the horizontal mirror of an image size_px wide: pixel x -> size_px - 1 - x. Pixel centres
    sit at integer coordinates (the contract's crop matrix and cv2.warpAffine put them there), so this is the
    mirror that maps the image's pixels onto each other."""
    return np.array([[-1.0, 0.0, size_px - 1.0], [0.0, 1.0, 0.0]])


def flip_points(points_norm, size_px: int):
    """Points (..., 98, 2) in [0,1] of a crop size_px wide, after mirroring the crop by mirror_matrix(size_px):
    x -> (size_px - 1) / size_px - x, and reordered so index i keeps its meaning. numpy or torch (pfpld.arrays)."""
    xp = namespace(points_norm)
    reordered = points_norm[..., MIRROR_98, :]
    return xp.stack([(size_px - 1.0) / size_px - reordered[..., 0], reordered[..., 1]], -1)


def flip_mask(mask):
    return mask[..., MIRROR_98]


def flip_pose(pose_rad):
    """yaw, pitch, roll (..., 3) of the mirrored face: yaw and roll change sign, pitch does not."""
    xp = namespace(pose_rad)
    return xp.stack([-pose_rad[..., 0], pose_rad[..., 1], -pose_rad[..., 2]], -1)


def points_68_to_98(points_68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Place 68 points into the 98 scheme. Returns (points (98,2), mask (98,)) where mask marks the points
    PFPLD supervises from a 68-point annotation."""
    points = np.zeros((NUM_POINTS, 2), dtype=np.float32)
    points[MAP_68_TO_98] = points_68
    mask = np.zeros(NUM_POINTS, dtype=bool)
    mask[SUPERVISED_300WLP_98] = True
    return points, mask


def points_106_to_98(points_106: np.ndarray) -> np.ndarray:
    return np.asarray(points_106, dtype=np.float32)[LAPA_KEPT_106]


def eye_aspect_ratio(eye8: np.ndarray) -> float:
    """EAR of an 8-point eye (p0 and p4 the corners): mean of the three vertical chords over the width."""
    p = np.asarray(eye8, dtype=np.float64)
    vertical = np.linalg.norm(p[1] - p[7]) + np.linalg.norm(p[2] - p[6]) + np.linalg.norm(p[3] - p[5])
    width = np.linalg.norm(p[0] - p[4])
    return float(vertical / (3.0 * width)) if width > 0 else float("inf")


def has_closed_eye(points_98: np.ndarray, threshold: float = CLOSED_EYE_EAR) -> bool:
    return min(eye_aspect_ratio(points_98[LEFT_EYE_8]), eye_aspect_ratio(points_98[RIGHT_EYE_8])) <= threshold
