"""boxes.txt, the one parser (pfpld.data.boxes) behind calibration and parity on whole images."""
import cv2
import numpy as np
import pytest

from pfpld.data.boxes import BoxLine, read_boxes_file
from pfpld.errors import InputError


@pytest.fixture
def shots(tmp_path):
    folder = tmp_path / "shots"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png", "with space.png"):
        cv2.imwrite(str(folder / name), np.zeros((20, 20, 3), np.uint8))
    return folder


def test_reads_boxes_skipping_blanks_and_comments(shots):
    (shots / "boxes.txt").write_text("# file x1 y1 x2 y2\n\na.png 1 2 11 12\n  # indented comment\n"
                                     "sub/b.png 0.5 1.5 9.25 8\nwith space.png 3 3 6 6\n")
    entries = read_boxes_file(shots / "boxes.txt")
    assert entries == [
        BoxLine(shots / "a.png", (1.0, 2.0, 11.0, 12.0), 3, shots / "boxes.txt"),
        BoxLine(shots / "sub/b.png", (0.5, 1.5, 9.25, 8.0), 5, shots / "boxes.txt"),
        BoxLine(shots / "with space.png", (3.0, 3.0, 6.0, 6.0), 6, shots / "boxes.txt"),
    ]
    assert entries[1].where == f"{shots / 'boxes.txt'}:5"


@pytest.mark.parametrize("line", ["a.png 1 2 11", "a.png 1 2 eleven 12", "a.png 5 2 1 12", "a.png 1 2 11 2",
                                  "a.png 1 2 nan 12", "1 2 11 12"])
def test_malformed_line_names_file_line_and_format(shots, line):
    (shots / "boxes.txt").write_text(f"a.png 1 2 11 12\n{line}\n")
    with pytest.raises(InputError) as info:
        read_boxes_file(shots / "boxes.txt")
    message = str(info.value)
    assert message.startswith(f"{shots / 'boxes.txt'}:2: ") and "expected 'file x1 y1 x2 y2'" in message
    assert "\n" not in message


def test_missing_image_is_named_with_file_and_line(shots):
    (shots / "boxes.txt").write_text("a.png 1 2 11 12\n\nmissing.jpg 1 2 11 12\n")
    with pytest.raises(InputError, match=r"boxes\.txt:3: image .*missing\.jpg not found"):
        read_boxes_file(shots / "boxes.txt")


def test_no_boxes_unreadable_or_absent_file_is_one_line(shots):
    (shots / "boxes.txt").write_text("# only a comment\n\n")
    with pytest.raises(InputError, match="boxes.txt: no face boxes"):
        read_boxes_file(shots / "boxes.txt")
    (shots / "boxes.txt").write_bytes(b"a.png 1 2 \xff 12\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_boxes_file(shots / "boxes.txt")
    with pytest.raises(InputError, match="absent.txt: cannot read"):
        read_boxes_file(shots / "absent.txt")


def test_calibration_candidates_come_from_the_parser(shots):
    from pfpld.contract import PreprocessContract
    from quant.calibration import candidates_from_boxes
    (shots / "boxes.txt").write_text("a.png 1 2 11 12\nsub/b.png 0.5 1.5 9.25 8\n")
    candidates = candidates_from_boxes(shots, PreprocessContract())
    assert [c.origin for c in candidates] == ["a.png 1 2 11 12", "sub/b.png 0.5 1.5 9.25 8"]
    assert candidates[0].crop.shape == (112, 112, 3)
    (shots / "boxes.txt").write_text("a.png 1 2 11 12\nsub/b.png 0.5 1.5 9.25\n")
    with pytest.raises(InputError, match=r"boxes\.txt:2: "):
        candidates_from_boxes(shots, PreprocessContract())


@pytest.mark.parametrize("name, options", [("pfpld", {"width": 0.25}), ("hopenet", {"backbone": "mobilenetv2",
                                                                                   "input_size": 64, "width": 0.25}),
                                           ("landmark5", {})])
def test_calibration_candidates_take_what_each_model_predicts(shots, name, options):
    """With a model, a candidate's pose comes from its pose output (radians or degrees by kind) and its eye state
    from 98 WFLW points; a model without them leaves them unknown."""
    import math
    import torch
    from pfpld.models import build_model
    from quant.calibration import candidates_from_boxes
    torch.manual_seed(0)
    model, spec, contract = build_model(name, **options)
    (shots / "boxes.txt").write_text("a.png 1 2 11 12\nsub/b.png 0.5 1.5 9.25 8\n")
    candidates = candidates_from_boxes(shots, contract, model.eval(), spec)
    x = torch.from_numpy(np.stack([contract.to_tensor_layout(c.crop) for c in candidates]))
    with torch.no_grad():
        _, pose = spec.decode([o.numpy() for o in model(x)])
    for i, cand in enumerate(candidates):
        if pose is None:
            assert cand.pose_from is None and cand.yaw_deg is None
        else:
            assert cand.pose_from == "model" and cand.yaw_deg == pytest.approx(math.degrees(pose[i][0]))
        assert (cand.eye is not None) == (spec.output_of_kind("landmarks") is not None and
                                          spec.output_of_kind("landmarks").num_points == 98)
