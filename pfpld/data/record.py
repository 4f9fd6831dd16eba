"""FaceRecord: what every dataset parser returns, whatever the on-disk format.

Missing labels are masks and None, never sentinel values: a 300W-LP face has 43 supervised points of 98 and a
pose; a WFLW face has 98 points and no pose.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError

__all__ = ["DatasetError", "FaceRecord", "WFLW_ATTRIBUTES"]   # parsers raise DatasetError from here

WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")


@dataclass
class FaceRecord:
    image_path: Path
    points: np.ndarray                      # (98, 2) float32, image pixels, WFLW order
    point_mask: np.ndarray                  # (98,) bool, True where the point is a label
    source: str                             # "wflw", "lapa", "300wlp", "aflw2000", ...
    split: str                              # "train" or "test"
    box: tuple[float, float, float, float] | None = None   # annotated face box if the format has one
    pose_rad: np.ndarray | None = None      # (3,) yaw, pitch, roll in radians, or None
    attributes: np.ndarray | None = None    # (6,) WFLW flags (WFLW_ATTRIBUTES order), or None
    name: str = ""                          # stable id within the source (for reports)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.image_path = Path(self.image_path)
        self.points = np.asarray(self.points, dtype=np.float32).reshape(98, 2)
        self.point_mask = np.asarray(self.point_mask, dtype=bool).reshape(98)
        if self.pose_rad is not None:
            self.pose_rad = np.asarray(self.pose_rad, dtype=np.float32).reshape(3)
        if self.attributes is not None:
            self.attributes = np.asarray(self.attributes, dtype=np.int8).reshape(6)
