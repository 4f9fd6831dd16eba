"""HopeNet (Ruiz et al. 2018, "Fine-Grained Head Pose Estimation Without Keypoints"): a trunk, then one linear
head of 66 bin logits per angle (yaw, pitch, roll), and the decoded angles in degrees computed in the graph
(softmax expectation over the bin centres, pfpld/pose_bins.py), so every export carries them.

Head names follow the HopeNet code (fc_yaw, fc_pitch, fc_roll); its trunk keys sit under `backbone.` here.
Groundwork for issue 11: not yet in the model registry, the CLI, the exporter or the data pipeline.
"""
from __future__ import annotations

import torch
from torch import nn

from ..pose_bins import BIN_CENTRES_DEG, NUM_BINS, expectation_deg
from .backbones import build_backbone, check_backbone
from .spec import ModelSpec, OutputSpec

MIN_INPUT_SIZE = 64      # five stride-2 stages leave 2x2 before the global pooling


class HopeNet(nn.Module):
    def __init__(self, backbone: str = "resnet50", input_size: int = 224, width: float = 1.0,
                 zero_init_residual: bool = False):
        super().__init__()
        _check_input_size(input_size)
        self.input_size = input_size        # the trunk pools globally; the size is the contract's, kept for reading
        self.backbone = build_backbone(backbone, width, zero_init_residual)
        c = self.backbone.out_channels
        self.fc_yaw = nn.Linear(c, NUM_BINS)
        self.fc_pitch = nn.Linear(c, NUM_BINS)
        self.fc_roll = nn.Linear(c, NUM_BINS)
        # Not persistent: a constant of the decode, not a weight (state_dicts stay those of the reference).
        self.register_buffer("bin_centres_deg", torch.tensor(BIN_CENTRES_DEG, dtype=torch.float32).view(-1, 1),
                             persistent=False)

    def forward(self, x):
        features = self.backbone(x)
        yaw, pitch, roll = self.fc_yaw(features), self.fc_pitch(features), self.fc_roll(features)
        angles_deg = torch.cat([expectation_deg(logits, self.bin_centres_deg, keepdim=True)
                                for logits in (yaw, pitch, roll)], 1)
        return yaw, pitch, roll, angles_deg


def _check_input_size(input_size: int) -> None:
    if input_size < MIN_INPUT_SIZE:
        raise ValueError(f"HopeNet input_size {input_size}: expected at least {MIN_INPUT_SIZE}")


def hopenet_spec(backbone: str = "resnet50", input_size: int = 224, width: float = 1.0) -> ModelSpec:
    """The paper's model is the default (ResNet-50 at 224); boards: backbone="mobilenetv2", input_size=112."""
    check_backbone(backbone, width)
    _check_input_size(input_size)
    # Kind "" for now: OUTPUT_KINDS has no bin logits and its "pose" means radians. The registry session adds
    # proper kinds so that parity, int8 and bench judge these outputs in pose-MAE terms.
    bins = f"{NUM_BINS} bin logits of 3 degrees over [-99, 99)"
    return ModelSpec(
        name="hopenet",
        input_name="input",
        input_size=input_size,
        outputs=(
            OutputSpec("yaw_logits", (NUM_BINS,), f"yaw: {bins}", kind=""),
            OutputSpec("pitch_logits", (NUM_BINS,), f"pitch: {bins}", kind=""),
            OutputSpec("roll_logits", (NUM_BINS,), f"roll: {bins}", kind=""),
            OutputSpec("angles_deg", (3,), "yaw, pitch, roll in DEGREES (softmax expectation of the 66 bins)",
                       kind=""),
        ),
        options={"backbone": backbone, "input_size": input_size, "width": width},
    )
