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

from .data.dataset import PreparedFaces, labelled_mean
from .data.record import WFLW_ATTRIBUTES
from .devices import model_device
from .errors import DatasetError
from .metrics import landmark_summary, nme_per_face, pose_mae_deg
from .models import model_task
from .models.spec import ModelSpec
from .progress import progress as progress_bar


@torch.no_grad()
def predict_dataset(model: torch.nn.Module, spec: ModelSpec, dataset: PreparedFaces, batch_size: int = 64,
                    workers: int = 0, progress: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(landmarks (N, K, 2) in [0,1] or None, pose (N, 3) rad or None) for every face, in dataset order, read
    from the model's outputs by their kinds (ModelSpec.decode)."""
    model.eval()
    device = model_device(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    lmk, pose = [], []
    for batch in progress_bar(loader, desc="eval", unit="batch", enabled=progress, leave=False):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        outputs = [o.float().cpu().numpy() for o in model(dataset.network_batch(batch)["image"])]
        out_l, out_p = spec.decode(outputs)
        lmk.append(out_l)
        pose.append(out_p)
    return (np.concatenate(lmk) if lmk and lmk[0] is not None else None,
            np.concatenate(pose).astype(np.float64) if pose and pose[0] is not None else None)


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
        return self.landmarks["nme"] / base if base and self.landmarks else None

    @property
    def pose_vs_mean_pose(self) -> float | None:
        """The model's mean pose MAE as a multiple of the mean pose's on the same faces (below 1: better)."""
        base = self.baseline.get("pose", {}).get("mean")
        return self.pose["mean"] / base if base and self.pose else None

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

        rows = []
        if self.landmarks:
            rows.append(f"{'subset':<22} {'faces':>6} {'NME %':>7} {'FR@0.1 %':>9} {'AUC@0.1':>8}")
            for name, s in [("all", self.landmarks)] + [(f"source:{k}", v) for k, v in self.by_source.items()] + \
                    [(f"wflw:{k}", v) for k, v in self.by_attribute.items()]:
                rows.append(landmark_row(name, s))
            if self.baseline.get("landmarks"):
                rows.append(landmark_row("mean shape (baseline)", self.baseline["landmarks"]))
                rows.append(f"model NME = {self.nme_vs_mean_shape:.2f} x the mean shape's (the training split's "
                            f"mean landmarks predicted for every face)")
        if self.pose:
            if rows:
                rows.append("")
            rows.append(f"{'pose (|angle|<=99)':<22} {'faces':>6} {'yaw':>7} {'pitch':>7} {'roll':>7} {'MAE deg':>8}")
            for name, p in [("all", self.pose)] + [(f"source:{k}", v) for k, v in self.pose_by_source.items()]:
                rows.append(pose_row(name, p) if p.get("n", 0) else f"{name:<22} {0:>6}   (no pose labels)")
            if self.baseline.get("pose", {}).get("n", 0):
                rows.append(pose_row("mean pose (baseline)", self.baseline["pose"]))
                if self.pose.get("n", 0):
                    rows.append(f"model pose MAE = {self.pose_vs_mean_pose:.2f} x the mean pose's (the training "
                                f"split's mean yaw, pitch, roll predicted for every face)")
        return "\n".join(rows)


def evaluate_predictions(dataset: PreparedFaces, spec: ModelSpec, landmarks: np.ndarray | None,
                         pose: np.ndarray | None) -> EvalReport:
    """Landmark NME (the model's own points, normalised by its spec's norm_points) overall, per source and per WFLW
    attribute, and pose MAE (AFLW2000 protocol) overall and per source, for whatever the model predicts."""
    sources = np.array(dataset.sources)
    report = EvalReport(landmarks={})
    if landmarks is not None:
        gt, mask = model_task(spec).map_points(dataset.points.astype(np.float64), dataset.mask)
        norm = spec.output_of_kind("landmarks").norm_points
        nme = nme_per_face(landmarks, gt, mask, norm_points=norm) if norm else \
            np.full(len(dataset), np.nan)
        report.landmarks = landmark_summary(nme)
        for src in sorted(set(dataset.sources)):
            report.by_source[src] = landmark_summary(nme[sources == src])
        if dataset.has_attributes.any():
            for k, attr in enumerate(WFLW_ATTRIBUTES):
                sel = dataset.has_attributes & (dataset.attributes[:, k] == 1)
                report.by_attribute[attr] = landmark_summary(nme[sel])
    if pose is not None:
        hp = dataset.has_pose
        report.pose = pose_mae_deg(pose[hp], dataset.pose[hp])
        for src in sorted(set(sources[hp].tolist())):
            sel = hp & (sources == src)
            report.pose_by_source[src] = pose_mae_deg(pose[sel], dataset.pose[sel])
    return report


def evaluate_model(model: torch.nn.Module, spec: ModelSpec, data: Path, split: str = "test", contract=None,
                   batch_size: int = 64, workers: int = 0, progress: bool = False) -> EvalReport:
    """Evaluate on a prepared split. With `contract` (the checkpoint's), refuse data cropped differently."""
    dataset = PreparedFaces(data, split)
    check_data_contract(dataset.contract, contract, Path(data), spec)
    lmk, pose = predict_dataset(model, spec, dataset, batch_size, workers, progress)
    report = evaluate_predictions(dataset, spec, lmk, pose)
    report.baseline = mean_shape_baseline(Path(data), dataset, spec, lmk is not None, pose is not None)
    return report


def check_data_contract(data_contract, model_contract, data: Path, spec: ModelSpec) -> None:
    """Refuse faces prepared with another contract than the model's (another crop, size or normalisation)."""
    if model_contract is not None and model_contract != data_contract:
        raise DatasetError(f"{data / 'index.jsonl'}: prepared with contract {data_contract.to_json()}, but model "
                           f"{spec.name} expects {model_contract.to_json()} (run `pfpld prepare-data --model "
                           f"{spec.name}`)")


def mean_shape_baseline(data: Path, dataset: PreparedFaces, spec: ModelSpec, landmarks: bool = True,
                        pose: bool = True) -> dict:
    """NME and pose MAE of predicting the training split's mean landmarks (the model's points) and mean pose for
    every face of `dataset` (empty when the prepared data has no training faces)."""
    try:
        train = PreparedFaces(data, "train")
    except DatasetError:
        return {}
    if not len(train):
        return {}
    n = len(dataset)
    mean_landmarks = mean_points(train, spec) if landmarks else None
    mean_pose = train.pose[train.has_pose].mean(0) if train.has_pose.any() else np.zeros(3, np.float32)
    constant = evaluate_predictions(
        dataset, spec,
        np.broadcast_to(mean_landmarks, (n,) + mean_landmarks.shape) if landmarks else None,
        np.broadcast_to(mean_pose.astype(np.float64), (n, 3)) if pose else None)
    return {"landmarks": constant.landmarks, "pose": constant.pose}


def mean_points(dataset: PreparedFaces, spec: ModelSpec) -> np.ndarray:
    """(K, 2) the mean of the labelled points of the model's scheme (0.5 where a point is never labelled)."""
    return labelled_mean(*model_task(spec).map_points(dataset.points.astype(np.float64), dataset.mask))
