"""The torch Dataset over a prepared folder (see pfpld/data/prepare.py): what training and evaluation read.

Prepared crops carry a margin around the contract crop, so augmentation (rotation, scale, shift, mirror) never
shows a black border that deployment would not see. A sample is the raw stored crop, memory-mapped from the
folder's crops.npy (no image decoding; a version-1 folder, PNGs only, decodes its PNGs), its labels and, when
training augments, its AugmentDraw, drawn from a generator seeded by (seed, epoch, index): a run is reproducible
whatever the number of loader workers, and `--resume` continues exactly. network_batch() turns a collated batch,
once on the training device, into the model's input and the loss's targets (pfpld/data/augment.py applies the
draws there, batched); without augmentation the input is exactly the contract crop.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..contract import PreprocessContract
from ..landmarks import NUM_POINTS
from ..pose_bins import keep_for_training
from .augment import AugmentConfig, AugmentDraw, FaceLabels, augment_batch, augment_sample, draw_augment
from .prepare import INDEX_FILE, iter_prepared, open_crop_array, read_prepared_header
from .record import DatasetError


def validation_rows(rows: np.ndarray, fraction: float) -> np.ndarray:
    """The rows of the training split held out for validation: the max(1, round(fraction x n)) rows whose hash of the
    row number is smallest. Fixed by the data alone (not the seed, the world size or the order of loading), spread
    over the sources, disjoint from what is trained on."""
    if fraction <= 0 or len(rows) == 0:
        return rows[:0]
    count = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    keys = (rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)   # Fibonacci hashing
    return np.sort(rows[np.argsort(keys, kind="stable")[:count]])


def labelled_mean(points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, K, 2) points and (N, K) mask -> (K, 2) float32: each point's mean over the faces that label it (0.5 where
    none does), in float64."""
    w = np.asarray(mask)[..., None].astype(np.float64)
    count = w.sum(0)
    return np.where(count > 0, (points * w).sum(0) / np.maximum(count, 1), 0.5).astype(np.float32)


class PreparedFaces(Dataset):
    """The faces of one split of a prepared folder. Splits: "train" and "test" as prepare-data wrote them, and "val":
    the part of "train" that `val_fraction` holds out (validation_rows); with val_fraction > 0, "train" leaves it
    out."""

    def __init__(self, root: Path, split: str, augment: AugmentConfig | None = None, seed: int = 0,
                 val_fraction: float = 0.0, require_pose: bool = False):
        self.root = Path(root)
        header = read_prepared_header(self.root)
        self.contract = PreprocessContract.from_dict(header["contract"])
        self.crop_size_px = int(header["crop_size_px"])
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        stored = "train" if split == "val" else split
        numbered = [(row, r) for row, r in enumerate(iter_prepared(self.root)) if r["split"] == stored]
        if split in ("train", "val") and val_fraction > 0:
            held = set(validation_rows(np.array([row for row, _ in numbered], dtype=np.int64), val_fraction).tolist())
            numbered = [(row, r) for row, r in numbered if (row in held) == (split == "val")]
        elif split == "val":
            raise DatasetError(f"{self.root}: split 'val' needs a validation fraction above 0")
        if require_pose:        # a pose model learns only from faces with a pose inside the +-99 degree range
            numbered = [(row, r) for row, r in numbered
                        if r["pose"] is not None and bool(keep_for_training(np.degrees(np.asarray(r["pose"]))))]
        if not numbered:
            raise DatasetError(f"{self.root / INDEX_FILE}: no faces in split {split!r}"
                               f"{' with a pose label within +-99 degrees' if require_pose else ''}")
        self.array_rows = np.array([row for row, _ in numbered], dtype=np.int64)     # rows of crops.npy
        rows = [r for _, r in numbered]
        self.images = [r["image"] for r in rows]
        self.sources = [r["source"] for r in rows]
        self.names = [r.get("name", "") for r in rows]
        self.points = np.array([r["points"] for r in rows], dtype=np.float32).reshape(-1, NUM_POINTS, 2)
        self.mask = np.array([[c == "1" for c in r["mask"]] for r in rows], dtype=bool)
        self.has_pose = np.array([r["pose"] is not None for r in rows], dtype=bool)
        self.pose = np.array([r["pose"] if r["pose"] is not None else [0.0, 0.0, 0.0] for r in rows],
                             dtype=np.float32)
        # identity-labelled sets (ImageFolder): class indexes into the header's "identities"; -1 elsewhere
        self.identity = np.array([r.get("identity", -1) for r in rows], dtype=np.int64)
        self.identity_names: list[str] = list(header.get("identities") or [])
        self.has_attributes = np.array([r.get("attributes") is not None for r in rows], dtype=bool)
        self.attributes = np.array([r["attributes"] if r.get("attributes") is not None else [0] * 6
                                    for r in rows], dtype=np.int8)
        self._header = header
        self._crops = open_crop_array(self.root, header)        # checked now: a bad file fails before training
        if self._crops is None:
            warnings.warn(f"{self.root}: prepared by an older pfpld (version 1, PNG crops only): every sample "
                          f"decodes a PNG; re-run `pfpld prepare-data` for the memory-mapped crops", stacklevel=2)

    def __getstate__(self):
        # Loader workers started by spawn receive the dataset pickled: a memory map would be pickled as its whole
        # contents, so each worker maps the file again instead.
        return {**self.__dict__, "_crops": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._crops = open_crop_array(self.root, self._header)

    def mean_landmarks(self) -> np.ndarray:
        """(98, 2) mean of the labelled points in [0,1] crop coordinates (0.5 where a point is never labelled)."""
        return labelled_mean(self.points, self.mask)

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load_crop(self, index: int) -> np.ndarray:
        """The stored crop (S, S, 3) uint8 BGR, with margin: a copy of its crops.npy row (a version-1 folder:
        its PNG decoded)."""
        if self._crops is not None:
            return np.array(self._crops[self.array_rows[index]])
        path = self.root / self.images[index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None or image.shape[0] != self.crop_size_px or image.shape[1] != self.crop_size_px:
            raise DatasetError(f"{path}: expected a readable {self.crop_size_px}x{self.crop_size_px} image")
        return image

    def labels(self, index: int) -> FaceLabels:
        return FaceLabels(points=self.points[index], mask=self.mask[index], pose=self.pose[index],
                          has_pose=self.has_pose[index])

    def draw(self, index: int) -> AugmentDraw | None:
        """The face's augmentation this epoch (None without augmentation)."""
        if self.augment is None:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return draw_augment(rng, self.augment, self.contract.input_size)

    def __getitem__(self, index: int) -> dict:
        item = {
            "crop": torch.from_numpy(self.load_crop(index)),
            "points": torch.from_numpy(self.points[index]),
            "mask": torch.from_numpy(self.mask[index]),
            "pose": torch.from_numpy(self.pose[index]),
            "has_pose": torch.tensor(bool(self.has_pose[index])),
            "identity": torch.tensor(self.identity[index]),
            "index": torch.tensor(index),
        }
        draw = self.draw(index)
        if draw is not None:
            item["draw"] = torch.from_numpy(draw.to_vector())
        return item

    def network_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A collated batch of samples, on the device the model runs on -> "image" (B, 3, H, W), the contract's
        input after the batch's draws (augment_batch), and the labels the task's targets are made from: "points"
        (B, 196), "mask", "pose", "has_pose", "identity" (-1 where the set has none)."""
        labels = FaceLabels(points=batch["points"], mask=batch["mask"], pose=batch["pose"],
                            has_pose=batch["has_pose"])
        image, labels = augment_batch(batch["crop"], labels, batch.get("draw"), self.contract)
        return {"image": image, "points": labels.points.flatten(1), "mask": labels.mask, "pose": labels.pose,
                "has_pose": labels.has_pose, "identity": batch["identity"], "index": batch["index"]}

    def reference_sample(self, index: int) -> tuple[np.ndarray, FaceLabels]:
        """One face through the per-sample reference path (cv2, numpy): the input (3, H, W) and its labels."""
        return augment_sample(self.load_crop(index), self.labels(index), self.draw(index), self.contract)
