"""Face recognition: a MobileFaceNet-style network from an aligned face to a 512-d embedding (FACTS section 9).

MobileFaceNet (Chen et al. 2018): a 3x3 stride-2 convolution and a 3x3 depthwise convolution, five stages of
MobileNetV2 bottlenecks (expansion 2 or 4, PReLU, linear projection, a residual where shape allows), a 1x1
convolution to 512 channels, a "global depthwise convolution" over the last 7x7 map (linear, as the paper says)
and a linear 1x1 convolution with BatchNorm to the embedding. Every op is a Caffe 1.0 / ncnn / NNIE layer
(Convolution, BatchNorm, PReLU, Eltwise SUM); the paper's embedding is 128-d, insightface's and ours 512.

What is exported is this embedding network alone. Identities are learnt through a margin head (pfpld/heads.py:
ArcFace, CosFace, SphereFace) that exists only in training: the task builds it (Task.head) with the number of
identities of the prepared data, the loss is the head's cross-entropy, and the checkpoint keeps the head's weights
beside the model's for --resume, never in the model's state_dict.

The input is an aligned face (the crop rule's box_source "aligned": the whole image, resized to the input size),
as ImageFolder training sets and aligned LFW are distributed; pfpld.align brings any face with five points to that
alignment (the ArcFace template). Normalisation is insightface's: RGB, (pixel - 127.5) / 128.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..contract import ALIGNED_CROP, PreprocessContract
from ..data.augment import AugmentConfig
from ..heads import build_head
from .spec import ModelSpec, OutputSpec
from .task import ModelEntry, Targets, Task

# (expansion, output channels, repeats, stride of the first): the paper's table 1
STAGES = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
STEM_CHANNELS = 64
LAST_CHANNELS = 512
DOWNSAMPLING = 16               # the stem and three strided stages


def conv_bn(inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1, prelu: bool = True,
            padding: int | None = None) -> nn.Sequential:
    pad = kernel // 2 if padding is None else padding
    layers = [nn.Conv2d(inp, oup, kernel, stride, pad, groups=groups, bias=False), nn.BatchNorm2d(oup)]
    if prelu:
        layers.append(nn.PReLU(oup))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """1x1 expansion + PReLU, 3x3 depthwise (carries the stride) + PReLU, linear 1x1 projection; the input is added
    back when the stride is 1 and the channels match."""

    def __init__(self, inp: int, oup: int, stride: int, expansion: int):
        super().__init__()
        hidden = inp * expansion
        self.residual = stride == 1 and inp == oup
        self.conv = nn.Sequential(conv_bn(inp, hidden, 1), conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  conv_bn(hidden, oup, 1, prelu=False))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


def _channels(c: int, width: float) -> int:
    return max(8, int(round(c * width / 8)) * 8)


class MobileFaceNet(nn.Module):
    def __init__(self, input_size: int = 112, width: float = 1.0, embedding_size: int = 512):
        super().__init__()
        _check(input_size, width, embedding_size)
        self.input_size = input_size
        stem = _channels(STEM_CHANNELS, width)
        layers = [conv_bn(3, stem, 3, 2), conv_bn(stem, stem, 3, groups=stem)]
        inp = stem
        for expansion, c, n, s in STAGES:
            oup = _channels(c, width)
            for i in range(n):
                layers.append(Bottleneck(inp, oup, s if i == 0 else 1, expansion))
                inp = oup
        last = _channels(LAST_CHANNELS, width)
        layers.append(conv_bn(inp, last, 1))
        self.features = nn.Sequential(*layers)
        side = input_size // DOWNSAMPLING
        # the global depthwise convolution (linear) and the linear embedding, each with its BatchNorm
        self.gdconv = conv_bn(last, last, side, groups=last, prelu=False, padding=0)
        self.embedding = conv_bn(last, embedding_size, 1, prelu=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x):
        return (self.embedding(self.gdconv(self.features(x))).flatten(1),)


def _check(input_size: int, width: float, embedding_size: int) -> None:
    if input_size < 2 * DOWNSAMPLING or input_size % DOWNSAMPLING:
        raise ValueError(f"facerec input_size {input_size}: expected a multiple of {DOWNSAMPLING}, at least "
                         f"{2 * DOWNSAMPLING}")
    if not width > 0 or embedding_size < 2:
        raise ValueError(f"facerec width {width} and embedding_size {embedding_size}: expected width > 0 and an "
                         f"embedding of at least 2 values")


def facerec_spec(input_size: int = 112, width: float = 1.0, embedding_size: int = 512) -> ModelSpec:
    _check(input_size, width, embedding_size)
    return ModelSpec(
        name="facerec",
        input_name="input",
        input_size=input_size,
        outputs=(OutputSpec("embedding", (embedding_size,), f"{embedding_size}-d face embedding: compare two faces by "
                            f"the cosine of their embeddings", kind="embedding"),),
        options={"input_size": input_size, "width": width, "embedding_size": embedding_size},
    )


def facerec_contract(spec: ModelSpec) -> PreprocessContract:
    return PreprocessContract(input_size=spec.input_size, color_order="RGB", scale=1.0 / 128.0, mean=(127.5,) * 3,
                              crop=ALIGNED_CROP)


def build_facerec_head(spec: ModelSpec, num_identities: int, cfg) -> nn.Module:
    """The training-only margin head of LossConfig's choice (name, s, m) on the embedding."""
    return build_head(cfg.head, spec.outputs[0].shape[0], num_identities, s=cfg.head_s, m=cfg.head_m)


def facerec_loss(outputs, targets: Targets, crop_px: int, cfg, head: nn.Module):
    """Cross-entropy over the margin head's logits of the identity labels."""
    (embedding,) = outputs
    ce = F.cross_entropy(head(embedding, targets.identity), targets.identity)
    return ce, {"identity": ce.detach()}


# Aligned faces keep their alignment: no rotation, shift or scale; mirror, colour, grayscale and erasing as usual.
FACEREC_AUGMENT = AugmentConfig(rotation_deg=0.0, shift_frac=0.0, scale_range=(1.0, 1.0))

FACEREC = ModelEntry(
    module=MobileFaceNet,
    spec=facerec_spec,
    contract=facerec_contract,
    task=lambda spec: Task(loss=facerec_loss, loss_parts=("identity",), select_metric="id_error",
                           head=build_facerec_head, augment=FACEREC_AUGMENT),
    summary="face recognition: MobileFaceNet-style embedding (512-d, compared by cosine) trained with an ArcFace, "
            "CosFace or SphereFace head on one folder per identity",
    # 64x64 keeps the demo within minutes on 2 CPU cores (the model's cost falls with the square of the side); the
    # synthetic identities are rendered and aligned at 112 and resized
    demo_options={"input_size": 64, "width": 0.5, "embedding_size": 512},
    # The demo's identities (DemoRecipe: 100 training identities x 10 faces, 40 held out), ArcFace s 64 m 0.5, batch
    # 32, lr 3e-3, 1 warm-up epoch, cosine, 15 epochs (measured with 10 % of the faces held out for validation):
    # 10-fold accuracy 84.83 % +- 6.89 on the 600 pairs of the held-out identities, against 62.33 % for raw pixels;
    # AUC 0.925 (pixels 0.612)
    demo_recipe={"epochs": 15},
)

__all__ = ["FACEREC", "MobileFaceNet", "facerec_spec"]
