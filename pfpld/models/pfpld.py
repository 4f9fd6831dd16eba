"""PFPLD: PFLD's MobileNetV2-style landmark network plus a pose branch fed by the landmark features.

Module names follow the reference implementation (conv1, conv3_1, block3_2, ..., conv4_aux, fc2_aux) so a
released PFPLD state_dict loads with strict=True; the reference's two unused layers (bn8, fc_aux) are kept for
that reason. Pool kernels are derived from the input size instead of being hard-coded to 112.
"""
from __future__ import annotations

import torch
from torch import nn

from ..contract import PreprocessContract
from ..landmarks import EYE_POINTS, INTER_OCULAR, NUM_POINTS, WFLW_98
from ..losses import LossConfig, landmark_loss, pose_loss
from .spec import ModelSpec, OutputSpec
from .task import ModelEntry, Targets, Task


def conv_bn(inp: int, oup: int, kernel: int, stride: int, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 project (no activation after the projection)."""

    def __init__(self, inp: int, oup: int, stride: int, use_res_connect: bool, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = use_res_connect
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _ch(c: int, width: float) -> int:
    return max(1, int(c * width))


class PFPLD(nn.Module):
    def __init__(self, width: float = 1.0, input_size: int = 112):
        super().__init__()
        if input_size % 16 != 0:
            raise ValueError(f"PFPLD input_size {input_size}: expected a multiple of 16 (four stride-2 stages)")
        self.width = width
        self.input_size = input_size
        c64, c128, c16, c32 = _ch(64, width), _ch(128, width), _ch(16, width), _ch(32, width)
        s8, s16 = input_size // 8, input_size // 16      # 14, 7 at 112

        self.conv1 = nn.Conv2d(3, c64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c64)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c64, c64, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c64)

        self.conv3_1 = InvertedResidual(c64, c64, 2, False, 2)
        self.block3_2 = InvertedResidual(c64, c64, 1, True, 2)
        self.block3_3 = InvertedResidual(c64, c64, 1, True, 2)
        self.block3_4 = InvertedResidual(c64, c64, 1, True, 2)
        self.block3_5 = InvertedResidual(c64, c64, 1, True, 2)

        self.conv4_1 = InvertedResidual(c64, c128, 2, False, 2)
        self.conv5_1 = InvertedResidual(c128, c128, 1, False, 4)
        self.block5_2 = InvertedResidual(c128, c128, 1, True, 4)
        self.block5_3 = InvertedResidual(c128, c128, 1, True, 4)
        self.block5_4 = InvertedResidual(c128, c128, 1, True, 4)
        self.block5_5 = InvertedResidual(c128, c128, 1, True, 4)
        self.block5_6 = InvertedResidual(c128, c128, 1, True, 4)
        self.conv6_1 = InvertedResidual(c128, c16, 1, False, 2)

        self.conv7 = conv_bn(c16, c32, 3, 2)
        self.conv8 = nn.Conv2d(c32, c128, s16, 1, 0)      # 7x7 at 112: a "global" conv with bias
        self.bn8 = nn.BatchNorm2d(c128)                    # unused by forward (reference layout)
        self.avg_pool1 = nn.AvgPool2d(s8)                  # 14 at 112
        self.avg_pool2 = nn.AvgPool2d(s16)                 # 7 at 112

        features = c16 + c32 + c128                        # 176 at width 1.0
        self.fc = nn.Linear(features, 196)
        self.fc_aux = nn.Linear(features, 3)               # unused by forward (reference layout)

        # Pose branch on out1 (c64 x s4 x s4).
        self.conv1_aux = conv_bn(c64, c128, 3, 2)
        self.conv2_aux = conv_bn(c128, c128, 3, 1)
        self.conv3_aux = conv_bn(c128, c32, 3, 2)
        self.conv4_aux = conv_bn(c32, c128, 7, 1)          # pad 1: s16 -> s16 - 4 (3x3 at 112)
        aux_side = s16 - 4
        if aux_side < 1:
            raise ValueError(f"PFPLD input_size {input_size}: the pose branch needs at least 80")
        self.max_pool1 = nn.MaxPool2d(aux_side)
        self.fc1_aux = nn.Linear(c128, 32)
        self.fc2_aux = nn.Linear(32 + features, 3)

    @torch.no_grad()
    def init_landmark_head(self, mean_landmarks: torch.Tensor) -> None:
        """Start the landmark regressor at the training set's mean shape (bias) with small weights, so early
        training refines a face instead of first learning where faces are. Not part of the reference; only the
        initial values change, never the architecture or the state_dict layout."""
        self.fc.bias.copy_(mean_landmarks.reshape(-1))
        self.fc.weight.mul_(0.1)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.conv3_1(x)
        x = self.block3_2(x)
        x = self.block3_3(x)
        x = self.block3_4(x)
        out1 = self.block3_5(x)

        x = self.conv4_1(out1)
        x = self.conv5_1(x)
        x = self.block5_2(x)
        x = self.block5_3(x)
        x = self.block5_4(x)
        x = self.block5_5(x)
        x = self.block5_6(x)
        x = self.conv6_1(x)
        x1 = torch.flatten(self.avg_pool1(x), 1)
        x = self.conv7(x)
        x2 = torch.flatten(self.avg_pool2(x), 1)
        x3 = torch.flatten(self.relu(self.conv8(x)), 1)
        multi_scale = torch.cat([x1, x2, x3], 1)
        landmarks = self.fc(multi_scale)

        a = self.conv1_aux(out1)
        a = self.conv2_aux(a)
        a = self.conv3_aux(a)
        a = self.conv4_aux(a)
        a = torch.flatten(self.max_pool1(a), 1)
        a = self.fc1_aux(a)
        pose = self.fc2_aux(torch.cat([a, multi_scale], 1))
        return landmarks, pose


def pfpld_spec(width: float = 1.0, input_size: int = 112) -> ModelSpec:
    return ModelSpec(
        name="pfpld",
        input_name="input",
        input_size=input_size,
        outputs=(
            OutputSpec("landmarks", (2 * NUM_POINTS,), f"{NUM_POINTS} points x0,y0,x1,y1,... in [0,1] of the square "
                       f"crop, WFLW order", kind="landmarks", norm_points=INTER_OCULAR),
            OutputSpec("pose", (3,), "yaw, pitch, roll in radians (300W-LP Pose_Para convention)", kind="pose"),
        ),
        options={"width": width, "input_size": input_size},
    )


# --- registry entry -------------------------------------------------------------------------------------------

def pfpld_loss(outputs, targets: Targets, crop_px: int, cfg: LossConfig):
    """Wing on the 98 points (the eyes weighted cfg.eye_weight) plus cfg.pose_weight x smooth-L1 on the pose."""
    landmarks, pose = outputs
    weights = torch.ones(NUM_POINTS)
    weights[torch.as_tensor(EYE_POINTS)] = cfg.eye_weight
    lmk = landmark_loss(landmarks, targets.points, targets.mask, crop_px, cfg, weights)
    pos = pose_loss(pose, targets.pose, targets.has_pose, cfg)
    return cfg.landmark_weight * lmk + cfg.pose_weight * pos, {"landmark": lmk.detach(), "pose": pos.detach()}


PFPLD_ENTRY = ModelEntry(
    module=PFPLD,
    spec=pfpld_spec,
    contract=lambda spec: PreprocessContract(input_size=spec.input_size),
    task=lambda spec: Task(loss=pfpld_loss, loss_parts=("landmark", "pose"), select_metric="nme",
                           points_from_98=WFLW_98.from_98),
    summary="PFLD's MobileNetV2-style landmark network with a pose branch: 98 WFLW points and yaw/pitch/roll",
    demo_options={"width": 0.25},
)
