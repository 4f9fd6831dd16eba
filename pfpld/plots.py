"""Pictures a person would rather look at than a CSV: training curves."""
from __future__ import annotations

import math
from pathlib import Path

from .fileio import atomic_path


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
        axes[0].plot(epochs, [h[f"train_{part}_loss"] for h in history], "o-", label=part.replace("_", " "))
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
