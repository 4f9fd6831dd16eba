"""BatchNormalization folding: every BN fed only by a Conv / ConvTranspose / Gemm disappears into its weights
and bias, the model computes what it did (checked with onnxruntime), and assert_no_foldable_batchnorm names
any BN that was left behind."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from caffe_parity import EXPORT_WARNINGS, Net, export, randomize_bn, run_onnxruntime
from convert.fold_bn import assert_no_foldable_batchnorm, fold_batchnorm_into_conv
from pfpld.errors import ConversionError

PRESERVE = torch.onnx.TrainingMode.PRESERVE
pytestmark = EXPORT_WARNINGS


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, x: np.ndarray, atol: float = 1e-5):
    ref, got = run_onnxruntime(before, x), run_onnxruntime(after, x)
    assert list(ref) == list(got)
    for name in ref:
        assert np.abs(ref[name] - got[name]).max() < atol, name


def conv_bn_net() -> nn.Module:
    return randomize_bn(Net(lambda s, x: torch.relu(s.bn2(s.up(torch.relu(s.bn1(s.conv(x)))))),
                            conv=nn.Conv2d(3, 6, 3, bias=False), bn1=nn.BatchNorm2d(6),
                            up=nn.ConvTranspose2d(6, 4, 3, stride=2, groups=2), bn2=nn.BatchNorm2d(4)))


def test_preserved_batchnorms_fold_into_conv_and_conv_transpose(tmp_path):
    path = tmp_path / "m.onnx"
    x = export(conv_bn_net().eval(), (1, 3, 9, 9), path, training=PRESERVE)
    model = onnx.load(str(path))
    assert op_types(model).count("BatchNormalization") == 2
    folded, names = fold_batchnorm_into_conv(model)
    assert names == ["/bn1/BatchNormalization", "/bn2/BatchNormalization"]
    assert "BatchNormalization" not in op_types(folded)
    onnx.checker.check_model(folded, full_check=True)
    assert_no_foldable_batchnorm(folded)
    assert_same_outputs(model, folded, x)
    assert op_types(model).count("BatchNormalization") == 2        # the input model is not edited


@pytest.mark.parametrize("opset, n_outputs", [(13, 5), (15, 3)])
def test_training_mode_export_folds_with_running_statistics(opset, n_outputs, tmp_path):
    # A module exported in train() keeps BN in training mode: extra outputs (opset 13) or training_mode=1.
    # Folding gives the inference semantics, i.e. the module in eval().
    net = conv_bn_net().train()
    path = tmp_path / "m.onnx"
    x = export(net, (1, 3, 9, 9), path, opset=opset, training=PRESERVE)
    model = onnx.load(str(path))
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert all(len(n.output) == n_outputs for n in bns)
    folded, names = fold_batchnorm_into_conv(model)
    assert len(names) == 2 and "BatchNormalization" not in op_types(folded)
    outputs = {name for node in folded.graph.node for name in node.output}
    assert not any(name in outputs for bn in bns for name in bn.output[1:])     # extra outputs dropped
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(x)).numpy()
    got = next(iter(run_onnxruntime(folded, x).values()))
    assert np.abs(got - expected).max() < 1e-5


def test_training_statistics_in_use_are_refused():
    w = np.ones((2, 1, 1, 1), np.float32)
    params = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in
              (("w", w), ("g", [1, 2]), ("b", [0, 1]), ("m", [0.5, 0]), ("v", [1, 2]))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
         helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y", "running_mean", "running_var"],
                          name="bn", training_mode=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("running_mean", TensorProto.FLOAT, None)], params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    with pytest.raises(ConversionError, match="node 'bn'.*running_mean"):
        fold_batchnorm_into_conv(model)


def test_weights_from_constant_nodes_and_missing_bias():
    rng = np.random.default_rng(0)

    def constant(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.float32)))

    nodes = [constant("w", rng.standard_normal((3, 2, 3, 3))), constant("g", rng.random(3) + 0.5),
             constant("b", rng.standard_normal(3)), constant("m", rng.standard_normal(3)),
             constant("v", rng.random(3) + 0.5),
             helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn", epsilon=1e-3)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    folded, names = fold_batchnorm_into_conv(model)
    assert names == ["bn"]
    assert op_types(folded) == ["Conv"]                 # the Constant nodes nothing reads are removed
    conv = folded.graph.node[0]
    assert len(conv.input) == 3 and conv.output[0] == "y"
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    assert_same_outputs(model, folded, x)


def test_identity_deduplicated_parameters_are_resolved(tmp_path):
    # Fresh BNs have equal parameters; the exporter then shares them through Identity nodes.
    net = Net(lambda s, x: s.bn2(s.c2(s.bn1(s.c1(x)))), c1=nn.Conv2d(3, 4, 1), bn1=nn.BatchNorm2d(4),
              c2=nn.Conv2d(4, 4, 1), bn2=nn.BatchNorm2d(4))
    path = tmp_path / "m.onnx"
    x = export(net.eval(), (1, 3, 4, 4), path, training=PRESERVE)
    model = onnx.load(str(path))
    assert "Identity" in op_types(model)
    folded, names = fold_batchnorm_into_conv(model)
    assert op_types(folded) == ["Conv", "Conv"] and len(names) == 2
    assert_same_outputs(model, folded, x)


def test_batchnorm_not_after_a_conv_or_after_a_branching_conv_stays(tmp_path):
    net = randomize_bn(Net(lambda s, x: s.bn1(torch.relu(s.c(x))) + s.bn2(s.c(x)) + s.c(x),
                           c=nn.Conv2d(3, 4, 1), bn1=nn.BatchNorm2d(4), bn2=nn.BatchNorm2d(4)))
    path = tmp_path / "m.onnx"
    x = export(net.eval(), (1, 3, 4, 4), path, training=PRESERVE)
    model = onnx.load(str(path))
    folded, names = fold_batchnorm_into_conv(model)
    assert names == [] and op_types(folded).count("BatchNormalization") == 2
    assert_no_foldable_batchnorm(folded)                # neither BN is foldable: no error
    assert_same_outputs(model, folded, x)


def test_assert_names_a_foldable_batchnorm_left_in_place(tmp_path):
    path = tmp_path / "m.onnx"
    export(conv_bn_net().eval(), (1, 3, 9, 9), path, training=PRESERVE)
    with pytest.raises(ConversionError, match=r"node '/bn1/BatchNormalization'.*'/conv/Conv'"):
        assert_no_foldable_batchnorm(onnx.load(str(path)))


def test_weight_shared_with_another_conv_is_copied_not_edited():
    rng = np.random.default_rng(1)
    params = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in
              (("w", rng.standard_normal((2, 2, 1, 1))), ("g", [2, 3]), ("b", [1, -1]), ("m", [0.1, 0.2]),
               ("v", [0.5, 2]))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], kernel_shape=[1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["y1"]),
             helper.make_node("Conv", ["x", "w"], ["y2"], kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y1", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)], params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    folded, names = fold_batchnorm_into_conv(model)
    assert len(names) == 1 and folded.graph.node[1].input[1] == "w"
    assert_same_outputs(model, folded, rng.standard_normal((1, 2, 3, 3)).astype(np.float32))


def gemm_bn_model(trans_b: int, c_shape: tuple[int, ...] | None, alpha: float, beta: float) -> onnx.ModelProto:
    """x (2, 5) -> Gemm -> BatchNormalization on its 4 output features (a recognition network's Linear ->
    BatchNorm1d embedding layer), with the Gemm attributes and bias broadcast forms ONNX allows."""
    rng = np.random.default_rng(trans_b + 2 * len(c_shape or ()) + int(10 * alpha))
    weight = rng.normal(size=(4, 5) if trans_b else (5, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    gemm_inputs = ["x", "w"]
    if c_shape is not None:
        inits.append(numpy_helper.from_array(rng.normal(size=c_shape).astype(np.float32), "c"))
        gemm_inputs.append("c")
    for name, values in (("gamma", rng.uniform(0.5, 2, 4)), ("beta_bn", rng.normal(size=4)),
                         ("mean", rng.normal(size=4)), ("var", rng.uniform(0.2, 3, 4))):
        inits.append(numpy_helper.from_array(values.astype(np.float32), name))
    nodes = [helper.make_node("Gemm", gemm_inputs, ["y"], name="fc", transB=trans_b, alpha=alpha, beta=beta),
             helper.make_node("BatchNormalization", ["y", "gamma", "beta_bn", "mean", "var"], ["emb"], name="bn",
                              epsilon=2e-5)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("trans_b, c_shape, alpha, beta", [
    (1, (4,), 1.0, 1.0), (0, (1, 4), 0.5, 2.0), (1, None, 1.5, 1.0), (0, (), 1.0, 0.25)])
def test_batchnorm_after_gemm_folds_into_its_weights_and_bias(trans_b, c_shape, alpha, beta):
    model = gemm_bn_model(trans_b, c_shape, alpha, beta)
    folded, names = fold_batchnorm_into_conv(model)
    assert names == ["bn"] and op_types(folded) == ["Gemm"]
    onnx.checker.check_model(folded, full_check=True)
    assert_no_foldable_batchnorm(folded)
    x = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
    assert_same_outputs(model, folded, x)
    assert folded.graph.node[0].output[0] == "emb"


def test_batchnorm_after_gemm_with_a_per_row_bias_is_left_alone():
    model = gemm_bn_model(1, (2, 4), 1.0, 1.0)      # C of shape (M, N): depends on the batch row, not a bias
    folded, names = fold_batchnorm_into_conv(model)
    assert names == [] and op_types(folded) == ["Gemm", "BatchNormalization"]
    assert_no_foldable_batchnorm(folded)
