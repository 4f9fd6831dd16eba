"""HopeNet's pose bins: 66 bins of 3 degrees over [-99, 99), the labels its classification heads learn, the
softmax expectation that decodes them, and its loss (per angle CrossEntropy + alpha x the paper's MSE in degrees^2
on the expectation, or smooth-L1 in bin widths on request; hopenet_loss).

numpy for data preparation and evaluation, torch for training and for the module's in-graph decode; each
function takes either. Angles are in DEGREES here, as in the HopeNet code; the rest of the project speaks
radians (pfpld/pose.py): convert at the edges. Order yaw, pitch, roll.

Bin labels follow the HopeNet code: label = np.digitize(angle, BIN_EDGES_DEG) - 1, so bin k is the half-open
[-99 + 3k, -96 + 3k): an angle on an edge belongs to the bin above it (-96 -> 1), -99 -> 0, 98.9 -> 65. Exactly
99.0 is the closing edge: the raw rule gives 66, which is no bin (CrossEntropy fails on it), although the
|angle| <= 99 filter keeps such a face; we close the last bin, [96, 99], so 99.0 -> 65. Angles outside
[-99, 99] (-1 or 66 by the raw rule) are refused: filter them first (keep_for_training).

Decoding uses the bin CENTRES (-97.5, -94.5, ..., 97.5). The HopeNet code decodes with idx * 3 - 99, the
LEFT edge of each bin: exactly 1.5 degrees less than the centres for any softmax (a one-hot on the bin
[0, 3) reads 0, not 1.5); a net trained with that decode in its MSE term learns to lean towards the bin above.
To reproduce the numbers of a released HopeNet checkpoint, decode with values_deg=BIN_EDGES_DEG[:-1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .arrays import namespace
from .losses import BINS_REGRESSIONS
from .metrics import POSE_PROTOCOL_DEG

BIN_EDGES_DEG = np.arange(-99, 102, 3).astype(np.float64)            # 67 edges: -99, -96, ..., 99
NUM_BINS = len(BIN_EDGES_DEG) - 1                                     # 66
BIN_CENTRES_DEG = (BIN_EDGES_DEG[:-1] + BIN_EDGES_DEG[1:]) / 2.0      # -97.5, ..., 97.5
BIN_WIDTH_DEG = float(BIN_EDGES_DEG[1] - BIN_EDGES_DEG[0])            # 3
LIMIT_DEG = POSE_PROTOCOL_DEG                                         # 99: the bins' range and AFLW2000's


def keep_for_training(angles_deg):
    """(..., 3) yaw, pitch, roll in degrees -> (...) bool: True where every |angle| <= 99 (NaN is dropped).
    HopeNet filters the other faces from training: they have no bin, so CrossEntropy would break."""
    xp = namespace(angles_deg)
    return (xp.abs(angles_deg) <= LIMIT_DEG).all(-1)


def bin_labels(angles_deg):
    """Angles in degrees (any shape, all within [-99, 99]) -> int64 bin indices 0..65 of the same shape:
    np.digitize(angle, BIN_EDGES_DEG) - 1, with exactly 99.0 in the last bin (see the module docstring)."""
    xp = namespace(angles_deg)
    inside = xp.abs(angles_deg) <= LIMIT_DEG
    if not bool(inside.all()):
        flat = np.asarray(angles_deg if xp is np else angles_deg.detach().cpu(), dtype=np.float64).reshape(-1)
        raise ValueError(f"angle {flat[~(np.abs(flat) <= LIMIT_DEG)][0]:g} degrees is outside [-{LIMIT_DEG:g}, "
                         f"{LIMIT_DEG:g}] and has no bin: filter the faces with keep_for_training first")
    if xp is np:
        labels = np.digitize(angles_deg, BIN_EDGES_DEG) - 1
    else:     # bucketize(right=True) is np.digitize's rule: edges[i-1] <= x < edges[i]
        edges = xp.as_tensor(BIN_EDGES_DEG, dtype=angles_deg.dtype, device=angles_deg.device)
        labels = xp.bucketize(angles_deg, edges, right=True) - 1
    return xp.where(labels > NUM_BINS - 1, NUM_BINS - 1, labels)


def expectation_deg(logits, values_deg=BIN_CENTRES_DEG, keepdim: bool = False):
    """(..., 66) bin logits -> (...) the softmax expectation sum_k p_k * values_deg[k], in degrees ((..., 1)
    with keepdim). Written as a product with a (66, 1) matrix so that an export carries it as Softmax + MatMul
    (a Caffe InnerProduct); torch in, torch out (values_deg may be a tensor: a module's (66, 1) buffer)."""
    xp = namespace(logits)
    if xp is np:
        z = np.asarray(logits, dtype=np.float64)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        column = np.asarray(values_deg, dtype=np.float64).reshape(-1, 1)
    else:
        p = xp.softmax(logits, -1)
        column = values_deg
        if not isinstance(column, torch.Tensor) or column.dtype != logits.dtype or column.dim() != 2:
            # (not for a module's (66, 1) buffer: then an export traces nothing but Softmax and MatMul)
            column = torch.as_tensor(values_deg, dtype=logits.dtype, device=logits.device).reshape(-1, 1)
    e = p @ column
    return e if keepdim else e[..., 0]


@dataclass(frozen=True)
class PoseBinLoss:
    total: torch.Tensor             # sum over the angles of cross_entropy + alpha * the regression, differentiable
    cross_entropy: torch.Tensor     # (3,) per angle (yaw, pitch, roll), batch mean, detached
    smooth_l1_bins: torch.Tensor    # (3,) per angle, smooth-L1 of the expectation's error in bin widths, detached
    mse_deg2: torch.Tensor          # (3,) per angle, squared degrees, batch mean, detached (the paper's term)


def hopenet_loss(yaw_logits, pitch_logits, roll_logits, angles_deg, alpha: float = 1.0, regression: str = "mse",
                 expected_deg=None) -> PoseBinLoss:
    """HopeNet's loss: for each angle, CrossEntropy of its logits (N,66) against the bin label of the true angle,
    plus alpha x a regression of the softmax expectation on the true angle. angles_deg (N,3) must pass
    keep_for_training. The paper uses alpha 1 or 2.

    regression "mse" (the default, the paper's): the MSE of the expectation in degrees^2. "smooth_l1": smooth-L1 of
    the expectation's error in bin widths (beta one bin: e^2 / 2 within one bin of the true angle, |e| - 1/2
    beyond), whose pull on the expectation is bounded whatever the error. Both are measured and returned whichever
    one the total uses.

    expected_deg (N,3): the expectation the model decoded (its own bin values, e.g. a released model's left edges,
    pfpld/models/hopenet.py); None decodes the logits at the bin centres.

    The MSE's gradient grows with the error: at alpha 1 it was 360 times the CE's in the logits at the start of a
    training from scratch (uniform softmax, errors of tens of degrees) and 40-50 times later. Trained that way with
    every layer at one learning rate, the bin layers outran the trunk and their softmax saturated on wrong bins
    (mean top probability 0.8, the CE rising from 3 x ln 66 = 12.6 to 20-35 nats) where the expectation's gradient
    p_k (c_k - E) vanishes. HopeNet's training therefore runs its bin layers at 0.1 x the learning rate
    (pfpld/models/hopenet.py, the measurements there)."""
    if regression not in BINS_REGRESSIONS:
        raise ValueError(f"HopeNet regression {regression!r}: expected one of {', '.join(BINS_REGRESSIONS)}")
    logits = torch.stack([yaw_logits, pitch_logits, roll_logits], 1)         # (N, 3, 66)
    if logits.shape[-1] != NUM_BINS or angles_deg.shape != logits.shape[:2]:
        raise ValueError(f"logits {tuple(yaw_logits.shape)} x3 and angles {tuple(angles_deg.shape)}: expected "
                         f"(N, {NUM_BINS}) x3 and (N, 3)")
    if expected_deg is not None and expected_deg.shape != angles_deg.shape:
        raise ValueError(f"decoded angles {tuple(expected_deg.shape)}: expected {tuple(angles_deg.shape)}")
    angles = angles_deg.to(logits.dtype)
    labels = bin_labels(angles)
    ce = F.cross_entropy(logits.reshape(-1, NUM_BINS), labels.reshape(-1), reduction="none")
    ce = ce.view(-1, 3).mean(0)
    expected = expectation_deg(logits) if expected_deg is None else expected_deg.to(logits.dtype)
    error_deg = expected - angles
    error_bins = error_deg / BIN_WIDTH_DEG
    smooth_l1 = F.smooth_l1_loss(error_bins, torch.zeros_like(error_bins), beta=1.0, reduction="none").mean(0)
    mse = (error_deg ** 2).mean(0)
    total = ce.sum() + alpha * (smooth_l1 if regression == "smooth_l1" else mse).sum()
    return PoseBinLoss(total=total, cross_entropy=ce.detach(), smooth_l1_bins=smooth_l1.detach(),
                       mse_deg2=mse.detach())
