"""What an op converter may ask about the graph while ONNX nodes become Caffe layers: constant tensors, static
shapes from ONNX shape inference, the Caffe blob that holds an ONNX tensor (after removed ops made it an
alias), fresh names, and the layout of a Transpose that was folded away instead of becoming a layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from pfpld.errors import ConversionError

from ..onnx_graph import GraphIndex, node_label, opset_version
from . import caffe_pb2


@dataclass(frozen=True)
class PendingTranspose:
    """A Transpose (batch axis kept first) that produced no layer: the Caffe blob still holds the tensor in
    `source_shape` order. Once flattened, only an InnerProduct may read it, with its weight columns permuted."""
    source_shape: tuple[int, ...]
    perm: tuple[int, ...]
    flattened: bool = False

    def column_order(self) -> np.ndarray:
        """order[j] = index in the Caffe (untransposed) flattening of the value ONNX has at flat index j."""
        caffe_index = np.arange(int(np.prod(self.source_shape[1:]))).reshape(self.source_shape[1:])
        return caffe_index.transpose([p - 1 for p in self.perm[1:]]).reshape(-1)


@dataclass
class ConversionContext:
    model: onnx.ModelProto
    shapes: dict[str, tuple]                              # ONNX tensor -> shape (ints, or None per unknown dim)
    index: GraphIndex = field(init=False)
    opset: int = field(init=False)
    blob_map: dict[str, str] = field(default_factory=dict)            # ONNX tensor -> Caffe blob
    transposes: dict[str, PendingTranspose] = field(default_factory=dict)
    _invented: set[str] = field(default_factory=set)    # auxiliary names given out so far

    def __post_init__(self) -> None:
        self.index = GraphIndex(self.model)
        self.opset = opset_version(self.model)

    # --- constants and shapes ------------------------------------------------------------------------------
    def constant(self, name: str) -> np.ndarray | None:
        return self.index.constant(name) if name else None

    def require_constant(self, node: onnx.NodeProto, name: str, what: str) -> np.ndarray:
        value = self.constant(name)
        if value is None:
            raise ConversionError(f"{node_label(node)}: {what} '{name}' must be a constant (Caffe stores it as "
                                  f"layer weights)")
        return value

    def shape(self, node: onnx.NodeProto, name: str) -> tuple[int, ...]:
        """Static shape of a tensor; refuses (naming the node) when shape inference left a dimension unknown."""
        value = self.constant(name)
        if value is not None:
            return tuple(value.shape)
        shape = self.shapes.get(name)
        if shape is None or any(d is None for d in shape):
            raise ConversionError(f"{node_label(node)}: shape of '{name}' is not static after ONNX shape inference "
                                  f"({shape}); run onnxsim or export with fixed input size")
        return shape

    # --- blobs, aliases, names ----------------------------------------------------------------------------
    def blob(self, node: onnx.NodeProto, name: str, allow_transposed: bool = False) -> str:
        """The Caffe blob holding ONNX tensor `name`, as read by `node`."""
        if name in self.transposes and not allow_transposed:
            raise ConversionError(f"{node_label(node)} reads '{name}', the output of a Transpose: Caffe 1.0 has no "
                                  f"Permute, only Transpose -> Flatten/Reshape -> Gemm/MatMul is folded")
        if name in self.blob_map:
            return self.blob_map[name]
        if self.constant(name) is not None:
            raise ConversionError(f"{node_label(node)}: input '{name}' is a constant; Caffe layers only take "
                                  f"constants as weights, not as bottoms")
        raise ConversionError(f"{node_label(node)}: input '{name}' is produced by no converted layer")

    def top(self, name: str) -> str:
        """Register an ONNX output as a Caffe top of the same name (ONNX names are unique: no in-place layers)."""
        self.blob_map[name] = name
        return name

    def alias(self, name: str, of: str, node: onnx.NodeProto) -> None:
        """Mark ONNX tensor `name` as the same values as `of` (a removed op such as Identity or Dropout)."""
        self.blob_map[name] = self.blob(node, of, allow_transposed=True)
        if of in self.transposes:
            self.transposes[name] = self.transposes[of]

    def fresh(self, base: str) -> str:
        """A name for an auxiliary Caffe blob / layer: it must not collide with any ONNX tensor name (those
        become Caffe tops) nor with another invented name."""
        return self.index.unique_name(base, self._invented)


def attributes(node: onnx.NodeProto, known: dict[str, object]) -> dict[str, object]:
    """The node's attributes over `known` defaults; an attribute the converter does not know is refused
    rather than ignored (ignoring one is how converters go silently wrong)."""
    values = dict(known)
    for attr in node.attribute:
        if attr.name not in known:
            raise ConversionError(f"{node_label(node)}: attribute '{attr.name}' is not supported")
        value = helper.get_attribute_value(attr)
        values[attr.name] = value.decode() if isinstance(value, bytes) else value
    return values


def refuse(node: onnx.NodeProto, why: str) -> ConversionError:
    return ConversionError(f"{node_label(node)}: {why}")


def make_layer(layer_type: str, bottoms: list[str], tops: list[str],
               blobs: tuple[np.ndarray, ...] = ()) -> caffe_pb2.LayerParameter:
    """A layer named after its first top (so OpenCV's net.forward(top) and Caffe's net.blobs[top] agree)."""
    layer = caffe_pb2.LayerParameter(name=tops[0], type=layer_type, bottom=bottoms, top=tops)
    for array in blobs:
        layer.blobs.append(to_blob(array))
    return layer


def to_blob(array: np.ndarray) -> caffe_pb2.BlobProto:
    array = np.ascontiguousarray(array, dtype=np.float32)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(array.shape)
    blob.data.extend(array.reshape(-1).tolist())
    return blob


def from_blob(blob: caffe_pb2.BlobProto) -> np.ndarray:
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:  # legacy 4-D fields of old caffemodels
        shape = tuple(d for d in (blob.num, blob.channels, blob.height, blob.width))
    data = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    return data.reshape(shape)
