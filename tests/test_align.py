"""`pfpld align`: raw face photos + five points (a points file, or a landmark checkpoint on a face box) -> faces aligned
to the ArcFace template, at the same relative paths. Checked on pictures the synthetic identity generator renders
with known landmarks: the aligned faces are the generator's own aligned faces bit for bit, points that are a
similarity image of the template land on it, skipped images are counted and listed, user mistakes are one line,
and `pfpld eval --pairs` runs on the aligned output of raw LFW-layout photos."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cli_run import assert_user_error, run
from pfpld.align import five_points, five_points_of, template
from pfpld.align_images import POINTS_FILE, REPORT_FILE, align_images, parse_points_line, read_points_file
from pfpld.checkpoint import save_checkpoint
from pfpld.contract import landmark_box
from pfpld.data import identities as ids
from pfpld.data.sources.common import write_jpeg
from pfpld.data.sources.lfw import image_path
from pfpld.errors import InputError
from pfpld.fileio import output_kind_of
from pfpld.models import build_model
from pfpld.predict import predict_face
from test_output_folders import check_command_rule

SEED = 11
SMALL = dict(identities=3, per_identity=4, heldout=6, pairs_per_fold=2, folds=3)


def points_line(rel: str, points: np.ndarray, sep: str = "\t", label: str | None = None) -> str:
    """A points-file line at full float precision (repr), so the file gives back the exact points."""
    fields = [rel] + ([label] if label is not None else []) + [repr(float(v)) for v in np.ravel(points)]
    return sep.join(fields)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """The generator's recognition set (its aligned faces and pairs.txt), and the raw renders those faces were
    aligned from: training identities as PNG in the ImageFolder layout (raw_png/<id>/NNNN.png), held-out ones as
    JPEG in LFW's layout (raw_lfw/<name>/<name>_NNNN.jpg), with the five points of their known 98."""
    root = tmp_path_factory.mktemp("align")
    reference = root / "reference"
    ids.generate_identities(reference, seed=SEED, progress=False, **SMALL)
    png, lfw = {}, {}
    for index in range(SMALL["identities"] + SMALL["heldout"]):
        identity = ids.sample_identity(SEED, index)
        for j in range(SMALL["per_identity"]):
            face = ids.render_identity_face(identity, SEED, j)
            if index < SMALL["identities"]:
                rel = f"{identity.name}/{j + 1:04d}.png"
                (root / "raw_png" / identity.name).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "raw_png" / rel), face.face.image)
                png[rel] = face
            else:
                path = image_path(root / "raw_lfw", identity.name, j + 1)
                write_jpeg(path, face.face.image)
                lfw[path.relative_to(root / "raw_lfw").as_posix()] = face
    return root, reference, png, lfw


def write_points(path: Path, faces: dict, sep: str = "\t") -> Path:
    path.write_text("\n".join(points_line(rel, five_points(f.face.points_98), sep) for rel, f in faces.items()) + "\n")
    return path


# --- the points file -----------------------------------------------------------------------------------------------

def test_points_file_alignment_is_the_identity_writers_alignment(faces, tmp_path):
    root, reference, png, _ = faces
    rels = list(png)
    # every layout the public files have: tabs, spaces, CASIA-WebFace's label column, comments and blank lines
    lines = ["# image x1 y1 ... x5 y5", ""]
    for k, rel in enumerate(rels):
        p = five_points(png[rel].face.points_98)
        lines.append(points_line(rel, p, sep="\t", label=str(k)) if k % 3 == 0 else
                     points_line(rel, p, sep=" " if k % 3 == 1 else "\t"))
    (tmp_path / "points.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "aligned"
    proc = run("align", root / "raw_png", "--points", tmp_path / "points.txt", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"aligned {len(rels)} images to 112x112") and "skipped none" in proc.stdout
    for rel in rels:
        got = cv2.imread(str(out / rel))
        assert np.array_equal(got, png[rel].image), rel          # the generator's aligned face, bit for bit
        # ... and the identity writer's file: the same JPEG bytes from the same pixels
        jpeg = tmp_path / "again.jpg"
        write_jpeg(jpeg, got)
        assert jpeg.read_bytes() == (reference / "imagefolder" / Path(rel).with_suffix(".jpg")).read_bytes()
    assert output_kind_of(out) == "aligned"
    assert json.loads((out / "align.json").read_text())["aligned"] == len(rels)
    # align_points.txt gives back the points used, in the points-file layout
    used = read_points_file(out / POINTS_FILE, root / "raw_png")
    assert [u.image for u in used] == rels
    for u in used:
        assert np.allclose(u.points, five_points(png[u.image].face.points_98), atol=5e-4)


@pytest.mark.parametrize("size", [112, 96])
def test_points_that_are_a_similarity_of_the_template_land_on_it(tmp_path, size):
    """Dots drawn at a rotated, scaled, shifted copy of the template come out of the warp on the template (scaled
    to --size): the alignment's pixel convention is the template's."""
    angle, scale, shift = math.radians(23.0), 1.7, np.array([61.3, 48.9])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = template(112) @ (scale * rotation).T + shift
    canvas = np.zeros((250, 250, 3), np.uint8)
    for x, y in points:
        cv2.circle(canvas, (round(x * 256), round(y * 256)), 4 * 256, (255, 255, 255), -1, cv2.LINE_AA, shift=8)
    (tmp_path / "raw" / "dots").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "raw" / "dots" / "0001.png"), canvas)
    (tmp_path / "points.txt").write_text(points_line("dots/0001.png", points) + "\n")
    if size == 112:
        proc = run("align", tmp_path / "raw", "--points", tmp_path / "points.txt", "--out", tmp_path / "out")
        assert proc.returncode == 0, proc.stderr
    else:
        align_images(tmp_path / "raw", tmp_path / "out", points_file=tmp_path / "points.txt", size=size,
                     progress=False)
    aligned = cv2.imread(str(tmp_path / "out" / "dots" / "0001.png"))[..., 0].astype(np.float64)
    assert aligned.shape == (size, size)
    count, blobs = cv2.connectedComponents((aligned > 0).astype(np.uint8))
    assert count == 6                                    # background + the five dots
    centroids = []
    for k in range(1, count):
        ys, xs = np.nonzero(blobs == k)
        w = aligned[ys, xs]
        centroids.append((xs @ w / w.sum(), ys @ w / w.sum()))
    error = np.linalg.norm(np.array(centroids)[:, None] - template(size)[None], axis=2).min(axis=0)
    assert error.max() < 0.1, error                      # measured: at most 0.02 px


# --- what is skipped, and user mistakes ------------------------------------------------------------------------------

def test_images_without_points_missing_unreadable_or_degenerate_are_skipped_counted_and_listed(faces, tmp_path):
    root, _, _, lfw = faces
    rels = list(lfw)
    raw = tmp_path / "raw"
    for rel in rels[:5]:
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes((root / "raw_lfw" / rel).read_bytes())
    (raw / "Broken").mkdir()
    (raw / "Broken" / "Broken_0001.jpg").write_bytes(b"not a picture")
    p = {rel: five_points(lfw[rel].face.points_98) for rel in rels[:5]}
    lines = [points_line(rel, p[rel]) for rel in rels[:3]]                  # rels[3] has no points
    lines.append(points_line(rels[4], np.full((5, 2), 40.0)))               # all five points on one pixel
    lines.append(points_line("Broken/Broken_0001.jpg", p[rels[0]]))
    lines.append(points_line("Gone/Gone_0001.jpg", p[rels[0]]))             # listed, not in the folder
    (tmp_path / "points.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    proc = run("align", raw, "--points", tmp_path / "points.txt", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"skipped 4 (1 listed but not found, 1 no points, 1 unreadable image, "
                                        f"1 unusable points): see {out / REPORT_FILE}")
    assert proc.stdout.startswith("aligned 3 images")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == sorted(rels[:3])
    report = [line.split("\t") for line in (out / REPORT_FILE).read_text().splitlines() if not line.startswith("#")]
    assert [(r[0], r[1]) for r in report] == [("listed but not found", "Gone/Gone_0001.jpg"), ("no points", rels[3]),
                                              ("unreadable image", "Broken/Broken_0001.jpg"),
                                              ("unusable points", rels[4])]
    assert report[0][2] == f"{tmp_path / 'points.txt'}:6"
    assert json.loads((out / "align.json").read_text())["skipped"] == {"missing": 1, "no_points": 1,
                                                                       "unreadable": 1, "bad_points": 1}


@pytest.mark.parametrize("line, fragment", [
    ("a.png 1 2 3 4 5 6 7 8 9", "expected 'relative/path x1 y1"),
    ("a.png 1 2 3 4 five 6 7 8 9 10", "expected 'relative/path x1 y1"),
    ("a.png 1 2 3 4 5 6 7 8 9 nan", "expected 'relative/path x1 y1"),
    ("b.png 1 2 3 4 5 6 7 8 9 10", "b.png already has points on line 1"),
    ("../c.png 1 2 3 4 5 6 7 8 9 10", "is not inside the images folder"),
])
def test_malformed_points_lines_are_one_line_errors_naming_file_and_line(tmp_path, line, fragment):
    (tmp_path / "points.txt").write_text(f"b.png 10 20 30 20 20 30 12 40 28 40\n# comment\n{line}\n")
    with pytest.raises(InputError) as info:
        read_points_file(tmp_path / "points.txt", tmp_path / "images")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'points.txt'}:3: ") and fragment in message and "\n" not in message


def test_points_file_mistakes_through_the_cli_are_one_line(faces, tmp_path):
    root, _, png, _ = faces
    good = write_points(tmp_path / "points.txt", png)
    with open(good, "a") as f:
        f.write("id_00000/0009.png 1 2 3\n")
    proc = run("align", root / "raw_png", "--points", good, "--out", tmp_path / "out")
    assert_user_error(proc, f"{good}:{len(png) + 1}: ", "expected 'relative/path x1 y1 x2 y2")
    assert not (tmp_path / "out").exists()
    # the other order convention (the subject's left eye first) is recognised, not aligned upside down
    swapped = tmp_path / "swapped.txt"
    swapped.write_text("\n".join(points_line(rel, five_points(f.face.points_98)[[1, 0, 2, 4, 3]])
                                 for rel, f in png.items()) + "\n")
    assert_user_error(run("align", root / "raw_png", "--points", swapped, "--out", tmp_path / "out"),
                      "the first eye is right of the second", "expected the image-left eye first")
    # a points file of another folder: none of its images is there
    other = write_points(tmp_path / "other.txt", png)
    assert_user_error(run("align", root / "raw_lfw", "--points", other, "--out", tmp_path / "out"),
                      f"{other}: none of its {len(png)} images is in")
    # the output inside the images folder would be read back as input
    assert_user_error(run("align", root / "raw_png", "--points", other, "--out", root / "raw_png" / "aligned"),
                      "must be outside the images folder")
    for args in (["--points", good, "--box", "1,2,3,4"], ["--landmarks", good], []):
        proc = run("align", root / "raw_png", "--out", tmp_path / "out", *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


def test_align_follows_the_output_folder_rule(faces, tmp_path):
    root, _, png, _ = faces
    points = write_points(tmp_path / "points.txt", png)
    (tmp_path / "rule").mkdir()
    check_command_rule(tmp_path / "rule", ["align", root / "raw_png", "--points", points], "aligned", "align.json")


# --- a landmark checkpoint instead of a points file --------------------------------------------------------------

def test_five_points_of_68_and_98_points_are_landmark5s_and_5_stay():
    face = ids.render_identity_face(ids.sample_identity(SEED, 0), SEED, 0).face
    expected = five_points(face.points_98)
    assert np.allclose(five_points_of(face.points_98), expected)
    assert np.allclose(five_points_of(face.points_68), expected, atol=1e-4)      # placed in float32
    assert np.array_equal(five_points_of(expected), expected)
    with pytest.raises(ValueError, match="5, 68 or 98"):
        five_points_of(np.zeros((21, 2)))


def mean_shape_landmark5(tmp_path: Path, face) -> Path:
    """landmark5 started at one face's shape (its head's bias, as training starts it at the mean shape): what it
    predicts is a face, so alignment runs on plausible points without training."""
    torch.manual_seed(0)
    model, spec, contract = build_model("landmark5")
    crop_points = contract.points_to_crop(face.points_98, contract.crop_matrix(landmark_box(face.points_98)))
    model.init_landmark_head(torch.from_numpy(crop_points))
    path = tmp_path / "landmark5.pt"
    save_checkpoint(path, state_dict=model.state_dict(), spec=spec, contract=contract)
    return path


def test_landmark_checkpoints_on_a_box_or_a_boxes_file_align_every_image(faces, tmp_path):
    root, _, _, lfw = faces
    first = next(iter(lfw.values())).face
    box = "10,10,182,182"
    ckpt5 = mean_shape_landmark5(tmp_path, first)
    proc = run("align", root / "raw_lfw", "--landmarks", ckpt5, "--box", box, "--out", tmp_path / "out5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"aligned {len(lfw)} images") and "skipped none" in proc.stdout
    assert sorted(p.relative_to(tmp_path / "out5").as_posix() for p in (tmp_path / "out5").rglob("*.jpg")) == \
        sorted(lfw)
    # the points used are the model's prediction on that box, as `pfpld predict` makes it
    from pfpld.checkpoint import load_model
    from pfpld.predict import parse_box
    model, record = load_model(ckpt5)
    for used in read_points_file(tmp_path / "out5" / POINTS_FILE, root / "raw_lfw"):
        image = cv2.imread(str(root / "raw_lfw" / used.image))
        pred = predict_face(model, record.spec, record.contract, image, parse_box(box))
        assert np.allclose(used.points, pred.points_px, atol=5e-4)

    # the 98-point PFPLD on a boxes.txt (each face's own box): its five points are landmark5's of the 98
    torch.manual_seed(0)
    model98, spec, contract = build_model("pfpld", width=0.25)
    save_checkpoint(tmp_path / "pfpld.pt", state_dict=model98.state_dict(), spec=spec, contract=contract)
    boxes = root / "raw_lfw" / "boxes.txt"
    boxes.write_text("".join(f"{rel} {' '.join(str(v) for v in f.face.box)}\n" for rel, f in lfw.items()))
    try:
        proc = run("align", root / "raw_lfw", "--landmarks", tmp_path / "pfpld.pt", "--boxes", boxes, "--out",
                   tmp_path / "out98")
    finally:
        boxes.unlink()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"aligned {len(lfw)} images"), proc.stdout
    model98.eval()
    # (parsed line by line: an untrained PFPLD's points are anywhere, often in mirrored order, which
    # read_points_file refuses as a file in the other convention)
    lines = (tmp_path / "out98" / POINTS_FILE).read_text().splitlines()
    used = [parse_points_line(line) for line in lines if not line.startswith("#")]
    assert sorted(rel for rel, _ in used) == sorted(lfw)
    for rel, points in used[:3]:
        image = cv2.imread(str(root / "raw_lfw" / rel))
        pred = predict_face(model98, spec, contract, image, lfw[rel].face.box)
        assert np.allclose(points, five_points(pred.points_px), atol=5e-4)

    # a model without landmarks is refused in one line
    facerec, spec, contract = build_model("facerec", input_size=32, width=0.25)
    save_checkpoint(tmp_path / "facerec.pt", state_dict=facerec.state_dict(), spec=spec, contract=contract)
    assert_user_error(run("align", root / "raw_lfw", "--landmarks", tmp_path / "facerec.pt", "--box", box, "--out",
                          tmp_path / "x"), "model facerec outputs no landmarks")


# --- raw LFW-layout photos -> aligned -> eval --pairs ------------------------------------------------------------

def test_eval_pairs_runs_on_raw_lfw_photos_aligned_by_align(faces, tmp_path):
    root, reference, _, lfw = faces
    points = write_points(tmp_path / "lfw_landmark.txt", lfw, sep="\t")
    out = tmp_path / "lfw-aligned"
    proc = run("align", root / "raw_lfw", "--points", points, "--out", out)
    assert proc.returncode == 0, proc.stderr
    for rel in lfw:      # the generator's aligned face, but through two JPEG encodings instead of one
        ours, theirs = cv2.imread(str(out / rel)), cv2.imread(str(reference / "lfw" / rel))
        assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 3.0
    torch.manual_seed(0)
    model, spec, contract = build_model("facerec", input_size=32, width=0.25)
    save_checkpoint(tmp_path / "facerec.pt", state_dict=model.state_dict(), spec=spec, contract=contract)
    proc = run("eval", tmp_path / "facerec.pt", "--pairs", reference / "pairs.txt", "--images", out, "--json",
               tmp_path / "eval.json")
    assert proc.returncode == 0, proc.stderr
    assert "3-fold accuracy" in proc.stdout
    result = json.loads((tmp_path / "eval.json").read_text())
    assert 0 < result["images"] <= len(lfw) and result["model"]["pairs"] == {"same": 6, "different": 6, "folds": 3}
