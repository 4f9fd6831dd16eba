"""ONNX file -> Caffe 1.0 prototxt + caffemodel, with protobuf only (no Caffe install). Runs after fold_bn in
the export chain (it folds conv-BatchNorm pairs itself too); what it writes is read by OpenCV's Caffe importer
(the independent check: tests, parity) and by the NNIE mapper.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf import text_format
from google.protobuf.unknown_fields import UnknownFieldSet
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from pfpld.errors import ConversionError, one_line

from ..fold_bn import assert_no_foldable_batchnorm, fold_batchnorm_into_conv
from ..onnx_graph import GraphIndex, load_onnx, node_label, opset_version
from . import caffe_pb2
from .context import ConversionContext, from_blob, make_layer
from .registry import OPS

# Ops never evaluated at conversion time even with constant inputs: their value is not fixed by the graph.
NONDETERMINISTIC_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                        "Bernoulli"}


@dataclass
class CaffeConversion:
    """What convert_onnx_to_caffe wrote and how ONNX names map onto it."""
    prototxt: Path
    caffemodel: Path
    layers: list[tuple[str, str]]                    # (name, type) in network order
    # Every converted ONNX tensor -> the Caffe blob holding the same values (a tensor downstream of a folded
    # Transpose is left out: its blob holds the values in the untransposed order).
    blob_map: dict[str, str]
    input_name: str                                  # ONNX input == Caffe Input top
    input_shape: tuple[int, ...]
    outputs: dict[str, str]                          # ONNX graph outputs, in graph order -> Caffe blob
    folded_batchnorms: list[str] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.layers)


@dataclass
class CaffeFiles:
    """A prototxt / caffemodel pair parsed back with our caffe_pb2."""
    net: caffe_pb2.NetParameter                      # the prototxt
    weights: dict[str, list[np.ndarray]]             # caffemodel blobs by layer name


# --- preparing the ONNX graph ----------------------------------------------------------------------------------
def _fix_input(model: onnx.ModelProto) -> tuple[str, tuple[int, ...]]:
    """The single graph input, with a symbolic batch dimension pinned to 1 (Caffe's Input layer needs numbers;
    a Reshape with dim 0 still follows another batch size). Edits `model` in place."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise ConversionError(f"graph has {len(inputs)} inputs ({[v.name for v in inputs]}); the Caffe converter "
                              f"takes exactly one")
    value = inputs[0]
    if value.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                onnx.TensorProto.DOUBLE):
        raise ConversionError(f"input '{value.name}' is not a floating-point tensor")
    dims = value.type.tensor_type.shape.dim
    shape = []
    for axis, dim in enumerate(dims):
        if not dim.HasField("dim_value"):
            if axis != 0:
                raise ConversionError(f"input '{value.name}' has a symbolic dimension {axis} "
                                      f"('{dim.dim_param}'); export with a fixed input size")
            dim.dim_value = 1  # replaces dim_param (a oneof)
        shape.append(dim.dim_value)
    if not shape:
        raise ConversionError(f"input '{value.name}' has no shape")
    return value.name, tuple(shape)


def _infer_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    # Stale annotations (e.g. a symbolic batch we just pinned) would clash with what inference now derives.
    del model.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ConversionError(f"ONNX shape inference failed: {one_line(exc)}") from None
    shapes = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if value.type.tensor_type.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                       for d in value.type.tensor_type.shape.dim)
    return shapes


def _constant_outputs(node: onnx.NodeProto, index: GraphIndex, shapes: dict[str, tuple],
                      known: dict[str, np.ndarray], opset: int) -> list[np.ndarray] | None:
    """The outputs of a node whose result is fixed (all inputs constant, or Shape of a static tensor), else None."""
    if node.op_type in NONDETERMINISTIC_OPS:
        return None

    def value(name: str) -> np.ndarray | None:
        return known[name] if name in known else index.constant(name)

    inputs = [name for name in node.input if name]
    if node.op_type == "Shape":
        shape = shapes.get(node.input[0])
        if shape is None or any(d is None for d in shape):
            return None
        bounds = {attr.name: attr.i for attr in node.attribute}     # opset 15 start / end
        return [np.array(shape, dtype=np.int64)[bounds.get("start"):bounds.get("end")]]
    if node.op_type != "Constant" and (not inputs or any(value(name) is None for name in inputs)):
        return None
    try:
        results = ReferenceEvaluator(node, opsets={"": opset}).run(None, {name: value(name) for name in inputs})
    except Exception as exc:
        raise ConversionError(f"{node_label(node)}: cannot evaluate constant node ({one_line(exc)})") from None
    return [np.asarray(r) for r in results]


def _fold_constants(model: onnx.ModelProto) -> dict[str, tuple]:
    """Replace every node whose value is fixed by an initializer (Constant nodes, Identity over weights, shape
    arithmetic such as Shape -> Gather -> Concat -> Reshape from a dynamic-batch export), re-running shape
    inference until nothing changes, so converters see weights as constants and static shapes everywhere.
    Edits `model` in place; returns the final shapes."""
    opset = opset_version(model)
    while True:
        shapes = _infer_shapes(model)
        index = GraphIndex(model)
        known: dict[str, np.ndarray] = {}
        fixed = []
        for node in model.graph.node:
            outputs = _constant_outputs(node, index, shapes, known, opset)
            if outputs is not None:
                fixed.append(node)
                known.update((name, out) for name, out in zip(node.output, outputs) if name)
        if not fixed:
            return shapes
        for node in fixed:
            model.graph.node.remove(node)
        model.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in known.items())


def _build_net(model: onnx.ModelProto) -> tuple[caffe_pb2.NetParameter, ConversionContext, str, tuple]:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    input_name, input_shape = _fix_input(model)
    ctx = ConversionContext(model, _fold_constants(model))

    net = caffe_pb2.NetParameter(name=model.graph.name or "net")
    data = make_layer("Input", [], [ctx.top(input_name)])
    data.input_param.shape.add().dim.extend(input_shape)
    net.layer.append(data)

    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise ConversionError(f"{node_label(node)}: op domain '{node.domain}' is not supported")
        converter = OPS.get(node.op_type)
        if converter is None:
            raise ConversionError(f"{node_label(node)}: op {node.op_type} is not supported by the Caffe 1.0 "
                                  f"converter (known: {', '.join(sorted(OPS))})")
        net.layer.extend(converter(node, ctx))

    for output in model.graph.output:
        if output.name in ctx.transposes:
            raise ConversionError(f"graph output '{output.name}' is a transposed tensor: Caffe 1.0 has no Permute")
        if output.name not in ctx.blob_map:
            raise ConversionError(f"graph output '{output.name}' is a constant or produced by no layer")
    _check_names(net)
    return net, ctx, input_name, input_shape


def _check_names(net: caffe_pb2.NetParameter) -> None:
    """Unique layer names and no in-place layers: our tops are ONNX names, so a clash is a converter bug."""
    names, tops = set(), set()
    for layer in net.layer:
        if layer.name in names:
            raise ConversionError(f"duplicate Caffe layer name '{layer.name}'")
        names.add(layer.name)
        for top in layer.top:
            if top in tops or top in layer.bottom:
                raise ConversionError(f"Caffe blob '{top}' written twice (layer '{layer.name}')")
            tops.add(top)


# --- files ----------------------------------------------------------------------------------------------------
def _write_atomically(contents: dict[Path, bytes]) -> None:
    """Write every file to a temporary name next to it, then rename them all; on any error nothing is left.
    Opened with "xb" (not mkstemp) so the files get the usual umask permissions, not 0600."""
    pending: list[tuple[Path, Path]] = []
    try:
        for path, data in contents.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            pending.append((tmp, path))
            with open(tmp, "xb") as handle:
                handle.write(data)
        for tmp, path in pending:
            os.replace(tmp, path)
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)


def _prototxt_text(net: caffe_pb2.NetParameter, source: str) -> str:
    structure = caffe_pb2.NetParameter()
    structure.CopyFrom(net)
    for layer in structure.layer:
        del layer.blobs[:]
    return f"# Caffe 1.0 network converted by pfpld convert.onnx2caffe from {source}\n" + \
        text_format.MessageToString(structure)


def convert_onnx_to_caffe(model: onnx.ModelProto | str | Path, prototxt: Path, caffemodel: Path,
                          source_name: str | None = None) -> CaffeConversion:
    """Convert an ONNX model to a Caffe 1.0 prototxt + caffemodel.

    BatchNormalization directly after a Conv is folded here (fold_batchnorm_into_conv) so callers may pass
    onnxsim output or a raw export alike; other BatchNorms become BatchNorm + Scale. Any op, attribute or
    shape Caffe would compute differently raises ConversionError naming the node, and no file is written.
    `source_name` is what the prototxt's first comment calls the input (default: its path).
    """
    source = source_name or ("<ModelProto>" if isinstance(model, onnx.ModelProto) else str(model))
    prototxt, caffemodel = Path(prototxt), Path(caffemodel)
    folded_model, folded = fold_batchnorm_into_conv(load_onnx(model))
    assert_no_foldable_batchnorm(folded_model)
    net, ctx, input_name, input_shape = _build_net(folded_model)

    _write_atomically({prototxt: _prototxt_text(net, source).encode(), caffemodel: net.SerializeToString()})
    return CaffeConversion(
        prototxt=prototxt, caffemodel=caffemodel,
        layers=[(layer.name, layer.type) for layer in net.layer],
        blob_map={name: blob for name, blob in ctx.blob_map.items() if name not in ctx.transposes},
        input_name=input_name, input_shape=input_shape,
        outputs={o.name: ctx.blob_map[o.name] for o in folded_model.graph.output},
        folded_batchnorms=folded,
    )


def read_caffe(prototxt: Path, caffemodel: Path) -> CaffeFiles:
    """Parse a prototxt / caffemodel pair with our Caffe 1.0 subset (the preflight before NNIE, and tests).
    A field outside the subset (V1 `layers`, newer params) is a ConversionError naming the file."""
    prototxt, caffemodel = Path(prototxt), Path(caffemodel)
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(prototxt.read_text(), net)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
        raise ConversionError(f"{prototxt}: not a Caffe 1.0 prototxt we can read ({one_line(exc)})") from None
    weights_net = caffe_pb2.NetParameter()
    try:
        weights_net.ParseFromString(caffemodel.read_bytes())
    except Exception as exc:
        raise ConversionError(f"{caffemodel}: not a caffemodel ({one_line(exc)})") from None
    unknown = sorted({f.field_number for f in UnknownFieldSet(weights_net)})
    if unknown:
        what = "V1 `layers`" if 2 in unknown else f"fields {unknown}"
        raise ConversionError(f"{caffemodel}: uses {what}, outside the Caffe 1.0 subset")
    weights = {layer.name: [from_blob(b) for b in layer.blobs] for layer in weights_net.layer if layer.blobs}
    return CaffeFiles(net=net, weights=weights)
