"""Evaluation on a prepared dataset: NME / failure rate / AUC overall, per source and per WFLW attribute subset,
and pose MAE under the AFLW2000 protocol. Used by `pfpld eval` and by training's per-epoch validation.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data.dataset import PreparedFaces
from .data.record import WFLW_ATTRIBUTES
from .devices import model_device
from .errors import DatasetError
from .metrics import landmark_summary, nme_per_face, pose_mae_deg
from .progress import progress as progress_bar


@torch.no_grad()
def predict_dataset(model: torch.nn.Module, dataset: PreparedFaces, batch_size: int = 64, workers: int = 0,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(landmarks (N,K,2) in [0,1], pose (N,3) rad) for every face, in dataset order."""
    model.eval()
    device = model_device(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    lmk, pose = [], []
    for batch in progress_bar(loader, desc="eval", unit="batch", enabled=progress, leave=False):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        out_l, out_p = model(dataset.network_batch(batch)["image"])
        lmk.append(out_l.float().cpu().numpy())
        pose.append(out_p.float().cpu().numpy())
    landmarks, poses = np.concatenate(lmk), np.concatenate(pose)
    return landmarks.reshape(len(landmarks), -1, 2), poses


@dataclass
class EvalReport:
    landmarks: dict                      # overall summary
    by_source: dict = field(default_factory=dict)
    by_attribute: dict = field(default_factory=dict)
    pose: dict = field(default_factory=dict)
    pose_by_source: dict = field(default_factory=dict)
    # The trivial baseline on the same faces: every face predicted as the training split's mean shape and mean
    # pose. A model that does not beat it clearly has not learned.
    baseline: dict = field(default_factory=dict)         # {"landmarks": summary, "pose": MAE summary}

    def to_dict(self) -> dict:
        return {"landmarks": self.landmarks, "by_source": self.by_source, "by_attribute": self.by_attribute,
                "pose": self.pose, "pose_by_source": self.pose_by_source, "baseline": self.baseline}

    @property
    def nme_vs_mean_shape(self) -> float | None:
        """The model's NME as a multiple of the mean shape's on the same faces (below 1: better)."""
        base = self.baseline.get("landmarks", {}).get("nme")
        return self.landmarks["nme"] / base if base else None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True)

    def table(self) -> str:
        def pct(v):
            return "   -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"

        def landmark_row(name, s):
            auc = "    -   " if math.isnan(s["auc"]) else f"{s['auc']:8.4f}"
            return f"{name:<22} {s['n']:>6} {pct(s['nme']):>7} {pct(s['failure_rate']):>9} {auc}"

        def pose_row(name, p):
            return f"{name:<22} {p['n']:>6} {p['yaw']:7.2f} {p['pitch']:7.2f} {p['roll']:7.2f} {p['mean']:8.2f}"

        rows = [f"{'subset':<22} {'faces':>6} {'NME %':>7} {'FR@0.1 %':>9} {'AUC@0.1':>8}"]
        for name, s in [("all", self.landmarks)] + [(f"source:{k}", v) for k, v in self.by_source.items()] + \
                [(f"wflw:{k}", v) for k, v in self.by_attribute.items()]:
            rows.append(landmark_row(name, s))
        if self.baseline:
            rows.append(landmark_row("mean shape (baseline)", self.baseline["landmarks"]))
            rows.append(f"model NME = {self.nme_vs_mean_shape:.2f} x the mean shape's (the training split's mean "
                        f"landmarks predicted for every face)")
        rows.append("")
        rows.append(f"{'pose (|angle|<=99)':<22} {'faces':>6} {'yaw':>7} {'pitch':>7} {'roll':>7} {'MAE deg':>8}")
        for name, p in [("all", self.pose)] + [(f"source:{k}", v) for k, v in self.pose_by_source.items()]:
            rows.append(pose_row(name, p) if p.get("n", 0) else f"{name:<22} {0:>6}   (no pose labels)")
        if self.baseline.get("pose", {}).get("n", 0):
            rows.append(pose_row("mean pose (baseline)", self.baseline["pose"]))
        return "\n".join(rows)


def evaluate_predictions(dataset: PreparedFaces, landmarks: np.ndarray, pose: np.ndarray) -> EvalReport:
    nme = nme_per_face(landmarks, dataset.points, dataset.mask)
    sources = np.array(dataset.sources)
    report = EvalReport(landmarks=landmark_summary(nme))
    for src in sorted(set(dataset.sources)):
        report.by_source[src] = landmark_summary(nme[sources == src])
    if dataset.has_attributes.any():
        for k, attr in enumerate(WFLW_ATTRIBUTES):
            sel = dataset.has_attributes & (dataset.attributes[:, k] == 1)
            report.by_attribute[attr] = landmark_summary(nme[sel])
    hp = dataset.has_pose
    report.pose = pose_mae_deg(pose[hp], dataset.pose[hp])
    for src in sorted(set(sources[hp].tolist())):
        sel = hp & (sources == src)
        report.pose_by_source[src] = pose_mae_deg(pose[sel], dataset.pose[sel])
    return report


def evaluate_model(model: torch.nn.Module, data: Path, split: str = "test", contract=None, batch_size: int = 64,
                   workers: int = 0, progress: bool = False) -> EvalReport:
    """Evaluate on a prepared split. With `contract` (the checkpoint's), refuse data cropped differently."""
    dataset = PreparedFaces(data, split)
    if contract is not None and contract != dataset.contract:
        raise DatasetError(f"{Path(data) / 'index.jsonl'}: prepared with contract {dataset.contract.to_json()}, "
                           f"but the model expects {contract.to_json()}")
    lmk, pose = predict_dataset(model, dataset, batch_size, workers, progress)
    report = evaluate_predictions(dataset, lmk, pose)
    report.baseline = mean_shape_baseline(Path(data), dataset)
    return report


def mean_shape_baseline(data: Path, dataset: PreparedFaces) -> dict:
    """NME and pose MAE of predicting the training split's mean landmarks and mean pose for every face of
    `dataset` (empty when the prepared data has no training faces)."""
    try:
        train = PreparedFaces(data, "train")
    except DatasetError:
        return {}
    if not len(train):
        return {}
    mean_landmarks = train.mean_landmarks()
    landmarks = np.broadcast_to(mean_landmarks, (len(dataset),) + mean_landmarks.shape)
    mean_pose = train.pose[train.has_pose].mean(0) if train.has_pose.any() else np.zeros(3, np.float32)
    constant = evaluate_predictions(dataset, landmarks, np.broadcast_to(mean_pose, (len(dataset), 3)))
    return {"landmarks": constant.landmarks, "pose": constant.pose}
