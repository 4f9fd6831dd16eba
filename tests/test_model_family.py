"""The model family of issue 11 beside PFPLD: landmark5's points from the 98-point labels, HopeNet's crop rule, short
training runs of landmark5 and hopenet that beat the trivial baseline, and what the command line says about them
(one-line errors for data or options of another model, `pfpld models`, eval's pose table, predict's JSON)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pfpld.contract import ContractError, CropRule, PreprocessContract
from pfpld.landmarks import MIRROR_98, NUM_POINTS, flip_mask, flip_points
from pfpld.models import MODELS, build_model, model_task
from pfpld.models.landmark5 import POINT_NAMES, points_from_98

PFPLD = [sys.executable, "-m", "pfpld_app.cli"]


def run(*args):
    return subprocess.run(PFPLD + [str(a) for a in args], capture_output=True, text=True, timeout=600)


def assert_user_error(proc, *fragments):
    """Exit code 2, no traceback, and the error is one line, the last one, holding every fragment."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [part for line in proc.stderr.splitlines() for part in line.split("\r") if part.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for f in fragments:
        assert f in errors[0], (f, errors[0])


# --- landmark5: its 5 points from the 98 ------------------------------------------------------------------------

LANDMARK5_TASK = MODELS["landmark5"].task(MODELS["landmark5"].spec())


def test_landmark5_points_are_eye_corner_midpoints_nose_tip_and_mouth_corners():
    points = np.random.default_rng(0).uniform(0, 1, (NUM_POINTS, 2))
    points[60], points[64] = (0.20, 0.40), (0.30, 0.44)         # image-left eye: corners 60 and 64
    points[68], points[72] = (0.62, 0.38), (0.74, 0.42)         # image-right eye: corners 68 and 72
    points[54] = (0.47, 0.61)                                   # nose tip
    points[76], points[82] = (0.33, 0.80), (0.65, 0.79)         # mouth corners
    five, mask = LANDMARK5_TASK.map_points(points, np.ones(NUM_POINTS, bool))
    assert len(POINT_NAMES) == 5 and five.shape == (5, 2) and mask.tolist() == [True] * 5
    assert five == pytest.approx(np.array([[0.25, 0.42], [0.68, 0.40], [0.47, 0.61], [0.33, 0.80], [0.65, 0.79]]),
                                 abs=1e-12)
    # the same in torch, batched, as training maps its augmented batches
    t_five, t_mask = LANDMARK5_TASK.map_points(torch.tensor(np.stack([points, points])), torch.ones(2, NUM_POINTS,
                                                                                                    dtype=torch.bool))
    assert t_five.shape == (2, 5, 2) and torch.allclose(t_five[1], torch.tensor(five), atol=1e-12)
    assert t_mask.all()
    # every other point has weight 0: the map is blind to them
    w = points_from_98()
    assert np.count_nonzero(w) == 7 and w.sum(1) == pytest.approx(np.ones(5))


@pytest.mark.parametrize("missing, invalid", [((64,), [0]), ((68,), [1]), ((54,), [2]), ((76, 82), [3, 4]),
                                              ((10, 33, 97), []), ((60, 72), [0, 1])])
def test_a_landmark5_point_is_invalid_when_any_of_its_sources_is(missing, invalid):
    mask98 = np.ones(NUM_POINTS, bool)
    mask98[list(missing)] = False
    _, mask = LANDMARK5_TASK.map_points(np.zeros((NUM_POINTS, 2)), mask98)
    assert np.flatnonzero(~mask).tolist() == invalid
    _, t_mask = LANDMARK5_TASK.map_points(torch.zeros(1, NUM_POINTS, 2), torch.from_numpy(mask98)[None])
    assert torch.nonzero(~t_mask[0]).flatten().tolist() == invalid


def test_mirrored_98_labels_map_to_the_mirrored_5_points_with_left_and_right_swapped():
    rng = np.random.default_rng(1)
    size_px = 48
    points = rng.uniform(0.1, 0.9, (3, NUM_POINTS, 2))
    mask98 = rng.random((3, NUM_POINTS)) > 0.05
    mask98[0] = True
    five, mask = LANDMARK5_TASK.map_points(points, mask98)
    five_of_flipped, mask_of_flipped = LANDMARK5_TASK.map_points(flip_points(points, size_px), flip_mask(mask98))
    swap = [1, 0, 2, 4, 3]                   # the eye centres and the mouth corners trade places; the nose stays
    mirrored = np.stack([(size_px - 1.0) / size_px - five[:, swap, 0], five[:, swap, 1]], -1)
    assert five_of_flipped == pytest.approx(mirrored, abs=1e-12)
    assert np.array_equal(mask_of_flipped, mask[:, swap])
    # the remap pairs exactly the sources the map uses: left eye corners with right ones, mouth corners together
    assert MIRROR_98[[60, 64, 54, 76]].tolist() == [72, 68, 54, 82]


# --- the crop rule ----------------------------------------------------------------------------------------------

def test_hopenet_loose_square_by_hand():
    """Box (10, 20, 110, 220), k 0.3: x1 -= 0.18 w = -8, y1 -= 0.6 h = -100; then on the widened box x2 += 0.18 x 118
    = 131.24 and y2 += 0.18 x 320 = 277.6. The square is 224/240 of the shorter side 139.24 around (61.62, 88.8)."""
    rule = CropRule(loose_k=0.3, side="min", expand=224 / 240)
    cx, cy, side = rule.square((10, 20, 110, 220))
    assert (cx, cy) == pytest.approx((61.62, 88.8), abs=1e-9)
    assert side == pytest.approx(139.24 * 224 / 240, abs=1e-9)
    # updating x2, y2 with the original w, h (not the reference's order) would give another box
    assert (cx, cy) != pytest.approx(((-8 + 128) / 2, (-100 + 256) / 2), abs=1e-3)
    assert MODELS["hopenet"].contract(MODELS["hopenet"].spec()).crop == rule


def test_default_square_uses_the_longer_side_and_shift():
    rule = CropRule(expand=1.2, shift_y=0.1)
    cx, cy, side = rule.square((10, 20, 110, 220))
    assert (cx, cy, side) == pytest.approx((60.0, 120.0 + 0.1 * 240.0, 240.0))
    assert CropRule(side="min", expand=1.0).square((10, 20, 110, 220)) == pytest.approx((60.0, 120.0, 100.0))


def test_bad_crop_rules_are_refused():
    with pytest.raises(ContractError, match="crop side 'middle'"):
        CropRule(side="middle")
    with pytest.raises(ContractError, match="loose_k -0.1"):
        CropRule(loose_k=-0.1)


def test_contracts_of_old_checkpoints_without_loose_k_or_side_still_load():
    old = {"input_size": 112, "color_order": "RGB", "scale": 1 / 255, "mean": [0, 0, 0], "layout": "NCHW",
           "crop": {"box_source": "landmark_extent", "expand": 1.2, "shift_y": 0.0}}
    contract = PreprocessContract.from_dict(old)
    assert contract.crop.loose_k == 0.0 and contract.crop.side == "max"
    assert contract == PreprocessContract()
    assert contract.crop.square((0, 0, 100, 50)) == pytest.approx((50.0, 25.0, 120.0))
    # and today's contracts round-trip through their dict
    hopenet_contract = MODELS["hopenet"].contract(MODELS["hopenet"].spec())
    assert PreprocessContract.from_dict(json.loads(hopenet_contract.to_json())) == hopenet_contract
