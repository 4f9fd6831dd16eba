"""Head-pose conventions of 300W-LP / AFLW2000 (FACTS section 3), in one place.

R = Rx(pitch) Ry(yaw) Rz(roll); a face projects as s R X + t in a y-up frame. Labels are ordered yaw, pitch,
roll (radians) everywhere in pfpld. Augmentation that rotates or mirrors a crop recomputes the angles
exactly through the rotation matrix instead of guessing which angle changes. The functions take one face's
numpy values or a batch (leading dimensions) of numpy arrays or torch tensors (pfpld.arrays).
"""
from __future__ import annotations

import numpy as np

from .arrays import namespace, stack_matrix
from .landmarks import flip_pose


def rotation_matrix(yaw, pitch, roll):
    """(..., 3, 3) R = Rx(pitch) Ry(yaw) Rz(roll) for angles in radians (scalars or same-shaped arrays)."""
    xp = namespace(yaw)
    cp, sp = xp.cos(pitch), xp.sin(pitch)
    cy, sy = xp.cos(yaw), xp.sin(yaw)
    cr, sr = xp.cos(roll), xp.sin(roll)
    one, zero = xp.ones_like(cp), xp.zeros_like(cp)
    rx = stack_matrix(xp, [[one, zero, zero], [zero, cp, sp], [zero, -sp, cp]])
    ry = stack_matrix(xp, [[cy, zero, -sy], [zero, one, zero], [sy, zero, cy]])
    rz = stack_matrix(xp, [[cr, sr, zero], [-sr, cr, zero], [zero, zero, one]])
    return rx @ ry @ rz


def matrix_to_angles(r):
    """Inverse of rotation_matrix: (..., 3) yaw, pitch, roll with yaw in [-pi/2, pi/2]."""
    xp = namespace(r)
    yaw = xp.arcsin(xp.clip(-r[..., 0, 2], -1.0, 1.0))
    roll = xp.arctan2(r[..., 0, 1], r[..., 0, 0])
    pitch = xp.arctan2(r[..., 1, 2], r[..., 2, 2])
    return xp.stack([yaw, pitch, roll], -1)


def pose_after_image_transform(pose_rad, linear_2x2):
    """Pose (..., 3) of the face after an image-space similarity transform (its 2x2 part (..., 2, 2), image
    coords, y down).

    A rotation of the image rotates the head about the camera axis: R' = Rz3(alpha) R in the y-up frame.
    A mirror (det < 0) is handled as the mirrored template (yaw and roll change sign) followed by the rest.
    """
    xp = namespace(pose_rad)
    a, pose = xp.asarray(linear_2x2, dtype=xp.float64), xp.asarray(pose_rad, dtype=xp.float64)
    mirrored = xp.linalg.det(a) < 0
    pose = xp.where(mirrored[..., None], flip_pose(pose), pose)
    # a @ diag(-1, 1) for the mirrored; then alpha of D a D with D = diag(1, -1), the image (y down) <->
    # projection frame (y up) change: its column 0 is (a00, -a10).
    a00 = xp.where(mirrored, -a[..., 0, 0], a[..., 0, 0])
    a10 = xp.where(mirrored, -a[..., 1, 0], a[..., 1, 0])
    alpha = xp.arctan2(-a10, a00)
    ca, sa = xp.cos(alpha), xp.sin(alpha)
    one, zero = xp.ones_like(ca), xp.zeros_like(ca)
    rz3 = stack_matrix(xp, [[ca, -sa, zero], [sa, ca, zero], [zero, zero, one]])
    return matrix_to_angles(rz3 @ rotation_matrix(pose[..., 0], pose[..., 1], pose[..., 2]))


def project_axes(pose_rad: np.ndarray, length: float = 1.0) -> np.ndarray:
    """Image-plane (y down) directions of the head's x, y, z axes, each scaled to `length`: (3, 2)."""
    r = rotation_matrix(*pose_rad)
    axes = r[:2, :].T * length                      # column j of R[:2] is where axis j lands (y up)
    axes[:, 1] *= -1.0
    return axes
