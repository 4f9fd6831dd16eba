"""The model family of issue 11 beside PFPLD: landmark5's points from the 98-point labels, HopeNet's crop rule, short
training runs of landmark5 and hopenet that beat the trivial baseline, and what the command line says about them
(one-line errors for data or options of another model, `pfpld models`, eval's pose table, predict's JSON)."""
import json

import numpy as np
import pytest
import torch

from pfpld.contract import ContractError, CropRule, PreprocessContract
from pfpld.landmarks import MIRROR_98, NUM_POINTS, flip_mask, flip_points
from pfpld.models import MODELS, build_model
from pfpld.models.landmark5 import POINT_NAMES, points_from_98

from cli_run import assert_one_line_error, assert_user_error, run


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


# --- short training runs against the trivial baseline ----------------------------------------------------------
# Measured on this fixture (600 synthetic faces, seed 2: 413 training faces of which 180 carry a pose, 169 test
# faces of which 85 carry one), last.pt on the test split, as a multiple of the baseline on the same faces:
#   hopenet mobilenetv2 w0.5 at 112, 25 epochs, batch 16, lr 3e-3 cosine with 1 warm-up epoch, no augmentation,
#   the paper's loss (CE + 1 x MSE in degrees^2) with the bin layers at 0.1 x the lr (pfpld/models/hopenet.py):
#   0.67 / 0.70 / 0.71 / 0.74 / 0.66 x the mean pose's MAE for seeds 0 / 1 / 2 / 3 / 4 (yaw 0.44-0.61 x), the CE
#   down from 12.6 to 10.8-11.3 nats. With every layer at one lr the softmax saturated on wrong bins and no run
#   learned (0.85 x at seed 0, the CE up to 21 nats).
#   About 75 s on 2 quiet cores (the fixture's faces another 20 s).
#   landmark5 48x48, 10 epochs, batch 32, lr 3e-3 cosine with 1 warm-up epoch, no augmentation: 0.54 / 0.54 / 0.56
#   x the mean shape's NME for seeds 0 / 1 / 2 (seed 0 with augmentation 0.68); about 12 s.

FAMILY_FACES, FAMILY_SEED = 600, 2
HOPENET_OPTIONS = {"backbone": "mobilenetv2", "input_size": 112, "width": 0.5}


@pytest.fixture(scope="module")
def family_data(tmp_path_factory):
    """{model name: a folder prepared with that model's contract} from one synthetic set."""
    from pfpld.data.prepare import prepare_dataset
    from pfpld.data.synthetic import generate_dataset
    root = tmp_path_factory.mktemp("family")
    generate_dataset(root / "faces", n=FAMILY_FACES, seed=FAMILY_SEED, progress=False)
    prepared = {}
    for name, options in (("hopenet", HOPENET_OPTIONS), ("landmark5", {}), ("pfpld", {"width": 0.25})):
        _, _, contract = build_model(name, **options)
        prepared[name] = root / name
        prepare_dataset(prepared[name], wflw=root / "faces/WFLW", lapa=root / "faces/LaPa",
                        w300lp=root / "faces/300W_LP", aflw2000=root / "faces/AFLW2000", contract=contract,
                        progress=False)
    return prepared


def short_run(data, out, model: str, seed: int, **kw):
    from pfpld.train import TrainConfig, train
    options = dict(HOPENET_OPTIONS) if model == "hopenet" else {}
    options.pop("input_size", None)
    width = options.pop("width", 1.0)
    cfg = TrainConfig(data=str(data), out=str(out), model=model, width=width, model_options=options, lr=3e-3,
                      schedule="cosine", warmup_epochs=1.0, augment=False, val_fraction=0.0, workers=0, seed=seed,
                      **kw)
    train(cfg, progress=False)
    return out / "last.pt"


@pytest.fixture(scope="module")
def hopenet_run(family_data, tmp_path_factory):
    from pfpld.losses import LossConfig
    out = tmp_path_factory.mktemp("hopenet_run")
    return short_run(family_data["hopenet"], out, "hopenet", seed=0, epochs=25, batch_size=16,
                     loss=LossConfig(bins_alpha=1.0))


@pytest.fixture(scope="module")
def landmark5_run(family_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("landmark5_run")
    return short_run(family_data["landmark5"], out, "landmark5", seed=0, epochs=10, batch_size=32)


def test_short_hopenet_run_with_the_papers_loss_beats_the_mean_pose(hopenet_run, family_data):
    from pfpld.checkpoint import load_model
    from pfpld.evaluate import evaluate_model
    model, ckpt = load_model(hopenet_run)
    assert ckpt.config["loss"]["bins_alpha"] == 1.0 and ckpt.config["loss"]["bins_regression"] == "mse"
    report = evaluate_model(model, ckpt.spec, family_data["hopenet"], contract=ckpt.contract)
    assert report.pose["n"] == report.baseline["pose"]["n"] > 50 and not report.landmarks
    assert report.pose_vs_mean_pose < 0.8, report.table()
    assert report.pose["yaw"] < 0.7 * report.baseline["pose"]["yaw"], report.table()
    # the bins learn too: the softmax does not saturate on wrong bins (the CE would rise above its ln 66 start)
    first, last = ckpt.history[0], ckpt.history[-1]
    assert last["train_bins_ce_loss"] < 0.95 * first["train_bins_ce_loss"]
    assert last["train_expectation_mse_loss"] < 0.25 * first["train_expectation_mse_loss"]


def test_hopenet_bin_layers_learn_at_a_tenth_of_the_lr(hopenet_run):
    """The optimizer the run saved has two groups: every other parameter at --lr, the three bin layers (weights and
    biases) at 0.1 x, and the run's config records the factor that resuming checks."""
    from pfpld.checkpoint import load_checkpoint
    from pfpld.models.hopenet import OUTPUT_LR_FACTOR
    ckpt = load_checkpoint(hopenet_run)
    assert ckpt.config["output_lr_factor"] == OUTPUT_LR_FACTOR == 0.1
    trunk, bins = ckpt.optimizer["param_groups"]
    model, _, _ = build_model("hopenet", **HOPENET_OPTIONS)
    assert len(bins["params"]) == 6 and len(trunk["params"]) + 6 == len(list(model.parameters()))
    assert bins["lr"] == pytest.approx(0.1 * trunk["lr"]) and bins["initial_lr"] == pytest.approx(3e-4)


def test_training_from_a_checkpoint_starts_from_its_weights(hopenet_run, family_data, tmp_path):
    """--init-from: the model, its options and contract come from the checkpoint, and so do the weights (the first
    epoch's loss is the trained model's, not a new model's), with a new optimizer and schedule."""
    from pfpld.checkpoint import load_checkpoint
    out = tmp_path / "tuned"
    proc = run("train", "--data", family_data["hopenet"], "--out", out, "--init-from", hopenet_run, "--epochs", "1",
               "--batch-size", "16", "--lr", "1e-4", "--val-fraction", "0", "--no-augment")
    assert proc.returncode == 0, proc.stderr
    start, tuned = load_checkpoint(hopenet_run), load_checkpoint(out / "last.pt")
    assert tuned.spec == start.spec and tuned.contract == start.contract and tuned.epoch == 1
    assert tuned.config["init_from"] == str(hopenet_run) and tuned.config["epochs"] == 1
    assert tuned.history[0]["train_expectation_mse_loss"] < 0.5 * start.history[0]["train_expectation_mse_loss"]


def test_a_model_decoding_at_the_left_edges_is_fine_tuned_as_it_decodes(hopenet_run, family_data, tmp_path):
    """A checkpoint whose spec decodes at the bins' left edges (what `pfpld import --from deep-head-pose` writes)
    keeps that decode through --init-from: the new run's spec still says so and its outputs are the left edges'."""
    from pfpld.checkpoint import load_checkpoint, load_model, save_checkpoint
    from pfpld.models.hopenet import hopenet_contract, hopenet_spec
    from pfpld.pose_bins import BIN_EDGES_DEG, expectation_deg
    trained = load_checkpoint(hopenet_run)
    spec = hopenet_spec(**{**trained.spec.options, "decode": "reference"})
    save_checkpoint(tmp_path / "reference.pt", state_dict=trained.state_dict, spec=spec,
                    contract=hopenet_contract(spec))
    proc = run("train", "--data", family_data["hopenet"], "--out", tmp_path / "tuned", "--init-from",
               tmp_path / "reference.pt", "--epochs", "1", "--batch-size", "16", "--lr", "1e-4", "--val-fraction", "0")
    assert proc.returncode == 0, proc.stderr
    model, tuned = load_model(tmp_path / "tuned/last.pt")
    assert tuned.spec == spec and tuned.spec.options["decode"] == "reference"
    with torch.no_grad():
        yaw, pitch, roll, angles = model(torch.randn(2, 3, 112, 112))
    left_edges = torch.stack([expectation_deg(v, BIN_EDGES_DEG[:-1]) for v in (yaw, pitch, roll)], 1)
    assert torch.allclose(angles, left_edges, atol=1e-4)


def test_init_from_mistakes_are_one_line(hopenet_run, family_data, tmp_path):
    proc = run("train", "--data", family_data["hopenet"], "--out", tmp_path / "a", "--init-from", hopenet_run,
               "--model", "hopenet", "--width", "0.5")
    assert_one_line_error(proc, f"--init-from {hopenet_run} takes the model", "drop --model, --width")
    proc = run("train", "--data", family_data["hopenet"], "--out", tmp_path / "b", "--init-from", hopenet_run,
               "--resume", hopenet_run)
    assert_one_line_error(proc, "--init-from", "--resume", "give one")
    proc = run("train", "--data", family_data["landmark5"], "--out", tmp_path / "c", "--init-from", hopenet_run)
    assert_user_error(proc, str(family_data["landmark5"] / "index.jsonl"))
    proc = run("train", "--data", family_data["hopenet"], "--out", tmp_path / "d", "--init-from",
               family_data["hopenet"] / "index.jsonl")
    assert_one_line_error(proc, "index.jsonl", "not a readable pfpld checkpoint")
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_output_lr_factor_mistakes_are_one_line(hopenet_run, family_data, tmp_path):
    proc = run("train", "--data", family_data["pfpld"], "--out", tmp_path / "a", "--width", "0.25", "--epochs", "1",
               "--output-lr-factor", "2")
    assert_user_error(proc, "--output-lr-factor 2", "model pfpld declares no output layers")
    proc = run("train", "--data", family_data["hopenet"], "--out", tmp_path / "b", "--model", "hopenet",
               "--backbone", "mobilenetv2", "--width", "0.5", "--epochs", "1", "--output-lr-factor", "0")
    assert_user_error(proc, "--output-lr-factor 0", "expected a positive multiple of --lr")
    # resuming at another factor would change the optimizer's groups under its saved state
    proc = run("train", "--data", family_data["hopenet"], "--out", tmp_path / "c", "--model", "hopenet",
               "--backbone", "mobilenetv2", "--width", "0.5", "--epochs", "26", "--schedule", "cosine",
               "--warmup-epochs", "1", "--val-fraction", "0", "--resume", hopenet_run, "--output-lr-factor", "1")
    assert_user_error(proc, str(hopenet_run), "output_lr_factor 0.1", "--output-lr-factor")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_short_landmark5_run_beats_the_mean_shape(landmark5_run, family_data):
    from pfpld.checkpoint import load_model
    from pfpld.evaluate import evaluate_model
    model, ckpt = load_model(landmark5_run)
    report = evaluate_model(model, ckpt.spec, family_data["landmark5"], contract=ckpt.contract)
    assert report.landmarks["n"] == report.baseline["landmarks"]["n"] > 100 and not report.pose
    assert report.nme_vs_mean_shape < 0.75, report.table()
    assert ckpt.history[-1]["train_landmark_loss"] < 0.7 * ckpt.history[0]["train_landmark_loss"]


def test_landmark5_starts_at_the_mean_shape(family_data):
    """train.py starts landmark5 at the training split's mean shape (init_landmark_head), as it does PFPLD: before any
    step the model scores the baseline, not a cloud of points at the crop centre."""
    from pfpld.data.dataset import PreparedFaces
    from pfpld.evaluate import evaluate_model
    torch.manual_seed(0)
    model, spec, contract = build_model("landmark5")
    untrained = evaluate_model(model.eval(), spec, family_data["landmark5"], contract=contract).nme_vs_mean_shape
    model.init_landmark_head(torch.from_numpy(PreparedFaces(family_data["landmark5"], "train").mean_landmarks()))
    started = evaluate_model(model.eval(), spec, family_data["landmark5"], contract=contract).nme_vs_mean_shape
    assert 0.9 < started < 1.1 and started < untrained


# --- what the command line says ----------------------------------------------------------------------------------

def test_training_on_data_prepared_for_another_model_is_one_line(family_data, tmp_path):
    proc = run("train", "--data", family_data["hopenet"], "--out", tmp_path / "a", "--model", "landmark5",
               "--epochs", "1")
    assert_user_error(proc, str(family_data["hopenet"] / "index.jsonl"), "pfpld prepare-data --model landmark5")
    proc = run("train", "--data", family_data["pfpld"], "--out", tmp_path / "b", "--model", "hopenet",
               "--backbone", "mobilenetv2", "--width", "0.5", "--epochs", "1")
    assert_user_error(proc, str(family_data["pfpld"] / "index.jsonl"), "pfpld prepare-data --model hopenet")
    # another model's input size fails in the model's own check: the error still says where it came from
    proc = run("train", "--data", family_data["landmark5"], "--out", tmp_path / "c", "--model", "hopenet",
               "--epochs", "1")
    assert_user_error(proc, "input_size 48", str(family_data["landmark5"] / "index.jsonl"),
                      "pfpld prepare-data --model hopenet")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_an_option_of_another_model_is_one_line(family_data, tmp_path):
    proc = run("train", "--data", family_data["pfpld"], "--out", tmp_path / "run", "--model", "pfpld",
               "--backbone", "resnet18", "--epochs", "1")
    assert_user_error(proc, "model pfpld takes no option backbone (it takes: width, input_size)")
    assert not (tmp_path / "run").exists()


def test_prepare_data_for_an_unknown_model_lists_the_known_ones(family_data, tmp_path):
    proc = run("prepare-data", "--model", "nosuch", "--out", tmp_path / "p", "--wflw",
               family_data["pfpld"].parent / "faces/WFLW")
    assert_user_error(proc, "'nosuch'", ", ".join(sorted(MODELS)))
    assert not (tmp_path / "p").exists()


def test_models_lists_every_model_with_its_outputs():
    proc = run("models")
    assert proc.returncode == 0, proc.stderr
    blocks = {b.splitlines()[0].split()[-1]: b for b in proc.stdout.strip().split("\n\n")}
    assert set(blocks) == {"pfpld", "hopenet", "landmark5", "facerec"} == set(MODELS)
    assert "embedding: embedding [512]" in blocks["facerec"]
    assert "landmarks: landmarks [196], pose: pose [3]" in blocks["pfpld"]
    assert "yaw_logits: pose_bins [66]" in blocks["hopenet"] and "angles_deg: pose_deg [3]" in blocks["hopenet"]
    assert "landmarks: landmarks [10]" in blocks["landmark5"] and "pose" not in blocks["landmark5"].split(
        "outputs (name: kind)")[1].splitlines()[0]


def test_eval_of_hopenet_prints_the_pose_table_and_no_landmark_table(hopenet_run, family_data):
    proc = run("eval", hopenet_run, "--data", family_data["hopenet"])
    assert proc.returncode == 0, proc.stderr
    assert "pose (|angle|<=99)" in proc.stdout and "mean pose (baseline)" in proc.stdout
    assert "model pose MAE = " in proc.stdout
    assert "NME %" not in proc.stdout and "mean shape (baseline)" not in proc.stdout


@pytest.fixture(scope="module")
def face_picture(tmp_path_factory):
    import cv2
    from pfpld.data.synthetic import render_face
    face = render_face(np.random.default_rng(5), image_size=240)
    path = tmp_path_factory.mktemp("picture") / "face.png"
    cv2.imwrite(str(path), face.image)
    return path, ",".join(str(v) for v in face.box)


def test_predict_json_of_hopenet_has_a_pose_and_no_landmarks(hopenet_run, face_picture, tmp_path):
    path, box = face_picture
    proc = run("predict", hopenet_run, path, "--box", box, "--json", "--out", tmp_path / "pose.png")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["pose_deg"]) == {"yaw", "pitch", "roll"} and "landmarks_px" not in result
    assert all(abs(v) <= 99 for v in result["pose_deg"].values())
    assert (tmp_path / "pose.png").stat().st_size > 0


def test_predict_json_of_landmark5_has_5_landmarks_and_no_pose(landmark5_run, face_picture):
    path, box = face_picture
    proc = run("predict", landmark5_run, path, "--box", box, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["landmarks_px"]) == 5 and "pose_deg" not in result and "pose_rad" not in result
    x1, y1, x2, y2 = (float(v) for v in box.split(","))
    side = max(x2 - x1, y2 - y1)
    assert all(x1 - side < x < x2 + side and y1 - side < y < y2 + side for x, y in result["landmarks_px"])
