"""Classification trunks written in the project (torchvision is not available): ResNet-18/50 and a
MobileNetV2-style trunk for boards. Each maps an image (N,3,H,W), H = W >= 64, to a pooled feature vector
(N, out_channels); task heads (HopeNet's bins, ...) sit on top.

Every op converts along ONNX -> Caffe 1.0 -> ncnn -> NNIE: Conv/BN/ReLU, Eltwise SUM, MAX pooling, global
average pooling. Two choices follow from that:
- ResNet's stem max-pool is the Caffe release's (3x3, stride 2, no padding, ceil rounding), not torchvision's
  (padding 1, floor rounding): Caffe always rounds up, so torchvision's pool would come out 57x57 in Caffe
  where PyTorch computes 56x56 (at 224), and the converter refuses it. Same parameters, and the same sizes
  whenever the input is a multiple of 4 (224, 112); the pooling windows start one pixel later.
- The MobileNetV2 trunk uses ReLU, not ReLU6 (Caffe 1.0 has no ReLU6), like PFPLD.

Module names follow torchvision (conv1, bn1, layer1.0.conv1, layer2.0.downsample.0, ...), so that a
torchvision ResNet state_dict without its `fc.*` can load strictly (names and counts checked; torchvision is not
installed). ResNet-50's bottleneck strides in its 3x3 conv, as torchvision and the HopeNet code do (the paper's
Caffe model strides in the first 1x1; same parameters).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .pfpld import InvertedResidual, conv_bn


def _init_weights(module: nn.Module) -> None:
    """He initialisation for convolutions, BN at identity: torchvision's scheme for both families."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _ResidualBlock(nn.Module):
    """out = ReLU(residual branch(x) + shortcut(x)); the branch ends in a BN (zeroed by zero_init_residual)."""
    expansion = 1
    downsample: nn.Module | None

    def residual(self, x):
        raise NotImplementedError

    def last_bn(self) -> nn.BatchNorm2d:
        raise NotImplementedError

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + identity)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs (ResNet-18/34)."""
    expansion = 1

    def __init__(self, inp: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def residual(self, x):
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(_ResidualBlock):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand x4 (ResNet-50/101/152)."""
    expansion = 4

    def __init__(self, inp: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


class ResNet(nn.Module):
    """ResNet trunk without its classifier: 7x7/2 stem, 3x3/2 max-pool, stages 64-128-256-512 (x expansion),
    global average pooling. Output (N, 512 * expansion)."""

    def __init__(self, block: type[_ResidualBlock], layers: tuple[int, int, int, int],
                 zero_init_residual: bool = False):
        super().__init__()
        self.inp = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 0, ceil_mode=True)      # Caffe's pool1, see the module docstring
        self.layer1 = self._stage(block, 64, layers[0], 1)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 256, layers[2], 2)
        self.layer4 = self._stage(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)                    # exports as GlobalAveragePool
        self.out_channels = 512 * block.expansion
        _init_weights(self)
        if zero_init_residual:     # each block starts as the identity (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, _ResidualBlock):
                    nn.init.zeros_(m.last_bn().weight)

    def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inp != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inp, planes * block.expansion, 1, stride, 0, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        stage = [block(self.inp, planes, stride, downsample)]
        self.inp = planes * block.expansion
        stage += [block(self.inp, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _make_divisible(channels: float, divisor: int = 8) -> int:
    """MobileNetV2's channel rounding: to the nearest multiple of divisor, never below 90 % of the request."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


# MobileNetV2 (Sandler et al. 2018, table 2): expansion t, output channels c, repeats n, first stride s.
MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                      (6, 320, 1, 1))


class MobileNetV2Trunk(nn.Module):
    """MobileNetV2 without its classifier, ReLU instead of ReLU6, channels x width (rounded to multiples of 8),
    then a 1x1 conv to max(1280, 1280 x width) channels and global average pooling. At width 1.0 it has exactly
    torchvision's mobilenet_v2 feature parameters (2,223,872)."""

    def __init__(self, width: float = 1.0, zero_init_residual: bool = False):
        super().__init__()
        stem = _make_divisible(32 * width)
        layers: list[nn.Module] = [conv_bn(3, stem, 3, 2)]
        inp = stem
        for t, c, n, s in MOBILENETV2_STAGES:
            oup = _make_divisible(c * width)
            for i in range(n):
                stride = s if i == 0 else 1
                if t == 1:      # no expansion: depthwise 3x3 then the linear 1x1 projection
                    layers.append(nn.Sequential(
                        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                        nn.ReLU(inplace=True),
                        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)))
                else:
                    layers.append(InvertedResidual(inp, oup, stride, stride == 1 and inp == oup, t))
                inp = oup
        self.out_channels = _make_divisible(1280 * width) if width > 1.0 else 1280
        layers.append(conv_bn(inp, self.out_channels, 1, 1, padding=0))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        _init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, InvertedResidual) and m.use_res_connect:
                    nn.init.zeros_(m.conv[7].weight)

    def forward(self, x):
        return torch.flatten(self.avgpool(self.features(x)), 1)


BACKBONES = ("resnet18", "resnet50", "mobilenetv2")


def build_backbone(name: str, width: float = 1.0, zero_init_residual: bool = False) -> nn.Module:
    """A trunk by name; `width` scales only the MobileNetV2 trunk (the ResNets are the paper's)."""
    check_backbone(name, width)
    if name == "resnet18":
        return ResNet(BasicBlock, (2, 2, 2, 2), zero_init_residual)
    if name == "resnet50":
        return ResNet(Bottleneck, (3, 4, 6, 3), zero_init_residual)
    return MobileNetV2Trunk(width, zero_init_residual)


def check_backbone(name: str, width: float = 1.0) -> None:
    """Raise ModelError unless `name` is a trunk of this module and `width` applies to it."""
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r} (expected one of {', '.join(BACKBONES)})")
    if name.startswith("resnet") and width != 1.0:
        raise ModelError(f"backbone {name} with width {width}: only mobilenetv2 takes a width (the ResNets are "
                         f"the paper's)")
    if width <= 0:
        raise ModelError(f"backbone {name} with width {width}: expected > 0")
