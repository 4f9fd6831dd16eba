"""The 5-point landmark regressor (in the manner of OpenVINO's landmarks-regression-retail-0009, FACTS section 9):
a small face crop (48x48 by default, BGR), stacked 3x3 conv + BatchNorm + PReLU blocks with 2x2 max pooling, a
global depthwise convolution over the last feature map ("global depthwise pooling"), two 1x1 convolutions to 10
values and a sigmoid: the eye centres, the nose tip and the mouth corners as x, y in [0,1] of the crop.

Its labels come from the 98-point data (POINTS_FROM_98; the 68-point sources reach the 98 scheme first, with the
points used here all supervised): an eye centre is the midpoint of that eye's two corners (60/64 and 68/72),
which every source labels the same way (300W-LP's 6-point eyes and WFLW's 8-point eyes share their corners);
NME is normalised by the distance between the two eye centres.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..contract import PreprocessContract
from ..landmarks import FIVE_POINTS
from ..losses import LossConfig, landmark_loss
from .spec import ModelSpec, OutputSpec
from .task import ModelEntry, Targets, Task

POINT_NAMES = ("left eye centre", "right eye centre", "nose tip", "left mouth corner", "right mouth corner")
EYE_CENTRES = FIVE_POINTS.norm_points    # the NME normaliser: inter-ocular distance between the eye centres
STAGES = (16, 32, 64)           # channels of the conv + pool stages; one more conv keeps the last width


def points_from_98() -> np.ndarray:
    """(5, 98): each point the mean of its 98-point sources (pfpld.landmarks.FIVE_POINTS)."""
    return FIVE_POINTS.from_98


def conv_bn_prelu(inp: int, oup: int, kernel: int = 3, groups: int = 1, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, 1, padding, groups=groups, bias=False), nn.BatchNorm2d(oup),
                         nn.PReLU(oup))


class Landmark5(nn.Module):
    def __init__(self, input_size: int = 48, width: float = 1.0):
        super().__init__()
        _check_input_size(input_size)
        self.input_size = input_size
        channels = [max(4, int(c * width)) for c in STAGES]
        layers, inp = [], 3
        for c in channels:
            layers += [conv_bn_prelu(inp, c), nn.MaxPool2d(2, 2)]
            inp = c
        layers.append(conv_bn_prelu(inp, inp))
        self.features = nn.Sequential(*layers)
        side = input_size // 2 ** len(STAGES)
        # global depthwise pooling: one side x side depthwise kernel per channel, to 1x1
        self.gdconv = nn.Sequential(nn.Conv2d(inp, inp, side, 1, 0, groups=inp, bias=False), nn.BatchNorm2d(inp))
        hidden = 2 * inp
        self.head = nn.Sequential(nn.Conv2d(inp, hidden, 1), nn.PReLU(hidden),
                                  nn.Conv2d(hidden, 2 * len(POINT_NAMES), 1), nn.Sigmoid())

    @torch.no_grad()
    def init_landmark_head(self, mean_landmarks_98: torch.Tensor) -> None:
        """Start at the training set's mean shape, as PFPLD does (train.py calls this with the (98, 2) mean of the
        prepared labels): the last 1x1 conv's bias is the logit of the mean 5 points, its weights x 0.1. Without it
        the sigmoid starts every point near the crop centre and the first epochs only learn where faces are."""
        last = self.head[-2]
        mean5 = torch.as_tensor(points_from_98(), dtype=torch.float64) @ mean_landmarks_98.reshape(-1, 2).double()
        p = mean5.reshape(-1).clamp(1e-3, 1 - 1e-3)
        last.bias.copy_(torch.log(p / (1 - p)).to(last.bias.dtype))
        last.weight.mul_(0.1)

    def forward(self, x):
        return (self.head(self.gdconv(self.features(x))).flatten(1),)


def _check_input_size(input_size: int) -> None:
    step = 2 ** len(STAGES)
    if input_size < 2 * step or input_size % step:
        raise ValueError(f"landmark5 input_size {input_size}: expected a multiple of {step}, at least {2 * step}")


def landmark5_spec(input_size: int = 48, width: float = 1.0) -> ModelSpec:
    _check_input_size(input_size)
    return ModelSpec(
        name="landmark5",
        input_name="input",
        input_size=input_size,
        outputs=(OutputSpec("landmarks", (2 * len(POINT_NAMES),),
                            f"{len(POINT_NAMES)} points x0,y0,... in [0,1] of the square crop: "
                            f"{', '.join(POINT_NAMES)} (left = image left)", kind="landmarks",
                            norm_points=EYE_CENTRES),),
        options={"input_size": input_size, "width": width},
    )


def landmark5_loss(outputs, targets: Targets, crop_px: int, cfg: LossConfig):
    """Wing on the 5 points, in crop pixels."""
    (points,) = outputs
    lmk = landmark_loss(points, targets.points, targets.mask, crop_px, cfg)
    return lmk, {"landmark": lmk.detach()}


LANDMARK5 = ModelEntry(
    module=Landmark5,
    spec=landmark5_spec,
    contract=lambda spec: PreprocessContract(input_size=spec.input_size, color_order="BGR"),
    task=lambda spec: Task(loss=landmark5_loss, loss_parts=("landmark",), select_metric="nme",
                           points_from_98=points_from_98()),
    summary="5-point aligner (eye centres, nose tip, mouth corners): conv + BN + PReLU + max-pool stages, a global "
            "depthwise head, sigmoid outputs",
    demo_options={"input_size": 48, "width": 1.0},
)

__all__ = ["LANDMARK5", "Landmark5", "landmark5_spec", "points_from_98"]
