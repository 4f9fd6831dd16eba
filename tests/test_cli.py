"""The command line as a user runs it: real processes, real files, exit codes and one-line errors."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pfpld.models import build_model

from cli_run import assert_one_line_error, assert_user_error, run


@pytest.fixture(scope="module")
def face_image(tmp_path_factory):
    from pfpld.data.synthetic import render_face
    face = render_face(np.random.default_rng(5), image_size=240)
    path = tmp_path_factory.mktemp("img") / "face.png"
    cv2.imwrite(str(path), face.image)
    return path, face


def test_predict_writes_picture_and_json(ckpt, face_image, tmp_path):
    path, face = face_image
    box = ",".join(str(v) for v in face.box)
    out = tmp_path / "pred.png"
    proc = run("predict", ckpt, path, "--box", box, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["landmarks_px"]) == 98 and set(result["pose_deg"]) == {"yaw", "pitch", "roll"}
    drawn = cv2.imread(str(out))
    assert drawn.shape == cv2.imread(str(path)).shape
    assert not list(tmp_path.glob("*.tmp*"))


def test_checkpoint_that_is_a_folder_is_refused(face_image, tmp_path):
    assert_user_error(run("predict", tmp_path, face_image[0], "--box", "1,1,50,50"), str(tmp_path), "not a file")


def test_checkpoint_that_is_not_torch_is_refused(face_image, tmp_path):
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"this is not a checkpoint at all")
    assert_user_error(run("predict", bad, face_image[0], "--box", "1,1,50,50"), "junk.pt", "not a readable")


def test_bare_state_dict_is_not_our_checkpoint(face_image, tmp_path):
    model, _, _ = build_model("pfpld", width=0.25)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    assert_user_error(run("predict", bare, face_image[0], "--box", "1,1,50,50"), "bare.pt",
                      "not a pfpld checkpoint", "bare state_dict")


def test_pickled_code_is_refused_by_weights_only_loading(face_image, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "pfpld-checkpoint", "obj": Path("x")}, evil)   # a non-tensor object: weights_only refuses
    assert_user_error(run("predict", evil, face_image[0], "--box", "1,1,50,50"), "evil.pt")


def test_missing_and_corrupt_images_are_named(ckpt, tmp_path):
    assert_user_error(run("predict", ckpt, tmp_path / "nope.jpg", "--box", "1,1,50,50"), "nope.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    assert_user_error(run("predict", ckpt, corrupt, "--box", "1,1,50,50"), "corrupt.jpg", "not a readable image")


def test_bad_box_is_refused(ckpt, face_image):
    assert_user_error(run("predict", ckpt, face_image[0], "--box", "10,10,5,50"), "--box", "X1 < X2")
    assert_user_error(run("predict", ckpt, face_image[0], "--box", "10,10"), "--box")


def test_prepare_data_with_malformed_wflw_line_names_file_and_line(synth_dir, tmp_path):
    import shutil
    wflw = tmp_path / "WFLW"
    shutil.copytree(synth_dir / "WFLW", wflw)
    ann = wflw / "WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_train.txt"
    lines = ann.read_text().splitlines()
    tokens = lines[2].split()
    lines[2] = " ".join(tokens[:100] + ["nan"] + tokens[101:])
    ann.write_text("\n".join(lines) + "\n")
    out = tmp_path / "prepared"
    assert_user_error(run("prepare-data", "--out", out, "--wflw", wflw), "list_98pt_rect_attr_train.txt:3")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("prepared")]


def test_eval_prints_table_and_writes_json(ckpt, prepared_dir, tmp_path):
    out = tmp_path / "eval.json"
    proc = run("eval", ckpt, "--data", prepared_dir, "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "NME %" in proc.stdout and "pose" in proc.stdout
    metrics = json.loads(out.read_text())
    assert metrics["landmarks"]["n"] > 0 and "wflw" in metrics["by_source"]
    assert set(metrics["by_attribute"]) == {"pose", "expression", "illumination", "makeup", "occlusion", "blur"}
    assert metrics["pose"]["n"] > 0


def test_prepare_data_with_mat_missing_pose_para_names_the_file(synth_dir, tmp_path):
    import shutil
    import scipy.io
    root = tmp_path / "300W_LP"
    shutil.copytree(synth_dir / "300W_LP", root)
    mat = sorted(root.glob("AFW/*.mat"))[0]
    fields = {k: v for k, v in scipy.io.loadmat(mat).items() if not k.startswith("__") and k != "Pose_Para"}
    scipy.io.savemat(mat, fields)
    assert_user_error(run("prepare-data", "--out", tmp_path / "prepared", "--300wlp", root), mat.name, "Pose_Para")
    assert not (tmp_path / "prepared").exists()


def test_prepare_data_with_lapa_wrong_point_count_names_the_file(synth_dir, tmp_path):
    import shutil
    root = tmp_path / "LaPa"
    shutil.copytree(synth_dir / "LaPa", root)
    txt = sorted((root / "train" / "landmarks").glob("*.txt"))[0]
    lines = txt.read_text().splitlines()
    txt.write_text("\n".join(["98"] + lines[1:99]) + "\n")
    assert_user_error(run("prepare-data", "--out", tmp_path / "prepared", "--lapa", root), txt.name, "106")
    assert not (tmp_path / "prepared").exists()


def test_prepare_data_with_missing_image_names_the_image(synth_dir, tmp_path):
    import shutil
    root = tmp_path / "AFLW2000"
    shutil.copytree(synth_dir / "AFLW2000", root)
    jpg = sorted(root.glob("*.jpg"))[0]
    jpg.unlink()
    assert_user_error(run("prepare-data", "--out", tmp_path / "prepared", "--aflw2000", root), jpg.name)
    assert not (tmp_path / "prepared").exists()


def test_unknown_hopenet_regression_is_one_line(prepared_dir, tmp_path):
    proc = run("train", "--data", prepared_dir, "--out", tmp_path / "run", "--model", "hopenet", "--epochs", "1",
               "--bins-regression", "l2")
    assert_one_line_error(proc, "bins regression 'l2'", "mse, smooth_l1")
    assert not (tmp_path / "run").exists()
