"""The preprocessing contract: the one place that says how a face becomes the network's input.

Created with the model, saved in every checkpoint, later written into ONNX metadata, mapper configs and the C++
config. Nothing else in the project re-types the input size, colour order, scale, mean or crop rule.

The crop rule: take the face box (for training, the extent of the annotated landmarks; at deployment, a box
that a detector was tuned to match), optionally loosen it as HopeNet does on 300W-LP (loose_k), make it square
around its centre with side = expand x max(w, h) (or min(w, h): side "min"; centre moved by shift_y x side
vertically), and resample that square to input_size x input_size. Landmarks come out in [0,1] of that square.
A recognition model takes an aligned face instead (box_source "aligned"): its box is the whole image, which
ImageFolder sets and aligned LFW hold and pfpld.align makes from five points. An aligned input may be a rectangle
(SphereFace's 112 rows x 96 columns: input_width 96): the crop is then the window of the input's aspect that holds
the box (side "max") or fits inside it (side "min", what aligned_crop gives a rectangle), the square being the
aspect-1 case of the same rule.
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

    def square(self, box, aspect: float = 1.0) -> tuple[float, float, float]:
        """(centre x, centre y, side) of the square crop for box (x1, y1, x2, y2) in pixels; with aspect = width /
        height of a rectangular input, the side is the window's height (its width: side x aspect)."""
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
        side = self.expand * reduce((x2 - x1) / aspect, y2 - y1)     # aspect 1: exactly max(w, h) (or min)
        return (x1 + x2) / 2.0, (y1 + y2) / 2.0 + self.shift_y * side, side


# The crop rule of an aligned face: the whole image, resized to the input size.
ALIGNED_CROP = CropRule(box_source="aligned", expand=1.0)


def aligned_crop(height: int, width: int) -> CropRule:
    """The crop rule of an aligned face for a rows x columns input: ALIGNED_CROP for a square; for a rectangle, the
    window of its aspect that fits inside the image (side "min"), so that an ArcFace-aligned 112x112 face gives
    SphereFace's 112x96 frame (the same face, 8 columns less each side) and a face aligned at the input's own
    size is taken whole, either way."""
    return ALIGNED_CROP if height == width else dataclasses.replace(ALIGNED_CROP, side="min")


def hw_text(height: int, width: int) -> str:
    """'112x96': an input's rows x columns, the order --size and every message of the project give them."""
    return f"{height}x{width}"


def parse_hw(text: str) -> tuple[int, int]:
    """'112' (a square) or '112x96' (rows x columns, as hw_text writes it) -> (rows, columns)."""
    parts = str(text).strip().lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise ContractError(f"size {text!r}: expected SIDE or ROWSxCOLUMNS in pixels, e.g. 112 or 112x96")
    return (values[0], values[-1])


@dataclass(frozen=True)
class PreprocessContract:
    input_size: int = 112                 # rows of the network input (and its columns, unless input_width)
    color_order: str = "RGB"              # channel order of the network input
    scale: float = 1.0 / 255.0            # input = (pixel - mean) * scale
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    crop: CropRule = field(default_factory=CropRule)
    layout: str = "NCHW"
    # columns of a rectangular input (an aligned contract only: SphereFace's 112x96); None = square. A square
    # contract has None here however it was built, and serialises without the key, as it always did.
    input_width: int | None = None

    def __post_init__(self):
        if self.color_order not in ("RGB", "BGR"):
            raise ContractError(f"color_order {self.color_order!r}: expected RGB or BGR")
        if self.input_width == self.input_size:
            object.__setattr__(self, "input_width", None)
        if min(self.input_hw) < 16:
            raise ContractError(f"input size {self.size_text} (rows x columns): expected at least 16 each")
        if not self.is_square and not self.aligned:
            raise ContractError(f"input size {self.size_text} (rows x columns) is not square: only an aligned contract "
                                f"(crop box_source 'aligned') takes a rectangle; a landmark crop is square")

    # --- the input's size ----------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.input_size

    @property
    def width(self) -> int:
        return self.input_size if self.input_width is None else self.input_width

    @property
    def input_hw(self) -> tuple[int, int]:
        """(rows, columns) of the network input."""
        return self.height, self.width

    @property
    def is_square(self) -> bool:
        return self.input_width is None

    @property
    def size_text(self) -> str:
        return hw_text(*self.input_hw)

    # --- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["input_width"] is None:       # a square contract: the dict every earlier version wrote
            del d["input_width"]
        return d

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
        height, width = self.input_hw
        cx, cy, side = self.crop.square(box, width / height)
        s = height / side
        out_x, out_y = width * context, height * context
        return np.array([[s, 0.0, out_x / 2.0 - s * cx], [0.0, s, out_y / 2.0 - s * cy]], dtype=np.float64)

    def crop_image(self, image_bgr: np.ndarray, box, context: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Crop and resample a BGR uint8 image; returns (crop in BGR, the input's rows x columns x context; the 2x3
        matrix used)."""
        m = self.crop_matrix(box, context)
        size = (int(round(self.width * context)), int(round(self.height * context)))      # cv2: (columns, rows)
        crop = cv2.warpAffine(image_bgr, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
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
        return (q / self.input_size).astype(np.float32)      # landmark crops are square (__post_init__)

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
