import math

import numpy as np
import pytest
import torch

from pfpld.losses import LossConfig, landmark_loss, pose_loss, wing
from pfpld.models.pfpld import pfpld_loss
from pfpld.models.task import Targets
from pfpld.metrics import auc, failure_rate, landmark_summary, nme_per_face, pose_mae_deg


def test_wing_matches_formula_in_both_branches():
    w, eps = 10.0, 2.0
    c = w - w * math.log(1 + w / eps)
    x = torch.tensor([0.0, 1.0, -3.0, 9.99, 10.0, 25.0])
    expected = [0.0, w * math.log(1.5), w * math.log(2.5), w * math.log(1 + 9.99 / 2), 10.0 - c, 25.0 - c]
    assert torch.allclose(wing(x, w, eps), torch.tensor(expected), atol=1e-5)
    # continuous at |x| = w
    assert abs(w * math.log(1 + w / eps) - (w - c)) < 1e-9


def test_landmark_loss_is_in_crop_pixels():
    pred = torch.zeros(1, 196)
    target = torch.zeros(1, 196)
    target[0, 0] = 1.0 / 112          # point 0, x off by exactly one crop pixel
    mask = torch.ones(1, 98, dtype=torch.bool)
    loss = landmark_loss(pred, target, mask, crop_px=112)
    assert loss.item() == pytest.approx(10 * math.log(1.5) / 98, rel=1e-5)
    # PFPLD's loss weighs the 16 eye points 5 x: the same error over a heavier denominator
    targets = Targets(points=target, mask=mask, pose=torch.zeros(1, 3), has_pose=torch.zeros(1, dtype=torch.bool))
    total, parts = pfpld_loss((pred, torch.zeros(1, 3)), targets, 112, LossConfig())
    assert parts["landmark"].item() == pytest.approx(10 * math.log(1.5) / (98 + 16 * 4), rel=1e-5)


def test_masked_points_are_ignored_by_the_loss():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 196), torch.rand(2, 196)
    mask = torch.zeros(2, 98, dtype=torch.bool)
    mask[:, :43] = True
    base = landmark_loss(pred, target, mask, 112)
    target2 = target.clone().view(2, 98, 2)
    target2[:, 43:] += 5.0               # garbage where the mask is off
    assert landmark_loss(pred, target2.view(2, 196), mask, 112).item() == pytest.approx(base.item(), rel=1e-6)


def test_eye_points_weigh_five_times():
    pred = torch.zeros(1, 196)
    mask = torch.ones(1, 98, dtype=torch.bool)
    t_eye, t_jaw = torch.zeros(1, 196), torch.zeros(1, 196)
    t_eye[0, 2 * 60] = 0.05
    t_jaw[0, 2 * 10] = 0.05
    def loss(target):
        targets = Targets(points=target, mask=mask, pose=torch.zeros(1, 3), has_pose=torch.zeros(1, dtype=torch.bool))
        return pfpld_loss((pred, torch.zeros(1, 3)), targets, 112, LossConfig())[0]
    assert (loss(t_eye) / loss(t_jaw)).item() == pytest.approx(5.0, rel=1e-5)


def test_pose_loss_uses_only_faces_with_pose():
    pred = torch.tensor([[0.1, 0.0, 0.0], [5.0, 5.0, 5.0]])
    target = torch.zeros(2, 3)
    has = torch.tensor([True, False])
    assert pose_loss(pred, target, has).item() == pytest.approx(0.5 * 0.1 ** 2 / 3, rel=1e-5)
    assert pose_loss(pred, target, torch.tensor([False, False])).item() == 0.0


def _face_with_eye_distance(d):
    gt = np.zeros((98, 2))
    gt[60] = [0, 0]
    gt[72] = [d, 0]
    return gt


def test_nme_by_hand():
    gt = _face_with_eye_distance(50.0)
    pred = gt.copy()
    pred[0] += [3.0, 4.0]                 # one point 5 px off
    nme = nme_per_face(pred[None], gt[None])
    assert nme[0] == pytest.approx(5.0 / 98 / 50.0)
    mask = np.zeros((1, 98), bool)
    mask[0, [0, 60, 72]] = True           # mean over the 3 valid points
    assert nme_per_face(pred[None], gt[None], mask)[0] == pytest.approx(5.0 / 3 / 50.0)
    mask[0, 72] = False                   # no normaliser -> NaN, not a number that looks valid
    assert np.isnan(nme_per_face(pred[None], gt[None], mask)[0])


def test_failure_rate_and_auc_by_hand():
    nme = np.array([0.02, 0.05, 0.12, 0.10])
    assert failure_rate(nme) == pytest.approx(0.25)          # only 0.12 > 0.1
    # AUC on [0, 0.1]: each face contributes (1 - e/0.1) when e < 0.1 -> (0.8 + 0.5 + 0 + 0) / 4
    assert auc(nme) == pytest.approx(0.325)
    s = landmark_summary(np.array([0.02, np.nan, 0.04]))
    assert s["n"] == 2 and s["nme"] == pytest.approx(0.03)


def test_pose_mae_follows_the_99_degree_protocol():
    gt = np.radians([[10, 0, 0], [0, 20, -5], [120, 0, 0]])
    pred = np.radians([[12, 1, 0], [0, 17, -5], [0, 0, 0]])
    m = pose_mae_deg(pred, gt)
    assert m["n"] == 2
    assert m["yaw"] == pytest.approx(1.0) and m["pitch"] == pytest.approx(2.0) and m["roll"] == pytest.approx(0.0)
    assert m["mean"] == pytest.approx(1.0)
