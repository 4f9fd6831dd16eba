"""The op table of the ONNX -> Caffe 1.0 converter: OPS[op_type](node, ctx) -> Caffe layers. Each function
converts one ONNX node exactly or raises ConversionError naming the node and what Caffe cannot express;
adding an op is adding one function here and one test in tests/test_onnx2caffe.py.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from .context import ConversionContext, PendingTranspose, attributes, make_layer, refuse
from .geometry import (AxisWindows, caffe_ave_divisors, caffe_conv_out, caffe_deconv_out, caffe_pool_out,
                       explicit_pads, onnx_ave_divisors)
from . import caffe_pb2

Layers = list[caffe_pb2.LayerParameter]
Converter = Callable[[onnx.NodeProto, ConversionContext], Layers]


# --- shared helpers -----------------------------------------------------------------------------------------
def _spatial_axes(node, ctx, attrs, kernel: tuple[int, ...], dilations: tuple[int, ...]) -> list[AxisWindows]:
    """Per spatial axis: input size, dilated kernel, stride and explicit ONNX pads (auto_pad resolved)."""
    x_shape = ctx.shape(node, node.input[0])
    if len(x_shape) != 4:
        raise refuse(node, f"input of rank {len(x_shape)}: only 2-D (NCHW) windows are converted")
    strides = tuple(attrs["strides"] or (1, 1))
    pads = tuple(attrs["pads"] or (0, 0, 0, 0))
    axes = []
    for i, size in enumerate(x_shape[2:]):
        extent = dilations[i] * (kernel[i] - 1) + 1
        begin, end = explicit_pads(attrs["auto_pad"], size, extent, strides[i], (pads[i], pads[i + 2]))
        axes.append(AxisWindows(size, extent, strides[i], begin, end))
    return axes


def _set_window(param, kernel: tuple[int, ...], strides: tuple[int, ...], pads: tuple[int, ...],
                repeated: bool) -> None:
    """Kernel / stride / pad fields, in the square short form when both axes agree (what people and the NNIE
    mapper expect to read). Convolution declares them repeated, Pooling optional."""
    for field, values in (("kernel", kernel), ("stride", strides), ("pad", pads)):
        short = "kernel_size" if field == "kernel" else field
        if values[0] == values[1]:
            if field != "kernel" and values[0] == (1 if field == "stride" else 0):
                continue  # the Caffe default
            if repeated:
                getattr(param, short).append(values[0])
            else:
                setattr(param, short, values[0])
        else:
            setattr(param, f"{field}_h", values[0])
            setattr(param, f"{field}_w", values[1])


def _channel_vector(node, value: np.ndarray, x_shape: tuple[int, ...], what: str) -> np.ndarray:
    """A constant that broadcasts against x as a scalar or per channel (axis 1), as a (C,) vector."""
    if len(x_shape) < 2:
        raise refuse(node, f"input of rank {len(x_shape)}: a per-channel {what} needs a channel axis")
    channels = x_shape[1]
    if value.ndim > len(x_shape):
        raise refuse(node, f"{what} of shape {value.shape} has more axes than the input {x_shape}")
    aligned = value.reshape((1,) * (len(x_shape) - value.ndim) + value.shape)
    varying = [axis for axis, n in enumerate(aligned.shape) if n != 1]
    if not varying:
        return np.full(channels, aligned.reshape(()), dtype=np.float64)
    if varying == [1] and aligned.shape[1] == channels:
        return aligned.reshape(channels).astype(np.float64)
    raise refuse(node, f"{what} of shape {value.shape} is neither a scalar nor per-channel for input {x_shape}")


def _scale_layer(bottom: str, top: str, weight: np.ndarray, bias: np.ndarray | None) -> caffe_pb2.LayerParameter:
    """Per-channel a*x (+ b). Caffe's Bias layer would be the literal translation of an added constant, but
    OpenCV rejects it, so additions are a Scale with unit weights and bias_term."""
    blobs = (weight,) if bias is None else (weight, bias)
    layer = make_layer("Scale", [bottom], [top], blobs)
    layer.scale_param.axis = 1
    layer.scale_param.num_axes = 1
    if bias is not None:
        layer.scale_param.bias_term = True
    return layer


def _inner_product(node, ctx: ConversionContext, weight_nk: np.ndarray, bias: np.ndarray | None) -> Layers:
    """InnerProduct from a (N, K) weight; a folded Transpose upstream permutes the weight columns so Caffe's
    untransposed flattening meets the weights ONNX expects."""
    x = node.input[0]
    pending = ctx.transposes.get(x)
    if pending is not None:
        if not pending.flattened:
            raise refuse(node, f"reads Transpose output '{x}' before it is flattened")
        permuted = np.empty_like(weight_nk)
        permuted[:, pending.column_order()] = weight_nk
        weight_nk = permuted
    x_shape = ctx.shape(node, x)
    if x_shape[-1] != weight_nk.shape[1]:
        raise refuse(node, f"input {x_shape} does not match weight with {weight_nk.shape[1]} inputs")
    layer = make_layer("InnerProduct", [ctx.blob(node, x, allow_transposed=True)], [ctx.top(node.output[0])],
                       (weight_nk,) if bias is None else (weight_nk, bias))
    layer.inner_product_param.num_output = weight_nk.shape[0]
    layer.inner_product_param.bias_term = bias is not None
    if len(x_shape) != 2:   # apply over the last axis only, as MatMul does
        layer.inner_product_param.axis = len(x_shape) - 1
    return [layer]


def _check_unused_outputs(node, ctx: ConversionContext, what: str) -> None:
    for name in node.output[1:]:
        if name and ctx.index.is_used(name):
            raise refuse(node, f"output '{name}' ({what}) is used; Caffe has no equivalent")


# --- convolution ----------------------------------------------------------------------------------------------
CONV_ATTRS = {"auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None, "pads": None,
              "strides": None}


def convert_conv(node, ctx: ConversionContext) -> Layers:
    attrs = attributes(node, CONV_ATTRS)
    weight = ctx.require_constant(node, node.input[1], "weight")
    if weight.ndim != 4:
        raise refuse(node, f"weight of rank {weight.ndim}: only 2-D convolution is converted")
    bias = ctx.require_constant(node, node.input[2], "bias") if len(node.input) > 2 and node.input[2] else None
    kernel = tuple(weight.shape[2:])
    dilations = tuple(attrs["dilations"] or (1, 1))
    axes = _spatial_axes(node, ctx, attrs, kernel, dilations)
    y_shape = ctx.shape(node, node.output[0])
    for axis, onnx_out, name in zip(axes, y_shape[2:], "HW"):
        # Caffe pads both ends by pad_begin; the windows start at the same places as ONNX's, so the result is
        # identical whenever the window count agrees (a surplus end pad is never read).
        caffe_out = caffe_conv_out(axis.size, axis.kernel, axis.stride, axis.pad_begin)
        if caffe_out != onnx_out:
            raise refuse(node, f"pads {axis.pad_begin}/{axis.pad_end} on {name}: Caffe's symmetric padding gives "
                               f"{caffe_out} outputs where ONNX gives {onnx_out}")
    layer = make_layer("Convolution", [ctx.blob(node, node.input[0])], [ctx.top(node.output[0])],
                       (weight,) if bias is None else (weight, bias))
    param = layer.convolution_param
    param.num_output = weight.shape[0]
    param.bias_term = bias is not None
    if attrs["group"] != 1:
        param.group = attrs["group"]
    _set_window(param, kernel, tuple(a.stride for a in axes), tuple(a.pad_begin for a in axes), repeated=True)
    if dilations != (1, 1):
        if dilations[0] != dilations[1]:
            raise refuse(node, f"dilations {list(dilations)}: Caffe 1.0 has one dilation for both axes")
        param.dilation.append(dilations[0])
    return [layer]


def convert_conv_transpose(node, ctx: ConversionContext) -> Layers:
    attrs = attributes(node, {**CONV_ATTRS, "output_padding": None, "output_shape": None})
    if attrs["auto_pad"] not in ("NOTSET", "VALID"):
        raise refuse(node, f"attribute auto_pad={attrs['auto_pad']} is not supported for ConvTranspose")
    if any(attrs["output_padding"] or ()):
        raise refuse(node, f"attribute output_padding={list(attrs['output_padding'])}: Caffe Deconvolution has "
                           f"no output padding")
    weight = ctx.require_constant(node, node.input[1], "weight")
    if weight.ndim != 4:
        raise refuse(node, f"weight of rank {weight.ndim}: only 2-D deconvolution is converted")
    bias = ctx.require_constant(node, node.input[2], "bias") if len(node.input) > 2 and node.input[2] else None
    kernel = tuple(weight.shape[2:])
    dilations = tuple(attrs["dilations"] or (1, 1))
    strides = tuple(attrs["strides"] or (1, 1))
    pads = tuple(attrs["pads"] or (0, 0, 0, 0)) if attrs["auto_pad"] == "NOTSET" else (0, 0, 0, 0)
    x_shape, y_shape = ctx.shape(node, node.input[0]), ctx.shape(node, node.output[0])
    for i, name in enumerate("HW"):
        # Deconvolution padding crops the output: an asymmetric crop has no Caffe 1.0 spelling.
        if pads[i] != pads[i + 2]:
            raise refuse(node, f"pads {list(pads)}: asymmetric ConvTranspose padding on {name}")
        extent = dilations[i] * (kernel[i] - 1) + 1
        caffe_out = caffe_deconv_out(x_shape[2 + i], extent, strides[i], pads[i])
        if caffe_out != y_shape[2 + i]:
            raise refuse(node, f"Caffe Deconvolution gives {caffe_out} outputs on {name} where ONNX gives "
                               f"{y_shape[2 + i]} (output_shape?)")
    layer = make_layer("Deconvolution", [ctx.blob(node, node.input[0])], [ctx.top(node.output[0])],
                       (weight,) if bias is None else (weight, bias))
    param = layer.convolution_param
    param.num_output = weight.shape[1] * attrs["group"]
    param.bias_term = bias is not None
    if attrs["group"] != 1:
        param.group = attrs["group"]
    _set_window(param, kernel, strides, (pads[0], pads[1]), repeated=True)
    if dilations != (1, 1):
        if dilations[0] != dilations[1]:
            raise refuse(node, f"dilations {list(dilations)}: Caffe 1.0 has one dilation for both axes")
        param.dilation.append(dilations[0])
    return [layer]


# --- pooling -----------------------------------------------------------------------------------------------
def _pooling(node, ctx: ConversionContext, method: int, attrs: dict) -> Layers:
    kernel = tuple(attrs["kernel_shape"])
    if len(kernel) != 2:
        raise refuse(node, f"kernel_shape {list(kernel)}: only 2-D pooling is converted")
    if any(d != 1 for d in (attrs.get("dilations") or ())):
        raise refuse(node, f"attribute dilations={list(attrs['dilations'])}: Caffe pooling has no dilation")
    axes = _spatial_axes(node, ctx, attrs, kernel, (1, 1))
    y_shape = ctx.shape(node, node.output[0])
    is_average = method == caffe_pb2.PoolingParameter.AVE
    for axis, onnx_out, name in zip(axes, y_shape[2:], "HW"):
        if axis.pad_begin >= axis.kernel:
            raise refuse(node, f"pad {axis.pad_begin} >= kernel {axis.kernel} on {name}: Caffe refuses it")
        if axis.size + 2 * axis.pad_begin < axis.kernel:
            raise refuse(node, f"kernel {axis.kernel} larger than the padded input {axis.size} on {name}")
        caffe_out = caffe_pool_out(axis.size, axis.kernel, axis.stride, axis.pad_begin)
        if caffe_out != onnx_out:
            raise refuse(node, f"on {name} (size {axis.size}, kernel {axis.kernel}, stride {axis.stride}, pads "
                               f"{axis.pad_begin}/{axis.pad_end}) Caffe's ceil rounding gives {caffe_out} outputs "
                               f"where ONNX gives {onnx_out}; choose sizes where they agree")
        if is_average:
            caffe_div = caffe_ave_divisors(axis, onnx_out)
            onnx_div = onnx_ave_divisors(axis, onnx_out, bool(attrs["count_include_pad"]))
            if caffe_div != onnx_div:
                raise refuse(node, f"on {name} Caffe AVE divides by {caffe_div} (padding counted) where ONNX "
                                   f"(count_include_pad={attrs['count_include_pad']}) divides by {onnx_div}")
    layer = make_layer("Pooling", [ctx.blob(node, node.input[0])], [ctx.top(node.output[0])])
    layer.pooling_param.pool = method
    _set_window(layer.pooling_param, kernel, tuple(a.stride for a in axes), tuple(a.pad_begin for a in axes),
                repeated=False)
    return [layer]


def convert_max_pool(node, ctx: ConversionContext) -> Layers:
    attrs = attributes(node, {"auto_pad": "NOTSET", "ceil_mode": 0, "dilations": None, "kernel_shape": None,
                              "pads": None, "storage_order": 0, "strides": None})
    _check_unused_outputs(node, ctx, "argmax indices")
    return _pooling(node, ctx, caffe_pb2.PoolingParameter.MAX, attrs)


def convert_average_pool(node, ctx: ConversionContext) -> Layers:
    attrs = attributes(node, {"auto_pad": "NOTSET", "ceil_mode": 0, "count_include_pad": 0, "dilations": None,
                              "kernel_shape": None, "pads": None, "strides": None})
    return _pooling(node, ctx, caffe_pb2.PoolingParameter.AVE, attrs)


def _global_pooling(node, ctx: ConversionContext, method: int) -> Layers:
    # An explicit kernel equal to the input (stride 1, no pad) rather than global_pooling: that is the form
    # proven on the NNIE mapper, and OpenCV and Caffe compute the same 1x1 output from it.
    attributes(node, {})
    x_shape = ctx.shape(node, node.input[0])
    if len(x_shape) != 4:
        raise refuse(node, f"input of rank {len(x_shape)}: only NCHW global pooling is converted")
    layer = make_layer("Pooling", [ctx.blob(node, node.input[0])], [ctx.top(node.output[0])])
    layer.pooling_param.pool = method
    _set_window(layer.pooling_param, tuple(x_shape[2:]), (1, 1), (0, 0), repeated=False)
    return [layer]


def convert_global_average_pool(node, ctx: ConversionContext) -> Layers:
    return _global_pooling(node, ctx, caffe_pb2.PoolingParameter.AVE)


def convert_global_max_pool(node, ctx: ConversionContext) -> Layers:
    return _global_pooling(node, ctx, caffe_pb2.PoolingParameter.MAX)


# --- activations -------------------------------------------------------------------------------------------
def convert_relu(node, ctx: ConversionContext) -> Layers:
    attributes(node, {})
    return [make_layer("ReLU", [ctx.blob(node, node.input[0])], [ctx.top(node.output[0])])]


def convert_leaky_relu(node, ctx: ConversionContext) -> Layers:
    attrs = attributes(node, {"alpha": 0.01})
    layer = make_layer("ReLU", [ctx.blob(node, node.input[0])], [ctx.top(node.output[0])])
    layer.relu_param.negative_slope = attrs["alpha"]
    return [layer]


def convert_prelu(node, ctx: ConversionContext) -> Layers:
    attributes(node, {})
    x_shape = ctx.shape(node, node.input[0])
    slope = ctx.require_constant(node, node.input[1], "slope")
    shared = slope.size == 1
    values = slope.reshape(1) if shared else _channel_vector(node, slope, x_shape, "slope")
    layer = make_layer("PReLU", [ctx.blob(node, node.input[0])], [ctx.top(node.output[0])], (values,))
    if shared:
        layer.prelu_param.channel_shared = True
    return [layer]


def convert_sigmoid(node, ctx: ConversionContext) -> Layers:
    attributes(node, {})
    return [make_layer("Sigmoid", [ctx.blob(node, node.input[0])], [ctx.top(node.output[0])])]


def convert_softmax(node, ctx: ConversionContext) -> Layers:
    default_axis = -1 if ctx.opset >= 13 else 1
    attrs = attributes(node, {"axis": default_axis})
    x_shape = ctx.shape(node, node.input[0])
    axis = attrs["axis"] % len(x_shape)
    # Before opset 13 Softmax normalises over all axes from `axis` on; Caffe over `axis` alone.
    if ctx.opset < 13 and int(np.prod(x_shape[axis + 1:])) != 1:
        raise refuse(node, f"opset {ctx.opset} Softmax over axes {axis}.. of {x_shape}: Caffe normalises one axis")
    layer = make_layer("Softmax", [ctx.blob(node, node.input[0])], [ctx.top(node.output[0])])
    if axis != 1:
        layer.softmax_param.axis = axis
    return [layer]


# --- element-wise with a second operand ----------------------------------------------------------------------
ELTWISE = {"Add": caffe_pb2.EltwiseParameter.SUM, "Sub": caffe_pb2.EltwiseParameter.SUM,
           "Mul": caffe_pb2.EltwiseParameter.PROD}


def convert_binary(node, ctx: ConversionContext) -> Layers:
    """Add / Sub / Mul / Div. Two tensors of one shape -> Eltwise; a tensor and a scalar or per-channel
    constant -> Scale (weights and/or bias)."""
    attributes(node, {})
    a, b = node.input[0], node.input[1]
    const_a, const_b = ctx.constant(a), ctx.constant(b)
    out = ctx.shape(node, node.output[0])
    if const_a is None and const_b is None:
        if node.op_type not in ELTWISE:
            raise refuse(node, "division of two tensors: Caffe 1.0 has no element-wise division")
        shapes = (ctx.shape(node, a), ctx.shape(node, b))
        if shapes[0] != shapes[1]:
            raise refuse(node, f"operands of shapes {shapes[0]} and {shapes[1]}: Caffe Eltwise needs equal shapes")
        layer = make_layer("Eltwise", [ctx.blob(node, a), ctx.blob(node, b)], [ctx.top(node.output[0])])
        layer.eltwise_param.operation = ELTWISE[node.op_type]
        if node.op_type == "Sub":
            layer.eltwise_param.coeff.extend([1.0, -1.0])
        return [layer]
    if const_a is not None and const_b is not None:
        raise refuse(node, "both operands are constants (should have been folded)")
    x, c, const_first = (b, const_a, True) if const_a is not None else (a, const_b, False)
    x_shape = ctx.shape(node, x)
    if tuple(out) != tuple(x_shape):
        raise refuse(node, f"constant of shape {c.shape} broadcasts {x_shape} to {out}")
    v = _channel_vector(node, c, x_shape, "constant")
    ones = np.ones_like(v)
    op = node.op_type
    if op == "Mul":
        weight, bias = v, None
    elif op == "Add":
        weight, bias = ones, v
    elif op == "Sub":
        weight, bias = (-ones, v) if const_first else (ones, -v)
    elif const_first:
        raise refuse(node, "constant divided by a tensor: Caffe 1.0 has no reciprocal layer")
    else:
        if np.any(v == 0):
            raise refuse(node, "division by a constant containing zeros")
        weight, bias = 1.0 / v, None
    return [_scale_layer(ctx.blob(node, x), ctx.top(node.output[0]), weight, bias)]


# --- fully connected -----------------------------------------------------------------------------------------
def convert_gemm(node, ctx: ConversionContext) -> Layers:
    attrs = attributes(node, {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0})
    if attrs["transA"]:
        raise refuse(node, "attribute transA=1: InnerProduct needs the activations as the first operand")
    if ctx.constant(node.input[0]) is not None:
        raise refuse(node, "first operand is a constant: InnerProduct needs activations there")
    b = ctx.require_constant(node, node.input[1], "B").astype(np.float64)
    weight = (b if attrs["transB"] else b.T) * attrs["alpha"]          # Caffe InnerProduct weight is (N, K)
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = ctx.require_constant(node, node.input[2], "C").astype(np.float64)
        n = weight.shape[0]
        if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
            raise refuse(node, f"C of shape {c.shape}: only a bias broadcast over rows ((N,), (1,N), scalar)")
        bias = np.broadcast_to(c.reshape(-1), (n,)) * attrs["beta"]
    if len(ctx.shape(node, node.input[0])) != 2:
        raise refuse(node, f"input of rank {len(ctx.shape(node, node.input[0]))}: Gemm takes 2-D input")
    return _inner_product(node, ctx, weight, bias)


def convert_matmul(node, ctx: ConversionContext) -> Layers:
    attributes(node, {})
    if ctx.constant(node.input[0]) is not None:
        raise refuse(node, "first operand is a constant: InnerProduct needs activations there")
    b = ctx.constant(node.input[1])
    if b is None:
        raise refuse(node, "product of two tensors: Caffe 1.0 has no batched matrix multiply")
    if b.ndim != 2:
        raise refuse(node, f"weight of rank {b.ndim}: only a (K, N) matrix becomes an InnerProduct")
    if len(ctx.shape(node, node.input[0])) < 2:
        raise refuse(node, "input of rank 1: InnerProduct needs a batch axis")
    return _inner_product(node, ctx, b.T.astype(np.float64), None)


# --- shape ops -----------------------------------------------------------------------------------------------
def convert_flatten(node, ctx: ConversionContext) -> Layers:
    attrs = attributes(node, {"axis": 1})
    axis = attrs["axis"]       # in [-rank, rank]: rank itself is legal (all axes into the first dimension)
    return _to_2d_or_reshape(node, ctx, axis + len(ctx.shape(node, node.input[0])) if axis < 0 else axis)


def convert_reshape(node, ctx: ConversionContext) -> Layers:
    attributes(node, {"allowzero": 0})
    x_shape, y_shape = ctx.shape(node, node.input[0]), ctx.shape(node, node.output[0])
    if len(y_shape) == 2 and y_shape[0] == x_shape[0]:
        return _to_2d_or_reshape(node, ctx, 1)
    if node.input[0] in ctx.transposes:
        raise refuse(node, f"reshapes Transpose output to {y_shape}: only a flatten to (N, -1) is folded")
    return [_reshape_layer(node, ctx, x_shape, y_shape, copy_batch=y_shape[0] == x_shape[0])]


def _to_2d_or_reshape(node, ctx: ConversionContext, axis: int) -> Layers:
    """ONNX Flatten(axis) -> Caffe Flatten when axis is 1 (same result), a Reshape otherwise. Never in place:
    the top is the ONNX output name. A folded Transpose travels through, now as a column order."""
    x, y = node.input[0], node.output[0]
    x_shape = ctx.shape(node, x)
    pending = ctx.transposes.get(x)
    if pending is not None:
        if axis != 1:
            raise refuse(node, f"flattens Transpose output from axis {axis}: only axis 1 is folded")
        consumers = ctx.index.consumers.get(y, [])
        if y in ctx.index.graph_outputs or any(n.op_type not in ("Gemm", "MatMul") for n in consumers):
            raise refuse(node, "flattened Transpose output must feed only Gemm/MatMul (Caffe 1.0 has no Permute)")
        ctx.transposes[y] = PendingTranspose(pending.source_shape, pending.perm, flattened=True)
    if axis != 1:
        y_shape = (int(np.prod(x_shape[:axis])), int(np.prod(x_shape[axis:])))
        return [_reshape_layer(node, ctx, x_shape, y_shape, copy_batch=False)]
    layer = make_layer("Flatten", [ctx.blob(node, x, allow_transposed=True)], [ctx.top(y)])
    return [layer]


def _reshape_layer(node, ctx: ConversionContext, x_shape, y_shape, copy_batch: bool) -> caffe_pb2.LayerParameter:
    layer = make_layer("Reshape", [ctx.blob(node, node.input[0])], [ctx.top(node.output[0])])
    # dim 0 = "copy the batch", so the prototxt still works for another batch size (NNIE batch_num). Exact at
    # the converted batch size (1); for a Reshape that keeps the leading size it is also what ONNX meant.
    dims = [0 if copy_batch else y_shape[0]] + list(y_shape[1:])
    layer.reshape_param.shape.dim.extend(dims)
    return layer


def convert_transpose(node, ctx: ConversionContext) -> Layers:
    attrs = attributes(node, {"perm": None})
    x_shape = ctx.shape(node, node.input[0])
    perm = tuple(attrs["perm"] or reversed(range(len(x_shape))))
    if perm == tuple(range(len(x_shape))):
        ctx.alias(node.output[0], node.input[0], node)
        return []
    if perm[0] != 0:
        raise refuse(node, f"perm {list(perm)} moves the batch axis: Caffe 1.0 has no Permute")
    for consumer in ctx.index.consumers.get(node.output[0], []):
        if consumer.op_type not in ("Flatten", "Reshape"):
            raise refuse(node, f"perm {list(perm)} feeds {consumer.op_type}: Caffe 1.0 has no Permute; only "
                               f"Transpose -> Flatten -> Gemm is folded into the InnerProduct weights")
    if node.output[0] in ctx.index.graph_outputs:
        raise refuse(node, f"perm {list(perm)} on a graph output: Caffe 1.0 has no Permute")
    ctx.alias(node.output[0], node.input[0], node)
    ctx.transposes[node.output[0]] = PendingTranspose(tuple(x_shape), perm)
    return []


def convert_concat(node, ctx: ConversionContext) -> Layers:
    attrs = attributes(node, {"axis": None})
    inputs = [name for name in node.input if name]
    if attrs["axis"] is None:
        raise refuse(node, "Concat without an axis attribute")
    rank = len(ctx.shape(node, inputs[0]))
    axis = attrs["axis"] % rank
    if len(inputs) == 1:
        ctx.alias(node.output[0], inputs[0], node)
        return []
    layer = make_layer("Concat", [ctx.blob(node, name) for name in inputs], [ctx.top(node.output[0])])
    if axis != 1:
        layer.concat_param.axis = axis
    return [layer]


# --- removed at inference ------------------------------------------------------------------------------------
def convert_identity(node, ctx: ConversionContext) -> Layers:
    attributes(node, {})
    ctx.alias(node.output[0], node.input[0], node)
    return []


def convert_dropout(node, ctx: ConversionContext) -> Layers:
    attributes(node, {"ratio": 0.5, "seed": 0, "is_test": 0})   # is_test: opset < 7
    _check_unused_outputs(node, ctx, "dropout mask")
    training = ctx.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and (training is None or bool(training)):
        raise refuse(node, "training_mode is not a constant false: only inference Dropout (identity) is converted")
    ctx.alias(node.output[0], node.input[0], node)
    return []


def convert_batch_norm(node, ctx: ConversionContext) -> Layers:
    """A BatchNormalization that follows no conv (fold_bn merged the others): Caffe BatchNorm (normalise with
    the stored statistics) + Scale (gamma, beta). Inference semantics, as in fold_bn."""
    attrs = attributes(node, {"epsilon": 1e-5, "momentum": 0.9, "spatial": 1, "training_mode": 0})
    if attrs["spatial"] != 1:
        raise refuse(node, "attribute spatial=0 (per-element statistics) is not supported")
    _check_unused_outputs(node, ctx, "training statistics")
    gamma, beta, mean, var = (ctx.require_constant(node, name, what).reshape(-1)
                              for name, what in zip(node.input[1:5], ("scale", "B", "mean", "var")))
    normalized = ctx.fresh(f"{node.output[0]}/bn")
    bn = make_layer("BatchNorm", [ctx.blob(node, node.input[0])], [normalized],
                    # The third blob is the moving-average scale factor Caffe divides mean and var by: 1.0 means
                    # "use them as they are" (0 would make Caffe zero them).
                    (mean, var, np.ones(1, dtype=np.float32)))
    bn.batch_norm_param.use_global_stats = True
    bn.batch_norm_param.eps = attrs["epsilon"]
    scale = _scale_layer(normalized, ctx.top(node.output[0]), gamma, beta)
    return [bn, scale]


OPS: dict[str, Converter] = {
    "Conv": convert_conv,
    "ConvTranspose": convert_conv_transpose,
    "MaxPool": convert_max_pool,
    "AveragePool": convert_average_pool,
    "GlobalAveragePool": convert_global_average_pool,
    "GlobalMaxPool": convert_global_max_pool,
    "Relu": convert_relu,
    "LeakyRelu": convert_leaky_relu,
    "PRelu": convert_prelu,
    "Sigmoid": convert_sigmoid,
    "Softmax": convert_softmax,
    "Add": convert_binary,
    "Sub": convert_binary,
    "Mul": convert_binary,
    "Div": convert_binary,
    "Gemm": convert_gemm,
    "MatMul": convert_matmul,
    "Flatten": convert_flatten,
    "Reshape": convert_reshape,
    "Transpose": convert_transpose,
    "Concat": convert_concat,
    "Identity": convert_identity,
    "Dropout": convert_dropout,
    "BatchNormalization": convert_batch_norm,
}
