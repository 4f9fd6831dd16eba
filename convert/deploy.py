"""`deploy.json`: what the C++ side (deploy_cpp/) reads, written from the same objects the Python side uses.

One file in every export folder (beside manifest.json) and in every NNIE bundle (beside the mapper cfgs). It holds
the preprocessing contract (PreprocessContract.to_dict(), verbatim), the model's input and its outputs by name with
their kind ("landmarks": K points in [0,1] of the crop; "pose": yaw, pitch, roll in radians; see
pfpld/models/spec.py), and, per runtime the device code can run, the files and the runtime's own blob names for the
spec's input and outputs. deploy_cpp/ decodes outputs by name and kind from this file: it re-types no size,
colour order, scale, mean, crop rule or output position.

A format that a deploy_cpp backend runs says so with `Format.device` (convert/formats.py); DEVICE_ENTRIES turns
its files into the entry. Adding a backend: one function here, one field on its formats. The NNIE bundle's entry is
written by the bundle itself (quant/nnie.py, nnie_entry), which knows its cfgs and S32 format.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from pfpld.contract import PreprocessContract
from pfpld.errors import ConversionError
from pfpld.fileio import write_json_atomic
from pfpld.models.spec import ModelSpec

DEPLOY_FILE = "deploy.json"
DEPLOY_FORMAT = "pfpld-deploy"
DEPLOY_VERSION = 1


def ncnn_entry(format_name: str, files: dict[str, str], folder: Path, spec: ModelSpec) -> dict:
    """An ncnn format's files (roles `<format>.param/.bin/.names`) -> its deploy entry."""
    names_file = folder / files[f"{format_name}.names"]
    try:
        names = json.loads(names_file.read_text())
        return {"backend": "ncnn", "param": files[f"{format_name}.param"], "bin": files[f"{format_name}.bin"],
                "input": names["inputs"][spec.input_name],
                "outputs": {o.name: names["outputs"][o.name] for o in spec.outputs},
                "fp16": bool(names.get("fp16", False))}
    except (OSError, ValueError, KeyError) as exc:
        raise ConversionError(f"{names_file}: no ncnn blob name for {exc} (expected the map written by the ncnn "
                              f"stage)") from None


DEVICE_ENTRIES: dict[str, Callable[[str, dict[str, str], Path, ModelSpec], dict]] = {"ncnn": ncnn_entry}


def deploy_dict(spec: ModelSpec, contract: PreprocessContract, runtimes: dict[str, dict]) -> dict:
    return {"format": DEPLOY_FORMAT, "version": DEPLOY_VERSION, "model": spec.name,
            "contract": contract.to_dict(),
            "input": {"name": spec.input_name, "shape": [1, 3, *contract.input_hw]},
            "outputs": [{"name": o.name, "kind": o.kind, "shape": list(o.shape), "meaning": o.meaning}
                        for o in spec.outputs],
            "runtimes": runtimes}


def write_deploy(folder: Path, spec: ModelSpec, contract: PreprocessContract, runtimes: dict[str, dict]) -> Path:
    path = Path(folder) / DEPLOY_FILE
    write_json_atomic(path, deploy_dict(spec, contract, runtimes))
    return path


def export_runtimes(folder: Path, spec: ModelSpec, stages) -> dict[str, dict]:
    """The deploy entries of an export folder's stages (StageRecord list) whose format a backend runs."""
    from .formats import FORMATS
    runtimes = {}
    for stage in stages:
        fmt = FORMATS.get(stage.name)
        if fmt is not None and fmt.device:
            runtimes[stage.name] = DEVICE_ENTRIES[fmt.device](stage.name, stage.files, Path(folder), spec)
    return runtimes
