"""numpy or torch: the label maths of the augmentation (pose, flips, the similarity matrix) is written once and
runs on one face's numpy arrays (the per-sample reference path) and on a batch of torch tensors on the training
device (the batched path). Both libraries spell these functions alike (cos, arcsin, arctan2, stack, where,
linalg.det, ...); namespace() picks the one that owns the argument.
"""
from __future__ import annotations

import numpy as np


def namespace(x):
    """torch for a torch tensor, else numpy (also for Python and numpy scalars). torch is imported only when a
    tensor is passed, so numpy-only users of these helpers do not pay for importing it."""
    if type(x).__module__.partition(".")[0] == "torch":
        import torch
        return torch
    return np


def asarray_like(value, like):
    """`value` (nested lists, a numpy array) as an array of the library of `like`, on its device (numpy 1.x
    has no device argument, hence this helper)."""
    if namespace(like) is np:
        return np.asarray(value)
    import torch
    return torch.as_tensor(np.asarray(value), device=like.device)


def stack_matrix(xp, rows):
    """A (..., R, C) matrix from R rows of C same-shaped entries (scalars or (...,) arrays)."""
    return xp.stack([xp.stack(list(row), -1) for row in rows], -2)
