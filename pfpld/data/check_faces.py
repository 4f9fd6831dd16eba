"""Synthetic faces for checks (parity, the int8 estimate, calibration when no set is given): rendered by the
project's generator from a seed and cut exactly as training cuts them (the contract's crop rule on the landmark
box), with their exact labels. One function, so every check looks at the same kind of face.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract import PreprocessContract, landmark_box
from ..landmarks import NUM_POINTS
from .synthetic import render_face, sample_params


@dataclass
class CheckFaces:
    crops_bgr: np.ndarray       # (N, S, S, 3) uint8, the contract's crops
    inputs: np.ndarray          # (N, 3, S, S) float32, the network inputs made from them
    points: np.ndarray          # (N, 98, 2) float32, exact landmarks in [0,1] of the crop
    pose_rad: np.ndarray        # (N, 3) float32, yaw, pitch, roll
    source: str                 # how they were made, for reports

    def __len__(self) -> int:
        return len(self.crops_bgr)


def synthetic_check_faces(contract: PreprocessContract, n: int, seed: int, *, image_size: int | None = None,
                          clean: bool = False) -> CheckFaces:
    """n faces rendered from `seed` on image_size pictures (default 2 x input size + 64), each cut with the
    contract from the extent of its landmarks. clean: no occluder, blur, noise or harsh light."""
    size = contract.input_size
    image_size = image_size or 2 * size + 64
    rng = np.random.default_rng(seed)
    crops, points, poses = [], [], []
    for _ in range(n):
        params = sample_params(rng, clean=True) if clean else None
        face = render_face(rng, image_size=image_size, params=params)
        crop, matrix = contract.crop_image(face.image, landmark_box(face.points_98))
        crops.append(crop)
        points.append(contract.points_to_crop(face.points_98, matrix))
        poses.append(face.pose_rad)
    crops_bgr = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    inputs = (np.stack([contract.to_tensor_layout(c) for c in crops]) if crops
              else np.zeros((0, 3, size, size), np.float32))
    kind = "clean synthetic faces" if clean else "synthetic faces"
    return CheckFaces(crops_bgr=crops_bgr, inputs=inputs.astype(np.float32),
                      points=np.asarray(points, np.float32).reshape(n, NUM_POINTS, 2),
                      pose_rad=np.asarray(poses, np.float32).reshape(n, 3),
                      source=f"{n} {kind} (render_face, seed {seed}, {image_size}x{image_size} pictures, cut from "
                             f"the landmark box)")
