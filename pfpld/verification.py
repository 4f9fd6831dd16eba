"""Face verification on scored pairs, by the LFW protocol: is each pair the same person? Pure numpy, no model.

A recognition model scores a pair by the cosine of its two embeddings (cosine_scores); pfpld/recognition.py runs the
pairs file through the model and hands the scores here. The protocol's number is the "10-fold accuracy": the pairs
file splits its pairs into folds (10 for LFW); for each fold, the threshold is the one that classifies the OTHER
folds best, and the accuracy is measured on the held fold with it; the mean and spread over the folds is the
result. Beside it: TAR at a fixed FAR (1e-3 by default) and the ROC with its AUC, over all pairs.

Throughout, a pair is accepted as "same" when its score is STRICTLY greater than the threshold, and higher scores
mean more alike. Every error is an InputError in one line naming what was expected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .tables import markdown_table, text_table

DEFAULT_FAR = 1e-3


# --- checking the inputs -----------------------------------------------------------------------------------------

def _pairs(scores, same, source: str) -> tuple[np.ndarray, np.ndarray]:
    """scores (N,) finite floats and same (N,) bools (or 0/1), as float64 and bool arrays."""
    scores = np.asarray(scores, dtype=np.float64)
    same_in = np.asarray(same)
    if scores.ndim != 1 or same_in.ndim != 1 or len(scores) != len(same_in):
        raise InputError(f"{source}: scores of shape {scores.shape} and same-person flags of shape {same_in.shape}: "
                         f"expected two 1-D arrays of the same length, one entry per pair")
    if same_in.dtype != bool:
        if not np.isin(same_in, (0, 1)).all():
            bad = int(np.flatnonzero(~np.isin(same_in, (0, 1)))[0])
            raise InputError(f"{source}: pair {bad} has same-person flag {same_in[bad]!r}: expected True/False or 1/0")
        same_in = same_in.astype(bool)
    finite = np.isfinite(scores)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InputError(f"{source}: pair {bad} has score {scores[bad]}: expected a finite number")
    n_same = int(same_in.sum())
    if n_same == 0 or n_same == len(same_in):
        raise InputError(f"{source}: {len(same_in)} pairs with {n_same} same-person and {len(same_in) - n_same} "
                         f"different-person pairs: expected at least one of each")
    return scores, same_in


def _folds(folds, n: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """folds (N,) integer fold ids -> (the array as int64, its distinct ids sorted)."""
    folds_in = np.asarray(folds)
    if folds_in.ndim != 1 or len(folds_in) != n:
        raise InputError(f"{source}: fold ids of shape {folds_in.shape} for {n} pairs: expected one fold id per pair")
    as_int = folds_in.astype(np.int64) if folds_in.dtype.kind in "iub" else np.rint(folds_in).astype(np.int64)
    if folds_in.dtype.kind not in "iub" and not np.array_equal(as_int, folds_in):
        raise InputError(f"{source}: fold ids of type {folds_in.dtype} that are not all integers: expected integer "
                         f"fold ids (LFW's pairs file numbers its 10 folds)")
    ids = np.unique(as_int)
    if len(ids) < 2:
        raise InputError(f"{source}: {len(ids)} fold: expected at least 2 (the threshold of each fold is chosen on "
                         f"the others; LFW has 10)")
    return as_int, ids


# --- thresholds --------------------------------------------------------------------------------------------------

def best_threshold(scores, same) -> tuple[float, float]:
    """The threshold that classifies these pairs best, and its accuracy. Candidates: the midpoints between
    consecutive distinct scores, one just below the lowest score (accept every pair) and the highest score (accept
    none), so that every split of the sorted scores is tried. Ties go to the LOWEST threshold (deterministic;
    insightface's argmax over ascending thresholds does the same)."""
    scores, same = _pairs(scores, same, "pairs")
    values, inverse = np.unique(scores, return_inverse=True)
    same_le = np.cumsum(np.bincount(inverse, weights=same, minlength=len(values))).astype(np.int64)
    diff_le = np.cumsum(np.bincount(inverse, weights=~same, minlength=len(values))).astype(np.int64)
    n_same = int(same.sum())
    # candidate j = 0 accepts everything; candidate j >= 1 rejects the j lowest distinct values
    correct = np.concatenate([[n_same], diff_le + (n_same - same_le)])
    low, high = values[:-1], values[1:]
    middle = np.where((low + high) / 2 > low, (low + high) / 2, low)      # adjacent floats: low splits the same way
    thresholds = np.concatenate([[np.nextafter(values[0], -np.inf)], middle, values[-1:]])
    best = int(np.argmax(correct))
    return float(thresholds[best]), float(correct[best] / len(scores))


def _accuracy(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((scores > threshold) == same))


@dataclass(frozen=True)
class KFoldResult:
    """The LFW protocol's k-fold accuracy. fold_threshold[i] was chosen on every fold but fold_ids[i]."""
    fold_ids: tuple[int, ...]
    fold_pairs: tuple[int, ...]
    fold_threshold: tuple[float, ...]
    fold_accuracy: tuple[float, ...]
    best_threshold: float           # for information: the best threshold on ALL pairs (not the protocol's number)
    best_accuracy: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_accuracy))

    @property
    def std(self) -> float:
        """Population std over the folds (numpy's default, what insightface prints as 'accuracy +- std')."""
        return float(np.std(self.fold_accuracy))

    @property
    def standard_error(self) -> float:
        """sigma / sqrt(k) with the sample sigma (k - 1 in the denominator): LFW's README's 'standard error'."""
        return float(np.std(self.fold_accuracy, ddof=1) / math.sqrt(len(self.fold_accuracy)))


def kfold_accuracy(scores, same, folds, *, source: str = "pairs") -> KFoldResult:
    """For each fold, the best threshold on the other folds (best_threshold) and the accuracy it gives on the held
    fold. Folds are found by id, in any order; each must hold at least one same and one different pair."""
    scores, same = _pairs(scores, same, source)
    folds, ids = _folds(folds, len(scores), source)
    for fold in ids:
        held = folds == fold
        n_same = int(same[held].sum())
        if n_same == 0 or n_same == int(held.sum()):
            raise InputError(f"{source}: fold {fold} has {n_same} same-person and {int(held.sum()) - n_same} "
                             f"different-person pairs: expected at least one of each in every fold")
    thresholds, accuracies, sizes = [], [], []
    for fold in ids:
        held = folds == fold
        threshold, _ = best_threshold(scores[~held], same[~held])
        thresholds.append(threshold)
        accuracies.append(_accuracy(scores[held], same[held], threshold))
        sizes.append(int(held.sum()))
    everywhere, best = best_threshold(scores, same)
    return KFoldResult(fold_ids=tuple(int(i) for i in ids), fold_pairs=tuple(sizes), fold_threshold=tuple(thresholds),
                       fold_accuracy=tuple(accuracies), best_threshold=everywhere, best_accuracy=best)


@dataclass(frozen=True)
class FarPoint:
    """The operating point of TAR at FAR: the smallest threshold whose false-accept rate on the different pairs is at
    most far_target, and the true-accept rate on the same pairs there.

    With n different pairs, FAR moves in steps of 1/n: the threshold may let floor(far_target * n) different pairs
    through (false_accepts_allowed). With fewer than 1/far_target different pairs that is 0 (resolved False): the
    threshold is then the highest different-pair score and `tar` is the TAR at FAR 0, stricter than asked (LFW's
    3,000 different pairs resolve 1e-3 with 3 false accepts; a 300-pair set does not)."""
    far_target: float
    threshold: float
    tar: float
    far_actual: float
    false_accepts_allowed: int
    n_different: int

    @property
    def resolved(self) -> bool:
        return self.false_accepts_allowed >= 1

    def note(self) -> str:
        """'' when resolved, else one sentence saying what the TAR really is."""
        if self.resolved:
            return ""
        return (f"only {self.n_different} different pairs: FAR {self.far_target:g} allows 0 false accepts, so this "
                f"is the TAR at FAR 0 (the smallest non-zero FAR these pairs resolve is 1/{self.n_different} = "
                f"{1 / self.n_different:.1e})")


def far_operating_point(scores, same, far: float = DEFAULT_FAR, *, source: str = "pairs") -> FarPoint:
    """TAR at FAR `far` with everything needed to read it (FarPoint)."""
    scores, same = _pairs(scores, same, source)
    if not (0 < far < 1):
        raise InputError(f"{source}: FAR {far}: expected a false-accept rate between 0 and 1 (exclusive)")
    different = np.sort(scores[~same])[::-1]
    n_diff = len(different)
    allowed = int(math.floor(far * n_diff * (1 + 1e-12)))        # 1e-3 x 3000 may round to 2.9999...
    # accepting scores above the (allowed+1)-th highest different score lets at most `allowed` of them through; any
    # lower threshold lets that one through too
    threshold = float(different[allowed])
    return FarPoint(far_target=float(far), threshold=threshold, tar=float(np.mean(scores[same] > threshold)),
                    far_actual=float(np.mean(different > threshold)), false_accepts_allowed=allowed,
                    n_different=n_diff)


def tar_at_far(scores, same, far: float = DEFAULT_FAR) -> tuple[float, float]:
    """(TAR, threshold) at false-accept rate `far`: see FarPoint for what it means with few different pairs."""
    point = far_operating_point(scores, same, far)
    return point.tar, point.threshold


# --- ROC ---------------------------------------------------------------------------------------------------------

def roc_curve(scores, same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds), FAR increasing from 0 to 1. The thresholds are the distinct scores, highest first
    (the highest accepts nothing: the point (0, 0)), then one just below the lowest score (accepts everything:
    (1, 1)). Pairs with equal scores move together, so a tie between a same and a different pair is one diagonal
    step, worth half in the AUC."""
    scores, same = _pairs(scores, same, "pairs")
    values, inverse = np.unique(scores, return_inverse=True)
    same_le = np.cumsum(np.bincount(inverse, weights=same, minlength=len(values)))
    diff_le = np.cumsum(np.bincount(inverse, weights=~same, minlength=len(values)))
    n_same, n_diff = same_le[-1], diff_le[-1]
    # threshold values[j] accepts the scores above it: n - (count <= values[j])
    far = np.concatenate([(n_diff - diff_le)[::-1], [n_diff]]) / n_diff
    tar = np.concatenate([(n_same - same_le)[::-1], [n_same]]) / n_same
    thresholds = np.concatenate([values[::-1], [np.nextafter(values[0], -np.inf)]])
    return far, tar, thresholds


def roc_auc(far, tar) -> float:
    """Area under the ROC (trapezoids): the chance that a same pair scores above a different pair, ties counting
    half."""
    far, tar = np.asarray(far, dtype=np.float64), np.asarray(tar, dtype=np.float64)
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


# --- the report --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerificationReport:
    n_same: int
    n_different: int
    kfold: KFoldResult
    far_point: FarPoint
    auc: float
    roc_far: np.ndarray
    roc_tar: np.ndarray
    roc_thresholds: np.ndarray

    @property
    def n_pairs(self) -> int:
        return self.n_same + self.n_different

    @property
    def accuracy_mean(self) -> float:
        return self.kfold.mean

    @property
    def accuracy_std(self) -> float:
        return self.kfold.std

    @property
    def tar_at_far(self) -> float:
        return self.far_point.tar

    def to_dict(self) -> dict:
        k, p = self.kfold, self.far_point
        return {
            "pairs": {"same": self.n_same, "different": self.n_different, "folds": len(k.fold_ids)},
            "accuracy": {"mean": k.mean, "std": k.std, "standard_error": k.standard_error,
                         "folds": [{"fold": f, "pairs": n, "threshold": t, "accuracy": a} for f, n, t, a in
                                   zip(k.fold_ids, k.fold_pairs, k.fold_threshold, k.fold_accuracy)],
                         "rule": "each fold's threshold is the best on the other folds; a pair is 'same' when its "
                                 "score is above it"},
            "best_threshold_all_pairs": {"threshold": k.best_threshold, "accuracy": k.best_accuracy},
            "tar_at_far": {"far": p.far_target, "tar": p.tar, "threshold": p.threshold, "far_actual": p.far_actual,
                           "false_accepts_allowed": p.false_accepts_allowed, "resolved": p.resolved,
                           "note": p.note()},
            "auc": self.auc,
            "roc": {"far": self.roc_far.tolist(), "tar": self.roc_tar.tolist(),
                    "thresholds": self.roc_thresholds.tolist()},
        }

    def summary_rows(self) -> list[list[str]]:
        k, p = self.kfold, self.far_point
        folds = len(k.fold_ids)
        rows = [
            ["pairs", f"{self.n_pairs} ({self.n_same} same, {self.n_different} different), {folds} folds"],
            [f"accuracy ({folds}-fold)", f"{100 * k.mean:.2f} % +- {100 * k.std:.2f} (std; standard error "
                                         f"{100 * k.standard_error:.2f})"],
            ["best threshold, all pairs", f"{k.best_threshold:.4f} -> {100 * k.best_accuracy:.2f} % (not the "
                                          f"protocol's number: chosen on the pairs it is measured on)"],
            [f"TAR @ FAR {p.far_target:g}", f"{100 * p.tar:.2f} % at threshold {p.threshold:.4f} (FAR "
                                            f"{p.far_actual:.1e}, {p.false_accepts_allowed} false accepts allowed)"],
            ["ROC AUC", f"{self.auc:.5f}"],
        ]
        if p.note():
            rows.append(["note", p.note()])
        return rows

    def fold_rows(self) -> list[list[str]]:
        k = self.kfold
        return [[str(f), str(n), f"{t:.4f}", f"{100 * a:.2f} %"] for f, n, t, a in
                zip(k.fold_ids, k.fold_pairs, k.fold_threshold, k.fold_accuracy)]

    FOLD_HEADER = ("fold", "pairs", "threshold", "accuracy")

    def table(self, markdown: bool = False) -> str:
        """The summary and the per-fold thresholds and accuracies, as aligned text (or markdown tables)."""
        if markdown:
            lines = markdown_table(["metric", "value"], self.summary_rows()) + [""]
            lines += markdown_table(list(self.FOLD_HEADER), self.fold_rows())
        else:
            lines = [f"{name + ':':<28}{value}" for name, value in self.summary_rows()] + [""]
            lines += text_table([list(self.FOLD_HEADER)] + self.fold_rows())
        return "\n".join(lines)


def verify(scores, same, folds, far: float = DEFAULT_FAR, *, source: str = "pairs") -> VerificationReport:
    """The whole protocol on scored pairs: k-fold accuracy, TAR at FAR, ROC and AUC."""
    scores, same = _pairs(scores, same, source)
    kfold = kfold_accuracy(scores, same, folds, source=source)
    roc_far, roc_tar, roc_thresholds = roc_curve(scores, same)
    n_same = int(same.sum())
    return VerificationReport(n_same=n_same, n_different=len(same) - n_same, kfold=kfold,
                              far_point=far_operating_point(scores, same, far, source=source),
                              auc=roc_auc(roc_far, roc_tar), roc_far=roc_far, roc_tar=roc_tar,
                              roc_thresholds=roc_thresholds)


def cosine_scores(emb_a, emb_b) -> np.ndarray:
    """Row-wise cosine of two (N, D) arrays of embeddings (pair i = row i of each), in float64. A row of norm 0 has
    no direction: an error naming it."""
    a, b = np.asarray(emb_a, dtype=np.float64), np.asarray(emb_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise InputError(f"embeddings of shapes {a.shape} and {b.shape}: expected two (pairs, dimensions) arrays of "
                         f"the same shape")
    for name, x in (("first", a), ("second", b)):
        finite = np.isfinite(x).all(1)
        if not finite.all():
            raise InputError(f"row {int(np.flatnonzero(~finite)[0])} of the {name} embeddings is not finite "
                             f"(NaN or inf): expected finite embeddings")
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    for name, norm in (("first", norm_a), ("second", norm_b)):
        if (norm == 0).any():
            raise InputError(f"row {int(np.flatnonzero(norm == 0)[0])} of the {name} embeddings has norm 0: a zero "
                             f"vector has no direction to compare")
    return np.clip(np.einsum("ij,ij->i", a, b) / (norm_a * norm_b), -1.0, 1.0)


__all__ = ["DEFAULT_FAR", "FarPoint", "KFoldResult", "VerificationReport", "best_threshold", "cosine_scores",
           "far_operating_point", "kfold_accuracy", "roc_auc", "roc_curve", "tar_at_far", "verify"]
