"""Small faces drawn with cv2 and their landmarks, for writing dataset folders in tests with the project's own
writers. Geometry only has to be plausible: a face box, 8-point eyes whose openness we choose, and distinct
points, so that index maps and crops can be checked."""
from __future__ import annotations

import cv2
import numpy as np

from pfpld.landmarks import LAPA_DROPPED_106, LAPA_KEPT_106, MAP_68_TO_98


def eye_8(cx: float, cy: float, half_width: float, openness: float) -> np.ndarray:
    """8 points of an elliptic eye: p0 and p4 the corners, p1-p3 the upper lid, p5-p7 the lower lid.
    Its eye aspect ratio is (2 sqrt(2) + 2) / 6 x openness, about 0.805 x openness."""
    angles = np.deg2rad([180, 135, 90, 45, 0, -45, -90, -135])
    return np.stack([cx + half_width * np.cos(angles), cy - openness * half_width * np.sin(angles)], axis=1)


def face_points_98(cx: float = 80.0, cy: float = 85.0, size: float = 80.0, left_open: float = 0.4,
                   right_open: float = 0.4) -> np.ndarray:
    """98 WFLW-ordered points of a face about `size` px wide centred at (cx, cy)."""
    s = size / 2.0
    p = np.zeros((98, 2), dtype=np.float64)
    t = np.linspace(np.pi, 0.0, 33)                                   # contour 0-32 from image-left to image-right
    p[0:33] = np.stack([cx + s * np.cos(t), cy - s * 0.1 + s * 0.8 * np.sin(t)], axis=1)
    brow_x = np.linspace(0.8, 0.2, 9)
    brow_y = cy - s * (0.45 + 0.05 * np.sin(np.linspace(0, np.pi, 9)))
    p[33:42] = np.stack([cx - s * brow_x, brow_y], axis=1)
    p[42:51] = np.stack([cx + s * brow_x[::-1], brow_y], axis=1)
    p[51:55] = np.stack([np.full(4, cx), cy - s * np.linspace(0.3, 0.0, 4)], 1)     # nose bridge
    p[55:60] = np.stack([cx + s * np.linspace(-0.2, 0.2, 5), np.full(5, cy + s * 0.1)], 1)
    p[60:68] = eye_8(cx - s * 0.4, cy - s * 0.25, s * 0.17, left_open)
    p[68:76] = eye_8(cx + s * 0.4, cy - s * 0.25, s * 0.17, right_open)
    a = np.linspace(np.pi, -np.pi, 20, endpoint=False)
    p[76:96] = np.stack([cx + s * 0.35 * np.cos(a), cy + s * 0.4 + s * 0.12 * np.sin(a)], 1)   # mouth
    p[96] = (cx - s * 0.4, cy - s * 0.25)
    p[97] = (cx + s * 0.4, cy - s * 0.25)
    return p


def draw_face(points: np.ndarray, width: int = 160, height: int = 170, seed: int = 0) -> np.ndarray:
    """A BGR uint8 image with a textured background (so crops have content everywhere) and the points drawn."""
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8), (width, height),
                       interpolation=cv2.INTER_LINEAR)
    for x, y in points:
        cv2.circle(image, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)
    return image


def points_98_to_106(points_98: np.ndarray, dropped_value: float = 999.0) -> np.ndarray:
    """The LaPa 106 layout of a 98-point face: the 8 LaPa-only points get a value that must never be read."""
    p = np.full((106, 2), dropped_value, dtype=np.float64)
    p[LAPA_KEPT_106] = points_98
    p[LAPA_DROPPED_106] = dropped_value + np.arange(len(LAPA_DROPPED_106))[:, None]
    return p


def points_98_to_68(points_98: np.ndarray) -> np.ndarray:
    return np.asarray(points_98)[MAP_68_TO_98].copy()
