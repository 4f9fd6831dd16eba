"""Stage 1 of the export chain: PyTorch -> ONNX, and the onnxsim stage after it.

TorchScript exporter (dynamo=False: weights stay inside the file, the opset is the one asked for, Flatten is kept),
input named `input`, outputs named by the model spec, the spec and the preprocessing contract in metadata_props,
then onnx.checker. From here on every stage reads a file and writes a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import onnx
import torch

from pfpld.contract import PreprocessContract
from pfpld.errors import ConversionError
from pfpld.models.spec import ModelSpec

DEFAULT_OPSET = 13
META_SPEC = "pfpld.spec"
META_CONTRACT = "pfpld.contract"


def _atomic_save_onnx(model: onnx.ModelProto, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_metadata(model: onnx.ModelProto, spec: ModelSpec, contract: PreprocessContract) -> None:
    entries = {META_SPEC: json.dumps(spec.to_dict(), sort_keys=True), META_CONTRACT: contract.to_json()}
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in entries.items():
        model.metadata_props.add(key=k, value=v)


def read_metadata(model: onnx.ModelProto) -> tuple[ModelSpec | None, PreprocessContract | None]:
    props = {p.key: p.value for p in model.metadata_props}
    spec = ModelSpec.from_dict(json.loads(props[META_SPEC])) if META_SPEC in props else None
    contract = PreprocessContract.from_dict(json.loads(props[META_CONTRACT])) if META_CONTRACT in props else None
    return spec, contract


def export_onnx(module: torch.nn.Module, spec: ModelSpec, contract: PreprocessContract, path: Path,
                opset: int = DEFAULT_OPSET, training: torch.onnx.TrainingMode = torch.onnx.TrainingMode.EVAL) -> Path:
    module = module.eval()
    dummy = torch.zeros(1, 3, spec.input_size, spec.input_size)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".raw.onnx", dir=path.parent)
    os.close(fd)
    try:
        torch.onnx.export(module, (dummy,), tmp, dynamo=False, opset_version=opset, input_names=[spec.input_name],
                          output_names=spec.output_names, do_constant_folding=True, training=training)
        model = onnx.load(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)
    set_metadata(model, spec, contract)
    onnx.checker.check_model(model)
    _atomic_save_onnx(model, path)
    return path


def load_onnx(path: Path) -> onnx.ModelProto:
    """Read and check an ONNX file; anything else is one ConversionError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: not a file (expected an .onnx model)")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:    # protobuf DecodeError, checker ValidationError, ...
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConversionError(f"{path}: not a valid ONNX model ({msg})") from None
    if not model.graph.node:
        raise ConversionError(f"{path}: not a valid ONNX model (the graph has no nodes)")
    return model


def simplify_onnx(src: Path, dst: Path) -> Path:
    """onnxsim as its own stage: constant folding, shape inference, dead-node removal; metadata kept."""
    import onnxsim
    model = load_onnx(src)
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ConversionError(f"{src}: onnxsim could not validate the simplified model against the original")
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(simplified)
    _atomic_save_onnx(simplified, Path(dst))
    return Path(dst)
