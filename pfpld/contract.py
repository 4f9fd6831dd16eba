"""The preprocessing contract: the one place that says how a face becomes the network's input.

Created with the model, saved in every checkpoint, later written into ONNX metadata, mapper configs and the C++
config. Nothing else in the project re-types the input size, colour order, scale, mean or crop rule.

The crop rule: take the face box (for training, the extent of the annotated landmarks; at deployment, a box
that a detector was tuned to match), optionally loosen it as HopeNet does on 300W-LP (loose_k), make it square
around its centre with side = expand x max(w, h) (or min(w, h): side "min"; centre moved by shift_y x side
vertically), and resample that square to input_size x input_size. Landmarks come out in [0,1] of that square.
A recognition model takes an aligned face instead (box_source "aligned"): its box is the whole image, which
ImageFolder sets and aligned LFW hold and pfpld.align makes from five points.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import cv2
import numpy as np

from .arrays import asarray_like, namespace
from .errors import ContractError  # noqa: F401 (re-exported)


CROP_SIDES = ("max", "min")
# "landmark_extent": the face box is the extent of the landmarks in training (a detector's box at deployment);
# "aligned": the image is an aligned face and the box is the whole image (aligned_box)
BOX_SOURCES = ("landmark_extent", "aligned")


@dataclass(frozen=True)
class CropRule:
    box_source: str = "landmark_extent"   # what the box is measured on during training
    expand: float = 1.2                   # side of the square = expand * max (or min, see side) of the box's w, h
    shift_y: float = 0.0                  # centre shift, as a fraction of the square side (down is +)
    # HopeNet's loose 300W-LP box before the square (0: none): x1 -= 0.6 k w, y1 -= 2 k h, then on the widened
    # box x2 += 0.6 k w', y2 += 0.6 k h' (the reference code updates the corners in that order).
    loose_k: float = 0.0
    side: str = "max"                     # "min": the square fits inside the box (HopeNet's Resize + CenterCrop)

    def __post_init__(self):
        if self.box_source not in BOX_SOURCES:
            raise ContractError(f"crop box_source {self.box_source!r}: expected one of {', '.join(BOX_SOURCES)}")
        if self.side not in CROP_SIDES:
            raise ContractError(f"crop side {self.side!r}: expected one of {', '.join(CROP_SIDES)}")
        if not (self.expand > 0 and self.loose_k >= 0):
            raise ContractError(f"crop expand {self.expand} and loose_k {self.loose_k}: expected expand > 0 and "
                                f"loose_k >= 0")

    def square(self, box) -> tuple[float, float, float]:
        """(centre x, centre y, side) of the square crop for box (x1, y1, x2, y2) in pixels."""
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (x2 > x1 and y2 > y1):
            raise ContractError(f"face box {box} is empty: expected x1 < x2 and y1 < y2")
        if self.loose_k:
            k = self.loose_k
            x1 -= 0.6 * k * (x2 - x1)
            y1 -= 2.0 * k * (y2 - y1)
            x2 += 0.6 * k * (x2 - x1)
            y2 += 0.6 * k * (y2 - y1)
        reduce = max if self.side == "max" else min
        side = self.expand * reduce(x2 - x1, y2 - y1)
        return (x1 + x2) / 2.0, (y1 + y2) / 2.0 + self.shift_y * side, side


# The crop rule of an aligned face: the whole image, resized to the input size.
ALIGNED_CROP = CropRule(box_source="aligned", expand=1.0)


@dataclass(frozen=True)
class PreprocessContract:
    input_size: int = 112
    color_order: str = "RGB"              # channel order of the network input
    scale: float = 1.0 / 255.0            # input = (pixel - mean) * scale
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    crop: CropRule = field(default_factory=CropRule)
    layout: str = "NCHW"

    def __post_init__(self):
        if self.color_order not in ("RGB", "BGR"):
            raise ContractError(f"color_order {self.color_order!r}: expected RGB or BGR")
        if self.input_size < 16:
            raise ContractError(f"input_size {self.input_size}: expected at least 16")

    # --- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessContract":
        d = dict(d)
        crop = CropRule(**d.pop("crop", {}))
        if "mean" in d:
            d["mean"] = tuple(float(m) for m in d["mean"])
        return cls(crop=crop, **d)

    # --- the crop ------------------------------------------------------------------------------------
    @property
    def aligned(self) -> bool:
        """The input is an aligned face image, cropped whole (no face box needed)."""
        return self.crop.box_source == "aligned"

    @staticmethod
    def aligned_box(image: np.ndarray) -> tuple[float, float, float, float]:
        """The box of an aligned face: the whole image (x1, y1, x2, y2) in pixels."""
        return 0.0, 0.0, float(image.shape[1]), float(image.shape[0])

    def crop_matrix(self, box, context: float = 1.0) -> np.ndarray:
        """2x3 affine matrix from image pixels to the crop's pixels. With context > 1 the output keeps the
        same pixel scale but covers context x the square (used to store margin for augmentation)."""
        cx, cy, side = self.crop.square(box)
        s = self.input_size / side
        out = self.input_size * context
        return np.array([[s, 0.0, out / 2.0 - s * cx], [0.0, s, out / 2.0 - s * cy]], dtype=np.float64)

    def crop_image(self, image_bgr: np.ndarray, box, context: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Crop and resample a BGR uint8 image; returns (crop in BGR, the 2x3 matrix used)."""
        m = self.crop_matrix(box, context)
        size = int(round(self.input_size * context))
        crop = cv2.warpAffine(image_bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(0, 0, 0))
        return crop, m

    def to_tensor_layout(self, crop_bgr: np.ndarray) -> np.ndarray:
        """BGR uint8 HxWx3 crop -> float32 CxHxW network input per the contract (colour order, mean, scale)."""
        return np.ascontiguousarray(self.normalise(crop_bgr.astype(np.float32).transpose(2, 0, 1)))

    def normalise(self, bgr_planes):
        """(..., 3, H, W) float32 BGR pixel values (0-255) -> the network input: channels in color_order, then
        (pixel - mean) * scale in float32. A numpy array, or a torch tensor (a batch, on any device) as the
        training augmentation makes: the same arithmetic, so the two give the same bits."""
        planes = namespace(bgr_planes).flip(bgr_planes, (-3,)) if self.color_order == "RGB" else bgr_planes
        mean = asarray_like(np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1), bgr_planes)
        return (planes - mean) * float(np.float32(self.scale))

    def points_to_crop(self, points_px: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """Image-pixel points (N,2) -> [0,1] coordinates of the crop made with `matrix` (context 1)."""
        p = np.asarray(points_px, dtype=np.float64)
        q = p @ matrix[:, :2].T + matrix[:, 2]
        return (q / self.input_size).astype(np.float32)

    def points_from_crop(self, points_norm: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """[0,1] crop coordinates (N,2) -> image pixels, inverse of points_to_crop."""
        q = np.asarray(points_norm, dtype=np.float64) * self.input_size
        a = matrix[:, :2]
        return ((q - matrix[:, 2]) @ np.linalg.inv(a).T).astype(np.float32)


def landmark_box(points_px: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """Extent (x1, y1, x2, y2) of the valid landmarks: the box the training crop rule is measured on."""
    p = np.asarray(points_px, dtype=np.float64)
    if mask is not None:
        p = p[np.asarray(mask, dtype=bool)]
    return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())
