"""Bad inputs tried as a user would, through the real command line: each ends with one clear line on stderr,
exit code 2, no traceback, and nothing written."""
import cv2
import numpy as np
import pytest
import torch
from test_cli import assert_user_error, run

from pfpld.checkpoint import CheckpointError, load_checkpoint
from pfpld.errors import ModelError
from pfpld.models import MODELS, build_from_spec, build_model

KNOWN = ", ".join(sorted(MODELS))       # how an unknown-model error lists the registry


@pytest.fixture(scope="module")
def future_ckpt(ckpt, tmp_path_factory):
    """A real checkpoint whose spec names a model this version does not have (from a newer pfpld)."""
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    raw["spec"]["name"] = "pfpld_v9"
    path = tmp_path_factory.mktemp("future") / "future.pt"
    torch.save(raw, path)
    return path


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "face.png"
    cv2.imwrite(str(path), np.full((120, 160, 3), 90, np.uint8))
    return path


def test_unknown_model_name_is_a_model_error_listing_the_known_ones(ckpt):
    with pytest.raises(ModelError, match=rf"unknown model 'typo' \(this pfpld knows: {KNOWN}\)"):
        build_model("typo")
    spec = load_checkpoint(ckpt).spec
    with pytest.raises(ModelError, match="pfpld_v9"):
        build_from_spec(type(spec)(**{**spec.__dict__, "name": "pfpld_v9"}))
    assert "pfpld_v9" not in MODELS


def test_checkpoint_of_an_unknown_model(future_ckpt, picture, tmp_path):
    with pytest.raises(CheckpointError):
        load_checkpoint(future_ckpt)
    out = tmp_path / "pred.png"
    assert_user_error(run("predict", future_ckpt, picture, "--box", "10,10,60,60", "--out", out),
                      str(future_ckpt), "'pfpld_v9'", f"knows: {KNOWN}")
    assert not out.exists()


def test_eval_of_a_checkpoint_of_an_unknown_model(future_ckpt, prepared_dir, tmp_path):
    out = tmp_path / "metrics.json"
    assert_user_error(run("eval", future_ckpt, "--data", prepared_dir, "--json", out),
                      str(future_ckpt), "'pfpld_v9'")
    assert not out.exists()


def test_train_with_an_unknown_model_writes_nothing(prepared_dir, tmp_path):
    out = tmp_path / "run"
    assert_user_error(run("train", "--data", prepared_dir, "--out", out, "--model", "typo", "--epochs", "1",
                          "--workers", "0"), "'typo'", f"knows: {KNOWN}")
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("box", ["200,10,260,60", "-80,10,-20,60", "10,130,60,190", "10,-90,60,-40",
                                 "160,0,200,40"])
def test_predict_with_a_box_outside_the_image(ckpt, picture, tmp_path, box):
    out = tmp_path / "pred.png"
    assert_user_error(run("predict", ckpt, picture, "--box", box, "--out", out), box, "160x120")
    assert not out.exists()


def test_predict_with_a_box_partly_outside_the_image_still_predicts(ckpt, picture, tmp_path):
    out = tmp_path / "pred.png"
    proc = run("predict", ckpt, picture, "--box", "120,80,200,150", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
