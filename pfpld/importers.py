"""`pfpld import`: checkpoints trained by other code bases of the family, turned into pfpld checkpoints (weights +
spec + the reference preprocessing contract) so that export, check-parity, eval and predict work on them.

One entry per origin in IMPORTERS. `nniefacelib`: the original PFPLD code (hanson-young/nniefacelib,
PFPLD/pfld/pfld.py), whose checkpoints are state_dicts with the reference names (FACTS section 1), saved bare,
wrapped in a dict ({"state_dict": ..., "epoch": ...}) or with DataParallel's `module.` prefix. `deep-head-pose`:
HopeNet's released weights (a torchvision ResNet with three 66-bin heads). Files are read
with torch.load(weights_only=True) only: a pickled module or optimizer object is refused, never executed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .contract import PreprocessContract
from .errors import InputError, one_line
from .models import build_model
from .models.spec import ModelSpec

DATA_PARALLEL_PREFIX = "module."
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "plfd_backbone", "pfld_backbone")
LIST_AT_MOST = 4          # names quoted in an error line


@dataclass
class Imported:
    state_dict: dict[str, torch.Tensor]
    spec: ModelSpec
    contract: PreprocessContract
    record: dict            # how it was imported (origin, wrapper key, prefix, width), kept in the checkpoint


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def find_state_dict(raw, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors of a loaded file: the file itself when it is a state_dict, else the state_dict it wraps (by a
    known key, or the only dict of tensors inside). Returns it and the wrapper key (None when bare)."""
    if _is_state_dict(raw):
        return raw, None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: holds a {type(raw).__name__}, not a state_dict (save model.state_dict())")
    inner = {k: v for k, v in raw.items() if _is_state_dict(v)}
    for key in WRAPPER_KEYS:
        if key in inner:
            return inner[key], key
    if len(inner) == 1:
        key = next(iter(inner))
        return inner[key], key
    keys = ", ".join(map(str, list(raw)[:8]))
    found = f"{len(inner)} dicts of tensors ({', '.join(map(str, inner))})" if inner else "no dict of tensors"
    raise CheckpointError(f"{path}: a dict with keys [{keys}] and {found}; expected a state_dict, bare or under "
                          f"one of {', '.join(WRAPPER_KEYS)}")


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = DATA_PARALLEL_PREFIX) -> tuple[dict, bool]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}, True
    return state_dict, False


def _names(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - LIST_AT_MOST} more" if len(keys) > LIST_AT_MOST else ""
    return ", ".join(keys[:LIST_AT_MOST]) + more


def match_state_dict(given: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path,
                     what: str) -> dict[str, torch.Tensor]:
    """`given` checked key by key and shape by shape against `expected` (a freshly built model's state_dict).
    BatchNorm's num_batches_tracked, absent from checkpoints of old torch versions, is taken from the new model."""
    missing = {k for k in expected if k not in given and not k.endswith("num_batches_tracked")}
    extra = set(given) - set(expected)
    if missing or extra:
        parts = ([f"{len(missing)} missing keys ({_names(missing)})"] if missing else []) + \
                ([f"{len(extra)} unexpected keys ({_names(extra)})"] if extra else [])
        raise CheckpointError(f"{path}: not a {what} state_dict: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(given[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in given and given[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path}: shapes do not fit a {what}: {'; '.join(wrong[:LIST_AT_MOST])}"
                              + (f" and {len(wrong) - LIST_AT_MOST} more" if len(wrong) > LIST_AT_MOST else ""))
    return {k: (given[k] if k in given else v).detach().clone().to(v.dtype) for k, v in expected.items()}


def import_nniefacelib(state_dict: dict[str, torch.Tensor], path: Path, width: float | None) -> Imported:
    """The reference PFPLD: width from conv1's output channels (64 x width) unless given, every key and shape
    checked against pfpld's PFPLD of that width, the reference contract (112, RGB, 1/255, mean 0, crop 1.2)."""
    conv1 = state_dict.get("conv1.weight")
    if conv1 is None or conv1.dim() != 4:
        raise CheckpointError(f"{path}: no 'conv1.weight' convolution: not a PFPLD state_dict (keys: "
                              f"{_names(state_dict)})")
    inferred = conv1.shape[0] / 64
    width = inferred if width is None else width
    module, spec, contract = build_model("pfpld", width=width)
    weights = match_state_dict(state_dict, module.state_dict(), path, f"PFPLD width {width:g}")
    module.load_state_dict(weights, strict=True)
    return Imported(weights, spec, contract, {"width": width, "width_from": "conv1.weight" if inferred == width
                                              else "--width"})


# deep-head-pose's ResNet trunks by their residual blocks per stage (torchvision's layout and names)
HOPENET_TRUNKS = {("bottleneck", (3, 4, 6, 3)): "resnet50", ("basic", (2, 2, 2, 2)): "resnet18"}
HOPENET_UNUSED = ("fc_finetune.",)      # defined by the reference, never used by its forward


def import_deep_head_pose(state_dict: dict[str, torch.Tensor], path: Path, width: float | None) -> Imported:
    """HopeNet as released by its authors (natanielruiz/deep-head-pose: hopenet_alpha1.pkl, hopenet_robust_alpha1.pkl,
    ...): a torchvision ResNet state_dict (conv1, bn1, layer1-4; num_batches_tracked absent in files of old torch)
    with fc_yaw, fc_pitch, fc_roll (and the unused fc_finetune, dropped). The trunk is read from the blocks; the model
    decodes angles as the reference code does (bin index x 3 - 99, pfpld.pose_bins), since its expectation loss
    was trained on that decode; the contract is the paper's (224, the loose 300W-LP crop, ImageNet normalisation)."""
    if width not in (None, 1.0):
        raise InputError(f"--width {width:g}: HopeNet's released ResNets have no width (1 only)")
    trunk = {k: v for k, v in state_dict.items() if not k.startswith(HOPENET_UNUSED)}
    dropped = sorted(set(state_dict) - set(trunk))
    if "conv1.weight" not in trunk or "fc_yaw.weight" not in trunk:
        raise CheckpointError(f"{path}: no 'conv1.weight' and 'fc_yaw.weight': not a deep-head-pose HopeNet "
                              f"state_dict (keys: {_names(state_dict)})")
    blocks = tuple(len({k.split(".")[1] for k in trunk if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    kind = "bottleneck" if "layer1.0.conv3.weight" in trunk else "basic"
    backbone = HOPENET_TRUNKS.get((kind, blocks))
    if backbone is None:
        raise CheckpointError(f"{path}: a ResNet with {kind} blocks {list(blocks)} per stage; pfpld's HopeNet trunks "
                              f"are ResNet-50 (bottleneck 3, 4, 6, 3) and ResNet-18 (basic 2, 2, 2, 2)")
    renamed = {(k if k.startswith("fc_") else f"backbone.{k}"): v for k, v in trunk.items()}
    module, spec, contract = build_model("hopenet", backbone=backbone, decode="reference")
    weights = match_state_dict(renamed, module.state_dict(), path, f"HopeNet {backbone}")
    module.load_state_dict(weights, strict=True)
    return Imported(weights, spec, contract, {"width": 1.0, "width_from": "ResNet", "backbone": backbone,
                                              "dropped_keys": dropped})


IMPORTERS: dict[str, Callable[[dict, Path, float | None], Imported]] = {
    "nniefacelib": import_nniefacelib,
    "deep-head-pose": import_deep_head_pose,
}


def import_checkpoint(path: Path, origin: str, out: Path, *, width: float | None = None,
                      force: bool = False) -> Imported:
    """Read a foreign checkpoint and write it as a pfpld checkpoint at `out` (atomically). An existing `out` is
    replaced only when it is a pfpld checkpoint and force is given."""
    path, out = Path(path), Path(out)
    if origin not in IMPORTERS:
        raise InputError(f"--from {origin}: unknown origin (known: {', '.join(IMPORTERS)})")
    if out.exists():
        if out.is_dir():
            raise InputError(f"{out}: is a folder; give a file name such as model.pt")
        try:
            load_checkpoint(out)
        except CheckpointError:
            raise InputError(f"{out}: exists and is not a pfpld checkpoint; pfpld never replaces it") from None
        if not force:
            raise InputError(f"{out}: holds a pfpld checkpoint; pass --force to replace it")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:      # pickled objects (a whole module), zip or pickle errors
        raise CheckpointError(f"{path}: cannot be read as tensors with weights_only=True ({one_line(exc, 160)}); "
                              f"save model.state_dict() instead of the model object") from None
    tensors, wrapper = find_state_dict(raw, path)
    tensors, prefixed = strip_prefix(tensors)
    imported = IMPORTERS[origin](tensors, path, width)
    imported.record.update({"origin": origin, "path": str(path.resolve()), "wrapper_key": wrapper,
                            "data_parallel_prefix": prefixed})
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, state_dict=imported.state_dict, spec=imported.spec, contract=imported.contract,
                    config={"imported_from": imported.record})
    return imported
