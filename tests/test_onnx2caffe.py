"""ONNX -> Caffe converter, op by op: small torch nets exported with the TorchScript exporter (opset 13), converted,
and run through onnxruntime and OpenCV's Caffe reader on the same random input. Whatever Caffe would compute
differently must be refused with the node's name, never converted silently."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from caffe_parity import EXPORT_WARNINGS, Net, convert_and_compare, export, randomize_bn, run_onnxruntime
from convert.onnx2caffe import OPS, caffe_pb2, convert_onnx_to_caffe, read_caffe
from convert.onnx2caffe.geometry import caffe_pool_out
from pfpld.errors import ConversionError
from pfpld.models import build_model

torch.manual_seed(0)
pytestmark = EXPORT_WARNINGS


# --- the caffe.proto subset -------------------------------------------------------------------------------------
CAFFE_1_0_FIELDS = {   # FACTS.md section 5
    "NetParameter": {"name": 1, "input": 3, "input_shape": 8, "layer": 100},
    "LayerParameter": {"name": 1, "type": 2, "bottom": 3, "top": 4, "blobs": 7, "phase": 10, "concat_param": 104,
                       "convolution_param": 106, "dropout_param": 108, "eltwise_param": 110,
                       "inner_product_param": 117, "pooling_param": 121, "relu_param": 123, "sigmoid_param": 124,
                       "softmax_param": 125, "prelu_param": 131, "reshape_param": 133, "flatten_param": 135,
                       "batch_norm_param": 139, "bias_param": 141, "scale_param": 142, "input_param": 143},
    "BlobShape": {"dim": 1}, "BlobProto": {"shape": 7, "data": 5},
    "ConvolutionParameter": {"num_output": 1, "bias_term": 2, "pad": 3, "kernel_size": 4, "group": 5, "stride": 6,
                             "pad_h": 9, "pad_w": 10, "kernel_h": 11, "kernel_w": 12, "stride_h": 13,
                             "stride_w": 14, "dilation": 18},
    "PoolingParameter": {"pool": 1, "kernel_size": 2, "stride": 3, "pad": 4, "kernel_h": 5, "kernel_w": 6,
                         "stride_h": 7, "stride_w": 8, "pad_h": 9, "pad_w": 10, "global_pooling": 12},
    "InnerProductParameter": {"num_output": 1, "bias_term": 2, "axis": 5, "transpose": 6},
    "BatchNormParameter": {"use_global_stats": 1, "moving_average_fraction": 2, "eps": 3},
    "ScaleParameter": {"axis": 1, "num_axes": 2, "bias_term": 4}, "PReLUParameter": {"channel_shared": 2},
    "EltwiseParameter": {"operation": 1, "coeff": 2}, "ConcatParameter": {"axis": 2},
    "FlattenParameter": {"axis": 1, "end_axis": 2}, "ReshapeParameter": {"shape": 1, "axis": 2, "num_axes": 3},
    "InputParameter": {"shape": 1}, "SoftmaxParameter": {"axis": 2}, "ReLUParameter": {"negative_slope": 1},
}


def test_caffe_proto_subset_has_caffe_1_0_field_numbers_and_nothing_newer():
    for message, fields in CAFFE_1_0_FIELDS.items():
        descriptor = caffe_pb2.DESCRIPTOR.message_types_by_name[message]
        assert {name: descriptor.fields_by_name[name].number for name in fields} == fields, message
    layer = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert "clip_param" not in layer and "swish_param" not in layer
    assert "round_mode" not in caffe_pb2.PoolingParameter.DESCRIPTOR.fields_by_name
    assert "layers" not in caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name
    assert caffe_pb2.BlobShape.DESCRIPTOR.fields_by_name["dim"].GetOptions().packed
    assert caffe_pb2.LayerParameter().scale_param.bias_term is False       # Caffe's default, relied upon
    assert caffe_pb2.BatchNormParameter().eps == pytest.approx(1e-5)


def test_generated_caffe_pb2_matches_caffe_proto(tmp_path):
    # caffe_pb2.py is committed generated code: it must be what regenerate_pb2.sh makes from caffe.proto now
    # (the script adds a 3-line header to protoc's output).
    from grpc_tools import protoc
    source = Path(caffe_pb2.__file__).with_name("caffe.proto")
    assert protoc.main(["protoc", f"--proto_path={source.parent}", f"--python_out={tmp_path}", source.name]) == 0
    committed = source.with_name("caffe_pb2.py").read_text().splitlines()
    assert committed[0].startswith("# Generated code: do not edit")
    assert committed[3:] == (tmp_path / "caffe_pb2.py").read_text().splitlines()


def roundtrip(module: nn.Module, shape, tmp_path, intermediates: bool = True, **export_options):
    path = tmp_path / "model.onnx"
    x = export(module.eval(), shape, path, **export_options)
    return convert_and_compare(path, x, tmp_path, intermediates=intermediates)


def make_onnx(tmp_path, nodes, input_shape, output_name, initializers=(), opset=13, name="model.onnx"):
    """A hand-built graph for what the torch exporter does not produce (asymmetric pads, Gemm alpha/beta, ...)."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, str(path))
    return path, np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)


def assert_refused(tmp_path, source, *fragments):
    """ConversionError with a one-line message containing every fragment, and no file written."""
    with pytest.raises(ConversionError) as info:
        convert_onnx_to_caffe(source, tmp_path / "out.prototxt", tmp_path / "out.caffemodel")
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert not list(tmp_path.glob("out.*")) and not list(tmp_path.glob(".out.*"))
    return message


# --- convolution ----------------------------------------------------------------------------------------------
CONVS = {
    "plain_bias": (nn.Conv2d(3, 8, 3, padding=1), (1, 3, 9, 9)),
    "no_bias_stride2_odd": (nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), (1, 3, 15, 15)),
    "grouped": (nn.Conv2d(4, 8, 3, padding=1, groups=2), (1, 4, 8, 8)),
    "depthwise": (nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), (1, 8, 14, 14)),
    "dilated": (nn.Conv2d(3, 6, 3, padding=2, dilation=2), (1, 3, 11, 11)),
    "rectangular": (nn.Conv2d(3, 4, (3, 1), stride=(2, 1), padding=(1, 0)), (1, 3, 10, 7)),
    "same_upper_odd_kernel": (nn.Conv2d(3, 4, 3, padding="same"), (1, 3, 8, 8)),
}


@pytest.mark.parametrize("case", sorted(CONVS))
def test_convolutions_match_opencv(case, tmp_path):
    module, shape = CONVS[case]
    parity = roundtrip(Net(lambda s, x: s.conv(x), conv=module), shape, tmp_path)
    parity.assert_close()
    assert [t for _, t in parity.conversion.layers] == ["Input", "Convolution"]


def test_asymmetric_conv_pads_repaired_when_windows_agree(tmp_path):
    # pads 1/2 with k3 s2 on 9: ONNX and Caffe (pad 1 both ends) both give 5 windows at the same places.
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3))
    path, x = make_onnx(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"], name="conv_asym",
                                                    kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 2, 2])],
                        (1, 3, 9, 9), "y", [("w", w)])
    parity = convert_and_compare(path, x, tmp_path)
    parity.assert_close()
    text = parity.conversion.prototxt.read_text()
    assert "pad: 1" in text and "pad_h" not in text


def test_weights_in_constant_nodes_and_behind_identity(tmp_path):
    rng = np.random.default_rng(5)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    path, x = make_onnx(tmp_path, [
        helper.make_node("Constant", [], ["w"], value=weight),
        helper.make_node("Identity", ["w"], ["w2"]),
        helper.make_node("Constant", [], ["k"], value_floats=[0.5, 1.0, 1.5, 2.0]),
        helper.make_node("Constant", [], ["shape"], value_ints=[1, 4, 1, 1]),
        helper.make_node("Reshape", ["k", "shape"], ["k4"]),
        helper.make_node("Conv", ["x", "w2"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Mul", ["c", "k4"], ["y"])], (1, 3, 6, 6), "y")
    parity = convert_and_compare(path, x, tmp_path)
    parity.assert_close()
    assert [t for _, t in parity.conversion.layers] == ["Input", "Convolution", "Scale"]


def test_asymmetric_conv_pads_refused_when_windows_differ(tmp_path):
    w = np.zeros((4, 3, 3, 3))
    path, _ = make_onnx(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"], name="conv_asym",
                                                    kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])],
                        (1, 3, 8, 8), "y", [("w", w)])
    assert_refused(tmp_path, path, "conv_asym", "Conv", "pads 0/1")


def test_same_padding_with_even_kernel_refused(tmp_path):
    # torch padding="same" with k4 exports auto_pad=SAME_UPPER, pads 1/2: no symmetric Caffe equivalent.
    path = tmp_path / "same.onnx"
    export(Net(lambda s, x: s.conv(x), conv=nn.Conv2d(3, 4, 4, padding="same")).eval(), (1, 3, 8, 8), path)
    assert_refused(tmp_path, path, "/conv/Conv", "pads 1/2")


def test_conv_transpose_matches_opencv(tmp_path):
    net = Net(lambda s, x: s.up2(torch.relu(s.up1(x))),
              up1=nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1), up2=nn.ConvTranspose2d(6, 4, 3, groups=2))
    parity = roundtrip(net, (1, 4, 5, 7), tmp_path)
    parity.assert_close()
    assert [t for _, t in parity.conversion.layers].count("Deconvolution") == 2


def test_conv_transpose_output_padding_refused(tmp_path):
    path = tmp_path / "up.onnx"
    export(Net(lambda s, x: s.up(x), up=nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1)),
           (1, 4, 5, 5), path)
    assert_refused(tmp_path, path, "/up/ConvTranspose", "ConvTranspose", "output_padding")


# --- pooling --------------------------------------------------------------------------------------------------
def test_caffe_pool_size_formula():
    assert caffe_pool_out(15, 3, 2, 0) == 7      # (15 - 3) / 2 exact: ceil == floor
    assert caffe_pool_out(14, 3, 2, 0) == 7      # ceil(5.5) + 1, where ONNX (floor) gives 6
    assert caffe_pool_out(14, 3, 2, 1) == 8      # ceil(6.5) + 1, where ONNX gives 7
    assert caffe_pool_out(5, 2, 3, 1) == 2       # ceil(5 / 3) + 1 = 3, but window 3 would start in the end pad


POOLS = {
    "max_k3s2_15": (lambda x: nn.functional.max_pool2d(x, 3, 2), (1, 4, 15, 15)),
    "max_k3s2_ceil_14": (lambda x: nn.functional.max_pool2d(x, 3, 2, ceil_mode=True), (1, 4, 14, 14)),
    "max_k3s2p1_15": (lambda x: nn.functional.max_pool2d(x, 3, 2, 1), (1, 4, 15, 15)),
    "max_k2s2_14": (lambda x: nn.functional.max_pool2d(x, 2), (1, 4, 14, 14)),
    "avg_k3s2p1_15_include_pad": (lambda x: nn.functional.avg_pool2d(x, 3, 2, 1), (1, 4, 15, 15)),
    "avg_k3s1p1_include_pad": (lambda x: nn.functional.avg_pool2d(x, 3, 1, 1), (1, 4, 6, 6)),
    "avg_k2s2_ceil_15": (lambda x: nn.functional.avg_pool2d(x, 2, ceil_mode=True), (1, 4, 15, 15)),
    "avg_whole_14": (lambda x: nn.functional.avg_pool2d(x, 14), (1, 4, 14, 14)),
    "global_avg": (lambda x: nn.functional.adaptive_avg_pool2d(x, 1), (1, 4, 7, 5)),
    "global_max_as_maxpool": (lambda x: nn.functional.adaptive_max_pool2d(x, 1), (1, 4, 6, 6)),
}


@pytest.mark.parametrize("case", sorted(POOLS))
def test_pooling_matches_opencv(case, tmp_path):
    fn, shape = POOLS[case]
    parity = roundtrip(Net(lambda s, x: fn(x)), shape, tmp_path)
    parity.assert_close()
    assert "global_pooling" not in parity.conversion.prototxt.read_text()


def test_global_max_pool_becomes_explicit_kernel(tmp_path):
    path, x = make_onnx(tmp_path, [helper.make_node("GlobalMaxPool", ["x"], ["y"])], (1, 3, 5, 7), "y")
    parity = convert_and_compare(path, x, tmp_path)
    parity.assert_close()
    text = parity.conversion.prototxt.read_text()
    assert "kernel_h: 5" in text and "kernel_w: 7" in text and "global_pooling" not in text


@pytest.mark.parametrize("fn, shape, fragments", [
    (lambda x: nn.functional.max_pool2d(x, 3, 2), (1, 4, 14, 14), ["/MaxPool", "MaxPool", "gives 7", "gives 6"]),
    (lambda x: nn.functional.max_pool2d(x, 3, 2, 1), (1, 4, 14, 14), ["/MaxPool", "gives 8", "gives 7"]),
    (lambda x: nn.functional.avg_pool2d(x, 3, 2, 1), (1, 4, 14, 14), ["/AveragePool", "gives 8", "gives 7"]),
    (lambda x: nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False), (1, 4, 6, 6),
     ["/AveragePool", "count_include_pad=0"]),
])
def test_pooling_caffe_would_compute_differently_is_refused(fn, shape, fragments, tmp_path):
    path = tmp_path / "pool.onnx"
    export(Net(lambda s, x: fn(x)), shape, path)
    assert_refused(tmp_path, path, *fragments)


# --- activations, softmax, concat, shapes ---------------------------------------------------------------------
ELEMENTWISE = {
    "relu_leaky_sigmoid": (Net(lambda s, x: torch.sigmoid(nn.functional.leaky_relu(torch.relu(s.c(x)) - 0.5, 0.2)),
                               c=nn.Conv2d(3, 4, 1)), (1, 3, 6, 6)),
    "prelu_per_channel": (Net(lambda s, x: s.p(s.c(x)), c=nn.Conv2d(3, 4, 1), p=nn.PReLU(4, 0.1)), (1, 3, 5, 5)),
    "prelu_shared": (Net(lambda s, x: s.p(s.c(x)), c=nn.Conv2d(3, 4, 1), p=nn.PReLU(1, 0.3)), (1, 3, 5, 5)),
    "softmax_channels": (Net(lambda s, x: torch.softmax(s.c(x), 1), c=nn.Conv2d(3, 5, 1)), (1, 3, 4, 4)),
    "softmax_after_fc": (Net(lambda s, x: torch.softmax(s.fc(torch.flatten(x, 1)), -1), fc=nn.Linear(48, 7)),
                         (1, 3, 4, 4)),
    "concat_channels": (Net(lambda s, x: torch.cat([s.a(x), s.b(x)], 1), a=nn.Conv2d(3, 2, 1), b=nn.Conv2d(3, 5, 1)),
                        (1, 3, 4, 4)),
    "concat_features": (Net(lambda s, x: torch.cat([torch.flatten(s.a(x), 1), torch.flatten(x, 1)], 1),
                            a=nn.Conv2d(3, 2, 1)), (1, 3, 4, 4)),
    "eltwise_add_mul_sub": (Net(lambda s, x: (s.a(x) + s.b(x)) * s.b(x) - s.a(x),
                                a=nn.Conv2d(3, 4, 3, padding=1), b=nn.Conv2d(3, 4, 1)), (1, 3, 6, 6)),
    "reshape_3d_and_4d": (Net(lambda s, x: torch.relu(s.c(x).reshape(1, 4, 2, 9)).reshape(1, 8, 9),
                              c=nn.Conv2d(3, 8, 3)), (1, 3, 5, 5)),
    "flatten_gemm": (Net(lambda s, x: s.fc2(torch.relu(s.fc1(torch.flatten(s.c(x), 1)))),
                         c=nn.Conv2d(3, 4, 3), fc1=nn.Linear(4 * 3 * 3, 16), fc2=nn.Linear(16, 5, bias=False)),
                     (1, 3, 5, 5)),
    "matmul_constant_weight": (Net(lambda s, x: torch.flatten(x, 1) @ s.w.weight.T, w=nn.Linear(48, 6, bias=False)),
                               (1, 3, 4, 4)),
    "matmul_last_axis_of_3d": (Net(lambda s, x: x.reshape(1, 3, 16) @ s.w.weight.T, w=nn.Linear(16, 6, bias=False)),
                               (1, 3, 4, 4)),
}


@pytest.mark.parametrize("case", sorted(ELEMENTWISE))
def test_layers_match_opencv(case, tmp_path):
    module, shape = ELEMENTWISE[case]
    roundtrip(module, shape, tmp_path).assert_close()


def test_prelu_and_leaky_relu_types(tmp_path):
    parity = roundtrip(ELEMENTWISE["prelu_shared"][0], (1, 3, 5, 5), tmp_path)
    files = read_caffe(parity.conversion.prototxt, parity.conversion.caffemodel)
    prelu = [layer for layer in files.net.layer if layer.type == "PReLU"][0]
    assert prelu.prelu_param.channel_shared
    assert files.weights[prelu.name][0].shape == (1,)


def test_reshape_and_flatten_are_never_in_place(tmp_path):
    parity = roundtrip(ELEMENTWISE["reshape_3d_and_4d"][0], (1, 3, 5, 5), tmp_path)
    files = read_caffe(parity.conversion.prototxt, parity.conversion.caffemodel)
    reshapes = [layer for layer in files.net.layer if layer.type in ("Reshape", "Flatten")]
    assert len(reshapes) == 2
    for layer in reshapes:
        assert layer.top[0] != layer.bottom[0]
        assert list(layer.reshape_param.shape.dim)[0] == 0      # batch copied, not hard-coded


@pytest.mark.parametrize("axis", [2, -1, 4])
def test_flatten_from_another_axis_becomes_reshape(axis, tmp_path):
    path, x = make_onnx(tmp_path, [helper.make_node("Flatten", ["x"], ["f"], axis=axis),
                                   helper.make_node("Relu", ["f"], ["y"])], (1, 3, 4, 5), "y")
    parity = convert_and_compare(path, x, tmp_path)
    parity.assert_close()
    assert [t for _, t in parity.conversion.layers] == ["Input", "Reshape", "ReLU"]


PER_CHANNEL = {
    "add_per_channel": lambda s, x: s.c(x) + s.k,
    "mul_per_channel": lambda s, x: s.c(x) * s.k,
    "sub_per_channel": lambda s, x: s.c(x) - s.k,
    "constant_minus_tensor": lambda s, x: s.k - s.c(x),
    "div_per_channel": lambda s, x: s.c(x) / (s.k.abs() + 0.5),
    "scalar_add_mul": lambda s, x: s.c(x) * 1.5 + 0.25,
}


@pytest.mark.parametrize("case", sorted(PER_CHANNEL))
def test_per_channel_constants_become_scale(case, tmp_path):
    net = Net(PER_CHANNEL[case], c=nn.Conv2d(3, 4, 1))
    net.register_buffer("k", torch.randn(1, 4, 1, 1))
    parity = roundtrip(net, (1, 3, 5, 5), tmp_path)
    parity.assert_close()
    types = [t for _, t in parity.conversion.layers]
    assert "Bias" not in types and "Scale" in types


def test_non_channel_constant_refused(tmp_path):
    net = Net(lambda s, x: x + s.k)
    net.register_buffer("k", torch.randn(1, 1, 5, 5))
    path = tmp_path / "m.onnx"
    export(net, (1, 3, 5, 5), path)
    assert_refused(tmp_path, path, "/Add", "neither a scalar nor per-channel")


def test_gemm_alpha_beta_and_untransposed_weight(tmp_path):
    rng = np.random.default_rng(2)
    path, x = make_onnx(tmp_path, [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "b", "c"], ["y"], name="gemm", alpha=0.5, beta=2.0, transB=0)],
        (1, 2, 3, 4), "y", [("b", rng.standard_normal((24, 5))), ("c", rng.standard_normal((1, 5)))])
    convert_and_compare(path, x, tmp_path).assert_close()


def test_transpose_flatten_gemm_folded_into_weights(tmp_path):
    for flatten in (lambda y: torch.flatten(y, 1), lambda y: y.reshape(y.shape[0], -1)):
        net = Net(lambda s, x: s.fc(flatten(s.c(x).permute(0, 2, 3, 1))), c=nn.Conv2d(3, 4, 1),
                  fc=nn.Linear(4 * 3 * 5, 6))
        parity = roundtrip(net, (1, 3, 3, 5), tmp_path)
        parity.assert_close()
        types = [t for _, t in parity.conversion.layers]
        assert types == ["Input", "Convolution", "Flatten", "InnerProduct"]


def test_transpose_feeding_a_conv_refused(tmp_path):
    path = tmp_path / "t.onnx"
    export(Net(lambda s, x: s.c(x.permute(0, 1, 3, 2)), c=nn.Conv2d(3, 4, 1)), (1, 3, 4, 5), path)
    assert_refused(tmp_path, path, "/Transpose", "Permute")


def test_dynamic_batch_is_pinned_to_one_and_shape_arithmetic_folded(tmp_path):
    # With a dynamic batch, view(size(0), -1) exports as Shape -> Gather -> Unsqueeze -> Concat -> Reshape.
    net = Net(lambda s, x: s.fc(s.c(x).view(x.size(0), -1)), c=nn.Conv2d(3, 4, 3), fc=nn.Linear(36, 5))
    x = torch.randn(1, 3, 5, 5)
    path = tmp_path / "dyn.onnx"
    torch.onnx.export(net.eval(), x, str(path), dynamo=False, opset_version=13, input_names=["input"],
                      output_names=["out"], dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}})
    parity = convert_and_compare(path, x.numpy(), tmp_path)
    parity.assert_close()
    assert "Shape" in {n.op_type for n in onnx.load(str(path)).graph.node}
    assert parity.conversion.input_shape == (1, 3, 5, 5)
    assert [t for _, t in parity.conversion.layers] == ["Input", "Convolution", "Flatten", "InnerProduct"]


def test_identity_and_dropout_removed_as_aliases(tmp_path):
    rng = np.random.default_rng(3)
    path, x = make_onnx(tmp_path, [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Dropout", ["c", "ratio"], ["d"], name="drop"),
        helper.make_node("Identity", ["d"], ["i"], name="ident"),
        helper.make_node("Relu", ["i"], ["y"])],
        (1, 3, 4, 4), "y", [("w", rng.standard_normal((2, 3, 1, 1))), ("ratio", np.array(0.3))])
    parity = convert_and_compare(path, x, tmp_path, intermediates=True)
    parity.assert_close()
    blob_map = parity.conversion.blob_map
    assert blob_map["d"] == blob_map["i"] == blob_map["c"] == "c"
    assert [t for _, t in parity.conversion.layers] == ["Input", "Convolution", "ReLU"]


# --- BatchNorm ---------------------------------------------------------------------------------------------------
def test_batchnorm_not_after_conv_becomes_batchnorm_and_scale(tmp_path):
    net = randomize_bn(Net(lambda s, x: s.bn2(torch.relu(s.bn1(torch.relu(s.c(x))))),
                           c=nn.Conv2d(3, 4, 3), bn1=nn.BatchNorm2d(4), bn2=nn.BatchNorm2d(4)))
    path = tmp_path / "bn.onnx"
    # PRESERVE keeps the BNs in the graph (EVAL would fold them during export).
    x = export(net.eval(), (1, 3, 7, 7), path, training=torch.onnx.TrainingMode.PRESERVE)
    parity = convert_and_compare(path, x, tmp_path, intermediates=True)
    parity.assert_close()
    files = read_caffe(parity.conversion.prototxt, parity.conversion.caffemodel)
    batchnorms = [layer for layer in files.net.layer if layer.type == "BatchNorm"]
    scales = [layer for layer in files.net.layer if layer.type == "Scale"]
    assert len(batchnorms) == 2 and len(scales) == 2
    for layer in batchnorms:
        assert layer.batch_norm_param.use_global_stats
        mean, var, factor = files.weights[layer.name]
        assert factor.shape == (1,) and factor[0] == 1.0
    assert all(layer.scale_param.bias_term for layer in scales)


def test_surviving_batchnorm_after_conv_is_folded(tmp_path):
    net = randomize_bn(Net(lambda s, x: torch.relu(s.bn(s.c(x))), c=nn.Conv2d(3, 4, 3, bias=False),
                           bn=nn.BatchNorm2d(4)))
    path = tmp_path / "bn.onnx"
    x = export(net.eval(), (1, 3, 7, 7), path, training=torch.onnx.TrainingMode.PRESERVE)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    parity = convert_and_compare(path, x, tmp_path)
    parity.assert_close()
    assert parity.conversion.folded_batchnorms == ["/bn/BatchNormalization"]
    assert [t for _, t in parity.conversion.layers] == ["Input", "Convolution", "ReLU"]


# --- refusals of unreadable or unsupported input ------------------------------------------------------------
def test_unsupported_op_names_the_node_and_writes_nothing(tmp_path):
    path = tmp_path / "gelu.onnx"
    export(Net(lambda s, x: nn.functional.gelu(s.c(x)), c=nn.Conv2d(3, 4, 1)), (1, 3, 4, 4), path)
    assert_refused(tmp_path, path, "/Erf", "Erf", "not supported")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gelu.onnx"]


def test_unsupported_attribute_is_named(tmp_path):
    path, _ = make_onnx(tmp_path, [helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                                                    strides=[2, 2], storage_order=0, dilations=[2, 2])],
                        (1, 1, 8, 8), "y")
    assert_refused(tmp_path, path, "pool", "MaxPool", "dilations")


@pytest.mark.parametrize("content", [b"", b"not an onnx file at all \x00\x01", "truncated"])
def test_unreadable_onnx_file_is_one_line_naming_the_file(content, tmp_path):
    path = tmp_path / "broken.onnx"
    if content == "truncated":
        export(Net(lambda s, x: s.c(x), c=nn.Conv2d(3, 4, 3)), (1, 3, 8, 8), path)
        content = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(content)
    assert_refused(tmp_path, path, str(path))


def test_read_caffe_refuses_v1_layers_and_fields_outside_caffe_1_0(tmp_path):
    parity = roundtrip(ELEMENTWISE["flatten_gemm"][0], (1, 3, 5, 5), tmp_path)
    prototxt, caffemodel = parity.conversion.prototxt, parity.conversion.caffemodel
    v1_model = tmp_path / "v1.caffemodel"
    v1_model.write_bytes(caffemodel.read_bytes() + b"\x12\x00")        # field 2 (V1 `layers`), empty
    with pytest.raises(ConversionError, match="V1 `layers`"):
        read_caffe(prototxt, v1_model)
    newer = tmp_path / "newer.prototxt"
    newer.write_text(prototxt.read_text().replace("pool: MAX", "pool: MAX round_mode: FLOOR")
                     + 'layer { name: "c" type: "Clip" bottom: "input.1" top: "c" clip_param { max: 6 } }\n')
    with pytest.raises(ConversionError, match="clip_param"):
        read_caffe(newer, caffemodel)


# --- the project's model -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_pfpld_matches_opencv_on_both_outputs(width, tmp_path):
    torch.manual_seed(0)
    module, spec, _ = build_model("pfpld", width=width)
    randomize_bn(module, seed=1).eval()
    path = tmp_path / "pfpld.onnx"
    x = np.random.default_rng(4).random((1, 3, spec.input_size, spec.input_size)).astype(np.float32)
    torch.onnx.export(module, torch.from_numpy(x), str(path), dynamo=False, opset_version=13,
                      input_names=[spec.input_name], output_names=spec.output_names,
                      training=torch.onnx.TrainingMode.PRESERVE)
    parity = convert_and_compare(path, x, tmp_path, intermediates=True)
    print(f"PFPLD width {width}: max |OpenCV - onnxruntime| "
          + ", ".join(f"{k} {parity.diffs[k]:.3g} (max |value| {parity.scale[k]:.3g})" for k in ("landmarks", "pose"))
          + f"; worst of {len(parity.diffs)} tensors {parity.worst:.3g}")
    assert parity.diffs["landmarks"] < 1e-5 and parity.diffs["pose"] < 1e-5
    parity.assert_close()      # every intermediate tensor too, compared by its ONNX name

    conversion = parity.conversion
    assert len(conversion.folded_batchnorms) > 40
    text = conversion.prototxt.read_text()
    assert "layers {" not in text and "layer {" in text
    files = read_caffe(conversion.prototxt, conversion.caffemodel)
    assert [layer.type for layer in files.net.layer].count("Input") == 1
    assert {layer.type for layer in files.net.layer} <= {"Input", "Convolution", "ReLU", "Eltwise", "Pooling",
                                                          "Flatten", "Concat", "InnerProduct"}
    names = [layer.name for layer in files.net.layer]
    assert len(names) == len(set(names))
    assert conversion.outputs == {"landmarks": "landmarks", "pose": "pose"}
    # The torch module agrees as well (catches a wrong export, not only a wrong conversion).
    with torch.no_grad():
        expected = dict(zip(spec.output_names, module(torch.from_numpy(x))))
    reference = run_onnxruntime(path, x)
    for name in spec.output_names:
        assert np.abs(reference[name] - expected[name].numpy()).max() < 1e-5, name


def test_every_registered_op_is_exercised():
    # Keeps the table and the tests in step: an op added to OPS needs a test above.
    assert set(OPS) == {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                        "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Softmax", "Add", "Sub", "Mul", "Div", "Gemm",
                        "MatMul", "Flatten", "Reshape", "Transpose", "Concat", "Identity", "Dropout",
                        "BatchNormalization"}
