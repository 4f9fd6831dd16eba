"""Training losses: Wing loss on landmarks (in pixels of the crop, masked, per-point weights) and smooth-L1 on pose.
Each model's file puts its own loss together from these (PFPLD: both, eyes weighted; see pfpld/models/task.py).

The Wing paper's w and epsilon are pixel quantities; PFPLD's reference applied them to [0,1] coordinates,
where the loss never leaves its log branch. We scale the coordinates to crop pixels first.

That changes the balance with the pose term, so the reference's pose weight (1000 on smooth-L1 of radians) does
not carry over: measured on the demo's data (1,380 synthetic training faces, PFPLD-0.25, 20 epochs, cosine
schedule), weight 1000 made the pose term about 3/4 of the total and ended at 0.78 x the mean-shape NME with a
pose MAE of 11.4 deg; weight 10 ended at 0.59 x with 11.1 deg. The default is 10; `--pose-weight 1000` gives
the reference's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError

# HopeNet's regression on the softmax expectation beside the bins' CE (pfpld/pose_bins.py hopenet_loss): the paper's
# MSE in degrees^2 (the default) or smooth-L1 in bin widths.
BINS_REGRESSIONS = ("mse", "smooth_l1")


@dataclass(frozen=True)
class LossConfig:
    wing_w_px: float = 10.0
    wing_epsilon_px: float = 2.0
    eye_weight: float = 5.0
    landmark_weight: float = 1.0
    pose_weight: float = 10.0            # on smooth-L1 of radians (the reference: 1000, see above)
    pose_beta_rad: float = 1.0
    bins_alpha: float = 1.0              # HopeNet: weight of the regression on the expectation beside the bins' CE
    bins_regression: str = "mse"         # HopeNet: that regression, one of BINS_REGRESSIONS
    head: str = "arcface"                # facerec: the margin head (pfpld.heads.HEADS) and its scale and margin
    head_s: float | None = None          # (None: the head's default)
    head_m: float | None = None

    def __post_init__(self):
        if self.bins_regression not in BINS_REGRESSIONS:
            raise InputError(f"bins regression {self.bins_regression!r}: expected one of "
                             f"{', '.join(BINS_REGRESSIONS)}")


def wing(x: torch.Tensor, w: float, epsilon: float) -> torch.Tensor:
    """Element-wise Wing loss of an error x (same units as w and epsilon)."""
    c = w - w * math.log(1.0 + w / epsilon)
    ax = x.abs()
    return torch.where(ax < w, w * torch.log1p(ax / epsilon), ax - c)


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, crop_px: int,
                  cfg: LossConfig = LossConfig(), weights: torch.Tensor | None = None) -> torch.Tensor:
    """pred, target: (N, 2K) in [0,1]; mask (N, K) bool; weights (K,) per point (default 1). Mean over the
    weighted valid points of the per-point Wing loss summed over x and y. Faces with no valid point contribute
    nothing."""
    points = mask.shape[-1]
    err_px = (pred - target).view(-1, points, 2) * crop_px
    per_point = wing(err_px, cfg.wing_w_px, cfg.wing_epsilon_px).sum(-1)          # (N, K)
    w = mask.to(pred.dtype)
    if weights is not None:
        w = w * weights.to(device=pred.device, dtype=pred.dtype)
    denom = w.sum()
    if denom.item() == 0:
        return pred.sum() * 0.0
    return (per_point * w).sum() / denom


def pose_loss(pred: torch.Tensor, target: torch.Tensor, has_pose: torch.Tensor,
              cfg: LossConfig = LossConfig()) -> torch.Tensor:
    """Smooth-L1 on (yaw, pitch, roll) radians, averaged over the faces that carry a pose label."""
    sel = has_pose.bool()
    if not sel.any():
        return pred.sum() * 0.0
    return F.smooth_l1_loss(pred[sel], target[sel], beta=cfg.pose_beta_rad)
