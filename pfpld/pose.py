"""Head-pose conventions of 300W-LP / AFLW2000 (FACTS section 3), in one place.

R = Rx(pitch) Ry(yaw) Rz(roll); a face projects as s R X + t in a y-up frame. Labels are ordered yaw, pitch,
roll (radians) everywhere in pfpld. Augmentation that rotates or mirrors a crop recomputes the angles
exactly through the rotation matrix instead of guessing which angle changes.
"""
from __future__ import annotations

import numpy as np

from .landmarks import flip_pose


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    cr, sr = np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cr, sr, 0], [-sr, cr, 0], [0, 0, 1]])
    return rx @ ry @ rz


def matrix_to_angles(r: np.ndarray) -> np.ndarray:
    """Inverse of rotation_matrix: (yaw, pitch, roll) with yaw in [-pi/2, pi/2]."""
    yaw = np.arcsin(np.clip(-r[0, 2], -1.0, 1.0))
    roll = np.arctan2(r[0, 1], r[0, 0])
    pitch = np.arctan2(r[1, 2], r[2, 2])
    return np.array([yaw, pitch, roll])


def pose_after_image_transform(pose_rad: np.ndarray, linear_2x2: np.ndarray) -> np.ndarray:
    """Pose of the face after an image-space similarity transform (its 2x2 part, image coords, y down).

    A rotation of the image rotates the head about the camera axis: R' = Rz3(alpha) R in the y-up frame.
    A mirror (det < 0) is handled as the mirrored template (yaw and roll change sign) followed by the rest.
    """
    a = np.asarray(linear_2x2, dtype=np.float64)
    pose = np.asarray(pose_rad, dtype=np.float64)
    if np.linalg.det(a) < 0:
        pose = flip_pose(pose)
        a = a @ np.diag([-1.0, 1.0])
    d = np.diag([1.0, -1.0])                        # image (y down) <-> projection frame (y up)
    a_up = d @ a @ d
    alpha = np.arctan2(a_up[1, 0], a_up[0, 0])
    ca, sa = np.cos(alpha), np.sin(alpha)
    rz3 = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    return matrix_to_angles(rz3 @ rotation_matrix(*pose))


def project_axes(pose_rad: np.ndarray, length: float = 1.0) -> np.ndarray:
    """Image-plane (y down) directions of the head's x, y, z axes, each scaled to `length`: (3, 2)."""
    r = rotation_matrix(*pose_rad)
    axes = r[:2, :].T * length                      # column j of R[:2] is where axis j lands (y up)
    axes[:, 1] *= -1.0
    return axes
