"""Read-only helpers over an ONNX graph shared by the graph passes (fold_bn) and the ONNX -> Caffe converter:
loading a model file with a one-line error, who produces and who consumes each tensor, constant values
(initializers, Constant nodes, Identity chains over them), and how to name a node in an error message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from pfpld.errors import ConversionError, one_line


def load_onnx(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """A ModelProto from a path (or the proto itself). A missing, truncated or non-ONNX file is a one-line
    ConversionError naming the file, not a protobuf traceback."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ConversionError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load_model(str(path))
    except Exception as exc:  # protobuf DecodeError, external-data errors, ...
        raise ConversionError(f"{path}: not a readable ONNX model ({one_line(exc)})") from None
    # A random or truncated file sometimes decodes as an empty ModelProto: a model has a graph with nodes.
    if not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise ConversionError(f"{path}: not an ONNX model (no graph nodes after decoding)")
    return proto


def node_label(node: onnx.NodeProto) -> str:
    """How errors name a node: its name if it has one, else its first output (always unique in a valid graph)."""
    name = node.name or (node.output[0] if node.output else "?")
    return f"node '{name}' ({node.op_type})"


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    """The opset the model imports for `domain` ("" and "ai.onnx" are the same default domain), 0 if none."""
    default = {"", "ai.onnx"}
    for entry in model.opset_import:
        if entry.domain == domain or (entry.domain in default and domain in default):
            return entry.version
    return 0


def constant_from_node(node: onnx.NodeProto) -> np.ndarray | None:
    """Value of a Constant node (any of its value_* attributes), or None for anything else."""
    if node.op_type != "Constant":
        return None
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None  # sparse_value / value_string(s): not a numeric constant we can use


@dataclass
class GraphIndex:
    """Producer / consumer maps and constant lookup for one graph. Build a new index after editing the graph:
    it is a snapshot, not a live view."""
    model: onnx.ModelProto
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    graph_outputs: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        graph = self.model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_outputs = {o.name for o in graph.output}
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producers[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of `name` if it is fixed at export time: an initializer, a Constant node's output, or an
        Identity of one of those (the TorchScript exporter deduplicates equal weights through Identity)."""
        seen = 0
        while name and seen < 64:  # a chain longer than this is not an exporter's dedup: treat as non-constant
            if name in self.initializers:
                return numpy_helper.to_array(self.initializers[name])
            node = self.producers.get(name)
            if node is None:
                return None
            if node.op_type == "Constant":
                return constant_from_node(node)
            if node.op_type != "Identity":
                return None
            name = node.input[0]
            seen += 1
        return None

    def is_used(self, name: str) -> bool:
        """True when a node reads the tensor or the graph returns it."""
        return bool(self.consumers.get(name)) or name in self.graph_outputs

    def unique_name(self, base: str, taken: set[str]) -> str:
        """A tensor name not used anywhere in the graph nor in `taken` (which it extends)."""
        known = set(self.producers) | set(self.consumers) | set(self.initializers) | self.graph_outputs
        known |= {i.name for i in self.model.graph.input}
        candidate, n = base, 1
        while candidate in known or candidate in taken:
            candidate = f"{base}_{n}"
            n += 1
        taken.add(candidate)
        return candidate


def remove_dead_constants(model: onnx.ModelProto) -> None:
    """Drop initializers, Constant and Identity-of-constant nodes nothing reads any more (left behind when a
    pass replaces weights). Works in place; repeats until stable because removing one can free another."""
    graph = model.graph
    while True:
        index = GraphIndex(model)
        dead_nodes = [n for n in graph.node
                      if n.op_type in ("Constant", "Identity") and n.output
                      and (n.op_type == "Constant" or index.constant(n.output[0]) is not None)
                      and not any(index.is_used(o) for o in n.output if o)]
        dead_inits = [t for t in graph.initializer if not index.is_used(t.name)]
        if not dead_nodes and not dead_inits:
            return
        for node in dead_nodes:
            graph.node.remove(node)
        dead_names = {t.name for t in dead_inits}
        for tensor in dead_inits:
            graph.initializer.remove(tensor)
        # Old (IR < 4) models also list initializers as graph inputs.
        for value in [i for i in graph.input if i.name in dead_names]:
            graph.input.remove(value)
