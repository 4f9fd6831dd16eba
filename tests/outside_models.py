"""Networks built the way models from outside the project come (their own layer names, opset 11, a dynamic batch),
exported to ONNX with torch: the pytest chain tests and deploy_cpp's fixtures (make_fixtures.py) enter the chain
with them as a user's file."""
from __future__ import annotations

from pathlib import Path

import torch

SPHEREFACE_HW = (112, 96)           # rows, columns of SphereFace's aligned faces


class Residual(torch.nn.Module):
    """SphereFace's residual unit: two 3x3 convolutions with PReLU, added to the input (no BatchNorm)."""

    def __init__(self, channels: int):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.PReLU(channels),
                                  nn.Conv2d(channels, channels, 3, 1, 1), nn.PReLU(channels))

    def forward(self, x):
        return x + self.body(x)


def sphereface_like_onnx(path: Path) -> Path:
    """A SphereFace-20-shaped network at a fraction of its width, saved as such files come: a 112x96 input, opset 11,
    a dynamic batch, the graph's own names (data -> fc5, a 64-d embedding); four stride-2 stages leave 7x6."""
    nn = torch.nn
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for cin, cout in ((3, 8), (8, 16), (16, 32), (32, 32)):
        layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.PReLU(cout), Residual(cout)]
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 7 * 6, 64)).eval()
    torch.onnx.export(net, (torch.zeros(1, 3, *SPHEREFACE_HW),), str(path), dynamo=False, opset_version=11,
                      input_names=["data"], output_names=["fc5"],
                      dynamic_axes={"data": {0: "batch"}, "fc5": {0: "batch"}})
    return Path(path)
