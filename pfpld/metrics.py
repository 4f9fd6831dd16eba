"""Evaluation metrics: inter-ocular NME, failure rate, AUC, and pose MAE under the AFLW2000 protocol.

Pure numpy on whole arrays so they are easy to check by hand. (The reference repo's "NME"/"ION" are a summed
196-vector norm and a batch-dependent sum; these follow the papers' definitions instead.)
"""
from __future__ import annotations

import numpy as np

from .landmarks import INTER_OCULAR

FAILURE_THRESHOLD = 0.1
POSE_PROTOCOL_DEG = 99.0


def nme_per_face(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                 norm_points: tuple[int, int] = INTER_OCULAR) -> np.ndarray:
    """pred, gt: (N,K,2) in any common unit; mask (N,K). Mean over valid points of ||pred - gt|| divided by
    the ground-truth distance between the two normalising points (WFLW: the outer eye corners 60 and 72; a model's
    spec names its own). NaN for faces without both points."""
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1, 2)
    gt = np.asarray(gt, dtype=np.float64).reshape(len(gt), -1, 2)
    if mask is None:
        mask = np.ones(gt.shape[:2], dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    i, j = norm_points
    norm = np.linalg.norm(gt[:, i] - gt[:, j], axis=1)
    err = np.linalg.norm(pred - gt, axis=2)
    n_valid = mask.sum(1)
    mean_err = np.where(n_valid > 0, (err * mask).sum(1) / np.maximum(n_valid, 1), np.nan)
    ok = mask[:, i] & mask[:, j] & (norm > 0)
    return np.where(ok, mean_err / np.where(norm > 0, norm, 1.0), np.nan)


def failure_rate(nme: np.ndarray, threshold: float = FAILURE_THRESHOLD) -> float:
    nme = np.asarray(nme, dtype=np.float64)
    return float(np.mean(nme > threshold)) if len(nme) else float("nan")


def auc(nme: np.ndarray, threshold: float = FAILURE_THRESHOLD) -> float:
    """Area under the cumulative error curve on [0, threshold], normalised to [0,1]. Exact: a face with error e
    is counted in the curve from e on, so it adds (threshold - e)/threshold when e < threshold."""
    nme = np.asarray(nme, dtype=np.float64)
    if not len(nme):
        return float("nan")
    return float(np.mean(np.clip(1.0 - nme / threshold, 0.0, None)))


def pose_protocol_mask(pose_rad: np.ndarray, limit_deg: float = POSE_PROTOCOL_DEG) -> np.ndarray:
    """Faces whose every |angle| <= 99 degrees (the AFLW2000 protocol)."""
    return np.all(np.abs(np.degrees(np.asarray(pose_rad))) <= limit_deg, axis=1)


def pose_mae_deg(pred_rad: np.ndarray, gt_rad: np.ndarray) -> dict[str, float]:
    """MAE in degrees per angle (yaw, pitch, roll) and their mean, on faces inside the protocol."""
    pred = np.asarray(pred_rad, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(gt_rad, dtype=np.float64).reshape(-1, 3)
    keep = pose_protocol_mask(gt)
    if not keep.any():
        return {"yaw": float("nan"), "pitch": float("nan"), "roll": float("nan"), "mean": float("nan"), "n": 0}
    err = np.abs(np.degrees(pred[keep] - gt[keep])).mean(0)
    return {"yaw": float(err[0]), "pitch": float(err[1]), "roll": float(err[2]), "mean": float(err.mean()),
            "n": int(keep.sum())}


def landmark_summary(nme: np.ndarray) -> dict[str, float]:
    nme = np.asarray(nme, dtype=np.float64)
    nme = nme[~np.isnan(nme)]
    return {"nme": float(nme.mean()) if len(nme) else float("nan"), "failure_rate": failure_rate(nme),
            "auc": auc(nme), "n": int(len(nme))}
