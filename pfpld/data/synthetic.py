"""Built-in synthetic faces: the default dataset of the demo and the fixture of every parser test.

Faces are rendered from the project's own 3D head (face3d.py): its surface carries both the landmarks and the
texture that draws the eyes, brows, nose and lips, so labels are exact projections of 3D points under an exact
300W-LP pose and sit on the drawn features. generate_dataset() writes them through the real format writers as
WFLW, LaPa, 300W-LP and AFLW2000 folders, which the pipeline then reads like the releases.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..fileio import output_folder
from ..landmarks import MAP_68_TO_98, MIRROR_98, NUM_POINTS, has_closed_eye
from ..progress import progress as progress_bar
from . import face3d
from .face3d import EAR_LOBES, Expression, FaceShape

GENERATOR_VERSION = "1.0"
SUPERSAMPLE_SHIFT = 4                     # cv2 fixed-point bits: vertices placed to 1/16 px

# --- parameters --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lighting:
    direction: tuple[float, float, float] = (0.3, 0.4, 1.0)   # toward the light, camera frame (x right, y up)
    ambient: float = 0.45
    specular: float = 0.25
    color_bgr: tuple[float, float, float] = (1.0, 1.0, 1.0)
    exposure: float = 1.0


@dataclass(frozen=True)
class Appearance:
    skin_bgr: tuple[float, float, float] = (120, 150, 200)
    hair_bgr: tuple[float, float, float] = (30, 40, 60)
    hair_style: str = "short"          # "short", "long", "receding", "bald"
    hairline: float = 0.0              # shift of the front hairline (+ up)
    iris_bgr: tuple[float, float, float] = (40, 70, 110)
    lip_bgr: tuple[float, float, float] = (95, 105, 185)
    clothing_bgr: tuple[float, float, float] = (90, 60, 40)
    makeup: bool = False
    makeup_bgr: tuple[float, float, float] = (120, 60, 90)   # eye shadow
    lighting: Lighting = field(default_factory=Lighting)


@dataclass(frozen=True)
class Capture:
    """How the face is placed and photographed."""
    face_frac: float = 0.45            # landmark box side / shorter image side
    offset: tuple[float, float] = (0.0, 0.0)   # centre offset as a fraction of the free room
    blur_sigma_rel: float = 0.0        # Gaussian blur sigma / face size
    motion_rel: float = 0.0            # motion blur length / face size
    motion_angle: float = 0.0
    noise_sigma: float = 0.0           # grey levels
    occluder: str = "none"             # none, hand, bar, object, strands, mask, sunglasses, glasses
    background: str = "shapes"         # shapes, texture, indoor


@dataclass(frozen=True)
class FaceParams:
    shape: FaceShape = field(default_factory=FaceShape)
    expression: Expression = field(default_factory=Expression)
    pose_rad: tuple[float, float, float] = (0.0, 0.0, 0.0)   # yaw, pitch, roll
    appearance: Appearance = field(default_factory=Appearance)
    capture: Capture = field(default_factory=Capture)
    # None: the texture's random design (skin blotches, hair strands, brow strokes) is drawn from the picture's
    # generator. An int: from a generator of its own seeded with it, so one identity's faces share that design
    # (pfpld/data/identities.py); it repeats exactly when the texture has the same size (the same render scale).
    texture_seed: int | None = None


SKIN_TONES_BGR = np.array([(45, 62, 98), (70, 100, 150), (100, 140, 195), (140, 175, 225), (175, 200, 240)], float)
HAIR_BGR = np.array([(18, 18, 22), (25, 38, 58), (40, 70, 110), (90, 150, 200), (40, 65, 140), (150, 150, 155),
                     (210, 210, 215)], float)
HAIR_P = np.array([0.34, 0.24, 0.16, 0.09, 0.05, 0.08, 0.04])
IRIS_BGR = np.array([(25, 45, 80), (20, 25, 35), (150, 110, 60), (80, 125, 75), (50, 100, 125)], float)
IRIS_P = np.array([0.45, 0.25, 0.12, 0.08, 0.10])
LIPSTICK_BGR = np.array([(40, 30, 175), (110, 80, 190), (70, 40, 120), (60, 70, 200)], float)
OCCLUDERS = ("hand", "bar", "object", "strands", "mask", "sunglasses", "glasses")
OCCLUDER_P = np.array([0.24, 0.14, 0.14, 0.14, 0.12, 0.1, 0.12])


def _sample_angle_deg(rng: np.random.Generator, sd: float, limit: float, p_wide: float) -> float:
    """Mostly near zero (normal, sd), with p_wide of the mass spread evenly over the whole range."""
    if rng.random() < p_wide:
        return float(rng.uniform(-limit, limit))
    return float(np.clip(rng.normal(0.0, sd), -limit, limit))


def sample_shape(rng: np.random.Generator) -> FaceShape:
    def n(sd, lo=-2.5, hi=2.5):
        return float(np.clip(rng.normal(), lo, hi) * sd)
    return FaceShape(
        head_top=1.22 + n(0.05), head_bottom=1.16 + n(0.05), head_depth=1.15 + n(0.04), back_depth=1.25 + n(0.05),
        jaw_taper=0.30 + n(0.07), jaw_square=0.55 + n(0.1), eye_spacing=1.0 + n(0.05), eye_size=1.0 + n(0.08),
        eye_y=n(0.025), brow_y=n(0.02), nose_length=1.0 + n(0.08), nose_width=1.0 + n(0.12),
        nose_height=1.0 + n(0.12), mouth_width=1.0 + n(0.08), lip_thickness=1.0 + n(0.18), mouth_y=n(0.025),
        chin=1.0 + n(0.25), cheek=1.0 + n(0.3), ear_size=1.0 + n(0.08),
    )


def sample_expression(rng: np.random.Generator) -> Expression:
    u = rng.random()
    if u < 0.12:
        eyes = (0.0, 0.0)                               # both closed
    elif u < 0.15:
        eyes = (0.0, 1.0) if rng.random() < 0.5 else (1.0, 0.0)   # a wink
    else:
        o = float(rng.uniform(0.75, 1.1))
        eyes = (o, o)
    mouth = float(rng.uniform(0.04, 0.2)) if rng.random() < 0.22 else 0.0
    smile = float(rng.uniform(0.0, 1.0)) if rng.random() < 0.35 else 0.0
    brow = float(rng.uniform(0.0, 1.0)) if rng.random() < 0.15 else 0.0
    gaze = (float(rng.uniform(-0.8, 0.8)), float(rng.uniform(-0.5, 0.5)))
    return Expression(eye_open=eyes, gaze=gaze, mouth_open=mouth, smile=smile, brow_raise=brow)


def _bgr(c) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.clip(c, 0, 255))


def sample_appearance(rng: np.random.Generator) -> Appearance:
    t = rng.uniform(0, len(SKIN_TONES_BGR) - 1)
    i = min(int(t), len(SKIN_TONES_BGR) - 2)
    skin = SKIN_TONES_BGR[i] * (1 - (t - i)) + SKIN_TONES_BGR[i + 1] * (t - i)
    skin = skin * rng.uniform(0.92, 1.08, 3)
    hair = HAIR_BGR[rng.choice(len(HAIR_BGR), p=HAIR_P)] * rng.uniform(0.85, 1.15)
    makeup = bool(rng.random() < 0.18)
    lips = skin * np.array([0.78, 0.72, 0.95]) + np.array([0, 0, 18])
    if makeup:
        lips = LIPSTICK_BGR[rng.integers(len(LIPSTICK_BGR))] * rng.uniform(0.8, 1.1)
    style = str(rng.choice(["short", "long", "receding", "bald"], p=[0.5, 0.3, 0.13, 0.07]))
    harsh = rng.random() < 0.15
    az, el = rng.uniform(-np.pi, np.pi), rng.uniform(0.1, 1.0)
    direction = (float(np.sin(az) * np.sin(el)), float(np.cos(az) * np.sin(el)), float(np.cos(el)))
    if harsh:   # low side light: half the face in shadow
        direction = (float(rng.choice([-1, 1]) * rng.uniform(0.8, 1.0)), float(rng.uniform(-0.3, 0.5)), 0.25)
    tint = np.array([1.0, 1.0, 1.0]) + (rng.normal(0, 0.06, 3) if rng.random() < 0.9 else rng.normal(0, 0.2, 3))
    exposure = float(rng.uniform(0.75, 1.2)) if rng.random() < 0.9 else float(rng.choice([0.45, 1.6]))
    lighting = Lighting(direction=direction, ambient=float(rng.uniform(0.08, 0.18) if harsh else rng.uniform(0.3, 0.6)),
                        specular=float(rng.uniform(0.05, 0.35)),
                        color_bgr=tuple(float(v) for v in np.clip(tint, 0.6, 1.4)), exposure=exposure)
    return Appearance(
        skin_bgr=_bgr(skin), hair_bgr=_bgr(hair), hair_style=style, hairline=float(rng.normal(0, 0.05)),
        iris_bgr=_bgr(IRIS_BGR[rng.choice(len(IRIS_BGR), p=IRIS_P)] * rng.uniform(0.8, 1.2)), lip_bgr=_bgr(lips),
        clothing_bgr=_bgr(rng.uniform(20, 235, 3)), makeup=makeup,
        makeup_bgr=_bgr(rng.uniform(40, 200, 3)), lighting=lighting,
    )


def sample_capture(rng: np.random.Generator) -> Capture:
    blur = float(rng.uniform(0.002, 0.014)) if rng.random() < 0.22 else 0.0
    motion = float(rng.uniform(0.02, 0.07)) if rng.random() < 0.06 else 0.0
    occluder = str(rng.choice(OCCLUDERS, p=OCCLUDER_P)) if rng.random() < 0.28 else "none"
    return Capture(
        face_frac=float(rng.uniform(0.35, 0.6)), offset=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
        blur_sigma_rel=blur, motion_rel=motion, motion_angle=float(rng.uniform(0, np.pi)),
        noise_sigma=float(rng.uniform(1.5, 9.0)) if rng.random() < 0.35 else 0.0, occluder=occluder,
        background=str(rng.choice(["shapes", "texture", "indoor"])),
    )


def sample_pose_rad(rng: np.random.Generator) -> tuple[float, float, float]:
    """yaw +-95, pitch +-60, roll +-45 degrees; about half the faces near frontal, the rest spread evenly."""
    yaw = _sample_angle_deg(rng, 18.0, 95.0, 0.5)
    pitch = _sample_angle_deg(rng, 10.0, 60.0, 0.35)
    roll = _sample_angle_deg(rng, 8.0, 45.0, 0.35)
    return tuple(float(np.radians(a)) for a in (yaw, pitch, roll))


def sample_params(rng: np.random.Generator, **overrides) -> FaceParams:
    """Draw every attribute of a face, then apply overrides. Besides any field name of FaceParams or of its parts
    (e.g. ``occluder="none"``, ``eye_open=(0, 0)``, ``pose_rad=(0, 0, 0)``), these shortcuts are understood:
    ``closed_eyes`` (True: both eyes closed; False: both open), ``mouth_open`` (bool or an amount),
    ``pose_deg`` (yaw, pitch, roll in degrees), ``clean`` (True: no occluder, blur, noise, harsh light)."""
    params = FaceParams(shape=sample_shape(rng), expression=sample_expression(rng), pose_rad=sample_pose_rad(rng),
                        appearance=sample_appearance(rng), capture=sample_capture(rng))
    overrides = dict(overrides)
    if "closed_eyes" in overrides:
        closed = overrides.pop("closed_eyes")
        overrides["eye_open"] = (0.0, 0.0) if closed else (0.95, 0.95)
    if isinstance(overrides.get("mouth_open"), bool):
        overrides["mouth_open"] = 0.15 if overrides["mouth_open"] else 0.0
    if "pose_deg" in overrides:
        overrides["pose_rad"] = tuple(float(np.radians(a)) for a in overrides.pop("pose_deg"))
    if overrides.pop("clean", False):
        overrides.setdefault("occluder", "none")
        overrides.setdefault("blur_sigma_rel", 0.0)
        overrides.setdefault("motion_rel", 0.0)
        overrides.setdefault("noise_sigma", 0.0)
        overrides.setdefault("lighting", Lighting())
    return _apply_overrides(params, overrides)


def _apply_overrides(params: FaceParams, overrides: dict) -> FaceParams:
    parts = {"shape": params.shape, "expression": params.expression, "appearance": params.appearance,
             "capture": params.capture}
    top = {}
    for key, value in overrides.items():
        if key in ("shape", "expression", "appearance", "capture", "pose_rad"):
            top[key] = tuple(value) if key == "pose_rad" else value
            continue
        owner = next((name for name, part in parts.items() if key in {f.name for f in dataclasses.fields(part)}), None)
        if owner is None:
            raise TypeError(f"sample_params: unknown override {key!r}")
        parts[owner] = dataclasses.replace(parts[owner], **{key: value})
    parts.update(top)
    return dataclasses.replace(params, **parts)


# --- small drawing helpers ---------------------------------------------------------------------------------

def _spline(points: np.ndarray, closed: bool, per_segment: int = 8) -> np.ndarray:
    """Catmull-Rom curve through the points (it passes through every one of them)."""
    p = np.asarray(points, dtype=np.float64)
    if closed:
        ext, n_seg = np.concatenate([p[-1:], p, p[:2]]), len(p)
    else:
        ext, n_seg = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]]), len(p) - 1
    t = np.arange(per_segment) / per_segment
    basis = 0.5 * np.stack([-t + 2 * t ** 2 - t ** 3, 2 - 5 * t ** 2 + 3 * t ** 3, t + 4 * t ** 2 - 3 * t ** 3,
                            -t ** 2 + t ** 3], axis=1)                  # (per_segment, 4) Catmull-Rom weights
    windows = np.stack([ext[k:k + n_seg] for k in range(4)], axis=1)     # (n_seg, 4, 2) control points
    curve = np.einsum("tk,skd->std", basis, windows).reshape(-1, 2)
    return curve if closed else np.concatenate([curve, p[-1:]])


def _fx(points: np.ndarray, shift: int = 3) -> np.ndarray:
    return np.round(np.asarray(points) * (1 << shift)).astype(np.int32)


def _soft_paint(img: np.ndarray, draw, bbox, color, alpha: float, blur: float = 0.0) -> None:
    """Blend `color` into img through a mask that draw(mask, (x0, y0)) fills with 255 (anti-aliased), optionally
    blurred: how soft shadows, make-up and translucent things are laid on."""
    h, w = img.shape[:2]
    pad = int(3 * blur) + 2
    x0, y0 = max(int(bbox[0]) - pad, 0), max(int(bbox[1]) - pad, 0)
    x1, y1 = min(int(np.ceil(bbox[2])) + pad + 1, w), min(int(np.ceil(bbox[3])) + pad + 1, h)
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    draw(mask, np.array([x0, y0], dtype=np.float64))
    if blur >= 0.5:                    # below half a pixel a blur changes nothing visible
        mask = cv2.GaussianBlur(mask, (0, 0), blur)
    weight = mask.astype(np.float32)
    weight *= np.float32(alpha / 255.0)
    roi = img[y0:y1, x0:x1]
    paint = np.empty_like(roi)
    paint[:] = np.clip(np.asarray(color, dtype=np.float64)[: roi.shape[2]], 0, 255)    # uint8 would wrap around
    roi[:] = cv2.blendLinear(paint, roi, weight, 1.0 - weight)


def _poly_drawer(polys, thickness: int = -1, closed: bool = True):
    """A draw() for _soft_paint: filled (thickness -1) or stroked polygons given in image coordinates."""
    def draw(mask, origin):
        pts = [_fx(np.asarray(p) - origin) for p in polys]
        if thickness < 0:
            cv2.fillPoly(mask, pts, 255, cv2.LINE_AA, 3)
        else:
            cv2.polylines(mask, pts, closed, 255, max(1, thickness), cv2.LINE_AA, 3)
    return draw


def _bbox(*arrays) -> tuple[float, float, float, float]:
    p = np.concatenate([np.asarray(a).reshape(-1, 2) for a in arrays])
    return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())


# --- the face texture --------------------------------------------------------------------------------------

# Texture coordinates squeeze the back and the top of the head (hair, seen at grazing angles or not at all) so
# the texture holds about one texel per image pixel on the face at half the size.
THETA_DENSE = 1.95                 # |theta| up to here (face and ears) at full texel density
PSI_DENSE = (-1.25, 0.8)           # latitudes from under the chin to the hairline likewise
SPARSE = 0.3                       # relative texel density elsewhere
V_OVER_U = 1.25                    # the face spans more pixels per radian of psi than of theta
SKIN_SPECULAR = 110                # the A channel: skin 110, lips 130-190, hair 60, eyes 200+
TEXELS_PER_PIXEL = 0.85            # on the face centre; bilinear lookup hides the slight magnification


def _squeeze(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.where(a > hi, hi + (a - hi) * SPARSE, np.where(a < lo, lo + (a - lo) * SPARSE, a))


@dataclass(frozen=True)
class Texture:
    """Albedo (B, G, R) and a specular weight (A) over the surface angles (theta, psi)."""
    image: np.ndarray
    k: float                       # texels per radian of theta on the face (~ per model unit)

    @staticmethod
    def size(k: float) -> tuple[int, int]:
        w = (_squeeze(np.pi, -THETA_DENSE, THETA_DENSE) * 2) * k
        h = (_squeeze(np.pi / 2, *PSI_DENSE) - _squeeze(-np.pi / 2, *PSI_DENSE)) * k * V_OVER_U
        return int(np.ceil(w)) + 2, int(np.ceil(h)) + 2

    def uv(self, angles: np.ndarray) -> np.ndarray:
        a = np.asarray(angles, dtype=np.float64).reshape(-1, 2)
        u = (_squeeze(a[:, 0], -THETA_DENSE, THETA_DENSE) - _squeeze(-np.pi, -THETA_DENSE, THETA_DENSE)) * self.k
        v = (_squeeze(np.pi / 2, *PSI_DENSE) - _squeeze(a[:, 1], *PSI_DENSE)) * self.k * V_OVER_U
        return np.stack([u, v], axis=1)


def _to_texture(t: Texture, shape: FaceShape, curves: list[np.ndarray]) -> list[np.ndarray]:
    """Design-plane curves -> texture pixels, all in one inversion of the head (it is the costly part)."""
    uv = t.uv(face3d.frontal_to_angles(shape, np.concatenate(curves)))
    return np.split(uv, np.cumsum([len(c) for c in curves])[:-1])


def _ring(n: int = 20) -> np.ndarray:
    a = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _thick(unit: float, fraction: float) -> int:
    return max(1, int(round(fraction * unit)))


def draw_texture(shape: FaceShape, expr: Expression, app: Appearance, texels_per_unit: float,
                 rng: np.random.Generator) -> Texture:
    """Paint the head's albedo: skin, hair, brows, eyes, nose, lips and ears, each through the same design
    points the landmarks come from, so every landmark lands on its feature."""
    k = float(np.clip(TEXELS_PER_PIXEL * texels_per_unit, 30.0, 300.0))
    w, h = Texture.size(k)
    skin = np.asarray(app.skin_bgr)
    # skin: broad blotches (a small random image blown up), flat at the poles where all longitudes meet
    cells = rng.normal(1.0, 0.03, (h // 48 + 3, w // 48 + 3, 1))
    cells[[0, -1]] = 1.0
    small = np.concatenate([np.clip(cells * skin, 0, 255), np.full(cells.shape[:2] + (1,), SKIN_SPECULAR)], axis=2)
    t = Texture(image=cv2.resize(small.astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR), k=k)
    design = face3d.design_points(shape, expr)
    f = face3d.feature_frame(shape, expr)
    _draw_face_tint(t, shape, f, app)
    _draw_ears(t, shape, app)
    _draw_hair(t, shape, app, rng)
    _draw_brows(t, shape, design, app, rng)
    _draw_eyes(t, shape, design, expr, f, app, rng)
    _draw_nose(t, shape, design, app)
    _draw_mouth(t, shape, design, f, app)
    return t


def _draw_face_tint(t: Texture, shape: FaceShape, f, app: Appearance) -> None:
    """Cheeks a little redder and the eye surroundings a little darker: what the geometry's shading misses."""
    skin = np.asarray(app.skin_bgr)
    ring = _ring()
    curves = [np.array([sx * 0.5, -0.22]) + ring * [0.16, 0.11] for sx in (-1, 1)]
    curves += [np.array([sx * f.eye_cx, f.eye_cy]) + ring * [0.2, 0.11] for sx in (-1, 1)]
    c1, c2, s1, s2 = _to_texture(t, shape, curves)
    _soft_paint(t.image, _poly_drawer([c1, c2]), _bbox(c1, c2), (*(skin * [0.8, 0.75, 1.05]), SKIN_SPECULAR),
                0.5 if app.makeup else 0.25, blur=0.06 * t.k)
    _soft_paint(t.image, _poly_drawer([s1, s2]), _bbox(s1, s2), (*(skin * 0.55), SKIN_SPECULAR), 0.18, blur=0.04 * t.k)


def _height_to_psi(shape: FaceShape, y: np.ndarray) -> np.ndarray:
    s = np.where(y >= face3d.WIDEST_Y, (y - face3d.WIDEST_Y) / shape.head_top, (y - face3d.WIDEST_Y) / shape.head_bottom)
    return np.arcsin(np.clip(s, -1.0, 1.0))


def _draw_ears(t: Texture, shape: FaceShape, app: Appearance) -> None:
    """The rim and the hollow of each ear (the ear's bump is in the geometry)."""
    psi_c = float(_height_to_psi(shape, np.array(-0.08)))
    skin = np.asarray(app.skin_bgr)
    ring = _ring(28)
    rims, hollows = [], []
    for sign in (-1, 1):
        rims.append(t.uv(np.array([sign * face3d.EAR_THETA, psi_c]) + ring * [0.13 * shape.ear_size, 0.24 * shape.ear_size]))
        hollows.append(t.uv(np.array([sign * (face3d.EAR_THETA - 0.01), psi_c]) + ring * [0.06, 0.12]))
    for rim, hollow in zip(rims, hollows):         # one at a time: together their box would span the texture
        _soft_paint(t.image, _poly_drawer([rim], thickness=_thick(t.k, 0.02)), _bbox(rim), (*(skin * 0.7), 100), 0.45)
        _soft_paint(t.image, _poly_drawer([hollow]), _bbox(hollow), (*(skin * 0.5), 60), 0.55, blur=0.02 * t.k)


# The lower edge of the hair per style, as (|theta| in radians, height y) nodes: the front hairline, the temple,
# a sideburn in front of the ear (theta 1.45-1.53), over the ear (ears sit at theta 1.69), the nape behind.
_HAIRLINES = {
    "short": [(0.0, 0.93), (0.5, 0.88), (0.9, 0.70), (1.2, 0.50), (1.33, 0.12), (1.47, 0.10), (1.53, 0.33),
              (1.7, 0.34), (1.88, 0.28), (1.98, -0.30), (2.4, -0.55), (np.pi, -0.62)],
    "long": [(0.0, 0.92), (0.5, 0.87), (0.9, 0.70), (1.15, 0.45), (1.3, -0.1), (1.45, -0.45), (1.7, -0.6),
             (2.2, -0.75), (np.pi, -0.8)],
    "receding": [(0.0, 1.12), (0.4, 1.08), (0.7, 0.95), (1.0, 0.82), (1.2, 0.55), (1.33, 0.15), (1.47, 0.12),
                 (1.53, 0.33), (1.7, 0.34), (1.88, 0.28), (1.98, -0.30), (2.4, -0.55), (np.pi, -0.62)],
    "bald": [(0.0, 1.6), (1.2, 1.6), (1.45, 0.6), (1.53, 0.33), (1.7, 0.34), (1.88, 0.28), (1.98, -0.30),
             (2.4, -0.5), (np.pi, -0.55)],
}


def _draw_hair(t: Texture, shape: FaceShape, app: Appearance, rng) -> None:
    if app.hair_style == "bald" and app.hairline > 0.05:
        return                                                 # shaved head
    tex = t.image
    nodes = np.array(_HAIRLINES[app.hair_style])
    theta = np.linspace(-np.pi, np.pi, 161)
    y = np.interp(np.abs(theta), nodes[:, 0], nodes[:, 1])
    y = y + app.hairline * np.exp(-0.5 * (theta / 0.9) ** 2)     # the front hairline moves, the nape does not
    uv = t.uv(np.stack([theta, _height_to_psi(shape, y)], 1))
    h, w = tex.shape[:2]
    rows = min(int(np.ceil(uv[:, 1].max())) + 8, h)
    poly = np.concatenate([[[0.0, 0.0]], uv, [[w - 1.0, 0.0]]])
    mask = np.zeros((rows, w), np.uint8)
    cv2.fillPoly(mask, [_fx(poly)], 255, cv2.LINE_AA, 3)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.01 * t.k, 0.8))
    # strands: noise stretched along the meridians
    streak = rng.normal(1.0, 0.16, (rows // 20 + 2, w // 2 + 2, 1)) * np.asarray(app.hair_bgr)
    small = np.concatenate([np.clip(streak, 0, 255), np.full(streak.shape[:2] + (1,), 60.0)], axis=2).astype(np.uint8)
    layer = cv2.resize(small, (w, rows), interpolation=cv2.INTER_LINEAR)
    m = mask.astype(np.float32) * np.float32(1 / 255)
    tex[:rows] = cv2.blendLinear(tex[:rows], layer, 1.0 - m, m)


def _draw_brows(t: Texture, shape: FaceShape, design, app: Appearance, rng) -> None:
    color = np.asarray(app.hair_bgr) * 0.8 + np.asarray(app.skin_bgr) * 0.2
    if app.hair_bgr[2] > 150:      # light hair: brows a bit darker than the hair
        color = color * 0.75
    curves, n_strokes = [], 12
    for idx in (np.arange(33, 42), np.arange(42, 51)):
        curves.append(_spline(design[idx], closed=True, per_segment=5))
    for idx in (np.arange(33, 38), np.arange(42, 47)):
        # hair strokes rising from inside the brow toward its outer end, so it is not a flat blob
        upper = design[idx]
        a = rng.uniform(0, 4, n_strokes)
        j = np.minimum(a.astype(int), 3)
        base = upper[j] + (upper[j + 1] - upper[j]) * (a - j)[:, None]
        base[:, 1] -= rng.uniform(0.01, 0.04, n_strokes)
        outward = np.sign(design[idx[0], 0])
        curves.append(np.concatenate([base, base + [0.03 * outward, 0.02]]))
    left, right, strokes_l, strokes_r = _to_texture(t, shape, curves)
    _soft_paint(t.image, _poly_drawer([left, right]), _bbox(left, right), (*color, 40), 0.85, blur=0.006 * t.k)
    strokes = [np.stack([s[i], s[i + n_strokes]]) for s in (strokes_l, strokes_r) for i in range(n_strokes)]
    _soft_paint(t.image, _poly_drawer(strokes, thickness=_thick(t.k, 0.008), closed=False), _bbox(strokes_l, strokes_r),
                (*(color * 0.7), 40), 0.6)


def _draw_eyes(t: Texture, shape: FaceShape, design, expr: Expression, f, app: Appearance, rng) -> None:
    """Each eye from its 8 WFLW points (corners 0 and 4, upper lid 1-3, lower lid 5-7) and its pupil: sclera,
    iris and pupil clipped by the lids, lash lines, the lid crease; a closed eye is a lash line where the lids
    meet."""
    skin = np.asarray(app.skin_bgr)
    lash = np.minimum(np.asarray(app.hair_bgr), 40) * 0.5 + 5
    r_iris = 0.39 * f.eye_half_w
    names, curves = [], []

    def add(name, curve):
        names.append(name)
        curves.append(curve)

    for e, (idx, pupil_idx) in enumerate(((np.arange(60, 68), 96), (np.arange(68, 76), 97))):
        eye8, pupil, openness = design[idx], design[pupil_idx], expr.eye_open[e]
        upper = _spline(eye8[[0, 1, 2, 3, 4]], closed=False)
        centre = eye8[[0, 4]].mean(axis=0)
        crease = (upper - centre) * [1.05, 1.0] + centre + [0.0, 0.04 + 0.01 * openness]
        add(("upper", e), upper)
        add(("crease", e), crease)
        if app.makeup:
            add(("shadow", e), np.concatenate([upper, crease[::-1] + [0.0, 0.02]]))
        if openness <= 0.0:
            roots = upper[2:-2:2]
            add(("lashes", e), np.concatenate([roots, roots + np.stack([rng.uniform(-0.01, 0.01, len(roots)),
                                                                       np.full(len(roots), -0.03)], 1)]))
            continue
        add(("lower", e), _spline(eye8[[4, 5, 6, 7, 0]], closed=False))
        ring = _ring(24)
        add(("iris", e), pupil + ring * r_iris)
        add(("iris_in", e), pupil + ring * 0.8 * r_iris)
        add(("pupil", e), pupil + ring * 0.42 * r_iris)
        add(("glint", e), pupil + [0.45 * r_iris, 0.45 * r_iris] + ring * 0.15 * r_iris)
    uv = dict(zip(names, _to_texture(t, shape, curves)))
    tex, unit = t.image, t.k

    def group(kind):
        return [v for (k, _), v in uv.items() if k == kind]

    creases = group("crease")
    _soft_paint(tex, _poly_drawer(creases, _thick(unit, 0.012), closed=False), _bbox(*creases), (*(skin * 0.6), 80), 0.5,
                blur=0.006 * unit)
    if app.makeup:
        shadows = group("shadow")
        _soft_paint(tex, _poly_drawer(shadows), _bbox(*shadows), (*app.makeup_bgr, 120), 0.5, blur=0.015 * unit)
    for e in (0, 1):
        if ("iris", e) in uv:
            _draw_eyeball(tex, uv[("upper", e)], uv[("lower", e)], uv[("iris", e)], uv[("iris_in", e)],
                          uv[("pupil", e)], uv[("glint", e)], np.asarray(app.iris_bgr), skin, unit)
    uppers = group("upper")
    _soft_paint(tex, _poly_drawer(uppers, _thick(unit, 0.022 if app.makeup else 0.014), closed=False), _bbox(*uppers),
                (*lash, 30), 0.95, blur=0.003 * unit)
    lowers = group("lower")
    if lowers:
        _soft_paint(tex, _poly_drawer(lowers, _thick(unit, 0.008), closed=False), _bbox(*lowers), (*(skin * 0.45), 60),
                    0.6, blur=0.004 * unit)
    lashes = group("lashes")
    if lashes:
        segments = [np.stack([l[i], l[i + len(l) // 2]]) for l in lashes for i in range(len(l) // 2)]
        _soft_paint(tex, _poly_drawer(segments, _thick(unit, 0.006), closed=False), _bbox(*lashes), (*lash, 30), 0.8)


def _draw_eyeball(tex, upper, lower, iris, iris_in, pupil, glint, iris_bgr, skin, unit: float) -> None:
    """Sclera, iris, pupil and a glint on a layer, the lid's shadow on top, cut out by the lids' outline."""
    outline = np.concatenate([upper, lower[1:-1]])
    x0, y0, x1, y1 = _bbox(outline)
    x0, y0 = max(int(x0) - 2, 0), max(int(y0) - 2, 0)
    x1, y1 = min(int(np.ceil(x1)) + 3, tex.shape[1]), min(int(np.ceil(y1)) + 3, tex.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    o = np.array([x0, y0], float)
    layer = np.empty((y1 - y0, x1 - x0, 4), np.uint8)
    # a low specular weight: the broad per-vertex highlight would wash the pupil out; the glint is painted
    layer[:] = (*np.clip(np.array([228, 232, 238]) * 0.85 + skin * 0.08, 0, 255), 50)
    for poly, color in ((iris, (*(iris_bgr * 0.55), 50)), (iris_in, (*iris_bgr, 50)), (pupil, (12, 12, 14, 30)),
                        (glint, (245, 245, 245, 50))):
        cv2.fillPoly(layer, [_fx(poly - o)], color, cv2.LINE_AA, 3)
    band = np.zeros(layer.shape[:2], np.uint8)        # the upper lid shades the top of the eyeball
    cv2.polylines(band, [_fx(upper - o)], False, 255, _thick(unit, 0.035), cv2.LINE_AA, 3)
    shade = 1.0 - 0.45 * cv2.GaussianBlur(band, (0, 0), max(0.01 * unit, 0.5)).astype(np.float32) / 255.0
    layer[..., :3] = (layer[..., :3] * shade[..., None]).astype(np.uint8)
    mask = np.zeros(layer.shape[:2], np.uint8)
    cv2.fillPoly(mask, [_fx(outline - o)], 255, cv2.LINE_AA, 3)
    m = (mask.astype(np.float32) / 255.0)[..., None]
    roi = tex[y0:y1, x0:x1]
    roi[:] = (roi * (1 - m) + layer * m).astype(np.uint8)


def _draw_nose(t: Texture, shape: FaceShape, design, app: Appearance) -> None:
    """Nostrils under the tip and the shadow of the alar creases (the nose's bulk is in the geometry)."""
    skin = np.asarray(app.skin_bgr)
    e = NUM_POINTS
    curves = []
    for sign, wing, mid in ((-1, 55, 56), (1, 59, 58)):
        c = 0.5 * (design[wing] + design[mid]) + [-sign * 0.012, 0.018]
        rot = np.radians(-12 * sign)
        ell = _ring() * [0.042 * shape.nose_width, 0.018] @ np.array([[np.cos(rot), np.sin(rot)], [-np.sin(rot), np.cos(rot)]])
        curves.append(c + ell)
    for sign, wing, top in ((-1, 55, e + 3), (1, 59, e + 5)):
        curves.append(_spline(np.stack([design[top] + [0, 0.02], design[top] + [sign * 0.03, -0.03], design[wing]]),
                              closed=False))
    n1, n2, a1, a2 = _to_texture(t, shape, curves)
    _soft_paint(t.image, _poly_drawer([n1, n2]), _bbox(n1, n2), (*(skin * 0.22), 40), 0.9, blur=0.006 * t.k)
    _soft_paint(t.image, _poly_drawer([a1, a2], _thick(t.k, 0.012), closed=False), _bbox(a1, a2),
                (*(skin * 0.55), 80), 0.45, blur=0.008 * t.k)


def _draw_mouth(t: Texture, shape: FaceShape, design, f, app: Appearance) -> None:
    """Lips between the outer and inner lip lines; an open mouth shows a dark inside, upper teeth and tongue."""
    lips = np.asarray(app.lip_bgr)
    outer_up = _spline(design[76:83], closed=False, per_segment=6)
    outer_lo = _spline(design[[82, 83, 84, 85, 86, 87, 76]], closed=False, per_segment=6)
    inner_up = _spline(design[88:93], closed=False, per_segment=6)
    inner_lo = _spline(design[[92, 93, 94, 95, 88]], closed=False, per_segment=6)
    curves = [np.concatenate([outer_up, inner_up[::-1]]),                       # upper lip
              np.concatenate([outer_lo, inner_lo[::-1], design[[76]]]),          # lower lip
              inner_up]
    opened = f.open_gap > 0.005
    if opened:
        teeth_h = min(0.45 * f.open_gap, 0.035)
        tongue_c = 0.5 * (design[94] + design[90]) - [0.0, 0.3 * f.open_gap]
        # the teeth: under the middle of the upper lip, their lower edge rounded off toward the sides
        front = inner_up[len(inner_up) // 5: len(inner_up) - len(inner_up) // 5]
        u = np.linspace(-1.0, 1.0, len(front))[:, None]
        edge = front - [0.0, teeth_h] * np.sqrt(np.clip(1.0 - u ** 4, 0.0, 1.0))
        curves += [np.concatenate([inner_up, inner_lo[1:-1]]),
                   np.concatenate([front, edge[::-1]]),
                   tongue_c + _ring() * [0.5 * f.mouth_half_w, 0.25 * f.open_gap]]
    uv = _to_texture(t, shape, curves)
    tex, unit = t.image, t.k
    spec = 160 if app.makeup else 130
    _soft_paint(tex, _poly_drawer([uv[0]]), _bbox(uv[0]), (*(lips * 0.92), spec), 0.95, blur=0.004 * unit)
    _soft_paint(tex, _poly_drawer([uv[1]]), _bbox(uv[1]), (*lips, spec + 30), 0.95, blur=0.004 * unit)
    if opened:
        interior, teeth, tongue = uv[3], uv[4], uv[5]
        _soft_paint(tex, _poly_drawer([interior]), _bbox(interior), (28, 22, 48, 40), 1.0)
        _soft_paint(tex, _poly_drawer([teeth]), _bbox(teeth), (200, 212, 220, 150), 0.9, blur=0.003 * unit)
        _soft_paint(tex, _poly_drawer([tongue]), _bbox(tongue), (70, 60, 150, 120), 0.7, blur=0.01 * unit)
    else:
        _soft_paint(tex, _poly_drawer([uv[2]], _thick(unit, 0.01), closed=False), _bbox(uv[2]), (*(lips * 0.35), 40),
                    0.9, blur=0.003 * unit)

# --- the head on the image ---------------------------------------------------------------------------------

NECK_JOINT = np.array([0.0, -1.55, -0.25])     # model point where the neck meets the torso
BODY_FOLLOWS = (0.25, 0.35, 0.4)               # fraction of the head's pitch, yaw, roll the torso turns


@dataclass
class Placement:
    """One face on the image: its pose and the projected head mesh."""
    params: FaceParams
    pose_para: np.ndarray          # pitch, yaw, roll, tx, ty, tz, s
    model: np.ndarray              # (NUM_MODEL_POINTS, 3) model points of this face
    image_points: np.ndarray       # (NUM_MODEL_POINTS, 3) x, y px and depth
    vertices: np.ndarray           # (V, 3) head grid: x, y px and depth
    normals: np.ndarray            # (V, 3) camera-frame unit normals
    angles: np.ndarray             # (V, 2) surface angles theta, psi
    triangles: np.ndarray          # (T, 3) the mesh's triangles
    head_bbox: tuple[float, float, float, float]


@dataclass
class HeadRaster:
    """Which head triangle covers each pixel of a window, and each triangle's depth plane: answers "is this
    landmark the nearest surface at its pixel" without a full depth image."""
    ids: np.ndarray                # (h, w) int32 triangle index, -1 outside the head
    origin: tuple[int, int]        # x, y of the window on the image
    depth_plane: np.ndarray        # (T, 3): depth = A x + B y + C in window pixels


def _grid_normals(grid: np.ndarray) -> np.ndarray:
    """Outward unit normals of a (rows = latitude up, cols = longitude toward +x) grid: d/dcol x d/drow. At a
    pole, where the columns meet in one point, the normal points straight up or down."""
    n = np.cross(np.gradient(grid, axis=1), np.gradient(grid, axis=0))
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    pole = np.zeros_like(grid)
    pole[..., 1] = np.where(np.arange(grid.shape[0])[:, None] < grid.shape[0] / 2, -1.0, 1.0)
    return np.where(norm > 1e-9, n / np.maximum(norm, 1e-12), pole)


def _to_image(cam: np.ndarray, image_height: int) -> np.ndarray:
    return np.stack([cam[..., 0], image_height + 1.0 - cam[..., 1], cam[..., 2]], axis=-1)


def _signed_area(xy: np.ndarray) -> np.ndarray:
    """Twice the signed area of image triangles (T, 3, 2); negative = counter-clockwise in the y-up frame,
    i.e. a front face of our outward-wound meshes."""
    return ((xy[:, 1, 0] - xy[:, 0, 0]) * (xy[:, 2, 1] - xy[:, 0, 1])
            - (xy[:, 2, 0] - xy[:, 0, 0]) * (xy[:, 1, 1] - xy[:, 0, 1]))


def place_face(params: FaceParams, image_size: tuple[int, int], slot: tuple[float, float, float, float]) -> Placement:
    """Scale and translate the posed face so its landmark box has side face_frac x the slot's shorter side, at
    the slot centre moved by `offset` within the free room; project the model points and the head mesh."""
    width, height = image_size
    yaw, pitch, roll = params.pose_rad
    rot = face3d.rotation_matrix(pitch, yaw, roll)
    model = face3d.model_points(params.shape, params.expression)
    rotated = model[:NUM_POINTS] @ rot.T
    lo, hi = rotated[:, :2].min(axis=0), rotated[:, :2].max(axis=0)
    sx0, sy0, sx1, sy1 = slot
    side = params.capture.face_frac * min(sx1 - sx0, sy1 - sy0)
    scale = side / max(hi[0] - lo[0], hi[1] - lo[1])
    extent = (hi - lo) * scale
    room = np.maximum(np.array([sx1 - sx0, sy1 - sy0]) - 1.15 * extent, 0.0) / 2.0
    cx = (sx0 + sx1) / 2.0 + params.capture.offset[0] * room[0]
    cy = (sy0 + sy1) / 2.0 + params.capture.offset[1] * room[1]
    mid = (lo + hi) / 2.0
    tx = cx - scale * mid[0]
    ty = height + 1.0 - cy - scale * mid[1]       # image_y = H + 1 - y of the y-up frame
    pose_para = np.array([pitch, yaw, roll, tx, ty, 0.0, scale])

    mesh = face3d.mesh_for_scale(scale)
    th, ps = np.meshgrid(mesh.theta, mesh.psi)
    grid = face3d.surface_points(params.shape, params.expression, th, ps)
    normals = _grid_normals(grid).reshape(-1, 3) @ rot.T
    cam = scale * grid.reshape(-1, 3) @ rot.T + np.array([tx, ty, 0.0])
    vertices = _to_image(cam, height)
    bbox = (float(vertices[:, 0].min()), float(vertices[:, 1].min()), float(vertices[:, 0].max()),
            float(vertices[:, 1].max()))
    return Placement(params=params, pose_para=pose_para, model=model,
                     image_points=face3d.project(model, pose_para, height), vertices=vertices, normals=normals,
                     angles=np.stack([th.ravel(), ps.ravel()], axis=1), triangles=mesh.triangles, head_bbox=bbox)


def _light(normals: np.ndarray, lighting: Lighting) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex Lambert shade and Blinn-Phong highlight for unit camera-frame normals."""
    l = np.asarray(lighting.direction, dtype=np.float64)
    l = l / np.linalg.norm(l)
    ndl = normals @ l
    shade = lighting.ambient + (1.0 - lighting.ambient) * np.clip(ndl, 0.0, None)
    half = l + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    spec = lighting.specular * np.clip(normals @ half, 0.0, 1.0) ** 20 * (ndl > 0)
    return shade, spec


def _light_color(lighting: Lighting) -> np.ndarray:
    return np.asarray(lighting.color_bgr, np.float32) * np.float32(lighting.exposure)


def _affine_coefficients(xy: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per triangle, the plane a = A x + B y + C through its three vertices' values: (T, 3, K) for A, B, C.
    xy (T, 3, 2), values (T, 3, K)."""
    x0, y0 = xy[:, 0, 0:1], xy[:, 0, 1:2]
    dx1, dy1 = xy[:, 1, 0:1] - x0, xy[:, 1, 1:2] - y0
    dx2, dy2 = xy[:, 2, 0:1] - x0, xy[:, 2, 1:2] - y0
    det = dx1 * dy2 - dx2 * dy1
    det = np.where(np.abs(det) < 1e-9, 1e-9, det)
    da1 = values[:, 1] - values[:, 0]
    da2 = values[:, 2] - values[:, 0]
    a = (da1 * dy2 - da2 * dy1) / det
    b = (da2 * dx1 - da1 * dx2) / det
    c = values[:, 0] - a * x0 - b * y0
    return np.stack([a, b, c], axis=1)


def _fill_flat(canvas: np.ndarray, xy: np.ndarray, depth: np.ndarray, colors: np.ndarray, smooth: float = 0.0,
               two_sided: bool = False) -> None:
    """Flat-shaded triangles straight onto the canvas, far to near, front faces only (both sides if two_sided;
    a back face is drawn darker). With smooth > 0 the facets are blurred together inside the drawn shape,
    which stays sharp-edged."""
    area = _signed_area(xy)
    if two_sided:
        colors = np.where((area > 0)[:, None], colors * 0.55, colors)
        front = np.flatnonzero(area != 0)
    else:
        front = np.flatnonzero(area < 0)
    if len(front) == 0:
        return
    order = front[np.argsort(depth[front])]
    height, width = canvas.shape[:2]
    lo = np.clip(np.floor(xy[front].reshape(-1, 2).min(axis=0)).astype(int) - 2, 0, [width, height])
    hi = np.clip(np.ceil(xy[front].reshape(-1, 2).max(axis=0)).astype(int) + 3, 0, [width, height])
    if np.any(hi <= lo):
        return
    roi = canvas[lo[1]:hi[1], lo[0]:hi[0]]
    pts = _fx(xy - lo, SUPERSAMPLE_SHIFT)
    cols = np.clip(colors, 0, 255).tolist()
    mask = np.zeros(roi.shape[:2], np.uint8) if smooth > 0 else None
    for i in order.tolist():
        cv2.fillConvexPoly(roi, pts[i], cols[i], cv2.LINE_8, SUPERSAMPLE_SHIFT)
        if mask is not None:
            cv2.fillConvexPoly(mask, pts[i], 255, cv2.LINE_8, SUPERSAMPLE_SHIFT)
    if mask is not None:
        inside = cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0
        k = 2 * int(smooth) + 1
        np.copyto(roi, cv2.blur(roi, (k, k)), where=inside[..., None])


def _draw_body(canvas: np.ndarray, placement: Placement, rng) -> None:
    """Long hair, shoulders and neck, flat-shaded, drawn before the head (which always covers them). The torso
    turns by a fraction of the head pose; the neck blends from the head's frame at the top to the torso's at
    the bottom; long hair hangs from the head."""
    params = placement.params
    height = canvas.shape[0]
    pitch, yaw, roll, tx, ty, tz, scale = placement.pose_para
    rot = face3d.rotation_matrix(pitch, yaw, roll)
    body_rot = face3d.rotation_matrix(BODY_FOLLOWS[0] * pitch, BODY_FOLLOWS[1] * yaw, BODY_FOLLOWS[2] * roll)
    t3 = np.array([tx, ty, tz])
    joint = scale * (rot @ NECK_JOINT) + t3
    lighting = params.appearance.lighting
    light = _light_color(lighting)

    if params.appearance.hair_style == "long":
        # a curtain round the back of the head from above the ears to below the shoulders, flaring a little;
        # seen from the front only its inside shows, between the neck and the cheeks, so it is two-sided.
        # Each column gets its own tone: strands.
        th, y = np.meshgrid(np.linspace(1.3, 2 * np.pi - 1.3, 41), np.linspace(0.45, -1.9, 4))
        flare = 1.0 + 0.12 * (0.45 - y) / 2.35
        curtain = np.stack([1.06 * flare * np.sin(th), y, -0.05 + 1.3 * flare * np.cos(th)], -1)
        tri = face3d.grid_triangles(*curtain.shape[:2])
        img = _to_image(scale * curtain.reshape(-1, 3) @ rot.T + t3, height)
        normals = np.stack([np.sin(th), np.zeros_like(th), np.cos(th)], -1).reshape(-1, 3) @ rot.T
        shade, _ = _light(normals, lighting)
        strands = rng.normal(1.0, 0.12, curtain.shape[1] - 1)
        column = np.tile(np.repeat(np.arange(curtain.shape[1] - 1)[None], curtain.shape[0] - 1, 0).ravel(), 2)
        colors = (np.asarray(params.appearance.hair_bgr) * light * (0.75 * shade[tri].mean(axis=1)
                                                                    * strands[column])[:, None])
        _fill_flat(canvas, img[tri][:, :, :2], img[tri, 2].mean(axis=1), colors, two_sided=True)

    # shoulders: a low dome (the slope from the neck to the shoulder tips) on a body that leaves the picture
    a, p = np.meshgrid(np.linspace(-np.pi, np.pi, 25), np.linspace(-np.pi / 2, np.pi / 2, 8))
    up = p > 0
    reach = np.where(up, np.abs(np.cos(p)) ** 0.6, 1.0)
    torso = np.stack([2.0 * reach * np.sin(a), np.where(up, -0.6 + 0.6 * np.sin(p), -0.6 + 3.0 * np.sin(p)),
                      -0.05 + 0.75 * reach * np.cos(a)], -1)
    tri = face3d.grid_triangles(*torso.shape[:2])
    img = _to_image(scale * torso.reshape(-1, 3) @ body_rot.T + joint, height)
    shade, _ = _light(_grid_normals(torso).reshape(-1, 3) @ body_rot.T, lighting)
    colors = np.asarray(params.appearance.clothing_bgr) * light * shade[tri].mean(axis=1)[:, None]
    _fill_flat(canvas, img[tri][:, :, :2], img[tri, 2].mean(axis=1), colors)

    a, y = np.meshgrid(np.linspace(-np.pi, np.pi, 33), np.linspace(-0.55, -1.85, 4))
    neck = np.stack([0.5 * np.sin(a), y, -0.15 + 0.5 * np.cos(a)], -1)
    normals = np.stack([np.sin(a), np.zeros_like(a), np.cos(a)], -1).reshape(-1, 3)
    w = face3d._smoothstep(-0.9, -1.6, y).reshape(-1, 1)            # 0: moves with the head, 1: with the torso
    pts = neck.reshape(-1, 3)
    cam = (1 - w) * (scale * pts @ rot.T + t3) + w * (scale * (pts - NECK_JOINT) @ body_rot.T + joint)
    n = (1 - w) * (normals @ rot.T) + w * (normals @ body_rot.T)
    shade, _ = _light(n / np.linalg.norm(n, axis=1, keepdims=True), lighting)
    ao = 0.6 + 0.35 * face3d._smoothstep(-0.7, -1.6, y).reshape(-1)  # the jaw shades the top of the neck
    img = _to_image(cam, height)
    tri = face3d.grid_triangles(*neck.shape[:2])[:, [0, 2, 1]]     # rows run downward: flip the winding
    colors = np.asarray(params.appearance.skin_bgr) * light * (shade * ao)[tri].mean(axis=1)[:, None]
    _fill_flat(canvas, img[tri][:, :, :2], img[tri, 2].mean(axis=1), colors, smooth=max(1.0, 0.04 * scale))


def _draw_head(canvas: np.ndarray, placement: Placement, texture: Texture) -> HeadRaster | None:
    """Rasterise the head: triangle ids in painter's order (far to near, front faces only), then per pixel the
    texture coordinates, shade and highlight interpolated in its triangle and the texture looked up with
    cv2.remap. Self-occlusion (the far eye behind the nose, ...) follows from the depth order."""
    height, width = canvas.shape[:2]
    v = placement.vertices
    tris = placement.triangles
    xy = v[tris][:, :, :2]
    front = np.flatnonzero(_signed_area(xy) < -1e-3)
    if len(front) == 0:
        return None
    tris, xy = tris[front], xy[front]
    lo = np.floor(xy.reshape(-1, 2).min(axis=0)).astype(int)
    hi = np.ceil(xy.reshape(-1, 2).max(axis=0)).astype(int) + 1
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], width), min(hi[1], height)
    if x1 <= x0 or y1 <= y0:
        return None
    local = xy - np.array([x0, y0])
    ids = np.full((y1 - y0, x1 - x0), -1, np.int32)
    order = np.argsort(v[tris, 2].mean(axis=1))
    fill = cv2.fillConvexPoly
    for poly, i in zip(list(_fx(local[order], SUPERSAMPLE_SHIFT)), order.tolist()):   # the hot loop
        fill(ids, poly, i, cv2.LINE_4, SUPERSAMPLE_SHIFT)
    inside = ids >= 0

    lighting = placement.params.appearance.lighting
    shade, spec = _light(placement.normals, lighting)
    uv = texture.uv(placement.angles)
    values = np.stack([uv[:, 0], uv[:, 1], shade, spec, v[:, 2]], axis=1)[tris]         # (T, 3, 5)
    coef = _affine_coefficients(local, values).astype(np.float32)                        # (T, 3, 5)
    # texture coordinates per pixel: value = A x + B y + C of its triangle (id -1 reads a clipped row, masked
    # out below). They must be exact at full resolution: the drawn features have to sit on the landmarks.
    h, w = ids.shape
    uv_map = _planes_at(coef[:, :, 0:2], ids, np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    albedo = cv2.remap(texture.image, uv_map, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # shade and highlight are smooth: evaluated on every second pixel and blown up (samples outside the head
    # take a neighbour's value first, so the silhouette does not darken)
    ids_half = ids[::2, ::2]
    light_half = _planes_at(coef[:, :, 2:4], ids_half, np.arange(0, w, 2, dtype=np.float32),
                            np.arange(0, h, 2, dtype=np.float32))
    outside = ids_half < 0
    if outside.any():
        light_half[outside] = -1.0
        grown = cv2.dilate(light_half, np.ones((3, 3), np.uint8))
        light_half[outside] = grown[outside]
    light_map = cv2.resize(light_half, (w, h), interpolation=cv2.INTER_LINEAR)
    color = albedo[..., :3].astype(np.float32)
    color *= light_map[..., 0:1]                                 # Lambert shade
    highlight = albedo[..., 3].astype(np.float32)                # the texture's specular weight ...
    highlight *= light_map[..., 1]                               # ... times the Blinn-Phong term
    color += highlight[..., None] * np.float32(1.4)
    color *= _light_color(lighting)
    # a softer silhouette: edge pixels let a little background through
    alpha = cv2.GaussianBlur(inside.astype(np.float32), (3, 3), 0.6)
    alpha += np.float32(0.35)
    np.minimum(alpha, 1.0, out=alpha)
    alpha[~inside] = 0.0
    roi = canvas[y0:y1, x0:x1]
    roi[:] = cv2.blendLinear(cv2.convertScaleAbs(color), roi, alpha, 1.0 - alpha)
    return HeadRaster(ids=ids, origin=(x0, y0), depth_plane=coef[:, :, 4])


def _planes_at(coef: np.ndarray, ids: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Evaluate per-triangle planes (T, 3, K: A, B, C) at pixels with triangle ids (h, w) and coordinates
    xs (w,), ys (h,): (h, w, K) float32. np.take on contiguous (T, K) rows is far faster than fancy indexing."""
    a, b, c = (np.take(np.ascontiguousarray(coef[:, k]), ids, axis=0, mode="clip") for k in range(3))
    a *= xs[None, :, None]
    b *= ys[:, None, None]
    a += b
    a += c
    return a


def _visible(points: np.ndarray, raster: HeadRaster | None, tolerance: float) -> np.ndarray:
    """Points (N, 3: x, y, depth) that are the nearest head surface at their pixel, within `tolerance` in depth
    (or at one of the 8 neighbour pixels, for points right on the silhouette)."""
    if raster is None:
        return np.zeros(len(points), bool)
    h, w = raster.ids.shape
    out = np.zeros(len(points), bool)
    base_x = np.round(points[:, 0]).astype(int) - raster.origin[0]
    base_y = np.round(points[:, 1]).astype(int) - raster.origin[1]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            x, y = base_x + dx, base_y + dy
            ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            tri = np.where(ok, raster.ids[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)], -1)
            plane = raster.depth_plane[tri]
            depth = plane[:, 0] * x + plane[:, 1] * y + plane[:, 2]
            out |= (tri >= 0) & (points[:, 2] >= depth - tolerance)
    return out


# --- background, occluders, camera -------------------------------------------------------------------------

def _random_color(rng, lo=20, hi=235) -> list[float]:
    return rng.uniform(lo, hi, 3).tolist()


def _background(rng: np.random.Generator, width: int, height: int, kind: str) -> np.ndarray:
    """Clutter that is not a face (uint8 BGR): a colour gradient, then blotchy texture, random shapes or a
    room-like layout."""
    grid = rng.uniform(30, 225, (int(rng.integers(2, 4)), int(rng.integers(2, 4)), 3)).astype(np.float32)
    small = cv2.resize(grid, (64, 64), interpolation=cv2.INTER_LINEAR)      # smooth things are made small
    if kind == "texture":
        small += sum(cv2.resize(rng.normal(0, 28 / np.sqrt(cells / 4), (cells, cells, 3)).astype(np.float32),
                                (64, 64), interpolation=cv2.INTER_CUBIC) for cells in (4, 12, 32))
    img = cv2.resize(np.clip(small, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
    scale = max(width, height)
    if kind == "indoor":
        horizon = int(rng.uniform(0.5, 0.85) * height)
        cv2.rectangle(img, (0, horizon), (width, height), _random_color(rng, 30, 160), -1)
        for _ in range(int(rng.integers(2, 5))):      # doors, windows, pictures, shelves
            x, y = int(rng.uniform(0, width)), int(rng.uniform(0, horizon))
            w, h = int(rng.uniform(0.1, 0.4) * scale), int(rng.uniform(0.1, 0.5) * scale)
            cv2.rectangle(img, (x, y), (x + w, y + h), _random_color(rng), -1)
            cv2.rectangle(img, (x, y), (x + w, y + h), _random_color(rng, 10, 80), int(rng.integers(1, 6)))
    n_shapes = int(rng.integers(4, 14)) if kind != "indoor" else int(rng.integers(1, 5))
    for _ in range(n_shapes):
        c = _random_color(rng)
        x, y = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
        r = rng.uniform(0.03, 0.25) * scale
        kind_i = rng.integers(5)
        if kind_i == 0:
            cv2.circle(img, (int(x), int(y)), int(r), c, -1, cv2.LINE_AA)
        elif kind_i == 1:
            box = ((x, y), (2 * r, r * rng.uniform(0.3, 1.5)), rng.uniform(0, 180))
            cv2.fillConvexPoly(img, cv2.boxPoints(box).astype(np.int32), c, cv2.LINE_AA)
        elif kind_i == 2:
            pts = np.array([x, y]) + rng.normal(0, r, (int(rng.integers(3, 7)), 2))
            cv2.fillPoly(img, [pts.astype(np.int32)], c, cv2.LINE_AA)
        elif kind_i == 3:
            x2, y2 = x + rng.normal(0, 2 * r), y + rng.normal(0, 2 * r)
            cv2.line(img, (int(x), int(y)), (int(x2), int(y2)), c, int(rng.integers(1, 12)), cv2.LINE_AA)
        else:
            axes = (int(r), int(r * rng.uniform(0.3, 1)))
            cv2.ellipse(img, (int(x), int(y)), axes, rng.uniform(0, 180), 0, 360, c, int(rng.integers(1, 6)), cv2.LINE_AA)
    if rng.random() < 0.5:                            # out of focus behind the subject (blurred at half size)
        small = cv2.resize(img, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
        img = cv2.resize(cv2.GaussianBlur(small, (0, 0), rng.uniform(0.5, 2.0)), (width, height))
    return img


def _shaded_fill(canvas, occ_mask, polys, color, rng, thickness=-1) -> None:
    """Draw an occluder: a filled (or thick stroked) shape with a soft shading gradient across it."""
    h, w = canvas.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    pts = [_fx(p) for p in polys]
    if thickness < 0:
        cv2.fillPoly(mask, pts, 255, cv2.LINE_AA, 3)
    else:
        cv2.polylines(mask, pts, False, 255, thickness, cv2.LINE_AA, 3)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    m = (mask[y0:y1, x0:x1].astype(np.float32) / 255.0)[..., None]
    g = np.linspace(1.15, 0.7, x1 - x0, dtype=np.float32)[None, :, None] if rng.random() < 0.5 else \
        np.linspace(1.15, 0.7, y1 - y0, dtype=np.float32)[:, None, None]
    roi = canvas[y0:y1, x0:x1]
    roi[:] = roi * (1 - m) + np.clip(np.asarray(color, np.float32) * g, 0, 255) * m + 0.5
    np.maximum(occ_mask[y0:y1, x0:x1], mask[y0:y1, x0:x1], out=occ_mask[y0:y1, x0:x1])


def _draw_occluder(canvas, occ_mask, placement: Placement, rng) -> None:
    """Something in front of the face: a hand, a bar, an object, hair strands, a face mask or glasses."""
    kind = placement.params.capture.occluder
    p = placement.image_points[:, :2]
    lo, hi = p[:NUM_POINTS].min(axis=0), p[:NUM_POINTS].max(axis=0)
    size = float(max(hi - lo))
    centre = (lo + hi) / 2
    yaw = placement.params.pose_rad[0]
    if kind == "hand":
        skin = np.asarray(placement.params.appearance.skin_bgr) * rng.uniform(0.85, 1.1)
        anchor = p[rng.choice([54, 85, 16, 4, 28, 96, 97])] + rng.normal(0, 0.08 * size, 2)
        ang = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(ang), np.sin(ang)])
        n = np.array([-d[1], d[0]])
        palm_c = anchor - d * 0.35 * size
        t = np.linspace(0, 2 * np.pi, 24)[:, None]
        palm = palm_c + 0.22 * size * np.cos(t) * d + 0.17 * size * np.sin(t) * n
        fingers = [np.stack([palm_c + d * 0.12 * size + n * k * 0.085 * size,
                             palm_c + d * (0.42 + 0.05 * (1 - abs(k - 0.5))) * size + n * k * 0.1 * size])
                   for k in (-1.5, -0.5, 0.5, 1.5)]
        _shaded_fill(canvas, occ_mask, [palm], skin, rng)
        for f in fingers:
            _shaded_fill(canvas, occ_mask, [f], skin * 0.95, rng, thickness=max(2, int(0.07 * size)))
    elif kind == "bar":
        ang = rng.uniform(0, np.pi)
        d = np.array([np.cos(ang), np.sin(ang)])
        n = np.array([-d[1], d[0]])
        c = centre + rng.normal(0, 0.2 * size, 2)
        half_w = rng.uniform(0.06, 0.16) * size
        bar = np.array([c - d * 2 * size - n * half_w, c + d * 2 * size - n * half_w,
                        c + d * 2 * size + n * half_w, c - d * 2 * size + n * half_w])
        _shaded_fill(canvas, occ_mask, [bar], _random_color(rng), rng)
    elif kind == "object":
        c = centre + rng.normal(0, 0.3 * size, 2)
        t = np.linspace(0, 2 * np.pi, 32)[:, None]
        r = rng.uniform(0.15, 0.35) * size
        shape = c + r * np.concatenate([np.cos(t), rng.uniform(0.6, 1.6) * np.sin(t)], 1)
        if rng.random() < 0.5:                     # a phone or a cup: a rounded box
            shape = c + r * np.stack([np.sign(np.cos(t[:, 0])) * np.abs(np.cos(t[:, 0])) ** 0.3,
                                      1.7 * np.sign(np.sin(t[:, 0])) * np.abs(np.sin(t[:, 0])) ** 0.3], 1)
        _shaded_fill(canvas, occ_mask, [shape], _random_color(rng), rng)
    elif kind == "strands":
        hair = np.asarray(placement.params.appearance.hair_bgr)
        for _ in range(int(rng.integers(3, 8))):
            start = p[rng.choice([33, 35, 37, 42, 44, 46])] + rng.normal(0, 0.05 * size, 2) - [0, 0.25 * size]
            ctrl = np.array([start, start + rng.normal([0, 0.25 * size], 0.1 * size),
                             start + rng.normal([0, 0.55 * size], 0.12 * size)])
            _shaded_fill(canvas, occ_mask, [_spline(ctrl, closed=False)], hair * rng.uniform(0.8, 1.3), rng,
                         thickness=max(2, int(rng.uniform(0.02, 0.05) * size)))
    elif kind == "mask":
        jaw = p[3:30]
        top = np.array([p[29] * 0.5 + p[30] * 0.5, p[53] + (p[53] - p[51]) * 0.1, p[3] * 0.5 + p[2] * 0.5])
        if abs(yaw) > np.radians(70):
            return
        face_mask = np.concatenate([jaw, _spline(top, closed=False)])
        _shaded_fill(canvas, occ_mask, [face_mask], _random_color(rng, 150, 245), rng)
    elif kind in ("sunglasses", "glasses"):
        if abs(yaw) > np.radians(50):
            return
        dark = kind == "sunglasses"
        frame_color = _random_color(rng, 5, 120)
        pitch, yaw_, roll, tx, ty, tz, s = placement.pose_para
        f = face3d.feature_frame(placement.params.shape, placement.params.expression)
        rims = []
        for sx in (-1, 1):
            t = np.linspace(0, 2 * np.pi, 28)
            ring = np.stack([sx * f.eye_cx + 0.26 * np.cos(t), f.eye_cy - 0.02 + 0.17 * np.sin(t),
                             np.full_like(t, placement.model[96 if sx < 0 else 97, 2] + 0.12)], 1)
            rims.append(face3d.project(ring, placement.pose_para, canvas.shape[0])[:, :2])
        bridge = face3d.project(np.array([[-0.17, 0.16, 1.28], [0.0, 0.19, 1.33], [0.17, 0.16, 1.28]]),
                                placement.pose_para, canvas.shape[0])[:, :2]
        if dark:
            for r in rims:
                _shaded_fill(canvas, occ_mask, [r], np.array(_random_color(rng, 5, 60)), rng)
        thick = max(1, int(0.025 * size))
        layer = np.zeros(canvas.shape[:2], np.uint8)        # clear glasses do not hide the eyes
        for r in rims + [bridge]:
            closed = r is not bridge
            cv2.polylines(canvas, [_fx(r)], closed, frame_color, thick, cv2.LINE_AA, 3)
            cv2.polylines(layer, [_fx(r)], closed, 255, thick, cv2.LINE_AA, 3)
        if dark:
            np.maximum(occ_mask, layer, out=occ_mask)


def _noise_tile(rng, sigma: float, size: int = 97) -> np.ndarray:
    return rng.normal(0.0, sigma, (size, size, 3)).astype(np.float32)


def _camera(img: np.ndarray, capture: Capture, face_size: float, rng) -> np.ndarray:
    """Blur (defocus or motion) and sensor noise, relative to the face size, on the whole picture."""
    sigma = capture.blur_sigma_rel * face_size
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    length = capture.motion_rel * face_size
    if length >= 2:
        # motion blur: turn the motion onto the x axis, average along x, turn back (a long 2D kernel is slow)
        h, w = img.shape[:2]
        turn = cv2.getRotationMatrix2D((w / 2, h / 2), np.degrees(capture.motion_angle), 1.0)
        flat = cv2.warpAffine(img, turn, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        flat = cv2.blur(flat, (int(round(length)) | 1, 1))
        back = cv2.warpAffine(flat, turn, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REFLECT)
        img = back
    if capture.noise_sigma > 0:
        # sensor noise from a small random tile repeated at a random offset: a full-size normal draw per
        # picture would cost more than the face
        tile = np.round(_noise_tile(rng, capture.noise_sigma)).astype(np.int16)
        h, w = img.shape[:2]
        reps = (h // tile.shape[0] + 2, w // tile.shape[1] + 2, 1)
        oy, ox = rng.integers(0, tile.shape[0], 2)
        noisy = img.astype(np.int16) + np.tile(tile, reps)[oy:oy + h, ox:ox + w]
        img = np.clip(noisy, 0, 255).astype(np.uint8)
    return img


# --- the faces -----------------------------------------------------------------------------------------------

# AFLW's 21 points (order of the AFLW release: brows, eyes, ear lobes, nose, mouth, chin; "left" = image-left)
# as model point indices; -1 is the mouth centre (mean of the inner lip middles 90 and 94).
AFLW21_FROM_MODEL = np.array([33, 35, 37, 42, 44, 46, 60, 96, 64, 68, 97, 72, EAR_LOBES[0], 55, 54, 59, EAR_LOBES[1],
                              76, -1, 82, 16])
AFLW21_MIRROR = np.array([5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 16, 15, 14, 13, 12, 19, 18, 17, 20])

POSE_FLAG_DEG = (40.0, 30.0, 30.0)      # |yaw|, |pitch|, |roll| from which a face counts as "large pose"
OCCLUSION_FLAG_FRAC = 0.1               # share of the 98 points hidden by an occluder
BLUR_FLAG_REL = 0.006                   # blur sigma / face size from which a face counts as blurred
MOTION_FLAG_REL = 0.03
VISIBLE_DEPTH_TOLERANCE = 0.08          # model units between a point and the nearest surface at its pixel


@dataclass
class SynthFace:
    image: np.ndarray                  # BGR uint8 (shared by the faces of one picture)
    points_98: np.ndarray              # (98, 2) px, WFLW order
    points_106: np.ndarray             # (106, 2) px, LaPa order
    points_68: np.ndarray              # (68, 2) px: points_98[MAP_68_TO_98]
    points3d_68: np.ndarray            # (3, 68): x, y px and depth s (R X)_z + tz, as AFLW2000's pt3d_68
    points2d_21: np.ndarray            # (2, 21) AFLW points, -1 where hidden
    pose_para: np.ndarray              # (7,) pitch, yaw, roll, tx, ty, tz, scale (300W-LP layout)
    pose_rad: np.ndarray               # (3,) yaw, pitch, roll
    box: tuple[int, int, int, int]     # face box around the landmarks (x1, y1, x2, y2)
    attributes: np.ndarray             # (6,) WFLW flags: pose, expression, illumination, make-up, occlusion, blur
    closed_eye: bool                   # has_closed_eye(points_98): what the LaPa filter will see
    mouth_open: bool
    visible_98: np.ndarray             # (98,) bool: hidden neither by the head itself nor by an occluder
    model_points_98: np.ndarray        # (98, 3) this face's 3D points in the model frame; pose_para projects them
    model_points_106: np.ndarray       # (106, 3)
    params: FaceParams


def _attributes(params: FaceParams, occluded_frac: float, image_exposure: float) -> np.ndarray:
    """The six WFLW flags, from what was rendered."""
    yaw, pitch, roll = np.degrees(np.abs(params.pose_rad))
    e = params.expression
    light = params.appearance.lighting
    capture = params.capture
    flags = [
        yaw >= POSE_FLAG_DEG[0] or pitch >= POSE_FLAG_DEG[1] or roll >= POSE_FLAG_DEG[2],
        min(e.eye_open) <= 0.0 or e.mouth_open >= 0.05 or e.smile >= 0.6 or e.brow_raise >= 0.6,
        light.ambient < 0.2 or not 0.55 <= image_exposure <= 1.45 or float(np.ptp(light.color_bgr)) > 0.3,
        params.appearance.makeup,
        occluded_frac >= OCCLUSION_FLAG_FRAC or (capture.occluder == "sunglasses" and occluded_frac > 0),
        capture.blur_sigma_rel >= BLUR_FLAG_REL or capture.motion_rel >= MOTION_FLAG_REL,
    ]
    return np.array([int(bool(f)) for f in flags], dtype=np.int64)


def _face_box(points: np.ndarray, width: int, height: int, rng) -> tuple[int, int, int, int]:
    """Like WFLW's rect: the landmark extent grown by a few percent (jittered), clipped to the image."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    size = hi - lo
    grow = rng.uniform(0.03, 0.1, 4) * np.array([size[0], size[1], size[0], size[1]])
    x1, y1 = np.floor(lo - grow[:2]).astype(int)
    x2, y2 = np.ceil(hi + grow[2:]).astype(int)
    return max(int(x1), 0), max(int(y1), 0), min(int(x2), width - 1), min(int(y2), height - 1)


def _image_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    w, h = image_size
    return int(w), int(h)


def _boxes_overlap(a, b, margin: float = 4.0) -> bool:
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def render_scene(rng: np.random.Generator, image_size, params_list: list[FaceParams]) -> list[SynthFace]:
    """One picture holding one face, or several side by side in equal vertical slots (faces are shrunk until
    their heads' boxes are apart). Returns one SynthFace per face, sharing the image."""
    width, height = _image_size(image_size)
    n = len(params_list)
    slots = [(width * i / n, 0.0, width * (i + 1) / n, float(height)) for i in range(n)]
    params_list = list(params_list)
    for _ in range(10):
        placements = [place_face(p, (width, height), slot) for p, slot in zip(params_list, slots)]
        if not any(_boxes_overlap(a.head_bbox, b.head_bbox) for i, a in enumerate(placements) for b in placements[i + 1:]):
            break
        params_list = [dataclasses.replace(p, capture=dataclasses.replace(p.capture, face_frac=p.capture.face_frac * 0.85))
                       for p in params_list]
    else:
        raise RuntimeError("render_scene: could not place the faces apart")
    canvas = _background(rng, width, height, params_list[0].capture.background)
    for pl in placements:
        _draw_body(canvas, pl, rng)
    rasters = []
    for pl in placements:
        seed = pl.params.texture_seed
        texture = draw_texture(pl.params.shape, pl.params.expression, pl.params.appearance,
                               texels_per_unit=float(pl.pose_para[6]),
                               rng=rng if seed is None else np.random.default_rng(seed))
        rasters.append(_draw_head(canvas, pl, texture))
    occluders = np.zeros((height, width), np.uint8)
    for pl in placements:
        if pl.params.capture.occluder != "none":
            _draw_occluder(canvas, occluders, pl, rng)
    first = placements[0]
    exposure = first.params.appearance.lighting.exposure
    canvas = cv2.convertScaleAbs(canvas, alpha=0.35 + 0.65 * exposure)    # the whole photo darker or brighter
    face_size = float(np.ptp(first.image_points[:NUM_POINTS, :2], axis=0).max())
    image = _camera(canvas, first.params.capture, face_size, rng)
    return [_make_face(image, pl, raster, occluders, exposure, rng) for pl, raster in zip(placements, rasters)]


def _make_face(image, pl: Placement, raster: HeadRaster | None, occluders, exposure, rng) -> SynthFace:
    height, width = image.shape[:2]
    pts = pl.image_points
    self_visible = _visible(pts, raster, VISIBLE_DEPTH_TOLERANCE * float(pl.pose_para[6]))
    xi = np.clip(np.round(pts[:, 0]).astype(int), 0, width - 1)
    yi = np.clip(np.round(pts[:, 1]).astype(int), 0, height - 1)
    in_image = (pts[:, 0] > -0.5) & (pts[:, 0] < width - 0.5) & (pts[:, 1] > -0.5) & (pts[:, 1] < height - 0.5)
    visible = self_visible & in_image & (occluders[yi, xi] == 0)
    occluded_frac = float(np.mean(self_visible[:NUM_POINTS] & (occluders[yi, xi][:NUM_POINTS] > 0)))
    p98 = pts[:NUM_POINTS, :2].copy()
    mouth_centre = pts[[90, 94], :2].mean(axis=0)
    p21 = np.where(AFLW21_FROM_MODEL[:, None] >= 0, pts[AFLW21_FROM_MODEL, :2], mouth_centre)
    vis21 = np.where(AFLW21_FROM_MODEL >= 0, visible[AFLW21_FROM_MODEL], visible[90] | visible[94])
    p21[~vis21] = -1.0
    params = pl.params
    pitch, yaw, roll = pl.pose_para[:3]
    return SynthFace(
        image=image, points_98=p98, points_106=face3d.points_106(pts[:, :2]), points_68=p98[MAP_68_TO_98].copy(),
        points3d_68=pts[MAP_68_TO_98].T.copy(), points2d_21=p21.T.copy(), pose_para=pl.pose_para.copy(),
        pose_rad=np.array([yaw, pitch, roll]), box=_face_box(p98, width, height, rng),
        attributes=_attributes(params, occluded_frac, exposure), closed_eye=bool(has_closed_eye(p98)),
        mouth_open=params.expression.mouth_open > 0.0, visible_98=visible[:NUM_POINTS],
        model_points_98=pl.model[:NUM_POINTS].copy(), model_points_106=face3d.points_106(pl.model), params=params,
    )


def render_face(rng: np.random.Generator, *, image_size, params: FaceParams | None = None) -> SynthFace:
    """One synthetic face on a cluttered picture of image_size (an int for a square, or (width, height)).
    Deterministic for a given generator state."""
    if params is None:
        params = sample_params(rng)
    return render_scene(rng, image_size, [params])[0]


def flip_face(face: SynthFace) -> SynthFace:
    """The mirror image with its own exact label (300W-LP's _Flip folders): x -> W - 1 - x, points reordered
    by MIRROR_98, yaw and roll negated, tx -> W - 1 - tx; the model points are mirrored, so Pose_Para still
    projects them exactly onto the points."""
    height, width = face.image.shape[:2]
    flip_x = np.array([-1.0, 1.0, 1.0])
    model_98 = face.model_points_98[MIRROR_98] * flip_x
    model_106 = face.model_points_106[face3d.MIRROR_106] * flip_x
    pose_para = face3d.mirror_pose_para(face.pose_para, width)
    pts98 = face3d.project(model_98, pose_para, height)
    p21 = face.points2d_21[:, AFLW21_MIRROR].copy()
    p21[0] = np.where(p21[0] >= 0, width - 1.0 - p21[0], -1.0)
    x1, y1, x2, y2 = face.box
    return dataclasses.replace(
        face, image=np.ascontiguousarray(face.image[:, ::-1]), points_98=pts98[:, :2],
        points_106=face3d.project(model_106, pose_para, height)[:, :2], points_68=pts98[MAP_68_TO_98, :2].copy(),
        points3d_68=pts98[MAP_68_TO_98].T.copy(), points2d_21=p21, pose_para=pose_para,
        pose_rad=np.array([-face.pose_rad[0], face.pose_rad[1], -face.pose_rad[2]]),
        box=(width - 1 - x2, y1, width - 1 - x1, y2), visible_98=face.visible_98[MIRROR_98].copy(),
        model_points_98=model_98, model_points_106=model_106,
    )


# --- pictures for people -------------------------------------------------------------------------------------

def draw_annotated(face: SynthFace, size: int = 200, label: str = "") -> np.ndarray:
    """A square thumbnail around the face with its landmarks (green visible, orange hidden) and the pose axes
    (model x red, y green, z blue, from the nose tip): what the contact sheet shows."""
    x1, y1, x2, y2 = face.box
    side = 1.5 * max(x2 - x1, y2 - y1, 1)
    k = size / side
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    m = np.array([[k, 0, size / 2 - k * cx], [0, k, size / 2 - k * cy]])
    thumb = cv2.warpAffine(face.image, m, (size, size), flags=cv2.INTER_AREA, borderValue=(40, 40, 40))
    pts = face.points_98 * k + m[:, 2]
    for p, vis in zip(pts, face.visible_98):
        cv2.circle(thumb, tuple(int(v) for v in np.round(p * 4)), 4 if vis else 3, (60, 230, 60) if vis else (0, 140, 255),
                   -1, cv2.LINE_AA, 2)
    tip = face.model_points_98[54]
    axes = tip + 0.9 * np.eye(3)
    ends = face3d.project(np.vstack([tip, axes]), face.pose_para, face.image.shape[0])[:, :2] * k + m[:, 2]
    for end, color in zip(ends[1:], ((0, 0, 255), (0, 255, 0), (255, 0, 0))):
        cv2.line(thumb, tuple(int(v) for v in ends[0]), tuple(int(v) for v in end), color, 2, cv2.LINE_AA)
    yaw, pitch, roll = np.degrees(face.pose_rad)
    text = f"{label} y{yaw:+.0f} p{pitch:+.0f} r{roll:+.0f}".strip()
    cv2.rectangle(thumb, (0, 0), (size, 14), (0, 0, 0), -1)
    cv2.putText(thumb, text, (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
    return thumb


def contact_sheet(thumbs: list[np.ndarray], columns: int = 6) -> np.ndarray:
    size = thumbs[0].shape[0]
    rows = (len(thumbs) + columns - 1) // columns
    sheet = np.full((rows * size, columns * size, 3), 30, np.uint8)
    for i, t in enumerate(thumbs):
        r, c = divmod(i, columns)
        sheet[r * size:(r + 1) * size, c * size:(c + 1) * size] = t
    return sheet


# --- the dataset in the four release formats --------------------------------------------------------------------

FORMAT_SHARES = {"WFLW": 0.40, "LaPa": 0.15, "300W-LP": 0.30, "AFLW2000": 0.15}
MIN_PER_FORMAT = 3
MIN_FACES = MIN_PER_FORMAT * len(FORMAT_SHARES)
_STREAMS = {"WFLW": 1, "LaPa": 2, "300W-LP": 3, "AFLW2000": 4}
WFLW_EVENTS = ("0--Parade", "2--Demonstration", "4--Dancing", "7--Cheering", "9--Press_Conference", "12--Group",
               "13--Interview", "20--Family_Group", "21--Festival", "29--Students_Schoolkids", "37--Soccer",
               "49--Greeting", "51--Dresses", "61--Street_Battle")
W300LP_DBS = ("AFW", "HELEN", "IBUG", "LFPW")
LAPA_OPEN_EVERY = 7               # the pipeline keeps only LaPa's closed-eye faces; every 7th is open to test that
AFLW_OUTSIDE_SHARE = 0.06         # faces beyond the |angle| <= 99 deg protocol, to exercise its filter
PREVIEW_PER_FORMAT = 6
SYNTH_JSON = "synth.json"


def face_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator of one picture of the dataset: independent of every other picture, so a face can be
    re-rendered alone (tests do) and changing n only adds or drops pictures at the end."""
    return np.random.default_rng([seed, _STREAMS[stream], index])


def format_counts(n: int) -> dict[str, int]:
    """Faces per format: the shares of FORMAT_SHARES, at least MIN_PER_FORMAT each, summing to n."""
    if n < MIN_FACES:
        raise ValueError(f"n = {n}: the synthetic dataset needs at least {MIN_FACES} faces "
                         f"({MIN_PER_FORMAT} per format)")
    counts = {k: max(MIN_PER_FORMAT, int(round(share * n))) for k, share in FORMAT_SHARES.items()}
    while sum(counts.values()) != n:
        step = 1 if sum(counts.values()) < n else -1
        key = max((k for k in counts if step > 0 or counts[k] > MIN_PER_FORMAT), key=lambda k: counts[k])
        counts[key] += step
    return counts


@dataclass
class SynthSummary:
    out: Path
    seed: int
    n: int
    counts: dict[str, int]             # faces written per part: "WFLW train", "LaPa val", "300W-LP", ...
    images: dict[str, int]             # format -> image files written
    seconds: float

    def table(self) -> str:
        lines = [f"{'dataset':<18}{'faces':>7}", "-" * 25]
        lines += [f"{k:<18}{v:>7}" for k, v in self.counts.items()]
        lines += ["-" * 25, f"{'total':<18}{sum(self.counts.values()):>7}",
                  f"{sum(self.images.values())} images in {self.seconds:.1f} s "
                  f"({1000 * self.seconds / max(self.n, 1):.0f} ms/face), seed {self.seed} -> {self.out}"]
        return "\n".join(lines)


def _write_wflw(root: Path, count: int, seed: int, done, thumbs: list) -> tuple[dict, int]:
    """WFLW: pictures of one or two faces, the first ~75% of the faces in train, the rest in test."""
    from .sources.wflw import WflwFace, write_wflw
    train_target = min(int(round(0.75 * count)), count - 1)
    splits: dict[str, list] = {"train": [], "test": []}
    faces_done, image_index = 0, 0
    while faces_done < count:
        rng = face_rng(seed, "WFLW", image_index)
        in_train = faces_done < train_target
        room = (train_target if in_train else count) - faces_done
        two = room >= 2 and rng.random() < 0.25
        size = (int(rng.integers(480, 641)), int(rng.integers(300, 421))) if two else \
            (int(rng.integers(300, 481)), int(rng.integers(300, 481)))
        faces = render_scene(rng, size, [sample_params(rng) for _ in range(2 if two else 1)])
        event = WFLW_EVENTS[image_index % len(WFLW_EVENTS)]
        num, label = event.split("--")
        rel = f"{event}/{num}_{label}_{label.lower()}_{num}_{image_index}.jpg"
        for j, face in enumerate(faces):
            splits["train" if in_train else "test"].append(
                WflwFace(rel_path=rel, image=face.image if j == 0 else None, points=face.points_98, box=face.box,
                         attributes=[int(a) for a in face.attributes]))
            if len(thumbs) < PREVIEW_PER_FORMAT:
                thumbs.append(draw_annotated(face, label="WFLW"))
        faces_done += len(faces)
        image_index += 1
        done(len(faces))
    for split, faces in splits.items():
        write_wflw(root, split, faces)
    return {f"WFLW {k}": len(v) for k, v in splits.items()}, image_index


def _write_lapa(root: Path, count: int, seed: int, done, thumbs: list) -> tuple[dict, int]:
    """LaPa: one face a picture, mostly with a closed eye (both, or a wink), in train / val / test."""
    from .sources.lapa import write_lapa
    n_val = n_test = max(1, int(round(0.15 * count)))
    n_train = count - n_val - n_test
    faces = {"train": 0, "val": 0, "test": 0}
    for i in range(count):
        split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
        rng = face_rng(seed, "LaPa", i)
        if i % LAPA_OPEN_EVERY == 1:
            eyes = (0.95, 0.95)
        elif rng.random() < 0.8:
            eyes = (0.0, 0.0)
        else:                          # a wink: the LaPa filter keeps a face when either eye is closed
            eyes = (0.0, 0.95) if rng.random() < 0.5 else (0.95, 0.0)
        params = sample_params(rng, eye_open=eyes, face_frac=float(rng.uniform(0.5, 0.7)))
        face = render_face(rng, image_size=(int(rng.integers(250, 401)), int(rng.integers(250, 401))), params=params)
        write_lapa(root, split, f"{(2569520 + 7919 * i) % 10_000_000:07d}_{i % 4}", face.image, face.points_106)
        faces[split] += 1
        if len(thumbs) < PREVIEW_PER_FORMAT:
            thumbs.append(draw_annotated(face, label="LaPa"))
        done(1)
    return {f"LaPa {k}": v for k, v in faces.items()}, count


def _write_300wlp(root: Path, count: int, seed: int, done, thumbs: list) -> tuple[dict, int]:
    """300W-LP: 450x450 pictures; like the release, one identity seen in a few poses (names ..._0, _1, ...), and
    some of them mirrored into <db>_Flip with their own exact label."""
    from .sources.w300lp import write_300wlp
    written, group = 0, 0
    while written < count:
        rng = face_rng(seed, "300W-LP", group)
        db = W300LP_DBS[group % len(W300LP_DBS)]
        person = sample_params(rng)
        ident = f"{db}_{(134212 + 7919 * group) % 1_000_000}_1"
        for view in range(int(rng.integers(1, 4))):
            if written >= count:
                break
            params = dataclasses.replace(person, pose_rad=sample_pose_rad(rng),
                                         capture=dataclasses.replace(sample_capture(rng),
                                                                     face_frac=float(rng.uniform(0.36, 0.5))))
            face = render_face(rng, image_size=450, params=params)
            write_300wlp(root, db, f"{ident}_{view}", face.image, face.pose_para, face.points_68)
            written += 1
            done(1)
            if len(thumbs) < PREVIEW_PER_FORMAT:
                thumbs.append(draw_annotated(face, label="300W-LP"))
            if written < count and rng.random() < 0.25:
                flipped = flip_face(face)
                write_300wlp(root, f"{db}_Flip", f"{ident}_{view}", flipped.image, flipped.pose_para,
                             flipped.points_68, landmarks_file=False)
                written += 1
                done(1)
        group += 1
    return {"300W-LP": written}, written


def aflw2000_face(seed: int, index: int, count: int) -> SynthFace:
    """Face `index` of the AFLW2000 part of a dataset of `count` AFLW2000 faces (re-rendered alone, as written):
    450x450, and a few of them turned beyond the 99-degree protocol."""
    n_outside = max(1, int(round(AFLW_OUTSIDE_SHARE * count)))
    outside = set(np.linspace(0, count - 1, n_outside).round().astype(int).tolist())
    rng = face_rng(seed, "AFLW2000", index)
    overrides = {"face_frac": float(rng.uniform(0.36, 0.5))}
    if index in outside:
        yaw = float(rng.choice([-1, 1]) * rng.uniform(100.0, 110.0))
        overrides["pose_deg"] = (yaw, float(rng.uniform(-20, 20)), float(rng.uniform(-15, 15)))
    return render_face(rng, image_size=450, params=sample_params(rng, **overrides))


def _write_aflw2000(root: Path, count: int, seed: int, done, thumbs: list) -> tuple[dict, int]:
    """AFLW2000-3D: 450x450 pictures named imageNNNNN (the release's names are even numbers)."""
    from .sources.aflw2000 import write_aflw2000
    for i in range(count):
        face = aflw2000_face(seed, i, count)
        write_aflw2000(root, f"image{2 + 2 * i:05d}", face.image, face.pose_para, face.points3d_68, face.points2d_21)
        if len(thumbs) < PREVIEW_PER_FORMAT:
            thumbs.append(draw_annotated(face, label="AFLW2000"))
        done(1)
    return {"AFLW2000": count}, count


def generate_dataset(out: Path, n: int = 1000, seed: int = 0, progress: bool = True,
                     force: bool = False) -> SynthSummary:
    """Render n faces and write them as WFLW/, LaPa/, 300W_LP/ and AFLW2000/ under `out` with the real format
    writers, plus preview.png (a contact sheet) and synth.json. Written to a temporary sibling folder and renamed
    at the end; a previous synth output at `out` is replaced only with force, anything else never
    (pfpld.fileio.check_output_folder)."""
    out = Path(out)
    counts = format_counts(n)
    start = time.perf_counter()
    with output_folder(out, "synth", force) as tmp:
        with progress_bar(total=n, desc="synth", unit="face", enabled=progress) as bar:
            faces, images, thumbs = {}, {}, []
            writers = (("WFLW", "WFLW", _write_wflw), ("LaPa", "LaPa", _write_lapa),
                       ("300W-LP", "300W_LP", _write_300wlp), ("AFLW2000", "AFLW2000", _write_aflw2000))
            for name, folder, write in writers:
                format_thumbs: list = []
                f, i = write(tmp / folder, counts[name], seed, bar.update, format_thumbs)
                faces.update(f)
                images[name] = i
                thumbs += format_thumbs
        cv2.imwrite(str(tmp / "preview.png"), contact_sheet(thumbs))
        seconds = time.perf_counter() - start
        (tmp / SYNTH_JSON).write_text(json.dumps({
            "generator": "pfpld.data.synthetic", "version": GENERATOR_VERSION, "seed": seed, "n": n,
            "faces": faces, "images": images, "seconds": round(seconds, 2)}, indent=2) + "\n")
    return SynthSummary(out=out, seed=seed, n=n, counts=faces, images=images, seconds=seconds)
