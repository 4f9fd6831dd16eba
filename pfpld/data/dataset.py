"""The torch Dataset over a prepared folder (see pfpld/data/prepare.py), with the training augmentation.

Prepared crops carry a margin around the contract crop, so augmentation (rotation, scale, shift, mirror) never
shows a black border that deployment would not see. Without augmentation the sample is exactly the contract
crop. Every random draw comes from a generator seeded by (seed, epoch, index): a run is reproducible whatever
the number of loader workers, and `--resume` continues exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..contract import PreprocessContract
from ..landmarks import NUM_POINTS, flip_mask, flip_points, flip_pose, mirror_matrix
from ..pose import pose_after_image_transform
from .prepare import iter_prepared, read_prepared_header
from .record import DatasetError


@dataclass(frozen=True)
class AugmentConfig:
    """FACTS section 4: the reference PFPLD augmentation."""
    rotation_deg: float = 30.0
    shift_frac: float = 0.1
    scale_range: tuple[float, float] = (0.9, 1.1)
    flip_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.2
    grayscale_p: float = 0.2
    erasing_p: float = 0.2


class PreparedFaces(Dataset):
    def __init__(self, root: Path, split: str, augment: AugmentConfig | None = None, seed: int = 0):
        self.root = Path(root)
        header = read_prepared_header(self.root)
        self.contract = PreprocessContract.from_dict(header["contract"])
        self.crop_size_px = int(header["crop_size_px"])
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        rows = [r for r in iter_prepared(self.root) if r["split"] == split]
        if not rows:
            raise DatasetError(f"{self.root / 'index.jsonl'}: no faces in split {split!r}")
        self.images = [r["image"] for r in rows]
        self.sources = [r["source"] for r in rows]
        self.names = [r.get("name", "") for r in rows]
        self.points = np.array([r["points"] for r in rows], dtype=np.float32).reshape(-1, NUM_POINTS, 2)
        self.mask = np.array([[c == "1" for c in r["mask"]] for r in rows], dtype=bool)
        self.has_pose = np.array([r["pose"] is not None for r in rows], dtype=bool)
        self.pose = np.array([r["pose"] if r["pose"] is not None else [0.0, 0.0, 0.0] for r in rows],
                             dtype=np.float32)
        self.has_attributes = np.array([r.get("attributes") is not None for r in rows], dtype=bool)
        self.attributes = np.array([r["attributes"] if r.get("attributes") is not None else [0] * 6
                                    for r in rows], dtype=np.int8)

    def mean_landmarks(self) -> np.ndarray:
        """(98, 2) mean of the labelled points in [0,1] crop coordinates (0.5 where a point is never labelled)."""
        w = self.mask[..., None].astype(np.float64)
        total = (self.points * w).sum(0)
        count = w.sum(0)
        return np.where(count > 0, total / np.maximum(count, 1), 0.5).astype(np.float32)

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load_crop(self, index: int) -> np.ndarray:
        """The stored crop (BGR, with margin)."""
        path = self.root / self.images[index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None or image.shape[0] != self.crop_size_px or image.shape[1] != self.crop_size_px:
            raise DatasetError(f"{path}: expected a readable {self.crop_size_px}x{self.crop_size_px} image")
        return image

    def __getitem__(self, index: int) -> dict:
        image = self.load_crop(index)
        size = self.contract.input_size
        offset = (self.crop_size_px - size) / 2.0
        points_px = self.points[index] * size + offset           # in the stored crop's pixels
        mask = self.mask[index]
        pose = self.pose[index]
        if self.augment is None:
            m = np.array([[1.0, 0.0, -offset], [0.0, 1.0, -offset]])
            out = image[int(offset):int(offset) + size, int(offset):int(offset) + size]
            flipped = False
        else:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            m, flipped = _random_similarity(rng, self.augment, self.crop_size_px, size)
            # One resampling for similarity and mirror together: warping, then flipping the array, would round
            # differently.
            warp = _then(mirror_matrix(size), m) if flipped else m
            out = cv2.warpAffine(image, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            out = _photometric(rng, self.augment, out)
            if self.has_pose[index]:
                pose = pose_after_image_transform(pose, m[:, :2]).astype(np.float32)
        points = (points_px @ m[:, :2].T + m[:, 2]) / size
        if flipped:
            points, mask, pose = flip_points(points, size), flip_mask(mask), flip_pose(pose)
        return {
            "image": torch.from_numpy(self.contract.to_tensor_layout(out)),
            "points": torch.from_numpy(points.astype(np.float32).reshape(-1)),
            "mask": torch.from_numpy(mask.copy()),
            "pose": torch.from_numpy(np.asarray(pose, dtype=np.float32)),
            "has_pose": torch.tensor(bool(self.has_pose[index])),
            "index": torch.tensor(index),
        }


def _random_similarity(rng: np.random.Generator, cfg: AugmentConfig, src_size: int, dst_size: int):
    """2x3 matrix from the stored crop to the network input (rotation, scale, shift) and whether to mirror the
    result (the landmarks helper's mirror_matrix, applied after it)."""
    angle = np.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    scale = rng.uniform(*cfg.scale_range)
    shift = rng.uniform(-cfg.shift_frac, cfg.shift_frac, size=2) * dst_size
    flip = rng.random() < cfg.flip_p
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    a = np.array([[c, -s], [s, c]])
    src_c = (src_size - 1) / 2.0
    dst_c = (dst_size - 1) / 2.0
    t = np.array([dst_c, dst_c]) + shift - a @ np.array([src_c, src_c])
    return np.hstack([a, t[:, None]]), flip


def _then(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 matrix applying `inner`, then `outer`."""
    return outer @ np.vstack([inner, [0.0, 0.0, 1.0]])


def _photometric(rng: np.random.Generator, cfg: AugmentConfig, bgr: np.ndarray) -> np.ndarray:
    img = bgr.astype(np.float32)
    img *= rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    gray_mean = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY).mean()
    img = (img - gray_mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + gray_mean
    img = np.clip(img, 0, 255).astype(np.uint8)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)[..., None]
    img = np.clip(gray + (img.astype(np.float32) - gray) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation),
                  0, 255).astype(np.uint8)
    hue_shift = rng.uniform(-cfg.hue, cfg.hue) * 180.0
    if abs(hue_shift) >= 0.5:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(hue_shift))) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.random() < cfg.grayscale_p:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if rng.random() < cfg.erasing_p:
        h, w = img.shape[:2]
        area = rng.uniform(0.02, 0.33) * h * w
        aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
        eh, ew = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < eh < h and 0 < ew < w:
            y, x = rng.integers(0, h - eh), rng.integers(0, w - ew)
            img = img.copy()
            img[y:y + eh, x:x + ew] = rng.integers(0, 256, size=(eh, ew, 3), dtype=np.uint8)
    return img
