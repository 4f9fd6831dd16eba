"""What a model learns and how its epochs are judged: the part of a registry entry that training reads.

Prepared folders store every face with the 98-point WFLW labels (and a mask) and, where known, a pose. A model
states how its own targets come from those (`points_from_98`: each of its K points as a fixed weighted sum of the
98, so augmentation, mirroring and the Mirror98 remap happen once, on the 98, before the map), which faces it
can learn from, its loss on the outputs in spec order, and the validation number that picks best.pt. What a
model *outputs* is read from its spec's output kinds (pfpld/models/spec.py), never from here: evaluation,
prediction, parity, the int8 check and the C++ decoder work from those.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..landmarks import NUM_POINTS, map_points_98

# Validation numbers a task may choose best.pt on (lower is better): the overall landmark NME, the mean pose MAE in
# degrees under the AFLW2000 protocol, or the identification error on held-out images of the training identities.
SELECT_METRICS = ("nme", "pose_mae_deg", "id_error")


@dataclass(frozen=True)
class Targets:
    """A batch's training targets in the model's own terms: points (B, 2K) in [0,1] of the crop, mask (B, K),
    pose (B, 3) radians, has_pose (B,), identity (B,) class indexes of an identity-labelled set (else None)."""
    points: Any
    mask: Any
    pose: Any
    has_pose: Any
    identity: Any = None


# loss(outputs in spec order, targets, crop size in pixels, LossConfig) -> (total, {part name: detached value});
# a task with a training head takes it as a fifth argument (head=...)
LossFn = Callable[..., tuple[Any, dict[str, Any]]]
# head(spec, number of identities, LossConfig) -> the training-only module the loss runs the outputs through
HeadFn = Callable[[Any, int, Any], Any]


@dataclass(frozen=True)
class Task:
    loss: LossFn
    loss_parts: tuple[str, ...]             # the names of the parts `loss` returns, logged per epoch
    select_metric: str                      # one of SELECT_METRICS
    points_from_98: np.ndarray | None = None    # (K, 98) weights, rows summing to 1; None: no landmarks
    pose_only: bool = False                 # train only on faces with a pose label inside the +-99 degree range
    head: HeadFn | None = None              # identity tasks: the margin head, trained with the model, never exported
    augment: Any = None                     # its AugmentConfig (None: the reference's, pfpld.data.augment)
    # the parameter-name prefixes of its output layers and their learning rate as a multiple of the trunk's (the
    # default of TrainConfig.output_lr_factor; the model's file says why when it is not 1)
    output_layers: tuple[str, ...] = ()
    output_lr_factor: float = 1.0

    def __post_init__(self):
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric {self.select_metric!r}: expected one of {SELECT_METRICS}")
        if self.output_lr_factor <= 0 or (self.output_lr_factor != 1.0 and not self.output_layers):
            raise ValueError(f"output_lr_factor {self.output_lr_factor}: expected > 0, and output_layers to apply to")
        if self.points_from_98 is not None:
            w = np.asarray(self.points_from_98)
            if w.ndim != 2 or w.shape[1] != NUM_POINTS or not np.allclose(w.sum(1), 1.0):
                raise ValueError(f"points_from_98 {w.shape}: expected (K, {NUM_POINTS}) rows that sum to 1")

    @property
    def identities(self) -> bool:
        """Whether the task learns from identity labels (its data is an identity-labelled set)."""
        return self.head is not None

    @property
    def num_points(self) -> int:
        return 0 if self.points_from_98 is None else len(self.points_from_98)

    def map_points(self, points98, mask98):
        """(..., 98, 2) points and (..., 98) mask, numpy or torch -> the model's (..., K, 2) points and (..., K)
        mask: a point is valid when every 98-point it is made of is."""
        return map_points_98(self.points_from_98, points98, mask98)

    def targets(self, points98, mask98, pose, has_pose, identity=None) -> Targets:
        """A batch's targets from its (augmented) 98-point labels: points (B, 196) or (B, 98, 2)."""
        if self.points_from_98 is None:
            return Targets(points=None, mask=None, pose=pose, has_pose=has_pose, identity=identity)
        points, mask = self.map_points(points98.reshape(points98.shape[0], NUM_POINTS, 2), mask98)
        return Targets(points=points.reshape(points.shape[0], -1), mask=mask, pose=pose, has_pose=has_pose,
                       identity=identity)


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry (pfpld/models/__init__.py): each model file defines its own."""
    module: Callable[..., Any]              # the nn.Module class, built with spec.options
    spec: Callable[..., Any]                # options -> ModelSpec
    contract: Callable[[Any], Any]          # ModelSpec -> PreprocessContract: how a face becomes its input
    task: Callable[[Any], Task]             # ModelSpec -> Task
    summary: str                            # one line for `pfpld models` and the README
    demo_options: dict                      # what `pfpld demo --model NAME` trains (small enough for 2 cores)
    # the demo recipe's fields this model changes (pfpld_app/demo.py DemoRecipe: n, epochs, batch_size, lr, ...;
    # "loss": LossConfig fields), with the measurement that chose them in the model's file
    demo_recipe: dict = field(default_factory=dict)
