"""The LFW verification protocol (pfpld/verification.py) on constructed scores with known answers: k-fold accuracy
worked out by hand on three folds of five pairs, the threshold taken from the other folds (a case where the held fold
would choose differently), a brute-force cross-check, TAR at FAR on a hand-built set (and when the different pairs are
too few for the FAR asked), the ROC's ends and AUC, cosine scores, one-line errors, and the ROC picture."""
import json
import math
import random

import cv2
import numpy as np
import pytest

from pfpld.errors import InputError
from pfpld.plots import plot_roc
from pfpld.verification import (best_threshold, cosine_scores, far_operating_point, kfold_accuracy, roc_auc, roc_curve,
                                tar_at_far, verify)

# Three folds of five (score, same) pairs. Worked by hand (a pair is "same" when its score is above the threshold):
#  fold 7 held: the others sorted 0.15F 0.25F 0.3F 0.35T 0.5F 0.62F 0.65F | 0.8T 0.85T 0.95T: rejecting the 7 lowest
#    (threshold (0.65 + 0.8) / 2 = 0.725) gets 9 of 10, every other split fewer. On fold 7: 0.9T yes, 0.7T no (wrong),
#    0.6F no, 0.1F no, 0.4T no (wrong): 3/5.
#  fold 3 held: the others 0.1F 0.15F 0.25F 0.4T 0.6F 0.62F | 0.7T 0.85T 0.9T 0.95T: 0.66 gets 9 of 10. On fold 3:
#    0.8T yes, 0.5F no, 0.35T no (wrong), 0.3F no, 0.65F no (0.65 < 0.66): 4/5.
#  fold 5 held: the others 0.1F 0.3F 0.35T 0.4T 0.5F 0.6F 0.65F | 0.7T 0.8T 0.9T: 0.675 gets 8 of 10. On fold 5 it
#    separates all five: 5/5.
HAND_FOLDS = {
    7: [(0.9, True), (0.7, True), (0.6, False), (0.1, False), (0.4, True)],
    3: [(0.8, True), (0.5, False), (0.35, True), (0.3, False), (0.65, False)],
    5: [(0.95, True), (0.85, True), (0.15, False), (0.25, False), (0.62, False)],
}


def interleaved(fold_pairs: dict, seed: int = 0):
    """(scores, same, folds) with the folds' pairs shuffled together: the protocol must not rely on order."""
    rows = [(s, y, f) for f, pairs in fold_pairs.items() for s, y in pairs]
    random.Random(seed).shuffle(rows)
    return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))


def test_hand_worked_three_folds():
    result = kfold_accuracy(*interleaved(HAND_FOLDS))
    assert result.fold_ids == (3, 5, 7)
    assert result.fold_pairs == (5, 5, 5)
    assert result.fold_threshold == pytest.approx((0.66, 0.675, 0.725))
    assert result.fold_accuracy == pytest.approx((0.8, 1.0, 0.6))
    assert result.mean == pytest.approx(0.8)
    assert result.std == pytest.approx(math.sqrt((0.2 ** 2 + 0 + 0.2 ** 2) / 3))
    assert result.standard_error == pytest.approx(math.sqrt((0.2 ** 2 + 0.2 ** 2) / 2) / math.sqrt(3))


def test_threshold_comes_from_the_other_folds_not_the_held_one():
    # each fold alone is perfectly separable, but at different places: fold 1 between 0.6 and 0.8, fold 2 between
    # 0.3 and 0.4. Chosen on the held fold the accuracy would be 1.0 twice; from the other fold, fold 1 gets 0.35
    # (accepts all four: 2/4) and fold 2 gets 0.75 (rejects all four: 2/4).
    folds = {1: [(0.9, True), (0.8, True), (0.7, False), (0.6, False)],
             2: [(0.5, True), (0.4, True), (0.3, False), (0.2, False)]}
    result = kfold_accuracy(*interleaved(folds, seed=3))
    assert result.fold_threshold == pytest.approx((0.35, 0.75))
    assert result.fold_accuracy == (0.5, 0.5)
    assert result.mean == 0.5
    # on all eight pairs 0.35 and 0.75 tie at 6/8: the tie goes to the lower threshold
    assert (result.best_threshold, result.best_accuracy) == pytest.approx((0.35, 0.75))


def test_perfectly_separable_scores_give_one_in_every_fold():
    rng = np.random.default_rng(0)
    folds = np.repeat(np.arange(1, 11), 30)
    same = rng.random(300) < 0.5
    for f in range(1, 11):                          # both kinds in every fold
        same[np.flatnonzero(folds == f)[:2]] = [True, False]
    scores = np.where(same, rng.uniform(0.55, 1.0, 300), rng.uniform(-0.3, 0.45, 300))
    order = rng.permutation(300)
    report = verify(scores[order], same[order], folds[order])
    assert report.kfold.fold_accuracy == (1.0,) * 10
    assert report.accuracy_mean == 1.0 and report.accuracy_std == 0.0
    assert all(0.45 <= t < 0.55 for t in report.kfold.fold_threshold)
    assert report.auc == pytest.approx(1.0, abs=1e-12) and report.tar_at_far == 1.0
    # fewer than 1/1e-3 different pairs: said, not hidden
    assert not report.far_point.resolved and report.far_point.false_accepts_allowed == 0
    assert "TAR at FAR 0" in report.far_point.note()


def brute_kfold(scores, same, folds):
    """Every candidate threshold tried in plain Python; ties to the lowest. (thresholds, accuracies) by fold id."""
    thresholds, accuracies = [], []
    for f in sorted(set(folds.tolist())):
        train = [(s, y) for s, y, g in zip(scores, same, folds) if g != f]
        held = [(s, y) for s, y, g in zip(scores, same, folds) if g == f]
        values = sorted({s for s, _ in train})
        candidates = [math.nextafter(values[0], -math.inf)] + [(a + b) / 2 for a, b in zip(values, values[1:])] \
            + [values[-1]]
        best_t, best_correct = None, -1
        for t in candidates:
            correct = sum((s > t) == y for s, y in train)
            if correct > best_correct:
                best_t, best_correct = t, correct
        thresholds.append(best_t)
        accuracies.append(sum((s > best_t) == y for s, y in held) / len(held))
    return thresholds, accuracies


def test_kfold_matches_a_brute_force_search_on_noisy_tied_scores():
    rng = np.random.default_rng(5)
    n = 120
    same = rng.random(n) < 0.5
    scores = np.round(np.where(same, rng.normal(0.5, 0.2, n), rng.normal(0.2, 0.2, n)), 1)   # many ties
    folds = rng.integers(0, 4, n)
    for f in range(4):
        same[np.flatnonzero(folds == f)[:2]] = [True, False]
    result = kfold_accuracy(scores, same, folds)
    thresholds, accuracies = brute_kfold(scores, same, folds)
    assert result.fold_threshold == pytest.approx(tuple(thresholds), abs=1e-12)
    assert result.fold_accuracy == pytest.approx(tuple(accuracies))
    assert 0.55 < result.mean < 0.95


def test_best_threshold_can_accept_everything_or_nothing():
    # reversed scores where accepting every pair is best (2 of 3)
    t, acc = best_threshold([0.1, 0.2, 0.9], [True, True, False])
    assert acc == pytest.approx(2 / 3) and t < 0.1
    t, acc = best_threshold([0.1, 0.8, 0.9], [True, False, False])
    assert acc == pytest.approx(2 / 3) and t == 0.9      # nothing is above the highest score


def test_tar_at_far_on_a_hand_built_set():
    different = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    same_scores = [0.95, 0.85, 0.75, 0.72, 0.65, 0.3]
    scores = np.array(different + same_scores)
    same = np.array([False] * 10 + [True] * 6)
    # FAR 0.2 of 10 different pairs: 2 may pass; the smallest such threshold is the 3rd highest, 0.7
    assert tar_at_far(scores, same, 0.2) == (pytest.approx(4 / 6), 0.7)
    assert tar_at_far(scores, same, 0.25) == (pytest.approx(4 / 6), 0.7)      # 2.5 false accepts round down
    assert tar_at_far(scores, same, 0.1) == (pytest.approx(2 / 6), 0.8)
    point = far_operating_point(scores, same, 0.2)
    assert point.far_actual == pytest.approx(0.2) and point.resolved and point.note() == ""
    # any lower threshold lets a third different pair through
    assert np.mean(scores[~same] > 0.7 - 1e-9) > 0.2
    # FAR 0.05 of 10: no false accept allowed: the TAR at FAR 0, said so
    point = far_operating_point(scores, same, 0.05)
    assert (point.threshold, point.tar, point.false_accepts_allowed) == (0.9, pytest.approx(1 / 6), 0)
    assert not point.resolved and "only 10 different pairs" in point.note()


def test_far_1e_minus_3_of_3000_different_pairs_allows_3():
    rng = np.random.default_rng(1)
    scores = rng.random(3300)
    same = np.arange(3300) < 300
    point = far_operating_point(scores, same, 1e-3)
    assert point.false_accepts_allowed == 3 and point.far_actual == pytest.approx(3 / 3000)
    assert point.threshold == np.sort(scores[~same])[-4]


def test_roc_ends_at_the_corners_and_auc_of_perfect_and_reversed_rankings():
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.2])
    same = np.array([True, True, False, False, False])
    far, tar, thresholds = roc_curve(scores, same)
    assert (far[0], tar[0]) == (0.0, 0.0) and (far[-1], tar[-1]) == (1.0, 1.0)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0) and np.all(np.diff(thresholds) < 0)
    assert roc_auc(far, tar) == pytest.approx(1.0, abs=1e-12)
    far, tar, _ = roc_curve(-scores, same)
    assert (far[0], tar[0], far[-1], tar[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert roc_auc(far, tar) == pytest.approx(0.0, abs=1e-12)
    far, tar, _ = roc_curve(np.zeros(5), same)               # all tied: the diagonal
    assert roc_auc(far, tar) == pytest.approx(0.5, abs=1e-12)


def test_auc_is_the_chance_a_same_pair_outscores_a_different_pair():
    rng = np.random.default_rng(2)
    same = rng.random(200) < 0.4
    scores = np.round(rng.normal(same * 0.5, 0.4), 1)
    pos, neg = scores[same], scores[~same]
    by_pairs = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))
    assert roc_auc(*roc_curve(scores, same)[:2]) == pytest.approx(by_pairs, abs=1e-12)


def test_cosine_scores_row_by_row():
    a = [[1.0, 0.0, 0.0], [3.0, 4.0, 0.0], [1.0, 1.0, 0.0], [1.0, 2.0, 2.0]]
    b = [[0.0, 2.0, 0.0], [3.0, 4.0, 0.0], [-1.0, -1.0, 0.0], [2.0, 0.0, 0.0]]
    assert cosine_scores(a, b) == pytest.approx([0.0, 1.0, -1.0, 1 / 3])


def test_cosine_scores_name_a_zero_row():
    with pytest.raises(InputError, match=r"row 2 of the second embeddings has norm 0"):
        cosine_scores(np.ones((3, 4)), np.array([[1.0] * 4, [2.0] * 4, [0.0] * 4]))
    with pytest.raises(InputError, match="same shape"):
        cosine_scores(np.ones((3, 4)), np.ones((2, 4)))


@pytest.mark.parametrize("scores, same, folds, words", [
    ([0.1, 0.2, 0.3], [True, False], [0, 1, 0], "same length"),
    ([0.1, 0.2, 0.3, 0.4], [True, False, True, False], [0, 1, 0], "one fold id per pair"),
    ([0.1, 0.2, 0.3, 0.4], [True, False, True, False], [4, 4, 4, 4], "1 fold: expected at least 2"),
    ([0.1, 0.2, 0.3, 0.4], [True, True, False, False], [0, 0, 1, 1], "fold 0 has 2 same-person and 0 different"),
    ([0.1, 0.2, 0.3, 0.4, 0.5], [True, False, False, False, True], [0, 0, 1, 1, 0], "fold 1 has 0 same-person"),
    ([0.1, float("nan"), 0.3, 0.4], [True, False, True, False], [0, 0, 1, 1], "pair 1 has score nan"),
    ([0.1, 0.2, 0.3, 0.4], [True, False, True, False], [0, 0, 1.5, 1], "integer fold ids"),
])
def test_bad_inputs_are_one_line_errors(scores, same, folds, words):
    with pytest.raises(InputError) as info:
        verify(np.array(scores), np.array(same), np.array(folds))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_report_as_json_and_table():
    report = verify(*interleaved(HAND_FOLDS), far=0.2)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["pairs"] == {"same": 7, "different": 8, "folds": 3}
    assert data["accuracy"]["mean"] == pytest.approx(0.8)
    assert [f["accuracy"] for f in data["accuracy"]["folds"]] == pytest.approx([0.8, 1.0, 0.6])
    assert data["roc"]["far"][0] == 0.0 and data["roc"]["tar"][-1] == 1.0
    assert data["tar_at_far"]["false_accepts_allowed"] == 1 and data["tar_at_far"]["resolved"]
    text = report.table()
    assert "80.00 % +- 16.33" in text and "0.6600" in text
    markdown = report.table(markdown=True)
    assert "| fold | pairs | threshold | accuracy |" in markdown and "| 7 | 5 | 0.7250 | 60.00 % |" in markdown


def test_roc_plot_is_a_png_written_atomically(tmp_path):
    rng = np.random.default_rng(4)
    same = np.arange(2000) < 1000
    scores = rng.normal(same * 2.0, 1.0)
    folds = np.arange(2000) % 10
    report = verify(scores, same, folds)
    baseline = verify(rng.normal(same * 0.3, 1.0), same, folds)
    path = tmp_path / "roc.png"
    plot_roc(report, path, label="facerec", baseline=baseline)
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roc.png"]
    # a plot that fails leaves the earlier picture whole, and no temporary file
    before = path.read_bytes()
    broken = verify(scores, same, folds)
    object.__setattr__(broken, "roc_far", np.zeros(0))
    object.__setattr__(broken, "roc_tar", np.zeros(0))
    with pytest.raises(ValueError):
        plot_roc(broken, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roc.png"]
