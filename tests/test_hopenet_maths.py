"""HopeNet groundwork (issue 11): the bin maths on hand-computed values, the trunks' published parameter counts,
output shapes, and an ONNX export whose in-graph decode matches PyTorch in onnxruntime."""
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pfpld.errors import InputError, ModelError
from pfpld.losses import LossConfig
from pfpld.models.backbones import BasicBlock, Bottleneck, build_backbone
from pfpld.models.hopenet import HopeNet, hopenet_spec, hopenet_training_loss
from pfpld.models.pfpld import InvertedResidual
from pfpld.models.task import Targets
from pfpld.pose_bins import (BIN_CENTRES_DEG, BIN_EDGES_DEG, BIN_WIDTH_DEG, NUM_BINS, bin_labels, expectation_deg,
                             hopenet_loss, keep_for_training)


def test_bins_are_66_of_3_degrees_over_minus_99_to_99():
    assert len(BIN_EDGES_DEG) == 67 and NUM_BINS == 66
    assert BIN_EDGES_DEG[0] == -99 and BIN_EDGES_DEG[-1] == 99
    assert np.all(np.diff(BIN_EDGES_DEG) == 3)
    assert BIN_CENTRES_DEG[0] == -97.5 and BIN_CENTRES_DEG[33] == 1.5 and BIN_CENTRES_DEG[-1] == 97.5


@pytest.mark.parametrize("xp", ["numpy", "torch"])
def test_labels_at_bin_edges_follow_digitize_minus_one(xp):
    angles = [-99.0, -98.9, -96.0, -0.001, 0.0, 2.999, 3.0, 96.0, 98.9, 99.0]
    expected = [0, 0, 1, 32, 33, 33, 34, 65, 65, 65]
    a = np.array(angles) if xp == "numpy" else torch.tensor(angles)
    labels = bin_labels(a)
    assert list(np.asarray(labels)) == expected
    assert labels.dtype == (np.int64 if xp == "numpy" else torch.int64)


def test_exactly_99_closes_the_last_bin_where_the_raw_rule_gives_no_bin():
    # HopeNet's rule digitize - 1 puts 99.0 (the closing edge) in bin 66, which does not exist: CrossEntropy would
    # fail on it although the |angle| <= 99 filter keeps the face. bin_labels closes the last bin instead.
    assert np.digitize(99.0, BIN_EDGES_DEG) - 1 == 66
    assert bin_labels(np.array(99.0)) == 65
    assert np.digitize(-99.0, BIN_EDGES_DEG) - 1 == 0


@pytest.mark.parametrize("angle", [99.01, -99.5, 120.0, float("nan")])
def test_angles_without_a_bin_are_refused(angle):
    with pytest.raises(ValueError, match="keep_for_training"):
        bin_labels(np.array([10.0, angle]))
    with pytest.raises(ValueError, match="keep_for_training"):
        bin_labels(torch.tensor([10.0, angle]))


def test_training_filter_drops_faces_with_any_angle_beyond_99():
    poses = np.array([[99.0, -99.0, 0.0], [99.01, 0.0, 0.0], [0.0, 0.0, -120.0], [10.0, 20.0, 30.0],
                      [0.0, float("nan"), 0.0]])
    assert keep_for_training(poses).tolist() == [True, False, False, True, False]
    assert keep_for_training(torch.tensor(poses)).tolist() == [True, False, False, True, False]


def test_expectation_of_a_one_hot_is_that_bin_centre():
    logits = np.full((2, NUM_BINS), -1e4)
    logits[0, 33] = 0.0      # bin [0, 3)
    logits[1, 0] = 0.0       # bin [-99, -96)
    assert expectation_deg(logits) == pytest.approx([1.5, -97.5])
    # The HopeNet code's decode (idx * 3 - 99) reads the left edges instead: 1.5 degrees lower.
    assert expectation_deg(logits, values_deg=BIN_EDGES_DEG[:-1]) == pytest.approx([0.0, -99.0])


@pytest.mark.parametrize("xp", ["numpy", "torch"])
def test_expectation_of_a_two_bin_split(xp):
    logits = np.full(NUM_BINS, -1e4)
    logits[33], logits[34] = math.log(0.75), math.log(0.25)          # centres 1.5 and 4.5
    x = logits if xp == "numpy" else torch.tensor(logits, dtype=torch.float32)
    assert float(expectation_deg(x)) == pytest.approx(0.75 * 1.5 + 0.25 * 4.5, abs=1e-5)      # 2.25
    # uniform: the mean of the centres, 0
    assert float(expectation_deg(np.zeros(NUM_BINS))) == pytest.approx(0.0, abs=1e-12)


def test_loss_pieces_on_a_tiny_batch_by_hand():
    # Face 0: uniform logits for every angle -> CE ln 66, expectation 0. Face 1: p = 0.75 on bin 33, 0.25 on bin 34
    # for every angle -> expectation 2.25; its angles 1.0 (bin 33), 4.0 (bin 34), 2.25 (bin 33).
    two_bin = torch.full((NUM_BINS,), -1e4)
    two_bin[33], two_bin[34] = math.log(0.75), math.log(0.25)
    logits = torch.stack([torch.zeros(NUM_BINS), two_bin])
    angles = torch.tensor([[10.0, -20.0, 30.0], [1.0, 4.0, 2.25]])
    alpha = 2.0
    loss = hopenet_loss(logits, logits.clone(), logits.clone(), angles, alpha=alpha)

    ln66, ce_75, ce_25 = math.log(66), -math.log(0.75), -math.log(0.25)
    ce = [(ln66 + ce_75) / 2, (ln66 + ce_25) / 2, (ln66 + ce_75) / 2]
    # The errors in bin widths (3 degrees): face 0 10/3, 20/3, 10 (beyond one bin: |e| - 1/2), face 1 1.25/3,
    # 1.75/3, 0 (within one bin: e^2 / 2).
    smooth_l1 = [(10 / 3 - 0.5 + (1.25 / 3) ** 2 / 2) / 2,        # 1.46007
                 (20 / 3 - 0.5 + (1.75 / 3) ** 2 / 2) / 2,        # 3.16840
                 (10 - 0.5 + 0.0) / 2]                            # 4.75
    mse = [(10.0 ** 2 + 1.25 ** 2) / 2, (20.0 ** 2 + 1.75 ** 2) / 2, (30.0 ** 2 + 0.0) / 2]
    assert loss.cross_entropy.tolist() == pytest.approx(ce, rel=1e-5)
    assert loss.smooth_l1_bins.tolist() == pytest.approx(smooth_l1, rel=1e-5)
    assert smooth_l1 == pytest.approx([1.460069, 3.168403, 4.75], rel=1e-6)
    assert loss.mse_deg2.tolist() == pytest.approx(mse, rel=1e-5)
    assert loss.total.item() == pytest.approx(sum(ce) + alpha * sum(mse), rel=1e-5)      # the paper's, by default
    assert not any(t.requires_grad for t in (loss.cross_entropy, loss.smooth_l1_bins, loss.mse_deg2))


def test_smooth_l1_in_bin_widths_on_request():
    # Same batch as above: the total takes alpha x the smooth-L1 in bin widths instead of the MSE; both are returned.
    two_bin = torch.full((NUM_BINS,), -1e4)
    two_bin[33], two_bin[34] = math.log(0.75), math.log(0.25)
    logits = torch.stack([torch.zeros(NUM_BINS), two_bin])
    angles = torch.tensor([[10.0, -20.0, 30.0], [1.0, 4.0, 2.25]])
    mse = hopenet_loss(logits, logits, logits, angles, alpha=0.5)
    smooth = hopenet_loss(logits, logits, logits, angles, alpha=0.5, regression="smooth_l1")
    expected_smooth = [1.460069, 3.168403, 4.75]                  # the test above
    assert smooth.total.item() == pytest.approx(sum(smooth.cross_entropy.tolist()) + 0.5 * sum(expected_smooth),
                                                rel=1e-5)
    assert smooth.mse_deg2.tolist() == pytest.approx(mse.mse_deg2.tolist())
    assert mse.total.item() != pytest.approx(smooth.total.item())
    assert LossConfig().bins_regression == "mse" and LossConfig().bins_alpha == 1.0
    with pytest.raises(ValueError, match="regression 'l2'"):
        hopenet_loss(logits, logits, logits, angles, regression="l2")
    with pytest.raises(InputError, match="bins regression 'l2'"):
        LossConfig(bins_regression="l2")


def test_training_loss_regresses_the_models_own_decode():
    """An imported model that decodes at the bins' left edges (decode "reference") is fine-tuned on the angles it
    outputs: 1.5 degrees below the centres' expectation, so the regression terms differ from a centres decode."""
    torch.manual_seed(0)
    model = HopeNet("mobilenetv2", 64, 0.25, decode="reference").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        outputs = model(x)
    yaw, pitch, roll, decoded = outputs
    pose_deg = torch.tensor([[10.0, -5.0, 3.0], [0.0, 0.0, 0.0], [-40.0, 20.0, -10.0]])
    targets = Targets(points=None, mask=None, pose=torch.deg2rad(pose_deg), has_pose=torch.ones(3))
    cfg = LossConfig(bins_regression="mse")
    total, parts = hopenet_training_loss(outputs, targets, 64, cfg)
    left_edges = torch.stack([expectation_deg(v, BIN_EDGES_DEG[:-1]) for v in (yaw, pitch, roll)], 1)
    assert torch.allclose(decoded, left_edges, atol=1e-4)
    own = hopenet_loss(yaw, pitch, roll, pose_deg, regression="mse", expected_deg=left_edges)
    centres = hopenet_loss(yaw, pitch, roll, pose_deg, regression="mse")
    assert total.item() == pytest.approx(own.total.item(), rel=1e-4)
    assert parts["expectation_mse"].item() == pytest.approx(own.mse_deg2.sum().item(), rel=1e-4)
    assert abs(own.total.item() - centres.total.item()) > 1.0


def test_smooth_l1_pull_on_the_expectation_is_bounded_beyond_one_bin():
    """smooth-L1's gradient in the expectation is the error in bins within one bin and +-1 per bin width beyond it,
    however large the error: a face 90 degrees off pulls as hard as one 6 degrees off (the paper's MSE in degrees^2
    pulls 15 times harder, 2 x the error in degrees: checked too)."""
    logits = torch.zeros(4, NUM_BINS, requires_grad=True)                # expectation 0 for every face
    angles = torch.tensor([[1.5, 0.0, 0.0], [-6.0, 0.0, 0.0], [90.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    zero = torch.zeros(4, NUM_BINS)
    hopenet_loss(logits, zero, zero, angles, alpha=1.0, regression="smooth_l1").total.backward()
    squared = torch.zeros(4, NUM_BINS, requires_grad=True)
    hopenet_loss(squared, zero, zero, angles, alpha=1.0, regression="mse").total.backward()
    ce_only = torch.zeros(4, NUM_BINS, requires_grad=True)
    hopenet_loss(ce_only, zero, zero, angles, alpha=0.0).total.backward()
    # d expectation / d logit_k = p_k (c_k - E) = c_k / 66 here; d loss / d expectation = clip(e, -1, 1) / 3 / N
    # for smooth-L1 in bin widths, 2 e / N for the MSE in degrees^2 (e = expectation - angle)
    d_expectation = torch.tensor(BIN_CENTRES_DEG, dtype=torch.float32) / NUM_BINS
    pull = torch.tensor([-0.5, 1.0, -1.0, 0.0]) / BIN_WIDTH_DEG / 4
    assert torch.allclose(logits.grad - ce_only.grad, pull[:, None] * d_expectation, atol=1e-6)
    mse_pull = 2 * -angles[:, 0] / 4
    assert torch.allclose(squared.grad - ce_only.grad, mse_pull[:, None] * d_expectation, atol=1e-5)


def test_loss_backpropagates_into_the_logits():
    logits = torch.zeros(1, NUM_BINS, requires_grad=True)
    hopenet_loss(logits, logits, logits, torch.tensor([[10.0, 0.5, -40.0]])).total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name,params,channels", [("resnet18", 11_176_512, 512), ("resnet50", 23_508_032, 2048),
                                                  ("mobilenetv2", 2_223_872, 1280)])
def test_trunks_have_the_published_parameter_counts(name, params, channels):
    # torchvision's resnet18 / resnet50 / mobilenet_v2 (11,689,512 / 25,557,032 / 3,504,872) without their
    # 1000-class classifier (513,000 / 2,049,000 / 1,281,000).
    trunk = build_backbone(name)
    assert sum(p.numel() for p in trunk.parameters()) == params
    assert trunk.out_channels == channels


def test_resnet_keys_are_torchvision_names():
    keys = build_backbone("resnet50").state_dict().keys()
    for k in ["conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer2.0.conv2.weight",
              "layer4.2.bn3.weight"]:
        assert k in keys


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2"])
def test_zero_init_residual_starts_every_residual_branch_at_zero(name):
    trunk = build_backbone(name, zero_init_residual=True)
    branch_ends = [m.last_bn() for m in trunk.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    branch_ends += [m.conv[7] for m in trunk.modules() if isinstance(m, InvertedResidual) and m.use_res_connect]
    assert branch_ends and all(float(bn.weight.abs().sum()) == 0 for bn in branch_ends)


@pytest.mark.parametrize("backbone,width,size", [("resnet18", 1.0, 224), ("resnet50", 1.0, 224),
                                                 ("mobilenetv2", 1.0, 224), ("resnet18", 1.0, 112),
                                                 ("mobilenetv2", 0.5, 112), ("mobilenetv2", 0.5, 64),
                                                 ("resnet18", 1.0, 100)])
def test_outputs_have_spec_shapes(backbone, width, size):
    spec = hopenet_spec(backbone, size, width)
    model = HopeNet(**spec.options).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, size, size))
    assert [tuple(o.shape[1:]) for o in outputs] == [o.shape for o in spec.outputs]
    assert spec.output_names == ["yaw_logits", "pitch_logits", "roll_logits", "angles_deg"]


def test_in_graph_angles_are_the_expectation_of_the_logits():
    torch.manual_seed(0)
    model = HopeNet("mobilenetv2", 112, 0.5).eval()
    with torch.no_grad():
        yaw, pitch, roll, angles = model(torch.randn(3, 3, 112, 112))
    expected = torch.stack([expectation_deg(yaw), expectation_deg(pitch), expectation_deg(roll)], 1)
    assert torch.allclose(angles, expected, atol=1e-5)
    from_numpy = np.stack([expectation_deg(t.numpy()) for t in (yaw, pitch, roll)], 1)
    assert np.allclose(angles.numpy(), from_numpy, atol=1e-4)


def test_bad_options_are_refused():
    with pytest.raises(ModelError, match="backbone"):
        hopenet_spec("vgg16")
    with pytest.raises(ModelError, match="width"):
        hopenet_spec("resnet50", width=0.5)
    with pytest.raises(ValueError, match="at least 64"):
        hopenet_spec("mobilenetv2", input_size=48)


# Ops the Caffe converter and NNIE take (convert/onnx2caffe/registry.py): nothing else may appear. Constant holds
# the bin centres (a non-persistent buffer); the converter folds it into the MatMul's weights.
EXPORT_FRIENDLY_OPS = {"Conv", "Relu", "Add", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm", "Softmax", "MatMul",
                       "Concat", "Constant"}


@pytest.mark.parametrize("backbone,width,size", [("mobilenetv2", 0.5, 112), ("resnet18", 1.0, 64)])
def test_onnx_export_runs_in_onnxruntime_like_torch(tmp_path, backbone, width, size):
    torch.manual_seed(1)
    spec = hopenet_spec(backbone, size, width)
    model = HopeNet(**spec.options)
    model.train()
    with torch.no_grad():                     # give BN statistics that are not the identity before folding
        model(torch.randn(8, 3, size, size))
    model.eval()
    x = torch.randn(2, 3, size, size)
    path = tmp_path / "hopenet.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=13, input_names=[spec.input_name],
                      output_names=spec.output_names, dynamic_axes={spec.input_name: {0: "n"}})
    graph = onnx.load(str(path)).graph
    assert {n.op_type for n in graph.node} <= EXPORT_FRIENDLY_OPS
    assert [o.name for o in graph.output] == spec.output_names

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(spec.output_names, {spec.input_name: x.numpy()})
    with torch.no_grad():
        want = model(x)
    for name, g, w in zip(spec.output_names, got, want):
        # relative too: the angles are sums of 66 products up to 97.5 degrees, a float32 ulp there is 7.6e-6
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
