"""prepare_dataset: all four formats written with our writers -> one prepared folder, checked byte by byte."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from pfpld.contract import ContractError, PreprocessContract, landmark_box
from pfpld.data.prepare import INDEX_FILE, iter_prepared, prepare_dataset, read_prepared_header
from pfpld.data.record import DatasetError
from pfpld.data.sources import (
    WflwFace, read_300wlp, read_wflw, write_300wlp, write_aflw2000, write_lapa, write_wflw,
)
from pfpld.errors import InputError
from pfpld.landmarks import SUPERVISED_300WLP_98

from source_files import draw_face, face_points_98, points_98_to_68, points_98_to_106

CONTRACT = PreprocessContract()
OFFSET = (168 - 112) // 2


def make_wflw(root: Path) -> Path:
    a, b, c = face_points_98(60, 70, 50), face_points_98(130, 80, 40), face_points_98(80, 85, 90)
    write_wflw(root, "train", [
        WflwFace("1--Handshaking/1_a.jpg", draw_face(np.vstack([a, b]), 190, 150, seed=1), a, (34, 45, 86, 97),
                 (1, 0, 0, 0, 1, 0)),
        WflwFace("1--Handshaking/1_a.jpg", None, b, (110, 60, 150, 100), (0, 0, 0, 0, 0, 1)),
        WflwFace("2--Demonstration/2_b.jpg", draw_face(c, seed=2), c, (40, 40, 120, 125), (0, 1, 0, 0, 0, 0)),
    ])
    d = face_points_98(70, 75, 70)
    write_wflw(root, "test", [WflwFace("3--Riot/3_c.jpg", draw_face(d, seed=3), d, (35, 40, 105, 110),
                                       (0, 0, 1, 1, 0, 0))])
    return root


def make_lapa(root: Path) -> Path:
    for split, name, left_open in (("train", "closed", 0.05), ("train", "open", 0.4), ("val", "v_closed", 0.05),
                                   ("test", "t_closed", 0.02)):
        points = face_points_98(left_open=left_open)
        write_lapa(root, split, name, draw_face(points, seed=4), points_98_to_106(points))
    return root


def make_300wlp(root: Path) -> Path:
    points = face_points_98(75, 80, 60)
    for db, kw in (("AFW", {}), ("AFW_Flip", {"landmarks_file": False})):
        write_300wlp(root, db, "AFW_1_0", draw_face(points, seed=5), np.array([0.1, -0.5, 0.2, 0, 0, 0, 1.0]),
                     points_98_to_68(points), **kw)
    return root


def make_aflw2000(root: Path) -> Path:
    points_68 = points_98_to_68(face_points_98())
    for name, yaw in (("image00002", 0.3), ("image00004", math.radians(105))):
        write_aflw2000(root, name, draw_face(face_points_98(), seed=6), np.array([-0.1, yaw, 0.05, 0, 0, 0, 1.0]),
                       np.vstack([points_68.T, np.zeros((1, 68))]), np.full((2, 21), -1.0))
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sources")
    return {"wflw": make_wflw(base / "WFLW"), "lapa": make_lapa(base / "LaPa"),
            "w300lp": make_300wlp(base / "300W_LP"), "aflw2000": make_aflw2000(base / "AFLW2000")}


@pytest.fixture(scope="module")
def prepared(sources, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("prepared") / "data"
    summary = prepare_dataset(out, progress=False, **sources)
    return out, summary


def index_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / INDEX_FILE).read_text().splitlines()]


EXPECTED_COUNTS = {"wflw/train": 3, "wflw/test": 1, "lapa/train": 1, "lapa/test": 2, "300wlp/train": 2,
                   "aflw2000/test": 1}


def test_prepare_writes_header_with_contract_crop_size_and_counts(prepared):
    out, summary = prepared
    header = index_lines(out)[0]
    assert header == {"format": "pfpld-prepared", "version": 2, "contract": json.loads(CONTRACT.to_json()),
                      "context": 1.5, "crop_size_px": 168, "counts": EXPECTED_COUNTS,
                      "array": {"file": "crops.npy", "dtype": "uint8", "shape": [10, 168, 168, 3], "channels": "BGR"}}
    assert read_prepared_header(out) == header
    assert summary.counts == EXPECTED_COUNTS and summary.total == 10


def test_prepare_writes_one_index_line_one_168px_png_and_one_array_row_per_face(prepared):
    out, _ = prepared
    faces = index_lines(out)[1:]
    assert len(faces) == 10
    crops = np.load(out / "crops.npy")
    assert crops.shape == (10, 168, 168, 3) and crops.dtype == np.uint8
    for row, face in zip(crops, faces):
        assert np.array_equal(row, cv2.imread(str(out / face["image"]), cv2.IMREAD_UNCHANGED))
    assert [f["image"] for f in faces[:4]] == ["train/wflw/000000.png", "train/wflw/000001.png",
                                               "train/wflw/000002.png", "test/wflw/000000.png"]
    for face in faces:
        assert set(face) == {"image", "split", "source", "name", "points", "mask", "pose", "attributes"}
        assert face["image"].startswith(f"{face['split']}/{face['source']}/")
        image = cv2.imread(str(out / face["image"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == (168, 168, 3) and image.dtype == np.uint8
        assert len(face["points"]) == 196 and all(math.isfinite(v) for v in face["points"])
        assert all(v == round(v, 6) for v in face["points"])
        assert len(face["mask"]) == 98 and set(face["mask"]) <= {"0", "1"}


def test_prepared_labels_per_source(prepared):
    out, _ = prepared
    by_source: dict[str, list[dict]] = {}
    for face in index_lines(out)[1:]:
        by_source.setdefault(face["source"], []).append(face)
    wflw = by_source["wflw"]
    assert [f["attributes"] for f in wflw] == [[1, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1], [0, 1, 0, 0, 0, 0],
                                              [0, 0, 1, 1, 0, 0]]
    assert all(f["pose"] is None and f["mask"] == "1" * 98 for f in wflw)
    assert [f["name"] for f in by_source["lapa"]] == ["train/closed", "val/v_closed", "test/t_closed"]
    assert [f["split"] for f in by_source["lapa"]] == ["train", "test", "test"]
    w300 = by_source["300wlp"]
    expected_mask = "".join("1" if i in set(SUPERVISED_300WLP_98.tolist()) else "0" for i in range(98))
    assert all(f["mask"] == expected_mask and f["mask"].count("1") == 43 for f in w300)
    np.testing.assert_allclose(w300[0]["pose"], [-0.5, 0.1, 0.2], atol=1e-6)    # yaw, pitch, roll
    [aflw] = by_source["aflw2000"]                                               # the 105-degree face is dropped
    assert aflw["name"] == "image00002" and aflw["split"] == "test"
    np.testing.assert_allclose(aflw["pose"], [0.3, -0.1, 0.05], atol=1e-6)


def test_prepared_centre_window_is_exactly_the_contract_crop(prepared, sources):
    out, _ = prepared
    faces = index_lines(out)[1:]
    for face, record in zip(faces[:3], read_wflw(sources["wflw"], "train")):
        stored = cv2.imread(str(out / face["image"]))
        image = cv2.imread(str(record.image_path))
        box = landmark_box(record.points, record.point_mask)
        expected, matrix = CONTRACT.crop_image(image, box)
        np.testing.assert_array_equal(stored[OFFSET:OFFSET + 112, OFFSET:OFFSET + 112], expected)
        # the margin is the same picture continued, not padding
        wide, _ = CONTRACT.crop_image(image, box, context=1.5)
        assert np.abs(stored.astype(int) - wide).max() <= 1
        points = np.array(face["points"]).reshape(98, 2)
        np.testing.assert_allclose(points, CONTRACT.points_to_crop(record.points, matrix), atol=1e-6)
        # the landmark box x1.2 puts every point inside the contract crop with a 1/12 margin
        assert points.min() >= 1 / 12 - 1e-5 and points.max() <= 11 / 12 + 1e-5


def test_prepared_300wlp_points_use_the_supervised_box_and_are_finite(prepared, sources):
    out, _ = prepared
    face = next(f for f in index_lines(out)[1:] if f["source"] == "300wlp")
    record = read_300wlp(sources["w300lp"])[0]
    matrix = CONTRACT.crop_matrix(landmark_box(record.points, record.point_mask))
    np.testing.assert_allclose(np.array(face["points"]).reshape(98, 2),
                               CONTRACT.points_to_crop(record.points, matrix), atol=1e-6)


def test_iter_prepared_yields_checked_faces_and_filters_by_split(prepared):
    out, _ = prepared
    assert len(list(iter_prepared(out))) == 10
    test_faces = list(iter_prepared(out, split="test"))
    assert len(test_faces) == 4 and {f["split"] for f in test_faces} == {"test"}


def test_summary_table_and_readme_show_counts_per_source_and_split(prepared):
    out, summary = prepared
    table = summary.table()
    assert table.splitlines()[0].split() == ["source", "train", "test", "total"]
    assert table.splitlines()[1].split() == ["wflw", "3", "1", "4"]
    assert table.splitlines()[-1].split() == ["total", "6", "4", "10"]
    readme = (out / "README.txt").read_text()
    assert "pfpld prepare-data" in readme and table in readme


def test_prepare_without_progress_prints_nothing(sources, tmp_path, capfd):
    prepare_dataset(tmp_path / "out", aflw2000=sources["aflw2000"], progress=False)
    assert capfd.readouterr() == ("", "")


# --- atomic output ---------------------------------------------------------------------------------------

def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_undecodable_image_halfway_leaves_no_output_and_no_temp_folder(tmp_path):
    wflw = make_wflw(tmp_path / "WFLW")
    bad = wflw / "WFLW_images/2--Demonstration/2_b.jpg"          # the third face of train
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DatasetError, match=r"2_b\.jpg: cannot decode image"):
        prepare_dataset(tmp_path / "out", wflw=wflw, progress=False)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_bad_annotation_halfway_leaves_no_output(tmp_path, sources):
    lapa = make_lapa(tmp_path / "LaPa")
    (lapa / "test/landmarks/t_closed.txt").write_text("106\n1 2\n")
    with pytest.raises(DatasetError, match=r"t_closed\.txt: 1 point lines"):
        prepare_dataset(tmp_path / "out", wflw=sources["wflw"], lapa=lapa, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LaPa"]


def test_rerun_replaces_the_previous_prepared_dataset(tmp_path, sources):
    out = tmp_path / "out"
    prepare_dataset(out, wflw=sources["wflw"], progress=False)
    summary = prepare_dataset(out, aflw2000=sources["aflw2000"], progress=False, force=True)
    assert summary.counts == {"aflw2000/test": 1}
    assert read_prepared_header(out)["counts"] == {"aflw2000/test": 1}
    assert not (out / "train").exists() and (out / "test/aflw2000/000000.png").is_file()
    assert leftovers(tmp_path) == []


def test_failed_rerun_keeps_the_previous_prepared_dataset(tmp_path, sources):
    out = tmp_path / "out"
    prepare_dataset(out, aflw2000=sources["aflw2000"], progress=False)
    with pytest.raises(DatasetError):
        prepare_dataset(out, wflw=tmp_path / "missing", progress=False, force=True)
    assert read_prepared_header(out)["counts"] == {"aflw2000/test": 1}
    assert leftovers(tmp_path) == []


def test_existing_folder_that_is_not_a_prepared_dataset_is_refused_and_untouched(tmp_path, sources):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match=r"out: is a folder with other files in it \(not a prepared dataset"):
        prepare_dataset(out, aflw2000=sources["aflw2000"], progress=False)
    assert (out / "thesis.tex").read_text() == "precious" and leftovers(tmp_path) == []


def test_existing_empty_folder_is_filled(tmp_path, sources):
    (tmp_path / "out").mkdir()
    prepare_dataset(tmp_path / "out", aflw2000=sources["aflw2000"], progress=False)
    assert read_prepared_header(tmp_path / "out")["counts"] == {"aflw2000/test": 1}


def test_context_that_is_not_a_whole_centred_pixel_count_is_refused(tmp_path, sources):
    with pytest.raises(ContractError, match="context 1.3"):
        prepare_dataset(tmp_path / "out", aflw2000=sources["aflw2000"], context=1.3, progress=False)


def test_other_context_keeps_the_contract_crop_in_the_centre(tmp_path, sources):
    out = tmp_path / "out"
    prepare_dataset(out, aflw2000=sources["aflw2000"], context=2.0, progress=False)
    assert read_prepared_header(out)["crop_size_px"] == 224
    assert cv2.imread(str(out / "test/aflw2000/000000.png")).shape == (224, 224, 3)
    assert np.load(out / "crops.npy").shape == (1, 224, 224, 3)


def test_nothing_to_prepare_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="nothing to prepare"):
        prepare_dataset(tmp_path / "out", progress=False)


# --- reading a malformed prepared folder -----------------------------------------------------------------

@pytest.fixture
def small_prepared(tmp_path, sources) -> Path:
    out = tmp_path / "out"
    prepare_dataset(out, wflw=sources["wflw"], progress=False)
    return out


def rewrite_line(out: Path, lineno: int, edit) -> None:
    lines = (out / INDEX_FILE).read_text().splitlines()
    lines[lineno - 1] = edit(lines[lineno - 1])
    (out / INDEX_FILE).write_text("\n".join(lines) + "\n")


def test_missing_index_is_named(tmp_path):
    with pytest.raises(DatasetError, match=r"index\.jsonl: not found"):
        read_prepared_header(tmp_path)


def one_more_array_row(line: str) -> str:
    header = json.loads(line)
    header["array"]["shape"][0] += 1
    return json.dumps(header)


@pytest.mark.parametrize("edit, message", [
    (lambda line: line.replace("pfpld-prepared", "something-else"), r"format 'something-else'"),
    (lambda line: line.replace('"version": 2', '"version": 3'), r"version 3: this pfpld reads versions 1, 2 \(re-run"),
    (one_more_array_row, r"'array' is .*: expected .*\[4, 168, 168, 3\]"),
])
def test_bad_header_names_file_and_line_1(small_prepared, edit, message):
    rewrite_line(small_prepared, 1, edit)
    with pytest.raises(DatasetError, match=rf"index\.jsonl:1: {message}"):
        read_prepared_header(small_prepared)


def test_face_line_that_is_not_json_names_file_and_line(small_prepared):
    rewrite_line(small_prepared, 3, lambda line: line[:-5])
    with pytest.raises(DatasetError, match=r"index\.jsonl:3: not valid JSON"):
        list(iter_prepared(small_prepared))


@pytest.mark.parametrize("field, value, message", [
    ("points", [0.5] * 194, "'points' must be 196"),
    ("mask", "1" * 97, "'mask' must be 98"),
    ("pose", [0.1, 0.2], "'pose' must be null"),
    ("split", "val", "split 'val'"),
    ("attributes", [0, 1, 2, 0, 0, 0], "'attributes' must be null"),
])
def test_face_line_with_bad_field_names_file_and_line(small_prepared, field, value, message):
    def edit(line: str) -> str:
        entry = json.loads(line)
        entry[field] = value
        return json.dumps(entry)
    rewrite_line(small_prepared, 2, edit)
    with pytest.raises(DatasetError, match=rf"index\.jsonl:2: {message}"):
        list(iter_prepared(small_prepared))


def test_truncated_index_is_detected_by_the_header_counts(small_prepared):
    lines = (small_prepared / INDEX_FILE).read_text().splitlines()
    (small_prepared / INDEX_FILE).write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetError, match=r"index\.jsonl: header counts"):
        list(iter_prepared(small_prepared))
