"""The project's own 3D face: a parametric head whose surface carries the 98 WFLW landmarks (+ 8 LaPa-only points
and 2 ear lobes), the mesh the synthetic renderer draws, and the 300W-LP pose formula (FACTS section 3).

synthetic.py renders faces from this geometry; because both the landmarks and the drawn features are points of
the same surface, the labels are exact projections and sit on what is drawn.

Model frame: x to the image right on a frontal face (the subject's left), y up, z toward the camera. Units: half
the head width (the temples are at x = +-1). A surface point is named by two angles: theta (longitude, 0 at the
face centre, + toward +x) and psi (latitude, + up). Landmarks are designed in the frontal plane (x, y) and placed
on the surface by inverting the base head, so their frontal projection is exactly the design.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..landmarks import LAPA_DROPPED_106, LAPA_KEPT_106, MIRROR_98, NUM_POINTS
from ..pose import rotation_matrix as pose_rotation_matrix

# Extra points after the 98 WFLW ones, in the order of LAPA_DROPPED_106 (LaPa indices 55, 56, 57, 63, 64, 65,
# 74, 83), then the two ear lobes (for AFLW's 21 points).
NUM_LAPA_EXTRA = len(LAPA_DROPPED_106)
EAR_LOBES = (NUM_POINTS + NUM_LAPA_EXTRA, NUM_POINTS + NUM_LAPA_EXTRA + 1)   # image-left, image-right
NUM_MODEL_POINTS = NUM_POINTS + NUM_LAPA_EXTRA + 2

# Mirror partner of each LaPa-only point, as positions in LAPA_DROPPED_106: left/right nose sides (55/57),
# left/right alar creases (63/65), eye centres (74/83); the columella points 56 and 64 are on the midline.
_LAPA_EXTRA_MIRROR = np.array([2, 1, 0, 5, 4, 3, 7, 6], dtype=np.int64)
MIRROR_MODEL = np.concatenate([MIRROR_98, NUM_POINTS + _LAPA_EXTRA_MIRROR, [EAR_LOBES[1], EAR_LOBES[0]]])

MIRROR_106 = np.empty(106, dtype=np.int64)         # the LaPa 106 scheme's horizontal-flip order
MIRROR_106[LAPA_KEPT_106] = LAPA_KEPT_106[MIRROR_98]
MIRROR_106[LAPA_DROPPED_106] = LAPA_DROPPED_106[_LAPA_EXTRA_MIRROR]
for _table in (MIRROR_MODEL, MIRROR_106):
    _table.setflags(write=False)


@dataclass(frozen=True)
class FaceShape:
    """Identity: head proportions and feature placement. Defaults are the neutral template. Always symmetric."""
    head_top: float = 1.22        # head height above the widest level
    head_bottom: float = 1.16     # depth of the chin underside below the widest level
    head_depth: float = 1.15      # front of the face from the rotation centre
    back_depth: float = 1.25      # back of the skull from the rotation centre
    jaw_taper: float = 0.30       # how much narrower the jaw is than the temples (0 = egg, 0.5 = V)
    jaw_square: float = 0.55      # exponent of the lower head outline (lower = squarer jaw)
    eye_spacing: float = 1.0      # scales the eye centres' |x|
    eye_size: float = 1.0
    eye_y: float = 0.0            # shift of the eye line
    brow_y: float = 0.0
    nose_length: float = 1.0
    nose_width: float = 1.0
    nose_height: float = 1.0      # protrusion
    mouth_width: float = 1.0
    lip_thickness: float = 1.0
    mouth_y: float = 0.0
    chin: float = 1.0             # chin protrusion
    cheek: float = 1.0            # cheekbone protrusion
    ear_size: float = 1.0


@dataclass(frozen=True)
class Expression:
    """Eye openness per eye (image-left, image-right): 1 open, 0 closed with the lids meeting exactly, so the
    eye aspect ratio is 0 in every projection. Gaze in fractions of the eye's half width/height. Mouth opening
    in model units (0.2 is wide open). Smile and brow raise in [0, 1]."""
    eye_open: tuple[float, float] = (1.0, 1.0)
    gaze: tuple[float, float] = (0.0, 0.0)
    mouth_open: float = 0.0
    smile: float = 0.0
    brow_raise: float = 0.0


NEUTRAL_SHAPE = FaceShape()
NEUTRAL_EXPRESSION = Expression()

WIDEST_Y = 0.10                   # the level of the temples, where the head is widest
EYE_Y = 0.12
NASION_Y = 0.13
MOUTH_Y = -0.60
# The jaw contour (points 0-32) is not designed in the frontal plane (its ends are at the sides of the head) but
# as a path of (theta, psi) in degrees from the image-left ear to the chin; it is mirrored for the other half and
# the 33 points are spread evenly along it in 3D.
_JAW_PATH_DEG = np.array([(-84.0, -3.0), (-83.0, -18.0), (-79.0, -33.0), (-71.0, -46.0), (-58.0, -56.0),
                          (-42.0, -62.5), (-22.0, -66.5), (0.0, -67.5)])


def _smoothstep(e0, e1, x):
    t = np.clip((np.asarray(x, dtype=np.float64) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


# --- the base head --------------------------------------------------------------------------------------------

def _profile(shape: FaceShape, psi: np.ndarray):
    """Per latitude: height y, half-width a (x at theta = 90 deg), front depth c and back depth b.
    The cranium is an ellipsoid; below the temples the outline narrows into the jaw and the front stays flat
    until the chin, where it turns under toward the neck."""
    s, c = np.sin(psi), np.clip(np.cos(psi), 0.0, 1.0)
    upper = psi >= 0
    y = np.where(upper, WIDEST_Y + shape.head_top * s, WIDEST_Y + shape.head_bottom * s)
    down = np.clip(-s, 0.0, 1.0)
    a_low = c ** shape.jaw_square * (1.0 - shape.jaw_taper * down ** 2)
    a = np.where(upper, c ** 0.8, a_low)
    front = np.where(upper, shape.head_depth * c ** 0.55, shape.head_depth * c ** 0.3)
    back = np.where(upper, shape.back_depth * c ** 0.75, shape.back_depth * c ** 1.2 * (1.0 - 0.45 * down ** 2))
    return y, a, front, back


def base_points(shape: FaceShape, theta: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Points of the smooth head before the facial relief, (N, 3). Horizontal sections are half superellipses
    (flat face in front, rounder skull behind)."""
    theta, psi = np.broadcast_arrays(np.asarray(theta, dtype=np.float64), np.asarray(psi, dtype=np.float64))
    y, a, front, back = _profile(shape, psi)
    ct = np.cos(theta)
    x = a * np.sin(theta)
    z = np.where(ct >= 0, front * np.abs(ct) ** 0.7, -back * np.abs(ct) ** 0.9)
    return np.stack([x, y, z], axis=-1)


def frontal_to_angles(shape: FaceShape, xy: np.ndarray) -> np.ndarray:
    """Invert the base head on its front half: frontal-plane points (N, 2) -> (theta, psi) (N, 2). The height
    fixes psi (y is monotonic in psi), then x = a(psi) sin(theta) fixes theta."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    s = np.where(xy[:, 1] >= WIDEST_Y, (xy[:, 1] - WIDEST_Y) / shape.head_top,
                 (xy[:, 1] - WIDEST_Y) / shape.head_bottom)
    psi = np.arcsin(np.clip(s, -1.0, 1.0))
    _, a, _, _ = _profile(shape, psi)
    theta = np.arcsin(np.clip(xy[:, 0] / np.maximum(a, 1e-9), -1.0, 1.0))
    return np.stack([theta, psi], axis=1)


# --- feature design in the frontal plane -------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureFrame:
    """Where the features of one face are, in the frontal plane; shared by the landmark design and the relief,
    so the relief bumps follow the features they shape."""
    eye_cx: float
    eye_cy: float
    eye_half_w: float
    brow_y: float
    nasion_y: float
    tip_y: float
    nose_half_w: float
    mouth_y: float
    mouth_half_w: float
    upper_lip: float
    lower_lip: float
    lower_lip_y: float            # centre of the lower lip after the mouth opened
    open_gap: float               # height of the mouth opening in the design plane


def feature_frame(shape: FaceShape, expr: Expression) -> FeatureFrame:
    upper_lip, lower_lip = 0.062 * shape.lip_thickness, 0.072 * shape.lip_thickness
    mouth_y = MOUTH_Y + shape.mouth_y
    gap = 0.8 * expr.mouth_open
    return FeatureFrame(
        eye_cx=0.43 * shape.eye_spacing, eye_cy=EYE_Y + shape.eye_y, eye_half_w=0.21 * shape.eye_size,
        brow_y=shape.brow_y + 0.06 * expr.brow_raise, nasion_y=NASION_Y + 0.5 * shape.eye_y,
        tip_y=NASION_Y - 0.40 * shape.nose_length, nose_half_w=0.17 * shape.nose_width,
        mouth_y=mouth_y, mouth_half_w=0.36 * shape.mouth_width, upper_lip=upper_lip, lower_lip=lower_lip,
        lower_lip_y=mouth_y - gap - 0.5 * lower_lip, open_gap=gap,
    )


# Eye of the image-left side in units of (half width, lid height), corners at -1 (outer) and +1 (inner).
# Paired upper/lower points share x so that closed lids meet point on point.
_EYE_X = np.array([-1.0, -0.55, -0.05, 0.45, 1.0, 0.45, -0.05, -0.55])
_EYE_LID = np.array([0.10, 0.80, 1.00, 0.85, -0.05, -0.80, -1.00, -0.85])   # x lid height (upper +, lower -)
_UPPER_LID, _LOWER_LID = 0.093, 0.062       # lid heights over the eye line (model units) for a 0.21 half width
_CLOSED_AT = 0.3                            # where closed lids meet, between the lower (0) and upper (1) lid

# Brow of the image-left side: upper edge outer -> inner (33-37), lower edge inner -> outer (38-41).
_BROW = np.array([(-0.80, 0.300), (-0.66, 0.370), (-0.50, 0.400), (-0.34, 0.390), (-0.18, 0.355),
                  (-0.18, 0.310), (-0.34, 0.335), (-0.50, 0.345), (-0.66, 0.315)])


def _left_eye_points(f: FeatureFrame, openness: float, gaze_x: float, gaze_y: float) -> tuple[np.ndarray, np.ndarray]:
    """8 points (WFLW 60-67) and the pupil of the image-left eye. Closing moves each upper/lower pair onto the
    line where the lids meet, so a closed eye has coincident pairs."""
    hw = f.eye_half_w
    up, lo = _UPPER_LID * hw / 0.21, _LOWER_LID * hw / 0.21
    lid = np.where(_EYE_LID >= 0, _EYE_LID * up, _EYE_LID * lo)
    closed = lid.copy()                       # the corners (0 and 4) do not move
    for u, l in ((1, 7), (2, 6), (3, 5)):
        closed[u] = closed[l] = lid[l] + _CLOSED_AT * (lid[u] - lid[l])
    dy = closed + openness * (lid - closed)
    pts = np.stack([-f.eye_cx + _EYE_X * hw, f.eye_cy + dy], axis=1)
    # the pupil: a little above the eye's middle, moved by the gaze; on the lid line when closed
    open_y = 0.12 * up + gaze_y * 0.3 * up
    pupil = np.array([-f.eye_cx + 0.05 * hw + gaze_x * 0.35 * hw,
                      f.eye_cy + closed[2] + openness * (open_y - closed[2])])
    return pts, pupil


def _eye_points(f: FeatureFrame, side: int, openness: float, gaze: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """8 eye points and the pupil of one eye (side -1 image-left, +1 image-right) in WFLW order. The right eye
    is the mirror image of a left eye: its point 68 + k is the mirror of left point MIRROR_98[68 + k]. Both
    eyes look the same way, hence the left eye built for the mirrored gaze."""
    if side < 0:
        return _left_eye_points(f, openness, gaze[0], gaze[1])
    left, pupil = _left_eye_points(f, openness, -gaze[0], gaze[1])
    flip = np.array([-1.0, 1.0])
    return left[MIRROR_98[68:76] - 60] * flip, pupil * flip


def design_points(shape: FaceShape, expr: Expression) -> np.ndarray:
    """All model points except the jaw contour in the frontal plane, (NUM_MODEL_POINTS, 2); jaw rows are NaN."""
    f = feature_frame(shape, expr)
    p = np.full((NUM_MODEL_POINTS, 2), np.nan)
    # brows
    brow = _BROW.copy()
    brow[:, 0] *= 0.5 + 0.5 * shape.eye_spacing
    brow[:, 1] += f.brow_y + 0.7 * shape.eye_y
    p[33:42] = brow
    p[42:51] = brow[MIRROR_98[42:51] - 33] * np.array([-1.0, 1.0])
    # nose: bridge 51-54 from the nasion to the tip, lower contour 55-59
    p[51:55] = np.stack([np.zeros(4), f.nasion_y + (f.tip_y - f.nasion_y) * np.array([0.0, 1 / 3, 2 / 3, 1.0])], 1)
    nw = f.nose_half_w
    p[55] = (-nw, f.tip_y - 0.055)
    p[56] = (-0.5 * nw, f.tip_y - 0.090)
    p[57] = (0.0, f.tip_y - 0.105)
    p[58] = (0.5 * nw, f.tip_y - 0.090)
    p[59] = (nw, f.tip_y - 0.055)
    # eyes and pupils
    p[60:68], p[96] = _eye_points(f, -1, expr.eye_open[0], expr.gaze)
    p[68:76], p[97] = _eye_points(f, +1, expr.eye_open[1], expr.gaze)
    # mouth: outer 76-87, inner 88-95. A closed mouth has its inner lower points on the inner upper ones.
    hw, my, ul, ll, gap = f.mouth_half_w, f.mouth_y, f.upper_lip, f.lower_lip, f.open_gap
    smile = expr.smile
    corner_y = my + 0.05 * smile - 0.35 * gap
    chw = hw * (1.0 + 0.08 * smile - 0.25 * gap / max(hw, 1e-6))
    p[76] = (-chw, corner_y)
    p[77] = (-0.62 * chw, my + 0.75 * ul + 0.035 * smile)
    p[78] = (-0.25 * chw, my + 1.00 * ul)
    p[79] = (0.0, my + 0.86 * ul)
    p[80] = (0.25 * chw, my + 1.00 * ul)
    p[81] = (0.62 * chw, my + 0.75 * ul + 0.035 * smile)
    p[82] = (chw, corner_y)
    p[83] = (0.62 * chw, my - 0.75 * ll - 0.80 * gap + 0.02 * smile)
    p[84] = (0.28 * chw, my - 0.97 * ll - gap)
    p[85] = (0.0, my - ll - gap)
    p[86] = (-0.28 * chw, my - 0.97 * ll - gap)
    p[87] = (-0.62 * chw, my - 0.75 * ll - 0.80 * gap + 0.02 * smile)
    inner = 0.84 * chw
    p[88] = (-inner, corner_y + 0.002)
    p[89] = (-0.36 * chw, my + 0.010 + 0.02 * smile)
    p[90] = (0.0, my + 0.012)
    p[91] = (0.36 * chw, my + 0.010 + 0.02 * smile)
    p[92] = (inner, corner_y + 0.002)
    p[93] = (0.36 * chw, my + 0.010 + 0.02 * smile - 0.85 * gap)
    p[94] = (0.0, my + 0.012 - gap)
    p[95] = (-0.36 * chw, my + 0.010 + 0.02 * smile - 0.85 * gap)
    # LaPa-only points (order of LAPA_DROPPED_106): nose sides, columella, alar creases, eye centres
    e = NUM_POINTS
    side_y = f.nasion_y + 0.78 * (f.tip_y - f.nasion_y)
    p[e + 0] = (-0.55 * nw, side_y)
    p[e + 1] = (0.0, 0.5 * (p[53, 1] + p[54, 1]))
    p[e + 2] = (0.55 * nw, side_y)
    p[e + 3] = (-1.02 * nw, f.tip_y + 0.005)
    p[e + 4] = (0.0, f.tip_y - 0.06)
    p[e + 5] = (1.02 * nw, f.tip_y + 0.005)
    p[e + 6] = p[60:68].mean(axis=0)
    p[e + 7] = p[68:76].mean(axis=0)
    return p


@functools.lru_cache(maxsize=1)
def jaw_angles() -> np.ndarray:
    """(theta, psi) in radians of the 33 contour points, spread evenly along the path on the neutral head. The
    angles are shared by every identity (the path scales with the head)."""
    half = np.radians(_JAW_PATH_DEG)
    path = np.concatenate([half, half[-2::-1] * np.array([-1.0, 1.0])])
    dense_t = np.linspace(0.0, len(path) - 1.0, 2000)
    seg = np.minimum(dense_t.astype(int), len(path) - 2)
    frac = dense_t - seg
    dense = path[seg] * (1 - frac)[:, None] + path[seg + 1] * frac[:, None]
    xyz = base_points(NEUTRAL_SHAPE, dense[:, 0], dense[:, 1])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xyz, axis=0), axis=1))])
    targets = np.linspace(0.0, arc[-1], 33)
    angles = np.stack([np.interp(targets, arc, dense[:, 0]), np.interp(targets, arc, dense[:, 1])], axis=1)
    angles[16, 0] = 0.0                                  # exact symmetry of the chin point
    angles[17:] = angles[15::-1] * np.array([-1.0, 1.0])
    return angles


EAR_THETA = np.radians(97.0)


def model_point_angles(shape: FaceShape, expr: Expression) -> np.ndarray:
    """(theta, psi) of every model point, (NUM_MODEL_POINTS, 2)."""
    design = design_points(shape, expr)
    angles = np.empty((NUM_MODEL_POINTS, 2))
    rows = np.arange(33, NUM_MODEL_POINTS - 2)
    angles[rows] = frontal_to_angles(shape, design[rows])
    angles[:33] = jaw_angles()
    lobe_psi = np.arcsin((-0.30 - WIDEST_Y) / shape.head_bottom)
    angles[EAR_LOBES[0]] = (-EAR_THETA, lobe_psi)
    angles[EAR_LOBES[1]] = (EAR_THETA, lobe_psi)
    return angles


# --- relief and the full surface ------------------------------------------------------------------------------

def relief_z(shape: FaceShape, expr: Expression, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the facial relief (nose, brows, eye sockets, cheeks, lips, chin) over the base head, along z,
    as a function of the base point's frontal position."""
    f = feature_frame(shape, expr)
    ax = np.abs(x)
    # nose: a ridge growing from the nasion to the tip, a rounded tip and two alae
    t = np.clip((f.nasion_y - y) / (f.nasion_y - f.tip_y), 0.0, 1.0)
    tip_h = 0.30 * shape.nose_height
    ridge = np.where(y > f.tip_y, 0.05 + (tip_h - 0.05) * t ** 1.35,
                     tip_h * np.exp(-0.5 * ((f.tip_y - y) / 0.045) ** 2))
    ridge = ridge * np.where(y > f.nasion_y, np.exp(-0.5 * ((y - f.nasion_y) / 0.10) ** 2), 1.0)
    sigma = 0.045 + 0.035 * t * shape.nose_width
    z = ridge * np.exp(-0.5 * (x / sigma) ** 2)
    z += 0.07 * shape.nose_height * _gauss(x, y, 0.0, f.tip_y - 0.005, 0.065 * shape.nose_width, 0.05)
    z += 0.075 * _gauss(ax, y, 0.78 * f.nose_half_w, f.tip_y - 0.045, 0.05 * shape.nose_width, 0.04)
    # eye sockets and the eyeballs in them; brow ridge above
    z += -0.11 * _gauss(ax, y, f.eye_cx, f.eye_cy + 0.02, 0.17, 0.12)
    z += 0.055 * _gauss(ax, y, f.eye_cx, f.eye_cy, 0.14, 0.075)
    z += 0.055 * _gauss(ax, y, 0.42, 0.32 + f.brow_y * 0.5, 0.26, 0.06)
    # cheekbones
    z += 0.06 * shape.cheek * _gauss(ax, y, 0.55, -0.14, 0.17, 0.13)
    # lips, the dent below the lower lip, the chin; the mouth opening is recessed
    z += 0.075 * _gauss(x, y, 0.0, f.mouth_y + 0.5 * f.upper_lip + 0.01, 0.75 * f.mouth_half_w, 0.06)
    z += 0.06 * _gauss(x, y, 0.0, f.lower_lip_y, 0.70 * f.mouth_half_w, 0.04 + 0.2 * f.lower_lip)
    z += -0.03 * _gauss(x, y, 0.0, f.lower_lip_y - 0.13, 0.3, 0.045)
    z += 0.09 * shape.chin * _gauss(x, y, 0.0, -0.90 - 0.5 * f.open_gap, 0.22, 0.085)
    if f.open_gap > 0:
        z += -min(1.0, f.open_gap / 0.08) * 0.08 * _gauss(x, y, 0.0, f.mouth_y - 0.5 * f.open_gap,
                                                         0.6 * f.mouth_half_w, 0.5 * f.open_gap + 0.01)
    return z


def surface_points(shape: FaceShape, expr: Expression, theta, psi, *, with_normals: bool = False):
    """The face surface at angles (theta, psi): the base head, the relief in front, the ears at the sides, and
    the lower face moved down by an open jaw. (N, 3) points."""
    theta, psi = np.broadcast_arrays(np.asarray(theta, dtype=np.float64), np.asarray(psi, dtype=np.float64))
    base = base_points(shape, theta, psi)
    x0, y0, z0 = base[..., 0], base[..., 1], base[..., 2]
    ct = np.cos(theta)
    front = _smoothstep(0.05, 0.45, ct)
    pts = base.copy()
    pts[..., 2] += front * relief_z(shape, expr, x0, y0)
    # ears: a flat bump along the horizontal normal, behind the cheek
    ear_t = (np.abs(theta) - EAR_THETA) / (0.22 * shape.ear_size)
    ear_y = (y0 + 0.08) / (0.30 * shape.ear_size)
    ear = 0.09 * shape.ear_size * np.exp(-0.5 * (ear_t ** 2 + ear_y ** 2) ** 2.2)
    pts[..., 0] += ear * np.sign(theta) * np.abs(np.sin(theta))
    pts[..., 2] += ear * ct
    # open jaw: the chin and lower lip come down; the mouth corners and the jaw angle less
    f = feature_frame(shape, expr)
    if f.open_gap > 0:
        drop = 0.6 * expr.mouth_open * _smoothstep(f.mouth_y - 0.02, f.mouth_y - 0.25, y0)
        drop = drop * _smoothstep(-0.3, 0.4, z0 / shape.head_depth)
        pts[..., 1] -= drop
    return pts


def model_points(shape: FaceShape = NEUTRAL_SHAPE, expr: Expression = NEUTRAL_EXPRESSION) -> np.ndarray:
    """The 3D model points of one face (NUM_MODEL_POINTS, 3): the 98 WFLW points, the 8 LaPa-only points (order
    of LAPA_DROPPED_106) and the two ear lobes."""
    angles = model_point_angles(shape, expr)
    return surface_points(shape, expr, angles[:, 0], angles[:, 1])


def points_106(model_pts: np.ndarray) -> np.ndarray:
    """LaPa order: the 98 WFLW points at LAPA_KEPT_106 and the LaPa-only points at LAPA_DROPPED_106."""
    out = np.empty((106, model_pts.shape[1]), dtype=model_pts.dtype)
    out[LAPA_KEPT_106] = model_pts[:NUM_POINTS]
    out[LAPA_DROPPED_106] = model_pts[NUM_POINTS:NUM_POINTS + NUM_LAPA_EXTRA]
    return out


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# The neutral template: mean identity, neutral expression (eyes open, mouth closed).
TEMPLATE = _readonly(model_points())
TEMPLATE_98 = _readonly(TEMPLATE[:NUM_POINTS].copy())


# --- pose (FACTS section 3, the 300W-LP / AFLW2000 Pose_Para convention) ------------------------------------

def rotation_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """R = Rx(pitch) Ry(yaw) Rz(roll) in Pose_Para argument order (pfpld.pose holds the one definition). With
    this model frame: +yaw turns the face toward image-left, +pitch looks up, +roll tilts it clockwise."""
    return pose_rotation_matrix(yaw=yaw, pitch=pitch, roll=roll)


def project(points3d: np.ndarray, pose_para: np.ndarray, image_height: int) -> np.ndarray:
    """Model points (N, 3) -> image (N, 3): x px, y px (image_y = H + 1 - y of the y-up frame) and depth
    s (R X)_z + tz (larger = nearer the camera). pose_para = pitch, yaw, roll, tx, ty, tz, scale."""
    pitch, yaw, roll, tx, ty, tz, s = (float(v) for v in np.asarray(pose_para).reshape(7))
    cam = s * (np.asarray(points3d, dtype=np.float64) @ rotation_matrix(pitch, yaw, roll).T) + np.array([tx, ty, tz])
    return np.stack([cam[:, 0], image_height + 1.0 - cam[:, 1], cam[:, 2]], axis=1)


def mirror_pose_para(pose_para: np.ndarray, image_width: int) -> np.ndarray:
    """Pose_Para of the horizontally flipped image (x -> W - 1 - x) for the mirrored model: yaw and roll change
    sign, tx -> W - 1 - tx. Holds because M R(p, y, r) M = R(p, -y, -r) for M = diag(-1, 1, 1)."""
    p = np.array(pose_para, dtype=np.float64).reshape(7)
    p[1], p[2], p[3] = -p[1], -p[2], image_width - 1.0 - p[3]
    return p


def mirror_model(model_pts: np.ndarray) -> np.ndarray:
    """The mirror-image face's model points: x negated and left/right points swapped."""
    return model_pts[MIRROR_MODEL] * np.array([-1.0, 1.0, 1.0])


# --- the mesh the renderer draws -------------------------------------------------------------------------------

def _nodes(density, lo: float, hi: float, n: int) -> np.ndarray:
    """n nodes on [lo, hi] spaced inversely to `density` (dense where the face has detail)."""
    x = np.linspace(lo, hi, 4001)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (density(x[1:]) + density(x[:-1])) * np.diff(x))])
    nodes = np.interp(np.linspace(0.0, cum[-1], n), cum, x)
    nodes[0], nodes[-1] = lo, hi
    return nodes


@dataclass(frozen=True)
class GridMesh:
    theta: np.ndarray            # (NT,) column angles, -pi .. pi (the seam is duplicated, no triangle crosses it)
    psi: np.ndarray              # (NP,) row angles, -pi/2 .. pi/2
    triangles: np.ndarray        # (T, 3) vertex indices into the (NP * NT) grid, row-major


@functools.lru_cache(maxsize=16)
def grid_triangles(n_rows: int, n_cols: int) -> np.ndarray:
    """Two triangles per cell of a row-major grid (rows going up, columns toward +x on the face),
    counter-clockwise seen from outside, diagonals mirrored about the middle column so the mesh is as symmetric
    as the face. Read-only (cached)."""
    r, c = np.meshgrid(np.arange(n_rows - 1), np.arange(n_cols - 1), indexing="ij")
    r, c = r.ravel(), c.ravel()
    v00, v01 = r * n_cols + c, r * n_cols + c + 1
    v10, v11 = (r + 1) * n_cols + c, (r + 1) * n_cols + c + 1
    left = c < (n_cols - 1) // 2
    # columns grow toward +x and rows toward +y on the face, so (v00, v01, v11) turns counter-clockwise
    t1 = np.where(left[:, None], np.stack([v00, v11, v10], 1), np.stack([v00, v01, v10], 1))
    t2 = np.where(left[:, None], np.stack([v00, v01, v11], 1), np.stack([v01, v11, v10], 1))
    return _readonly(np.concatenate([t1, t2]).astype(np.int32))


@functools.lru_cache(maxsize=8)
def head_mesh(columns: int = 43, rows: int = 33) -> GridMesh:
    """The head's grid: `columns` longitudes (odd, so one runs down the midline) by `rows` latitudes."""
    # columns: dense on the face and around the nose, sparse on the back of the head
    def theta_density(t):
        return 0.35 + 0.65 * _smoothstep(-0.3, 0.5, np.cos(t)) + 1.3 * np.exp(-0.5 * (t / 0.12) ** 2)

    # rows: dense from the brows to the chin, most at the nose tip and the lips
    def psi_density(p):
        return (0.35 + 0.9 * np.exp(-0.5 * ((p + 0.45) / 0.45) ** 2) + 0.5 * np.exp(-0.5 * ((p + 0.33) / 0.08) ** 2)
                + 0.4 * np.exp(-0.5 * ((p + 0.68) / 0.1) ** 2))

    theta = _nodes(theta_density, -np.pi, np.pi, columns | 1)
    psi = _nodes(psi_density, -np.pi / 2, np.pi / 2, rows)
    return GridMesh(theta=theta, psi=psi, triangles=grid_triangles(len(psi), len(theta)))


def mesh_for_scale(scale_px: float) -> GridMesh:
    """A mesh whose triangles stay a few pixels across whatever the face size: the renderer's cost is mostly
    one call per triangle."""
    if scale_px >= 110:
        return head_mesh(43, 33)
    if scale_px >= 70:
        return head_mesh(37, 29)
    return head_mesh(31, 25)
