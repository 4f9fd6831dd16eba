"""`pfpld calib`: crops cut with the contract, spread over pose and eye state, bad exposures rejected by the
stated rules, a list the mapper reads, a report; written atomically and replaced only with --force."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from pfpld.contract import PreprocessContract, landmark_box
from pfpld.data.synthetic import render_face, sample_params
from quant.calibration import (IMAGE_LIST, QualityRules, crop_quality, make_calibration_set, pose_from_landmarks,
                               read_calibration_set)

PFPLD = [sys.executable, "-m", "pfpld_app.cli"]


def test_quality_rules_reject_near_black_near_white_and_over_exposed_crops():
    rules = QualityRules()
    grey = np.full((112, 112, 3), 120, np.uint8)
    assert rules.verdict(*crop_quality(grey, rules)) is None
    assert rules.verdict(*crop_quality(np.full_like(grey, 20), rules)) == "near-black"
    assert rules.verdict(*crop_quality(np.full_like(grey, 235), rules)) == "near-white"
    blown = grey.copy()
    blown[:40] = 255                        # 36% clipped, mean luma 168: only the clipping rule fires
    mean, clipped = crop_quality(blown, rules)
    assert rules.near_black_mean < mean < rules.near_white_mean and clipped > rules.overexposed_fraction
    assert rules.verdict(mean, clipped) == "over-exposed"
    blown[:10] = 120                        # 27% clipped: still over the 20% threshold; 9% would not be
    assert rules.verdict(*crop_quality(blown, rules)) == "over-exposed"
    blown[:30] = 120
    assert rules.verdict(*crop_quality(blown, rules)) is None


def test_pose_fit_to_the_3d_template_recovers_synthetic_head_pose():
    contract = PreprocessContract()
    rng = np.random.default_rng(4)
    errors = []
    for yaw, pitch in ((-50, 10), (-20, -20), (0, 25), (30, 0), (55, -10)):
        face = render_face(rng, image_size=300, params=sample_params(rng, clean=True, pose_deg=(yaw, pitch, 5)))
        crop, matrix = contract.crop_image(face.image, landmark_box(face.points_98))
        est = pose_from_landmarks(contract.points_to_crop(face.points_98, matrix) * 112, None, 112)
        errors.append(np.degrees(np.abs(est - face.pose_rad)))
    assert np.max(errors) < 8.0, errors       # enough to put a face in the right 30-degree bin


def test_calibration_set_spreads_over_pose_and_eye_state(prepared_dir, tmp_path):
    out = tmp_path / "calib_data" / "demo"
    summary = make_calibration_set(prepared_dir, out, n=16, seed=1)
    assert summary.selected == 16
    lines = (out / IMAGE_LIST).read_text().splitlines()
    assert len(lines) == 16 and all(not line.startswith("/") for line in lines)
    for line in lines:                        # relative to the folder of image_list.txt, 112x112 crops
        image = cv2.imread(str(out / line))
        assert image is not None and image.shape == (112, 112, 3)
    manifest = json.loads((out / "calib.json").read_text())
    images = manifest["images"]
    yaw_bins = {int(np.searchsorted(manifest["bins"]["yaw_edges_deg"], im["yaw_deg"])) for im in images}
    pitch_bins = {int(np.searchsorted(manifest["bins"]["pitch_edges_deg"], im["pitch_deg"])) for im in images}
    assert len(yaw_bins) >= 4 and len(pitch_bins) == 3, (yaw_bins, pitch_bins)
    assert {im["eye"] for im in images} >= {"open", "closed"}
    assert all(im["rejected"] is None for im in images)
    assert set(manifest["rejected"]) == {"near-black", "near-white", "over-exposed"}
    report = (out / "report.md").read_text()
    assert "| near-black | mean luma < 40 |" in report and "spread.png" in report
    assert cv2.imread(str(out / "spread.png")) is not None
    # what a reader of the set gets back: the contract's network input, in image_list order
    calib = read_calibration_set(out, PreprocessContract())
    assert calib.inputs(PreprocessContract()).shape == (16, 3, 112, 112)
    assert not list(out.parent.glob(".*"))    # no temporary folder left behind


def test_images_with_boxes_reject_bad_exposures_and_replace_only_with_force(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    rng = np.random.default_rng(2)
    rows = []
    for i in range(4):
        face = render_face(rng, image_size=240, params=sample_params(rng, clean=True))
        cv2.imwrite(str(folder / f"face{i}.png"), face.image)
        rows.append(f"face{i}.png {' '.join(str(v) for v in face.box)}")
    for name, value in (("black.png", 5), ("white.png", 250)):
        cv2.imwrite(str(folder / name), np.full((240, 240, 3), value, np.uint8))
        rows.append(f"{name} 40 40 200 200")
    (folder / "boxes.txt").write_text("\n".join(rows) + "\n")
    out = tmp_path / "calib"
    proc = subprocess.run(PFPLD + ["calib", str(folder), "--n", "10", "--out", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "4 crops from 6 candidates" in proc.stdout and "near-black 1" in proc.stdout
    manifest = json.loads((out / "calib.json").read_text())
    assert manifest["rejected"] == {"near-black": 1, "near-white": 1, "over-exposed": 0}
    assert all(im["eye"] is None and im["yaw_deg"] is None for im in manifest["images"])   # no model: unknown
    again = subprocess.run(PFPLD + ["calib", str(folder), "--out", str(out)], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 2 and "--force" in again.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = subprocess.run(PFPLD + ["calib", str(folder), "--out", str(foreign), "--force"], capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and (foreign / "notes.txt").read_text() == "mine"


def test_unreadable_list_entry_is_one_line_naming_the_file(tmp_path):
    (tmp_path / IMAGE_LIST).write_text("images/missing.png\n")
    with pytest.raises(Exception, match="image_list.txt:1: .*missing.png"):
        read_calibration_set(tmp_path, PreprocessContract())
