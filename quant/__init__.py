"""Quantisation: calibration sets, NNIE mapper configs and bundles, int8 accuracy estimates.

Importing the package registers its formats (nnie, onnx-int8, ncnn-int8) with convert's format registry."""
from . import formats as _formats  # noqa: F401
