"""Large-margin classification heads for face recognition (FACTS section 9): ArcFace, CosFace and SphereFace.

They exist only in training (pfpld/models/facerec.py): the embedding network is what is exported, and a head turns
its embeddings into identity logits for the cross-entropy. Features and class weights are L2-normalised, so
cos = W_n^T x_n is the cosine of the angle theta between an embedding and its class centre; every non-target logit
is s * cos, and the target logit carries the margin that makes the classes compact:

    CosFace     s (cos theta - m)                         (s 64, m 0.35)
    ArcFace     s cos(theta + m)                          (s 64, m 0.5)
    SphereFace  s psi(theta), psi = (-1)^k cos(m theta) - 2k, k = floor(m theta / pi)   (s 30, m 4)

Each head computes in float32 even under torch.autocast (cos(theta + m) and the Chebyshev polynomial lose their
margin in half precision), and its gradient stays finite at cos = +-1 (an embedding exactly on, or exactly opposite,
its class centre): no acos or sqrt of zero is differentiated.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

SIN_EPS = 1e-7          # ArcFace: sin theta = sqrt(max(1 - cos^2, SIN_EPS)), so d sin / d cos is finite at cos = +-1


class _MarginHead(nn.Module):
    """The common part: the class weights, the clamped cosines and the logits with a margin on the target class.
    A subclass defines target_logit(cos_target) -> the target logits (B,), scale included."""

    NAME = ""
    DEFAULT_S: float = 64.0
    DEFAULT_M: float = 0.0

    def __init__(self, in_features: int, num_classes: int, s: float, m: float):
        super().__init__()
        if int(in_features) < 1 or int(num_classes) < 1:
            raise InputError(f"{self.NAME} head: in_features {in_features} and num_classes {num_classes}: expected "
                             f"at least 1 each")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.s, self.m = check_scale_and_margin(self.NAME, s, m)
        # (num_classes, in_features), the layout of nn.Linear; xavier as in the ArcFace and CosFace references
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.in_features))
        nn.init.xavier_uniform_(self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, s={self.s:g}, m={self.m:g}"

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, in_features) -> (B, num_classes) float32: cos of the angle to each class centre, clamped to [-1, 1];
        no margin, no scale (identification accuracy is the argmax of these)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            return F.linear(x, w).clamp(-1.0, 1.0)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, in_features), labels (B,) int64 class indices -> logits (B, num_classes) float32."""
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"{self.NAME} head: labels of shape {tuple(labels.shape)} for embeddings of shape "
                             f"{tuple(embeddings.shape)}: expected one class index per embedding")
        cos = self.cosine(embeddings)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            index = labels.long().view(-1, 1)
            target = self.target_logit(cos.gather(1, index).view(-1))
            return (self.s * cos).scatter(1, index, target.view(-1, 1))

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class CosFace(_MarginHead):
    """CosFace / AM-Softmax (Wang et al. 2018): target logit s (cos theta - m), an additive margin on the cosine."""

    NAME = "cosface"
    DEFAULT_S = 64.0
    DEFAULT_M = 0.35

    def __init__(self, in_features: int, num_classes: int, s: float = DEFAULT_S, m: float = DEFAULT_M):
        super().__init__(in_features, num_classes, s, m)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return self.s * (cos - self.m)


class ArcFace(_MarginHead):
    """ArcFace (Deng et al. 2019): target logit s cos(theta + m), an additive margin on the ANGLE (subtracting m from
    the cosine instead is CosFace). cos(theta + m) = cos cos m - sin sin m with sin theta = sqrt(1 - cos^2) >= 0
    (theta is in [0, pi]). Past theta + m = pi, cos(theta + m) would rise again and reward moving away from the
    class, so there (cos <= cos(pi - m)) the target logit is s (cos - m sin m), as in the insightface code: a
    CosFace-like margin that keeps the logit decreasing in theta (at the boundary it steps down from -s to
    -s (cos m + m sin m))."""

    NAME = "arcface"
    DEFAULT_S = 64.0
    DEFAULT_M = 0.5

    def __init__(self, in_features: int, num_classes: int, s: float = DEFAULT_S, m: float = DEFAULT_M):
        super().__init__(in_features, num_classes, s, m)
        self.cos_m, self.sin_m = math.cos(self.m), math.sin(self.m)
        self.threshold = math.cos(math.pi - self.m)        # theta + m > pi below this cosine

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        sin = torch.sqrt(torch.clamp(1.0 - cos * cos, min=SIN_EPS))
        cos_theta_plus_m = cos * self.cos_m - sin * self.sin_m
        fallback = cos - self.m * self.sin_m
        return self.s * torch.where(cos > self.threshold, cos_theta_plus_m, fallback)


def chebyshev_cos_multiple(cos: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m theta) from cos theta for an integer m >= 1: the Chebyshev polynomial T_m(cos), by the recurrence
    T_{n+1} = 2 c T_n - T_{n-1} (T_0 = 1, T_1 = c). A polynomial, so its gradient is finite everywhere (acos is not)."""
    previous, current = torch.ones_like(cos), cos
    for _ in range(m - 1):
        previous, current = current, 2.0 * cos * current - previous
    return current


class SphereFace(_MarginHead):
    """SphereFace / A-Softmax (Liu et al. 2017): a multiplicative margin on the angle. psi(theta) = (-1)^k cos(m theta)
    - 2k with k = floor(m theta / pi) is cos(m theta) made monotonically decreasing over [0, pi] (from 1 to 1 - 2m).
    cos(m theta) is the Chebyshev polynomial of cos theta; k alone comes from acos, detached (it is piecewise
    constant, so it has no gradient to lose).

    The original scaled the target logit by the feature norm ||x|| psi(theta) (and the others by ||x|| cos); we
    follow the normalised variant the issue asks for, where the features are L2-normalised too and the norm is
    replaced by the fixed scale s: target s psi, others s cos (default s 30).

    The original could not train with the margin at once, so it anneals it with plain softmax: the target logit is
    s (lambda cos + psi) / (1 + lambda), lambda = max(lambda_min, base (1 + gamma t)^-power), t the number of
    training forward calls so far, this one included (Caffe's MarginInnerProduct increments its iteration before
    computing lambda, so the first batch has lambda = 1000 / 1.12). t is the buffer `iteration`: saved in the
    state_dict, so a resumed run continues the schedule; it advances only in training mode. annealing=False gives
    lambda 0 (the pure margin)."""

    NAME = "sphereface"
    DEFAULT_S = 30.0
    DEFAULT_M = 4
    # the SphereFace code's annealing (MarginInnerProductParameter base, gamma, power, lambda_min)
    DEFAULT_LAMBDA_BASE = 1000.0
    DEFAULT_LAMBDA_GAMMA = 0.12
    DEFAULT_LAMBDA_POWER = 1.0
    DEFAULT_LAMBDA_MIN = 5.0

    def __init__(self, in_features: int, num_classes: int, s: float = DEFAULT_S, m: int = DEFAULT_M, *,
                 annealing: bool = True, lambda_base: float = DEFAULT_LAMBDA_BASE,
                 lambda_gamma: float = DEFAULT_LAMBDA_GAMMA, lambda_power: float = DEFAULT_LAMBDA_POWER,
                 lambda_min: float = DEFAULT_LAMBDA_MIN):
        super().__init__(in_features, num_classes, s, m)
        if annealing and not (lambda_base >= 0 and lambda_gamma >= 0 and lambda_min >= 0):
            raise InputError(f"sphereface head: annealing base {lambda_base}, gamma {lambda_gamma}, lambda_min "
                             f"{lambda_min}: expected values >= 0")
        self.annealing = bool(annealing)
        self.lambda_base, self.lambda_gamma = float(lambda_base), float(lambda_gamma)
        self.lambda_power, self.lambda_min = float(lambda_power), float(lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        anneal = (f", annealing: lambda = max({self.lambda_min:g}, {self.lambda_base:g} (1 + {self.lambda_gamma:g} "
                  f"t)^-{self.lambda_power:g})" if self.annealing else ", no annealing")
        return super().extra_repr() + anneal

    def lambda_at(self, t: int) -> float:
        """The annealing weight of plain softmax after t training forward calls (0 without annealing)."""
        if not self.annealing:
            return 0.0
        return max(self.lambda_min, self.lambda_base * (1.0 + self.lambda_gamma * t) ** (-self.lambda_power))

    @property
    def current_lambda(self) -> float:
        """lambda of the last training forward call (what an evaluation forward call uses too)."""
        return self.lambda_at(int(self.iteration))

    def psi(self, cos: torch.Tensor) -> torch.Tensor:
        """psi(theta) of the clamped cosines, any shape: (-1)^k cos(m theta) - 2k."""
        with torch.no_grad():
            theta = torch.acos(cos.detach().clamp(-1.0, 1.0))
            k = torch.floor(self.m * theta / math.pi).clamp(0, self.m)
            sign = 1.0 - 2.0 * torch.remainder(k, 2.0)                  # (-1)^k
        return sign * chebyshev_cos_multiple(cos, self.m) - 2.0 * k

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.iteration += 1
        return super().forward(embeddings, labels)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        lam = self.current_lambda
        return self.s * (lam * cos + self.psi(cos)) / (1.0 + lam)


HEADS: dict[str, type[_MarginHead]] = {"arcface": ArcFace, "cosface": CosFace, "sphereface": SphereFace}


def check_scale_and_margin(name: str, s: float, m: float) -> tuple[float, float]:
    """(s, m) as numbers if `name`'s head accepts them, else InputError in one line: s > 0 for all; m a positive
    integer for SphereFace, 0 <= m < pi/2 for ArcFace (beyond, cos(theta + m) is no longer a margin: the fallback
    would cover most angles), m >= 0 for CosFace."""
    try:
        s, m_value = float(s), float(m)
    except (TypeError, ValueError):
        raise InputError(f"{name} head: scale s {s!r} and margin m {m!r}: expected numbers") from None
    if not (math.isfinite(s) and s > 0):
        raise InputError(f"{name} head: scale s {s:g}: expected a number > 0")
    if name == "sphereface":
        if not (math.isfinite(m_value) and m_value >= 1 and m_value == int(m_value)):
            raise InputError(f"sphereface head: margin m {m_value:g}: expected a positive integer (the angle is "
                             f"multiplied by m; the paper uses 4)")
        return s, int(m_value)
    if name == "arcface" and not (0 <= m_value < math.pi / 2):
        raise InputError(f"arcface head: margin m {m_value:g}: expected 0 <= m < pi/2 (radians added to the angle; "
                         f"the paper uses 0.5)")
    if name == "cosface" and not (math.isfinite(m_value) and m_value >= 0):
        raise InputError(f"cosface head: margin m {m_value:g}: expected m >= 0 (subtracted from the cosine; the "
                         f"paper uses 0.35)")
    return s, m_value


def build_head(name: str, in_features: int, num_classes: int, s: float | None = None,
               m: float | None = None) -> _MarginHead:
    """The head called `name` (a key of HEADS), with its class defaults for s and m where they are None."""
    try:
        cls = HEADS[name]
    except KeyError:
        raise InputError(f"unknown margin head {name!r}: expected one of {', '.join(HEADS)}") from None
    s = cls.DEFAULT_S if s is None else s
    m = cls.DEFAULT_M if m is None else m
    return cls(in_features, num_classes, s=s, m=m)


__all__ = ["ArcFace", "CosFace", "HEADS", "SphereFace", "build_head", "chebyshev_cos_multiple"]
