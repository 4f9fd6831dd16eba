"""The margin heads (pfpld/heads.py) on 2-D features at chosen angles, where cos and theta are known exactly: target
and non-target logits by hand (math.cos of the angles, not the heads' own formulas), ArcFace's two branches,
SphereFace's four pieces of psi and its annealing schedule, finite gradients at cos = +-1, float32 under autocast,
a short optimisation that learns, and build_head's one-line errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pfpld.errors import InputError
from pfpld.heads import HEADS, ArcFace, CosFace, SphereFace, build_head

# three class centres in the plane, at 0, pi/2 and pi (the norms are not 1: the heads normalise them)
CLASS_ANGLES = (0.0, math.pi / 2, math.pi)


def planar_head(cls, **kwargs):
    head = cls(2, 3, **kwargs)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0 * math.cos(a), 2.0 * math.sin(a)] for a in CLASS_ANGLES]))
    return head


def at_angles(angles, norm=3.0):
    return torch.tensor([[norm * math.cos(a), norm * math.sin(a)] for a in angles], dtype=torch.float32)


def expected_logits(angles, labels, s, target_of_theta):
    """s cos(angle to each centre) for the other classes, target_of_theta(theta) (already scaled) for the label."""
    rows = []
    for a, label in zip(angles, labels):
        row = [s * math.cos(a - c) for c in CLASS_ANGLES]
        theta = abs(math.remainder(a - CLASS_ANGLES[label], 2 * math.pi))
        row[label] = target_of_theta(theta)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


def test_weights_are_one_row_per_class_and_cosine_has_no_margin():
    for cls in HEADS.values():
        head = cls(5, 7)
        assert isinstance(head.weight, torch.nn.Parameter) and head.weight.shape == (7, 5)
    head = planar_head(ArcFace)
    cos = head.cosine(at_angles([0.3, 2.0]))
    expected = [[math.cos(a - c) for c in CLASS_ANGLES] for a in (0.3, 2.0)]
    assert torch.allclose(cos, torch.tensor(expected), atol=1e-6)
    assert cos.dtype == torch.float32


def test_cosface_subtracts_m_from_the_target_cosine():
    angles, labels = [0.3, 2.0, 1.2], [0, 1, 2]
    head = planar_head(CosFace, s=10.0, m=0.35)
    logits = head(at_angles(angles), torch.tensor(labels))
    expected = expected_logits(angles, labels, 10.0, lambda theta: 10.0 * (math.cos(theta) - 0.35))
    assert torch.allclose(logits, expected, atol=1e-5)
    assert (CosFace.DEFAULT_S, CosFace.DEFAULT_M) == (64.0, 0.35)


def test_arcface_adds_m_to_the_angle_where_theta_plus_m_is_below_pi():
    # thetas 0.6, 2.0-pi/2 = 0.43, pi-1.2 = 1.94: theta + 0.5 < pi for all three
    angles, labels = [0.6, 2.0, 1.2], [0, 1, 2]
    head = planar_head(ArcFace, s=10.0, m=0.5)
    logits = head(at_angles(angles), torch.tensor(labels))
    expected = expected_logits(angles, labels, 10.0, lambda theta: 10.0 * math.cos(theta + 0.5))
    assert torch.allclose(logits, expected, atol=1e-5)
    # not CosFace's value: 10 cos(1.1) = 4.54 against 10 (cos 0.6 - 0.5) = 3.25
    assert abs(logits[0, 0].item() - 10.0 * (math.cos(0.6) - 0.5)) > 1.0
    assert (ArcFace.DEFAULT_S, ArcFace.DEFAULT_M) == (64.0, 0.5)


def test_arcface_falls_back_to_cos_minus_m_sin_m_past_pi():
    # theta 2.9 > pi - 0.5 = 2.64: cos(theta + m) would be cos(3.4) = -0.967, HIGHER than at theta = pi - m
    angles, labels = [2.9, 2.9 + math.pi / 2], [0, 1]
    head = planar_head(ArcFace, s=10.0, m=0.5)
    logits = head(at_angles(angles), torch.tensor(labels))
    fallback = 10.0 * (math.cos(2.9) - 0.5 * math.sin(0.5))
    expected = expected_logits(angles, labels, 10.0, lambda theta: 10.0 * (math.cos(theta) - 0.5 * math.sin(0.5)))
    assert torch.allclose(logits, expected, atol=1e-5)
    assert logits[0, 0].item() == pytest.approx(fallback, abs=1e-5)
    assert abs(fallback - 10.0 * math.cos(2.9 + 0.5)) > 1.0
    # just inside the boundary the normal branch holds
    theta = math.pi - 0.5 - 0.01
    inside = head(at_angles([theta]), torch.tensor([0]))[0, 0].item()
    assert inside == pytest.approx(10.0 * math.cos(theta + 0.5), abs=1e-4)


def psi_by_hand(theta, m):
    k = math.floor(m * theta / math.pi)
    return (-1) ** k * math.cos(m * theta) - 2 * k


@pytest.mark.parametrize("theta, k", [(0.3, 0), (1.0, 1), (2.0, 2), (2.8, 3)])
def test_sphereface_psi_on_each_of_its_four_pieces(theta, k):
    assert math.floor(4 * theta / math.pi) == k
    head = planar_head(SphereFace, s=10.0, m=4, annealing=False)
    angles, labels = [theta, math.pi / 2 - theta], [0, 1]        # theta from class 0, and from class 1
    logits = head(at_angles(angles), torch.tensor(labels))
    expected = expected_logits(angles, labels, 10.0, lambda t: 10.0 * psi_by_hand(t, 4))
    assert torch.allclose(logits, expected, atol=1e-4)
    assert (SphereFace.DEFAULT_S, SphereFace.DEFAULT_M) == (30.0, 4)


def test_sphereface_psi_is_continuous_and_decreasing_on_zero_to_pi():
    head = SphereFace(2, 3, m=4, annealing=False)
    theta = np.linspace(0.0, math.pi, 4001)
    psi = head.psi(torch.tensor(np.cos(theta), dtype=torch.float64)).numpy()
    assert psi[0] == pytest.approx(1.0) and psi[-1] == pytest.approx(1 - 2 * 4)
    steps = np.diff(psi)
    assert steps.max() <= 1e-9                                 # never increases
    assert np.abs(steps).max() < 4 * (theta[1] - theta[0]) + 1e-9     # no jump: |dpsi/dtheta| <= m
    by_hand = np.array([psi_by_hand(t, 4) for t in theta])
    assert np.abs(psi - by_hand).max() < 1e-9
    # m = 3 too: odd m ends at psi(pi) = 1 - 2m as well
    psi3 = SphereFace(2, 3, m=3, annealing=False).psi(torch.tensor(np.cos(theta), dtype=torch.float64)).numpy()
    assert np.abs(psi3 - np.array([psi_by_hand(t, 3) for t in theta])).max() < 1e-9
    assert psi3[-1] == pytest.approx(-5.0)


def test_sphereface_annealing_follows_the_lambda_schedule_and_pauses_in_eval():
    head = planar_head(SphereFace, s=10.0, m=4)
    theta = 0.7
    x, y = at_angles([theta]), torch.tensor([0])
    head.train()
    for t in (1, 2, 3):
        logit = head(x, y)[0, 0].item()
        lam = max(5.0, 1000.0 / (1.0 + 0.12 * t))
        assert head.current_lambda == pytest.approx(lam)
        assert logit == pytest.approx(10.0 * (lam * math.cos(theta) + psi_by_hand(theta, 4)) / (1 + lam), abs=1e-4)
    head.eval()
    for _ in range(3):
        head(x, y)
    assert int(head.iteration) == 3
    # saved with the weights: a resumed head continues at t = 4
    resumed = SphereFace(2, 3, s=10.0, m=4)
    resumed.load_state_dict(head.state_dict())
    resumed.train()
    resumed(x, y)
    assert int(resumed.iteration) == 4 and resumed.current_lambda == pytest.approx(1000.0 / 1.48)
    # lambda never goes below lambda_min: 1000 / (1 + 0.12 * 10000) = 0.83 -> 5
    assert head.lambda_at(10_000) == 5.0
    off = planar_head(SphereFace, s=10.0, m=4, annealing=False).train()
    assert off(x, y)[0, 0].item() == pytest.approx(10.0 * psi_by_hand(theta, 4), abs=1e-4)
    assert off.current_lambda == 0.0


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradients_are_finite_at_cos_plus_and_minus_one(name, sign):
    head = build_head(name, 2, 3).train()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    labels = torch.tensor([0, 1, 2])
    # each embedding exactly parallel (or anti-parallel) to its own class weight
    x = (sign * torch.tensor([[2.0, 0.0], [0.0, 5.0], [3.0, 4.0]])).requires_grad_(True)
    cos = head.cosine(x)
    assert torch.allclose(cos[torch.arange(3), labels], torch.full((3,), sign))
    loss = F.cross_entropy(head(x, labels), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("name", sorted(HEADS))
def test_heads_compute_in_float32_under_autocast(name):
    torch.manual_seed(0)
    head = build_head(name, 16, 10).eval()
    x, y = torch.randn(8, 16), torch.randint(0, 10, (8,))
    plain = head(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(x, y)
        from_bf16 = head(x.bfloat16(), y)
    assert mixed.dtype == torch.float32 and from_bf16.dtype == torch.float32
    assert torch.equal(mixed, plain)
    # a bf16 embedding is only rounded on the way in (about 3 significant digits), not computed in bf16
    assert (from_bf16 - plain).abs().max().item() < 0.02 * head.s


@pytest.mark.parametrize("name", sorted(HEADS))
def test_a_few_optimiser_steps_reduce_the_loss_on_separable_identities(name):
    torch.manual_seed(0)
    centres = torch.randn(4, 8) * 3
    labels = torch.arange(4).repeat_interleave(6)
    inputs = centres[labels] + 0.3 * torch.randn(24, 8)
    trunk = torch.nn.Linear(8, 16)
    head = build_head(name, 16, 4, s=16.0)
    opt = torch.optim.SGD(list(trunk.parameters()) + list(head.parameters()), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(head(trunk(inputs), labels), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    accuracy = (head.cosine(trunk(inputs)).argmax(1) == labels).float().mean().item()
    assert accuracy == 1.0


def test_build_head_uses_the_class_defaults_for_none():
    arc = build_head("arcface", 4, 3)
    assert (arc.s, arc.m) == (64.0, 0.5) and isinstance(arc, ArcFace)
    sphere = build_head("sphereface", 4, 3, m=3.0)
    assert isinstance(sphere.m, int) and sphere.m == 3 and sphere.s == 30.0
    assert build_head("cosface", 4, 3, s=30).s == 30.0


@pytest.mark.parametrize("name, s, m, words", [
    ("adaface", None, None, "arcface, cosface, sphereface"),
    ("sphereface", None, 4.5, "positive integer"),
    ("sphereface", None, 0, "positive integer"),
    ("arcface", None, 1.6, "0 <= m < pi/2"),
    ("arcface", None, -0.1, "0 <= m < pi/2"),
    ("cosface", None, -0.1, "m >= 0"),
    ("cosface", 0.0, None, "s 0: expected a number > 0"),
    ("arcface", -1.0, None, "expected a number > 0"),
    ("arcface", float("nan"), None, "expected a number > 0"),
])
def test_build_head_refuses_bad_names_and_values_in_one_line(name, s, m, words):
    with pytest.raises(InputError) as info:
        build_head(name, 4, 3, s=s, m=m)
    message = str(info.value)
    assert words in message and "\n" not in message
