"""Pictures a person would rather look at than a CSV: training curves, the ROC of face verification."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from .fileio import atomic_path

if TYPE_CHECKING:
    from .verification import VerificationReport


def plot_training_curves(history: list[dict], path: Path, loss_parts: tuple[str, ...] = ()) -> None:
    """The loss and its parts, and the validation NME / pose MAE per epoch, written atomically as a PNG."""
    # A bare Figure, not pyplot: pyplot would need the process-wide backend switched (matplotlib.use), which
    # would change the plotting of whoever calls training from a notebook.
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="total")
    for part in loss_parts:
        # NaN in the epochs of a resumed run from before the task logged that part
        axes[0].plot(epochs, [h.get(f"train_{part}_loss", math.nan) for h in history], "o-",
                     label=part.replace("_", " "))
    axes[0].set_title("training loss")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    nme = [h["val_nme"] for h in history]
    if any(not math.isnan(v) for v in nme):
        axes[1].plot(epochs, [100 * v for v in nme], "o-", color="tab:green")
    else:
        message = "no validation faces\n(--val-fraction 0)" if all(math.isnan(p) for p in
                                                                   (h["val_pose_mae_deg"] for h in history)) \
            else "the model predicts no landmarks"
        axes[1].text(0.5, 0.5, message, ha="center", va="center", transform=axes[1].transAxes)
    axes[1].set_title("validation NME (%)")
    pose = [h["val_pose_mae_deg"] for h in history]
    if any(not math.isnan(p) for p in pose):
        axes[2].plot(epochs, pose, "o-", color="tab:red")
    elif any(not math.isnan(v) for v in nme):
        axes[2].text(0.5, 0.5, "the model predicts no pose", ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set_title("validation pose MAE (deg)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")


def plot_roc(report: VerificationReport, path: Path, label: str = "model",
             baseline: VerificationReport | None = None, baseline_label: str = "raw pixels") -> None:
    """The verification ROC (TAR against FAR on a log axis) with TAR at the report's FAR marked, and optionally a
    baseline's curve beside it, written atomically as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    reports = [(report, label, "tab:blue")] + ([(baseline, baseline_label, "tab:grey")] if baseline else [])
    # a log axis has no FAR 0: the curve starts at the smallest FAR these pairs can show (1 / different pairs),
    # with the TAR reached at FAR 0
    left = min(min(r.far_point.far_target, 1.0 / r.n_different) for r, _, _ in reports) / 2
    for r, name, colour in reports:
        far, tar = r.roc_far, r.roc_tar
        shown = far > 0
        x = [left] + far[shown].tolist()
        y = [float(tar[~shown].max())] + tar[shown].tolist()
        ax.plot(x, y, color=colour, label=f"{name}: {100 * r.kfold.mean:.2f} % ({len(r.kfold.fold_ids)}-fold), "
                                          f"AUC {r.auc:.4f}")
        p = r.far_point
        ax.plot([p.far_target], [p.tar], "o", color=colour, markeredgecolor="black",
                label=f"TAR {100 * p.tar:.2f} % @ FAR {p.far_target:g}" + ("" if p.resolved else " (FAR 0: few pairs)"))
    ax.axvline(report.far_point.far_target, color="black", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(left, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("false accept rate (different pairs accepted)")
    ax.set_ylabel("true accept rate (same pairs accepted)")
    ax.set_title(f"verification ROC: {report.n_same} same / {report.n_different} different pairs")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
