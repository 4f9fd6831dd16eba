"""Stage 1 of the export chain: PyTorch -> ONNX, and the onnxsim stage after it.

TorchScript exporter (dynamo=False: weights stay inside the file, the opset is the one asked for, Flatten is kept),
input named `input`, outputs named by the model spec, the spec and the preprocessing contract in metadata_props,
then onnx.checker. From here on every stage reads a file and writes a file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from pfpld.contract import PreprocessContract
from pfpld.errors import ConversionError, one_line
from pfpld.fileio import write_bytes_atomic
from pfpld.landmarks import POINT_LAYOUTS, layout_for
from pfpld.models.spec import ModelSpec, OutputSpec

from .onnx_bins import BIN_KINDS
from .onnx_graph import load_onnx

DEFAULT_OPSET = 13
META_SPEC = "pfpld.spec"
META_CONTRACT = "pfpld.contract"


def save_onnx_atomic(model: onnx.ModelProto, path: Path) -> None:
    write_bytes_atomic(path, model.SerializeToString())


def set_metadata(model: onnx.ModelProto, spec: ModelSpec, contract: PreprocessContract) -> None:
    entries = {META_SPEC: json.dumps(spec.to_dict(), sort_keys=True), META_CONTRACT: contract.to_json()}
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in entries.items():
        model.metadata_props.add(key=k, value=v)


def read_metadata(model: onnx.ModelProto) -> tuple[ModelSpec | None, PreprocessContract | None]:
    """The spec and contract an export wrote into metadata_props (None for each one that is absent)."""
    props = {p.key: p.value for p in model.metadata_props}
    try:
        spec = ModelSpec.from_dict(json.loads(props[META_SPEC])) if META_SPEC in props else None
        contract = (PreprocessContract.from_dict(json.loads(props[META_CONTRACT])) if META_CONTRACT in props
                    else None)
    except (ValueError, TypeError, KeyError) as exc:   # JSONDecodeError, ContractError, missing fields
        raise ConversionError(f"ONNX metadata {META_SPEC!r}/{META_CONTRACT!r} is malformed ({one_line(exc)})") from None
    return spec, contract


def output_spec_by_name(name: str, shape: tuple[int, ...]) -> OutputSpec:
    """What an output of a graph without our metadata means, judged by its name only: `landmarks` (x, y pairs in
    [0,1] of the crop) and `pose` (yaw, pitch, roll in radians) are the project's conventions; anything else is
    compared by value only unless the user declares its kind (declare_outputs)."""
    size = int(np.prod(shape)) if shape and min(shape) > 0 else 0
    if name == "landmarks" and size and size % 2 == 0:
        return declared_output(name, shape, "landmarks")
    if name == "pose" and size == 3:
        return declared_output(name, shape, "pose")
    return OutputSpec(name, shape, "unknown (read from the ONNX graph)")


# The kinds a user can declare for an output of their ONNX file, with what each must hold.
DECLARABLE_KINDS = {
    "landmarks": "K points x0,y0,x1,y1,... in [0,1] of the square crop",
    "pose": "yaw, pitch, roll in radians",
    "pose_deg": "yaw, pitch, roll in degrees",
    "embedding": "a face embedding compared by cosine",
    "": "unknown: compared by value only",
}


def declared_output(name: str, shape: tuple[int, ...], kind: str) -> OutputSpec:
    """The OutputSpec of graph output `name` (shape without the batch dimension) declared to be of `kind`; one
    ConversionError naming the output when its shape cannot hold that kind. Landmarks are normalised (NME) by the
    scheme their point count names (pfpld.landmarks.POINT_LAYOUTS: 98 WFLW, 68 iBUG, 5 points); another count is
    still compared by value and point error, without NME."""
    if kind not in DECLARABLE_KINDS:
        raise ConversionError(f"output {name!r}: kind {kind!r}; expected one of "
                              f"{', '.join(k or repr(k) for k in DECLARABLE_KINDS)}, or a HopeNet-style model's "
                              f"{', '.join(BIN_KINDS)} (all three)")
    dims = [d for d in shape if d != 1]
    size = int(np.prod(shape)) if shape and min(shape) > 0 else 0
    if kind == "landmarks":
        if not size or size % 2:
            raise ConversionError(f"output {name!r} has shape {list(shape)}: landmarks need an even, fixed number of "
                                  f"values (x, y pairs)")
        layout = layout_for(size // 2)
        known = f"{layout.name} order" if layout else \
            f"no NME: a known scheme has {', '.join(str(k) for k in POINT_LAYOUTS)} points"
        return OutputSpec(name, shape, f"{size // 2} points x0,y0,x1,y1,... in [0,1] of the square crop ({known})",
                          kind="landmarks", norm_points=layout.norm_points if layout else None)
    if kind in ("pose", "pose_deg") and size != 3:
        raise ConversionError(f"output {name!r} has shape {list(shape)}: a pose is 3 values (yaw, pitch, roll)")
    if kind == "embedding" and (len(dims) != 1 or not size):
        raise ConversionError(f"output {name!r} has shape {list(shape)}: an embedding is one vector per face "
                              f"([N, D] or [N, D, 1, 1])")
    return OutputSpec(name, shape, DECLARABLE_KINDS[kind], kind=kind)


def declare_outputs(spec: ModelSpec, kinds: dict[str, str], source: str) -> ModelSpec:
    """`spec` with the outputs named in `kinds` re-declared (a user's --output NAME=KIND); an unknown name is one
    ConversionError that lists the graph's outputs."""
    names = spec.output_names
    for name in kinds:
        if name not in names:
            raise ConversionError(f"{source}: --output {name}=...: the graph has no output {name!r}; its outputs are "
                                  f"{', '.join(names)}")
    outputs = tuple(declared_output(o.name, o.shape, kinds[o.name]) if o.name in kinds else o for o in spec.outputs)
    return dataclasses.replace(spec, outputs=outputs)


def spec_from_graph(model: onnx.ModelProto, name: str) -> ModelSpec:
    """A spec for an ONNX file that carries none: its single input (NCHW, H x W fixed; a batch of any size) and its
    outputs, named and shaped as in the graph. The meaning of an output is unknown unless its name is one the
    project knows."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise ConversionError(f"the graph has {len(inputs)} inputs ({[v.name for v in inputs]}); expected one image "
                              f"input")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or dims[2] is None or dims[3] is None:
        raise ConversionError(f"input '{inputs[0].name}' has shape {dims}; expected [N, 3, H, W] with fixed H and W "
                              f"(export it with a fixed image size; the batch may stay dynamic)")
    outputs = []
    for value in model.graph.output:
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
        outputs.append(output_spec_by_name(value.name, shape[1:]))
    return ModelSpec(name=name, input_name=inputs[0].name, input_size=int(dims[2]), outputs=tuple(outputs),
                     input_width=int(dims[3]))


def export_onnx(module: torch.nn.Module, spec: ModelSpec, contract: PreprocessContract, path: Path,
                opset: int = DEFAULT_OPSET, training: torch.onnx.TrainingMode = torch.onnx.TrainingMode.EVAL) -> Path:
    module = module.eval()
    dummy = torch.zeros(1, 3, *spec.input_hw)
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
    save_onnx_atomic(model, path)
    return path


def load_checked_onnx(path: Path) -> onnx.ModelProto:
    """Read an ONNX file (onnx_graph.load_onnx: one-line error for a missing, truncated or foreign file) and run
    onnx.checker on it; a checker failure is one ConversionError naming the file too."""
    model = load_onnx(path)
    try:
        onnx.checker.check_model(model)
    except Exception as e:    # checker ValidationError, ...
        raise ConversionError(f"{path}: not a valid ONNX model ({one_line(e)})") from None
    return model


def simplify_onnx(src: Path, dst: Path) -> Path:
    """onnxsim as its own stage: constant folding, shape inference, dead-node removal; metadata kept."""
    import onnxsim
    model = load_checked_onnx(src)
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ConversionError(f"{src}: onnxsim could not validate the simplified model against the original")
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(simplified)
    save_onnx_atomic(simplified, Path(dst))
    return Path(dst)
