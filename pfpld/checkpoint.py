"""Checkpoints: state_dict + model spec + preprocessing contract + the training record, in one file.

Written atomically (temporary file, then rename) and read with torch.load(weights_only=True): a checkpoint is
plain data, never code. Anything that is not a file of ours fails with one line that names it.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .contract import PreprocessContract
from .errors import CheckpointError, ModelError, one_line
from .fileio import atomic_path
from .models import build_from_spec, check_model_name
from .models.spec import ModelSpec

FORMAT = "pfpld-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    path: Path
    state_dict: dict
    spec: ModelSpec
    contract: PreprocessContract
    epoch: int = 0
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    optimizer: dict | None = None
    scheduler: dict | None = None
    versions: dict = field(default_factory=dict)
    head: dict | None = None        # a training-only head's state_dict (facerec's margin head), for --resume
    scaler: dict | None = None      # the fp16 GradScaler's state (scale, growth tracker), for --resume


TRAINING_PACKAGES = ("pfpld", "torch", "numpy")


def tool_versions(packages: tuple[str, ...] = TRAINING_PACKAGES) -> dict[str, str | None]:
    """Python's version and each installed package's (None when missing): what a checkpoint or an export records
    of the tools that made it. The one place that asks."""
    from importlib.metadata import PackageNotFoundError, version
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def plain(value):
    """Numbers, strings, lists and dicts only: what torch.load(weights_only=True) reads back without any global."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "item"):          # numpy / torch scalars
        return value.item()
    return str(value)


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path: Path, *, state_dict: dict, spec: ModelSpec, contract: PreprocessContract, epoch: int = 0,
                    metrics: dict | None = None, config: dict | None = None, history: list | None = None,
                    optimizer: dict | None = None, scheduler: dict | None = None, head: dict | None = None,
                    scaler: dict | None = None) -> None:
    atomic_torch_save({
        "format": FORMAT, "version": VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "spec": spec.to_dict(), "contract": contract.to_dict(),
        "epoch": epoch, "metrics": plain(metrics or {}), "config": plain(config or {}),
        "history": plain(history or []),
        "optimizer": optimizer, "scheduler": scheduler, "versions": tool_versions(),
        **({"head": {k: v.detach().cpu() for k, v in head.items()}} if head is not None else {}),
        **({"scaler": plain(scaler)} if scaler else {}),
    }, path)


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (expected a pfpld checkpoint .pt)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # pickle, zip and unsafe-global errors all mean "not our checkpoint"
        raise CheckpointError(f"{path}: not a readable pfpld checkpoint ({one_line(e, 160)})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        what = "a bare state_dict" if isinstance(raw, dict) and raw and all(
            isinstance(v, torch.Tensor) for v in raw.values()) else "something else"
        raise CheckpointError(f"{path}: not a pfpld checkpoint (found {what}; expected format {FORMAT!r} "
                              f"with state_dict, spec and contract)")
    if raw.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {raw['version']} is newer than this pfpld ({VERSION})")
    try:
        ckpt = Checkpoint(path=path, state_dict=raw["state_dict"], spec=ModelSpec.from_dict(raw["spec"]),
                          contract=PreprocessContract.from_dict(raw["contract"]), epoch=int(raw.get("epoch", 0)),
                          metrics=raw.get("metrics") or {}, config=raw.get("config") or {},
                          history=raw.get("history") or [], optimizer=raw.get("optimizer"),
                          scheduler=raw.get("scheduler"), versions=raw.get("versions") or {},
                          head=raw.get("head"), scaler=raw.get("scaler"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: pfpld checkpoint is missing or has a malformed field "
                              f"({one_line(e, 160)})") from None
    try:
        check_model_name(ckpt.spec.name, where=f"{path}: checkpoint of a model this version cannot build")
    except ModelError as e:             # from a newer pfpld, or another fork of the family
        raise CheckpointError(str(e)) from None
    return ckpt


def load_model(path: Path) -> tuple[torch.nn.Module, Checkpoint]:
    """The checkpoint's model in eval mode, with its record."""
    ckpt = load_checkpoint(path)
    model = build_from_spec(ckpt.spec)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit model {ckpt.spec.name} {ckpt.spec.options} "
                              f"({one_line(e, 160)})") from None
    model.eval()
    return model, ckpt
