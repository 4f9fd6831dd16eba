"""Export chain stage after onnxsim, before onnx2caffe: merge every BatchNormalization that directly follows a
Conv / ConvTranspose / Gemm (the embedding layer of recognition networks: Linear -> BatchNorm1d) into that layer's
weight and bias, then verify none is left. The NNIE-proven Caffe layer
set has no BatchNorm, and a folded conv is also what onnxsim and the runtimes compute, so parity holds.

Folding uses the inference semantics of BatchNormalization, Y = (X - running_mean) / sqrt(running_var + eps)
* scale + B, also for a node exported in training mode (`torch.onnx.export(..., training=PRESERVE)` on a
module in train(): opset <= 13 gives it 5 outputs, opset >= 14 gives 3 outputs and training_mode=1). Such a
node's extra outputs (updated running mean / var, saved batch statistics) only matter to a training step:
they are dropped when nothing reads them, and the fold is refused (ConversionError) when something does.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pfpld.errors import ConversionError

from .onnx_graph import GraphIndex, node_label, remove_dead_constants

CONV_OPS = ("Conv", "ConvTranspose", "Gemm")     # the layers a following BatchNormalization folds into


def _attribute(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _foldable_conv(index: GraphIndex, bn: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Conv this BN can be merged into: it produces the BN's input and nothing else reads that tensor
    (otherwise the un-normalised activation is still needed and the BN has to stay)."""
    conv = index.producers.get(bn.input[0])
    if conv is None or conv.op_type not in CONV_OPS:
        return None
    if conv.op_type == "Gemm":      # a product of two activations, or a per-row C (M, N), has no weight to fold into
        if index.constant(conv.input[1]) is None:
            return None
        bias = index.constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if bias is not None and bias.ndim == 2 and bias.shape[0] != 1:
            return None
    if len(index.consumers.get(bn.input[0], [])) != 1 or bn.input[0] in index.graph_outputs:
        return None
    return conv


def _require_constant(index: GraphIndex, node: onnx.NodeProto, name: str, what: str) -> np.ndarray:
    value = index.constant(name)
    if value is None:
        raise ConversionError(f"{node_label(node)}: {what} '{name}' is not a constant, cannot fold BatchNormalization")
    return value


def _check_extra_outputs_unused(index: GraphIndex, bn: onnx.NodeProto) -> None:
    for name in bn.output[1:]:
        if name and index.is_used(name):
            readers = [node_label(n) for n in index.consumers.get(name, [])] or ["the graph outputs"]
            raise ConversionError(
                f"{node_label(bn)}: training-mode output '{name}' (running/saved statistics) is read by "
                f"{', '.join(readers)}; only the inference output of a BatchNormalization can be folded")


def _bn_scale_shift(index: GraphIndex, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (a, b) with BN(x) = a * x + b, computed in float64."""
    if _attribute(bn, "spatial", 1) != 1:
        raise ConversionError(f"{node_label(bn)}: attribute spatial=0 (per-element statistics) is not supported")
    eps = float(_attribute(bn, "epsilon", 1e-5))
    gamma, beta, mean, var = (
        _require_constant(index, bn, name, what).astype(np.float64).reshape(-1)
        for name, what in zip(bn.input[1:5], ("scale", "B", "mean", "var")))
    a = gamma / np.sqrt(var + eps)
    return a, beta - mean * a


def _folded_weight(conv: onnx.NodeProto, weight: np.ndarray, a: np.ndarray) -> np.ndarray:
    w = weight.astype(np.float64)
    if conv.op_type == "Gemm":   # Y = alpha A B' + beta C: B (N, K) with transB, else (K, N); alpha stays
        return w * (a.reshape(-1, 1) if _attribute(conv, "transB", 0) else a.reshape(1, -1))
    if conv.op_type == "Conv":   # weight (out, in/group, k...): output channel is axis 0
        return w * a.reshape((-1,) + (1,) * (w.ndim - 1))
    # ConvTranspose weight (in, out/group, k...): input channel i of group i // (in/group) feeds output
    # channels group*(out/group) + j, so the factor depends on both axes.
    group = int(_attribute(conv, "group", 1))
    c_in, out_per_group = w.shape[0], w.shape[1]
    factor = a.reshape(group, 1, out_per_group)
    grouped = w.reshape((group, c_in // group, out_per_group) + w.shape[2:])
    return (grouped * factor.reshape(factor.shape + (1,) * (w.ndim - 2))).reshape(w.shape)


def _set_float_attribute(node: onnx.NodeProto, name: str, value: float) -> None:
    kept = [attr for attr in node.attribute if attr.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def _out_channels(conv: onnx.NodeProto, weight: np.ndarray) -> int:
    if conv.op_type == "Gemm":
        return weight.shape[0] if _attribute(conv, "transB", 0) else weight.shape[1]
    if conv.op_type == "Conv":
        return weight.shape[0]
    return weight.shape[1] * int(_attribute(conv, "group", 1))


def fold_batchnorm_into_conv(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` where each BatchNormalization fed only by a Conv / ConvTranspose / Gemm is merged into it
    (weights as initializers or Constant nodes; a missing conv bias is created). Returns the new model and the
    names of the folded BN nodes. The conv takes over the BN's output name: downstream names do not change, and
    every tensor name that survives still holds the values it held before (the conv's own pre-BN output is
    gone), which is what lets later stages be compared with the original model tensor by tensor.
    Weights of a conv shared with another node are copied, never edited in place."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    taken: set[str] = set()
    folded: list[str] = []
    removed_outputs: set[str] = set()

    # One fold at a time with a fresh index: folding BN1 of Conv -> BN1 -> BN2 makes BN2 foldable next.
    while True:
        index = GraphIndex(model)
        pair = next(((bn, conv) for bn in graph.node if bn.op_type == "BatchNormalization"
                     for conv in [_foldable_conv(index, bn)] if conv is not None), None)
        if pair is None:
            break
        bn, conv = pair
        _check_extra_outputs_unused(index, bn)
        a, b = _bn_scale_shift(index, bn)
        weight = _require_constant(index, conv, conv.input[1], "weight")
        if _out_channels(conv, weight) != a.size:
            raise ConversionError(f"{node_label(bn)}: {a.size} channels but {node_label(conv)} "
                                  f"produces {_out_channels(conv, weight)}")
        has_bias = len(conv.input) > 2 and conv.input[2] != ""
        bias = (_require_constant(index, conv, conv.input[2], "bias").astype(np.float64)
                if has_bias else np.zeros(a.size))
        if conv.op_type == "Gemm":      # C broadcasts (scalar, (N,), (1, N)) and is scaled by beta; beta becomes 1
            bias = np.broadcast_to(bias * float(_attribute(conv, "beta", 1.0)), (1, a.size))
            _set_float_attribute(conv, "beta", 1.0)
        bias = bias.reshape(-1)
        new_weight = _folded_weight(conv, weight, a).astype(weight.dtype)
        new_bias = (bias * a + b).astype(weight.dtype)

        stem = conv.name or conv.output[0]
        weight_name = index.unique_name(f"{stem}.folded_weight", taken)
        bias_name = index.unique_name(f"{stem}.folded_bias", taken)
        graph.initializer.append(numpy_helper.from_array(new_weight, weight_name))
        graph.initializer.append(numpy_helper.from_array(new_bias, bias_name))
        if model.ir_version < 4:  # old IR: every initializer must also be a graph input
            for name, value in ((weight_name, new_weight), (bias_name, new_bias)):
                graph.input.append(helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))

        del conv.input[1:]
        conv.input.extend([weight_name, bias_name])
        removed_outputs.add(conv.output[0])
        removed_outputs.update(o for o in bn.output[1:] if o)
        conv.output[0] = bn.output[0]
        graph.node.remove(bn)
        folded.append(bn.name or bn.output[0])
        # The previous fold's weights are now dead; dropping them keeps the graph (and the index) small.
        remove_dead_constants(model)

    # Shape annotations of tensors that no longer exist would mislead later shape inference.
    for value in [v for v in graph.value_info if v.name in removed_outputs]:
        graph.value_info.remove(value)
    return model, folded


def assert_no_foldable_batchnorm(model: onnx.ModelProto) -> None:
    """Raise ConversionError naming the first BatchNormalization that still directly follows a conv whose
    output it alone reads (fold_batchnorm_into_conv should have merged it). A BN after anything else, or after
    a conv whose output is also used elsewhere, is legitimate and left to the converter."""
    index = GraphIndex(model)
    for bn in model.graph.node:
        if bn.op_type == "BatchNormalization":
            conv = _foldable_conv(index, bn)
            if conv is not None:
                raise ConversionError(f"{node_label(bn)} still follows {node_label(conv)}: run "
                                      f"fold_batchnorm_into_conv first")
