"""Every on-disk format: written with our writers, read back with our readers, and broken on purpose."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pfpld.data.record import DatasetError
from pfpld.data.sources import (
    ANNOTATION_FILE, WflwFace, read_300wlp, read_aflw2000, read_lapa, read_wflw, write_300wlp, write_aflw2000,
    write_lapa, write_wflw,
)
from pfpld.landmarks import LEFT_EYE_8, MAP_68_TO_98, SUPERVISED_300WLP_98, eye_aspect_ratio

from source_files import draw_face, face_points_98, points_98_to_68, points_98_to_106

# --- WFLW ------------------------------------------------------------------------------------------------


def wflw_faces() -> list[WflwFace]:
    a, b, c = face_points_98(60, 70, 50), face_points_98(130, 80, 40), face_points_98(80, 85, 90)
    group = draw_face(np.vstack([a, b]), width=190, height=150, seed=1)
    return [
        WflwFace("12--Group/12_Group_Group_12_Group_Group_12_10.jpg", group, a, (34, 45, 86, 97), (1, 0, 0, 0, 1, 0)),
        WflwFace("12--Group/12_Group_Group_12_Group_Group_12_10.jpg", None, b, (110, 60, 150, 100), (0, 0, 1, 0, 0, 1)),
        WflwFace("51--Dresses/51_Dresses_wearingdress_51_377.jpg", draw_face(c, seed=2), c, (40, 40, 120, 125),
                 (0, 1, 0, 1, 0, 0)),
    ]


@pytest.fixture
def wflw_root(tmp_path) -> Path:
    root = tmp_path / "WFLW"
    write_wflw(root, "train", wflw_faces())
    return root


def annotation(root: Path, split: str = "train") -> Path:
    return root / ANNOTATION_FILE.format(split=split)


def edit_line(path: Path, lineno: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_text("\n".join(lines) + "\n")


def edit_token(path: Path, lineno: int, token_index: int, value: str) -> None:
    def edit(line: str) -> str:
        tokens = line.split()
        tokens[token_index] = value
        return " ".join(tokens)
    edit_line(path, lineno, edit)


def test_wflw_round_trip_keeps_points_box_attributes_and_subfolder_paths(wflw_root):
    faces = wflw_faces()
    records = read_wflw(wflw_root, "train")
    assert len(records) == 3
    for lineno, (face, rec) in enumerate(zip(faces, records), start=1):
        np.testing.assert_allclose(rec.points, face.points, atol=1e-4)
        assert rec.point_mask.all()
        assert rec.box == tuple(float(v) for v in face.box)
        assert rec.attributes.tolist() == list(face.attributes)
        assert rec.pose_rad is None
        assert (rec.source, rec.split) == ("wflw", "train")
        assert rec.name == f"{face.rel_path}#{lineno}"
        assert rec.image_path == wflw_root / "WFLW_images" / face.rel_path
        assert rec.image_path.is_file()
    # two faces of one photo point at the same file
    assert records[0].image_path == records[1].image_path


def test_wflw_annotation_lines_have_207_tokens_like_the_release(wflw_root):
    lines = annotation(wflw_root).read_text().splitlines()
    assert [len(line.split()) for line in lines] == [207, 207, 207]
    tokens = lines[0].split()
    assert tokens[196:200] == ["34", "45", "86", "97"] and tokens[200:206] == ["1", "0", "0", "0", "1", "0"]


def test_wflw_blank_trailing_lines_are_not_faces(wflw_root):
    ann = annotation(wflw_root)
    ann.write_text(ann.read_text() + "\n  \n")
    assert len(read_wflw(wflw_root, "train")) == 3


def test_wflw_line_with_206_tokens_names_file_and_line(wflw_root):
    edit_line(annotation(wflw_root), 2, lambda line: line.rsplit(" ", 2)[0] + " " + line.rsplit(" ", 1)[1])
    with pytest.raises(DatasetError, match=r"list_98pt_rect_attr_train\.txt:2: 206 tokens, expected 207"):
        read_wflw(wflw_root, "train")


def test_wflw_non_numeric_coordinate_names_file_line_and_token(wflw_root):
    edit_token(annotation(wflw_root), 3, 10, "12.5x")
    with pytest.raises(DatasetError, match=r"list_98pt_rect_attr_train\.txt:3: token 11 '12.5x' is not a number"):
        read_wflw(wflw_root, "train")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_wflw_nan_or_inf_coordinate_is_rejected(wflw_root, value):
    edit_token(annotation(wflw_root), 1, 5, value)
    with pytest.raises(DatasetError, match=r"list_98pt_rect_attr_train\.txt:1: token 6 .*finite"):
        read_wflw(wflw_root, "train")


def test_wflw_attribute_flag_other_than_0_or_1_names_file_and_line(wflw_root):
    edit_token(annotation(wflw_root), 2, 203, "2")
    with pytest.raises(DatasetError, match=r"list_98pt_rect_attr_train\.txt:2: attribute flags"):
        read_wflw(wflw_root, "train")


def test_wflw_missing_annotation_file_is_named(wflw_root):
    with pytest.raises(DatasetError, match=r"list_98pt_rect_attr_test\.txt.*not found"):
        read_wflw(wflw_root, "test")


def test_wflw_missing_image_names_annotation_line_and_image(wflw_root):
    (wflw_root / "WFLW_images/51--Dresses/51_Dresses_wearingdress_51_377.jpg").unlink()
    with pytest.raises(DatasetError, match=r"list_98pt_rect_attr_train\.txt:3: image .*51_Dresses_wearingdress_51_377"
                                           r"\.jpg not found"):
        read_wflw(wflw_root, "train")


def test_wflw_missing_root_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        read_wflw(tmp_path / "nowhere", "train")


# --- LaPa ------------------------------------------------------------------------------------------------

def openness_for_ear(ear: float) -> float:
    return ear / eye_aspect_ratio(face_points_98(left_open=1.0)[LEFT_EYE_8])


def write_lapa_face(root: Path, split: str, name: str, **eyes) -> np.ndarray:
    points = face_points_98(**eyes)
    write_lapa(root, split, name, draw_face(points), points_98_to_106(points))
    return points


def test_lapa_round_trip_maps_106_to_98_dropping_the_8_lapa_only_points(tmp_path):
    points = write_lapa_face(tmp_path, "train", "face_a")
    txt = (tmp_path / "train/landmarks/face_a.txt").read_text().splitlines()
    assert txt[0] == "106" and len(txt) == 107
    [rec] = read_lapa(tmp_path, "train", closed_eye_only=False)
    np.testing.assert_allclose(rec.points, points, atol=1e-4)
    assert rec.points.max() < 999.0                     # none of the dropped points made it through
    assert rec.point_mask.all() and rec.pose_rad is None and rec.attributes is None
    assert (rec.source, rec.split, rec.name) == ("lapa", "train", "train/face_a")
    assert rec.image_path == tmp_path / "train/images/face_a.jpg"


def test_lapa_closed_eye_selection_keeps_only_faces_with_an_eye_ear_at_most_0_1(tmp_path):
    write_lapa_face(tmp_path, "train", "both_open")
    write_lapa_face(tmp_path, "train", "left_closed", left_open=openness_for_ear(0.04))
    write_lapa_face(tmp_path, "train", "right_just_under", right_open=openness_for_ear(0.099))
    write_lapa_face(tmp_path, "train", "left_just_over", left_open=openness_for_ear(0.101))
    kept = [r.name for r in read_lapa(tmp_path, "train")]
    assert kept == ["train/left_closed", "train/right_just_under"]
    assert len(read_lapa(tmp_path, "train", closed_eye_only=False)) == 4


def test_lapa_val_and_test_faces_get_split_test(tmp_path):
    write_lapa_face(tmp_path, "val", "v")
    write_lapa_face(tmp_path, "test", "t")
    assert [r.split for r in read_lapa(tmp_path, "val", closed_eye_only=False)] == ["test"]
    assert [r.split for r in read_lapa(tmp_path, "test", closed_eye_only=False)] == ["test"]


def test_lapa_segmentation_labels_folder_is_ignored(tmp_path):
    write_lapa_face(tmp_path, "train", "f")
    (tmp_path / "train/labels").mkdir()
    (tmp_path / "train/labels/f.png").write_bytes(b"not read")
    assert len(read_lapa(tmp_path, "train", closed_eye_only=False)) == 1


def test_lapa_first_line_not_106_names_file_and_line_1(tmp_path):
    write_lapa_face(tmp_path, "train", "f")
    txt = tmp_path / "train/landmarks/f.txt"
    txt.write_text(txt.read_text().replace("106\n", "98\n", 1))
    with pytest.raises(DatasetError, match=r"f\.txt:1: first line '98': expected the point count 106"):
        read_lapa(tmp_path, "train")


def test_lapa_file_with_105_points_names_file_and_count(tmp_path):
    write_lapa_face(tmp_path, "train", "f")
    txt = tmp_path / "train/landmarks/f.txt"
    txt.write_text("\n".join(txt.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DatasetError, match=r"f\.txt: 105 point lines .*expected 106"):
        read_lapa(tmp_path, "train")


@pytest.mark.parametrize("row", ["12.5", "12.5 abc", "1 2 3", "nan 4"])
def test_lapa_bad_point_row_names_file_and_line(tmp_path, row):
    write_lapa_face(tmp_path, "train", "f")
    edit_line(tmp_path / "train/landmarks/f.txt", 8, lambda _: row)
    with pytest.raises(DatasetError, match=r"f\.txt:8: "):
        read_lapa(tmp_path, "train")


def test_lapa_missing_image_names_landmarks_file_and_image(tmp_path):
    write_lapa_face(tmp_path, "train", "f", left_open=0.05)
    (tmp_path / "train/images/f.jpg").unlink()
    with pytest.raises(DatasetError, match=r"f\.txt: image .*images/f\.jpg not found"):
        read_lapa(tmp_path, "train")


def test_lapa_missing_split_folder_is_named(tmp_path):
    write_lapa_face(tmp_path, "train", "f")
    with pytest.raises(DatasetError, match=r"val: LaPa val folder not found"):
        read_lapa(tmp_path, "val")


# --- 300W-LP ---------------------------------------------------------------------------------------------

PITCH, YAW, ROLL = 0.1, -0.5, 0.2
POSE_PARA = np.array([PITCH, YAW, ROLL, 80.0, 90.0, 0.0, 0.0012])


def write_300wlp_face(root: Path, db: str = "AFW", name: str = "AFW_134212_1_0", **kw) -> np.ndarray:
    points_68 = points_98_to_68(face_points_98())
    write_300wlp(root, db, name, draw_face(face_points_98()), POSE_PARA, points_68, **kw)
    return points_68


def test_300wlp_round_trip_gives_yaw_pitch_roll_and_43_supervised_points(tmp_path):
    points_68 = write_300wlp_face(tmp_path)
    [rec] = read_300wlp(tmp_path)
    np.testing.assert_allclose(rec.pose_rad, [YAW, PITCH, ROLL], atol=1e-6)   # disk order is pitch, yaw, roll
    np.testing.assert_allclose(rec.points[MAP_68_TO_98], points_68, atol=1e-4)
    assert rec.point_mask.sum() == 43
    assert np.flatnonzero(rec.point_mask).tolist() == SUPERVISED_300WLP_98.tolist()
    assert (rec.source, rec.split, rec.name) == ("300wlp", "train", "AFW/AFW_134212_1_0")
    assert rec.image_path == tmp_path / "AFW/AFW_134212_1_0.jpg"


def test_300wlp_writer_uses_the_release_field_layouts(tmp_path):
    write_300wlp_face(tmp_path)
    mat = scipy.io.loadmat(tmp_path / "AFW/AFW_134212_1_0.mat")
    assert mat["Pose_Para"].shape == (1, 7) and mat["pt2d"].shape == (2, 68)
    assert scipy.io.loadmat(tmp_path / "landmarks/AFW/AFW_134212_1_0_pts.mat")["pts_2d"].shape == (68, 2)


def test_300wlp_landmarks_folder_file_wins_over_pt2d(tmp_path):
    points_68 = write_300wlp_face(tmp_path)
    scipy.io.savemat(tmp_path / "landmarks/AFW/AFW_134212_1_0_pts.mat", {"pts_2d": points_68 + 3.0})
    [rec] = read_300wlp(tmp_path)
    np.testing.assert_allclose(rec.points[MAP_68_TO_98], points_68 + 3.0, atol=1e-4)


def test_300wlp_flip_folder_without_landmarks_file_falls_back_to_pt2d(tmp_path):
    points_68 = write_300wlp_face(tmp_path, "AFW_Flip", "AFW_134212_1_0", landmarks_file=False)
    [rec] = read_300wlp(tmp_path)
    assert rec.name == "AFW_Flip/AFW_134212_1_0"
    np.testing.assert_allclose(rec.points[MAP_68_TO_98], points_68, atol=1e-4)


def test_300wlp_accepts_column_pose_para_transposed_pts_2d_and_extra_fields(tmp_path):
    points_68 = write_300wlp_face(tmp_path, "HELEN", "HELEN_1")
    scipy.io.savemat(tmp_path / "HELEN/HELEN_1.mat", {"Pose_Para": POSE_PARA.reshape(7, 1),
                                                      "pt2d": points_68.T, "Shape_Para": np.zeros((199, 1)),
                                                      "roi": np.array([[1.0, 2.0, 3.0, 4.0]])})
    scipy.io.savemat(tmp_path / "landmarks/HELEN/HELEN_1_pts.mat", {"pts_2d": points_68.T,
                                                                    "pts_3d": points_68})
    [rec] = read_300wlp(tmp_path)
    np.testing.assert_allclose(rec.pose_rad, [YAW, PITCH, ROLL], atol=1e-6)
    np.testing.assert_allclose(rec.points[MAP_68_TO_98], points_68, atol=1e-4)


def test_300wlp_reads_other_folders_with_mat_next_to_jpg_but_not_landmarks_or_code(tmp_path):
    write_300wlp_face(tmp_path, "AFW", "a")
    write_300wlp_face(tmp_path, "MyExtraDB", "x", landmarks_file=False)
    (tmp_path / "Code").mkdir()
    scipy.io.savemat(tmp_path / "Code/Model_Shape.mat", {"mu_shape": np.zeros((3, 1))})
    assert [r.name for r in read_300wlp(tmp_path)] == ["AFW/a", "MyExtraDB/x"]


def test_300wlp_mat_without_pose_para_names_file(tmp_path):
    points_68 = write_300wlp_face(tmp_path)
    scipy.io.savemat(tmp_path / "AFW/AFW_134212_1_0.mat", {"pt2d": points_68.T})
    with pytest.raises(DatasetError, match=r"AFW_134212_1_0\.mat: no field 'Pose_Para'"):
        read_300wlp(tmp_path)


def test_300wlp_pose_para_of_6_values_names_file_and_expected_shape(tmp_path):
    points_68 = write_300wlp_face(tmp_path)
    scipy.io.savemat(tmp_path / "AFW/AFW_134212_1_0.mat", {"Pose_Para": POSE_PARA[None, :6], "pt2d": points_68.T})
    with pytest.raises(DatasetError, match=r"AFW_134212_1_0\.mat: field 'Pose_Para' has shape \(1, 6\): expected 1x7"):
        read_300wlp(tmp_path)


def test_300wlp_corrupt_mat_names_file_instead_of_a_scipy_traceback(tmp_path):
    write_300wlp_face(tmp_path)
    (tmp_path / "AFW/AFW_134212_1_0.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated" + b"\x00" * 20)
    with pytest.raises(DatasetError, match=r"AFW_134212_1_0\.mat: cannot read \.mat file") as info:
        read_300wlp(tmp_path)
    assert "\n" not in str(info.value)


def test_300wlp_landmarks_of_wrong_shape_names_file_and_expected_layouts(tmp_path):
    write_300wlp_face(tmp_path)
    scipy.io.savemat(tmp_path / "landmarks/AFW/AFW_134212_1_0_pts.mat", {"pts_2d": np.zeros((3, 68))})
    with pytest.raises(DatasetError, match=r"AFW_134212_1_0_pts\.mat: field 'pts_2d' has shape \(3, 68\): "
                                           r"expected 2x68 or 68x2"):
        read_300wlp(tmp_path)


def test_300wlp_nan_landmark_names_file(tmp_path):
    points_68 = write_300wlp_face(tmp_path)
    points_68[5, 1] = np.nan
    scipy.io.savemat(tmp_path / "landmarks/AFW/AFW_134212_1_0_pts.mat", {"pts_2d": points_68})
    with pytest.raises(DatasetError, match=r"AFW_134212_1_0_pts\.mat: field 'pts_2d' has NaN or inf"):
        read_300wlp(tmp_path)


def test_300wlp_missing_image_names_mat_and_image(tmp_path):
    write_300wlp_face(tmp_path)
    (tmp_path / "AFW/AFW_134212_1_0.jpg").unlink()
    with pytest.raises(DatasetError, match=r"AFW_134212_1_0\.mat: image .*AFW_134212_1_0\.jpg not found"):
        read_300wlp(tmp_path)


def test_300wlp_root_without_db_folders_is_named(tmp_path):
    (tmp_path / "landmarks").mkdir()
    with pytest.raises(DatasetError, match=rf"{tmp_path}: no 300W-LP db folders"):
        read_300wlp(tmp_path)


# --- AFLW2000-3D ------------------------------------------------------------------------------------------

def write_aflw_face(root: Path, name: str, pitch: float = PITCH, yaw: float = YAW, roll: float = ROLL) -> np.ndarray:
    points_68 = points_98_to_68(face_points_98())
    points3d = np.vstack([points_68.T, np.linspace(-20, 20, 68)[None]])
    points21 = np.full((2, 21), -1.0)
    points21[:, :5] = points_68[:5].T
    pose_para = np.array([pitch, yaw, roll, 80.0, 90.0, 0.0, 0.0012])
    write_aflw2000(root, name, draw_face(face_points_98()), pose_para, points3d, points21)
    return points_68


def test_aflw2000_round_trip_gives_yaw_pitch_roll_and_x_y_of_pt3d_68(tmp_path):
    points_68 = write_aflw_face(tmp_path, "image00002")
    mat = scipy.io.loadmat(tmp_path / "image00002.mat")
    assert (mat["Pose_Para"].shape, mat["pt3d_68"].shape, mat["pt2d"].shape) == ((1, 7), (3, 68), (2, 21))
    [rec] = read_aflw2000(tmp_path)
    np.testing.assert_allclose(rec.pose_rad, [YAW, PITCH, ROLL], atol=1e-6)
    np.testing.assert_allclose(rec.points[MAP_68_TO_98], points_68, atol=1e-4)
    assert rec.point_mask.sum() == 43
    assert (rec.source, rec.split, rec.name) == ("aflw2000", "test", "image00002")


def test_aflw2000_protocol_drops_faces_with_any_angle_over_99_degrees(tmp_path):
    write_aflw_face(tmp_path, "a_frontal")
    write_aflw_face(tmp_path, "b_yaw_100", yaw=math.radians(100.0))
    write_aflw_face(tmp_path, "c_pitch_minus_120", pitch=math.radians(-120.0))
    write_aflw_face(tmp_path, "d_roll_98_9", roll=math.radians(98.9))
    assert [r.name for r in read_aflw2000(tmp_path)] == ["a_frontal", "d_roll_98_9"]
    assert len(read_aflw2000(tmp_path, protocol=False)) == 4


def test_aflw2000_corrupt_mat_names_file(tmp_path):
    write_aflw_face(tmp_path, "image00002")
    (tmp_path / "image00002.mat").write_bytes(b"\x00garbage")
    with pytest.raises(DatasetError, match=r"image00002\.mat: cannot read \.mat file"):
        read_aflw2000(tmp_path)


def test_aflw2000_mat_without_pose_para_names_file(tmp_path):
    write_aflw_face(tmp_path, "image00002")
    scipy.io.savemat(tmp_path / "image00002.mat", {"pt3d_68": np.zeros((3, 68))})
    with pytest.raises(DatasetError, match=r"image00002\.mat: no field 'Pose_Para' \(fields: pt3d_68\)"):
        read_aflw2000(tmp_path)


def test_aflw2000_missing_image_names_mat_and_image(tmp_path):
    write_aflw_face(tmp_path, "image00002")
    (tmp_path / "image00002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"image00002\.mat: image .*image00002\.jpg not found"):
        read_aflw2000(tmp_path)


def test_aflw2000_folder_without_mat_files_is_named(tmp_path):
    with pytest.raises(DatasetError, match=rf"{tmp_path}: no \.mat files"):
        read_aflw2000(tmp_path)
