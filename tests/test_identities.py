"""Synthetic identities for face recognition and the formats they are written in: LFW's pairs.txt (reader, writer,
one-line errors), the ImageFolder reader, the ArcFace 5-point alignment (checked against a known similarity and an
independent linear least-squares fit), and the generator (deterministic, person-disjoint, identities that the raw
pixels already tell apart a little)."""
import itertools
import json

import cv2
import numpy as np
import pytest

from cli_run import assert_user_error, run
from pfpld.align import ARCFACE_TEMPLATE_112, align_face, apply_transform, five_points, similarity_transform, template
from pfpld.data import identities as ids
from pfpld.data.sources.imagefolder import read_imagefolder
from pfpld.data.sources.lfw import DifferentPair, Fold, SamePair, image_path, read_pairs, write_pairs
from pfpld.errors import DatasetError, InputError

SEED = 7
SMALL = dict(identities=4, per_identity=5, heldout=6, pairs_per_fold=4, folds=3)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("identities") / "set"
    summary = ids.generate_identities(out, seed=SEED, progress=False, **SMALL)
    return out, summary


def files_of(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- LFW pairs ------------------------------------------------------------------------------------------------

def test_pairs_of_a_generated_set_read_back_with_folds_and_images(small_set):
    out, summary = small_set
    records = read_pairs(out / "pairs.txt", out / "lfw")
    assert len(records) == SMALL["folds"] * 2 * SMALL["pairs_per_fold"]
    assert summary.images == {"imagefolder": 4 * 5, "lfw": 6 * 5}
    for fold in range(SMALL["folds"]):
        in_fold = [r for r in records if r.fold == fold]
        assert [r.same for r in in_fold] == [True] * 4 + [False] * 4      # LFW: same pairs first in each fold
    for r in records:
        assert r.path_a.is_file() and r.path_b.is_file()
        assert (r.path_a.parent == r.path_b.parent) == r.same              # one folder per person
        assert r.path_a != r.path_b
        assert r.path_a.name.startswith(r.path_a.parent.name + "_") and r.path_a.suffix == ".jpg"
    assert len({(r.path_a, r.path_b) for r in records}) == len(records)    # no pair twice
    # person-disjoint folds, over held-out identities only
    people = [{p.parent.name for r in records if r.fold == k for p in (r.path_a, r.path_b)} for k in range(3)]
    assert all(not (a & b) for a, b in itertools.combinations(people, 2))
    training = {p.name for p in (out / "imagefolder").iterdir()}
    assert not (set().union(*people) & training)


def test_write_then_read_pairs_round_trip(tmp_path):
    folds = [Fold(same=[SamePair("Ann_Lee", 1, 3), SamePair("Bo", 2, 4)],
                  different=[DifferentPair("Ann_Lee", 2, "Bo", 1), DifferentPair("Bo", 3, "Cy", 1)]),
             Fold(same=[SamePair("Di", 1, 2), SamePair("Ed", 1, 2)],
                  different=[DifferentPair("Di", 2, "Ed", 1), DifferentPair("Ed", 2, "Di", 1)])]
    for name, n in (("Ann_Lee", 3), ("Bo", 4), ("Cy", 1), ("Di", 2), ("Ed", 2)):
        for i in range(1, n + 1):
            image_path(tmp_path / "lfw", name, i).parent.mkdir(parents=True, exist_ok=True)
            image_path(tmp_path / "lfw", name, i).write_bytes(b"")
    write_pairs(tmp_path / "pairs.txt", folds)
    text = (tmp_path / "pairs.txt").read_text()
    assert text.splitlines()[:2] == ["2\t2", "Ann_Lee\t1\t3"] and "Ann_Lee\t2\tBo\t1" in text
    records = read_pairs(tmp_path / "pairs.txt", tmp_path / "lfw")
    got = [(r.fold, r.same, r.path_a.name, r.path_b.name) for r in records]
    assert got == [(0, True, "Ann_Lee_0001.jpg", "Ann_Lee_0003.jpg"), (0, True, "Bo_0002.jpg", "Bo_0004.jpg"),
                   (0, False, "Ann_Lee_0002.jpg", "Bo_0001.jpg"), (0, False, "Bo_0003.jpg", "Cy_0001.jpg"),
                   (1, True, "Di_0001.jpg", "Di_0002.jpg"), (1, True, "Ed_0001.jpg", "Ed_0002.jpg"),
                   (1, False, "Di_0002.jpg", "Ed_0001.jpg"), (1, False, "Ed_0002.jpg", "Di_0001.jpg")]
    # any whitespace is read (spaces, trailing blank lines), as some copies of pairs.txt have it
    (tmp_path / "spaces.txt").write_text(text.replace("\t", "  ") + "\n\n")
    assert read_pairs(tmp_path / "spaces.txt", tmp_path / "lfw") == records


def broken_pairs_cases(lines):
    """(name, lines of a broken copy, line number the error must name, words it must hold)."""
    same_line, diff_line = 2, 2 + SMALL["pairs_per_fold"]
    return [
        ("header", ["10 x"] + lines[1:], 1, "header '10 x'"),
        ("header count", ["3"] + lines[1:], 1, "<folds> <pairs per fold>"),
        ("tokens", lines[:same_line - 1] + [lines[same_line - 1] + "\t9"] + lines[same_line:], same_line,
         "(3 fields, found 4)"),
        ("index", lines[:diff_line - 1] + ["\t".join(lines[diff_line - 1].split()[:3] + ["two"])] + lines[diff_line:],
         diff_line, "idx2 'two' is not an image number"),
        ("zero index", lines[:same_line - 1] + [lines[same_line - 1].split()[0] + "\t0\t1"] + lines[same_line:],
         same_line, "idx1 '0'"),
        # a fold with one same-person line missing: its first different-person line sits in a same-person slot
        ("fold size", lines[:1] + lines[2:], diff_line - 1, "fold 1 expects same-person pair 4 of 4"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_broken_pairs_files_are_one_line_errors_naming_the_line(small_set, tmp_path, case):
    out, _ = small_set
    lines = (out / "pairs.txt").read_text().splitlines()
    name, broken, line, words = broken_pairs_cases(lines)[case]
    path = tmp_path / f"{name.replace(' ', '_')}.txt"
    path.write_text("\n".join(broken) + "\n")
    with pytest.raises(DatasetError) as e:
        read_pairs(path, out / "lfw")
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}:{line}: "), message
    assert words in message, message


def test_short_file_and_missing_image_name_the_file_and_line(small_set, tmp_path):
    out, _ = small_set
    lines = (out / "pairs.txt").read_text().splitlines()
    short = tmp_path / "short.txt"
    short.write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(DatasetError, match=r"22 pair lines, expected 3 folds x \(4 same \+ 4 different\) = 24"):
        read_pairs(short, out / "lfw")
    name = lines[3].split()[0]
    missing = tmp_path / "missing.txt"
    missing.write_text("\n".join(lines[:3] + [f"{name}\t2\t99"] + lines[4:]) + "\n")
    with pytest.raises(DatasetError) as e:
        read_pairs(missing, out / "lfw")
    assert str(e.value) == f"{missing}:4: image {out / 'lfw' / name / f'{name}_0099.jpg'} not found"
    with pytest.raises(DatasetError, match="LFW pairs file .* not found"):
        read_pairs(tmp_path / "nosuch.txt", out / "lfw")


# --- ImageFolder ----------------------------------------------------------------------------------------------

def test_imagefolder_classes_sorted_and_images_in_torchvision_order(tmp_path):
    root = tmp_path / "faces"
    layout = ["b_person/2.jpg", "b_person/10.PNG", "a_person/x.bmp", "a_person/sub/0.jpg", "a_person/a.jpeg",
              "c/1.jpg", "c/notes.txt", "c/.hidden.jpg", ".cache/1.jpg", "c/.ipynb_checkpoints/1.jpg"]
    for rel in layout:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "README.md").write_text("not a class")
    folder = read_imagefolder(root)
    assert folder.root == root and folder.classes == ["a_person", "b_person", "c"]
    # os.walk order, sorted: a folder's own files before its sub-folders'; names sorted as strings
    assert [(p.relative_to(root).as_posix(), label) for p, label in folder.items] == [
        ("a_person/a.jpeg", 0), ("a_person/x.bmp", 0), ("a_person/sub/0.jpg", 0),
        ("b_person/10.PNG", 1), ("b_person/2.jpg", 1), ("c/1.jpg", 2)]
    assert folder.class_counts() == [3, 2, 1]


def test_imagefolder_errors_are_one_line_naming_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="ImageFolder root not found"):
        read_imagefolder(tmp_path / "nosuch")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.jpg").write_bytes(b"x")        # a file at the top is not a class
    with pytest.raises(DatasetError, match=r"empty: no class folders"):
        read_imagefolder(tmp_path / "empty")
    (tmp_path / "set" / "alice").mkdir(parents=True)
    (tmp_path / "set" / "alice" / "1.jpg").write_bytes(b"x")
    (tmp_path / "set" / "bob").mkdir()
    (tmp_path / "set" / "bob" / "notes.txt").write_text("no faces")
    with pytest.raises(DatasetError) as e:
        read_imagefolder(tmp_path / "set")
    assert str(e.value).startswith(f"{tmp_path / 'set' / 'bob'}: class folder without images")


def test_generated_imagefolder_reads_back(small_set):
    out, _ = small_set
    folder = read_imagefolder(out / "imagefolder")
    assert folder.classes == ["id_00000", "id_00001", "id_00002", "id_00003"]
    assert [p.name for p, label in folder.items if label == 2] == ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg",
                                                                   "0005.jpg"]
    image = cv2.imread(str(folder.items[0][0]))
    assert image.shape == (112, 112, 3)


# --- alignment ------------------------------------------------------------------------------------------------

def rotation(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def test_a_face_moved_by_a_known_similarity_is_aligned_back_exactly():
    s, r, t = 1.7, rotation(23.0), np.array([40.0, -12.0])
    face = ARCFACE_TEMPLATE_112 @ (s * r).T + t                # the template as it sits in some photo
    m = similarity_transform(face, ARCFACE_TEMPLATE_112)
    assert np.abs(apply_transform(m, face) - ARCFACE_TEMPLATE_112).max() < 1e-6
    # the inverse similarity written out by hand: x = (R^T (y - t)) / s
    expected = np.hstack([r.T / s, (-r.T @ t / s)[:, None]])
    assert np.abs(m - expected).max() < 1e-9
    # the template scales with the crop size
    m2 = similarity_transform(face, template(224))
    assert np.abs(apply_transform(m2, face) - 2 * ARCFACE_TEMPLATE_112).max() < 1e-6


def test_least_squares_fit_matches_an_independent_linear_solve_and_never_mirrors():
    rng = np.random.default_rng(0)
    for trial in range(20):
        src = rng.uniform(0, 300, (5, 2))
        dst = ARCFACE_TEMPLATE_112 + rng.normal(0, 3, (5, 2))
        if trial % 2:
            src[:, 0] = -src[:, 0]                             # a mirrored face: the best fit is still a rotation
        m = similarity_transform(src, dst)
        # x' = a x - b y + tx, y' = b x + a y + ty is linear in (a, b, tx, ty): ordinary least squares
        rows = [[x, -y, 1, 0] for x, y in src] + [[y, x, 0, 1] for x, y in src]
        a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)[0]
        assert np.abs(m - np.array([[a, -b, tx], [b, a, ty]])).max() < 1e-9
        assert np.linalg.det(m[:, :2]) > 0


def test_five_points_are_corner_midpoints_nose_and_mouth_corners():
    p = np.random.default_rng(1).uniform(0, 200, (98, 2))
    expected = [[(p[60, 0] + p[64, 0]) / 2, (p[60, 1] + p[64, 1]) / 2],
                [(p[68, 0] + p[72, 0]) / 2, (p[68, 1] + p[72, 1]) / 2],
                p[54], p[76], p[82]]
    assert np.allclose(five_points(p), expected, atol=1e-12)


def test_align_face_warps_the_pixels_onto_the_template():
    # a dark photo with a bright dot at each of 5 points placed by a known similarity: after alignment the dots
    # sit on the template
    points = ARCFACE_TEMPLATE_112 @ (2.2 * rotation(-31.0)).T + np.array([150.0, 60.0])
    image = np.zeros((400, 400, 3), np.uint8)
    for x, y in points:
        cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), 2 * 16, (255, 255, 255), -1, cv2.LINE_AA, 4)
    aligned, m = align_face(image, points)
    assert aligned.shape == (112, 112, 3) and m.shape == (2, 3)
    grey = aligned[..., 0].astype(float)
    for tx, ty in ARCFACE_TEMPLATE_112:
        x0, y0 = int(tx) - 4, int(ty) - 4
        win = grey[y0:y0 + 9, x0:x0 + 9]
        ys, xs = np.mgrid[y0:y0 + 9, x0:x0 + 9]
        centre = np.array([(win * xs).sum(), (win * ys).sum()]) / win.sum()
        assert np.linalg.norm(centre - [tx, ty]) < 0.35, (centre, tx, ty)


def test_rendered_faces_align_onto_the_template():
    identity = ids.sample_identity(SEED, 0)
    for j in range(3):
        face = ids.render_identity_face(identity, SEED, j)
        # the points that were aligned are the render's own exact 5 points, carried by the returned matrix
        _, m = align_face(face.face.image, five_points(face.face.points_98))
        assert np.allclose(apply_transform(m, five_points(face.face.points_98)), face.points5)
        # the synthetic head's proportions are not the template's (eyes to mouth is 0.84 x the eye distance, 1.16 on
        # the template): the neutral frontal head already fits with 3.6 px mean residual; pose and expression add
        # a little (measured 2.9-6.6 px mean, 12.7 max over 30 faces). A swapped or mirrored point would be ~35 px.
        residual = np.linalg.norm(face.points5 - ARCFACE_TEMPLATE_112, axis=1)
        assert residual.mean() < 8.0 and residual.max() < 16.0, residual
        assert abs(face.face.pose_para[6] - ids.RENDER_SCALE_PX) < 1e-9   # one scale: one texture design


# --- the generator --------------------------------------------------------------------------------------------

def test_generator_is_deterministic_for_a_seed(small_set, tmp_path):
    out, _ = small_set
    again = ids.generate_identities(tmp_path / "again", seed=SEED, progress=False, **SMALL)
    a, b = files_of(out), files_of(again.out)
    for volatile in ("synth.json", ".pfpld-output.json"):        # times
        a.pop(volatile), b.pop(volatile)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert len([k for k in a if k.endswith(".jpg")]) == (4 + 6) * 5
    other = ids.render_identity_face(ids.sample_identity(SEED + 1, 0), SEED + 1, 0).image
    assert not np.array_equal(other, ids.render_identity_face(ids.sample_identity(SEED, 0), SEED, 0).image)


def test_summary_files_and_preview(small_set):
    out, summary = small_set
    info = json.loads((out / "synth.json").read_text())
    assert info["generator"] == "pfpld.data.identities" and info["seed"] == SEED
    assert (info["identities"], info["heldout"], info["per_identity"]) == (4, 6, 5)
    assert info["images"] == {"imagefolder": 20, "lfw": 30}
    sheet = cv2.imread(str(out / "preview.png"))
    assert sheet.shape == (8 * 112, 5 * 112, 3)       # 8 identities a row each, the first 5 pictures
    assert "3 folds x (4 same + 4 different)" in summary.table()


def test_same_identity_is_more_alike_than_different_identities_in_raw_pixels(small_set):
    out, _ = small_set
    paths = sorted((out / "imagefolder").rglob("*.jpg")) + sorted((out / "lfw").rglob("*.jpg"))
    grey = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).astype(np.float64).ravel() for p in paths])
    grey -= grey.mean(axis=1, keepdims=True)
    grey /= np.linalg.norm(grey, axis=1, keepdims=True)
    cosine = grey @ grey.T
    person = np.array([p.parent.name for p in paths])
    upper = np.triu(np.ones_like(cosine, dtype=bool), k=1)          # each unordered pair once
    same = cosine[upper & (person[:, None] == person[None, :])]
    different = cosine[upper & (person[:, None] != person[None, :])]
    assert len(same) == 10 * 10 and len(different) == 45 * 25
    # measured 0.58-0.66 over seeds 3-10 (10 identities x 5); on real LFW raw pixels are weak too
    auc = np.mean(np.array(same)[:, None] > np.array(different)[None, :])
    assert np.mean(same) > np.mean(different) + 0.05 and auc > 0.55, (np.mean(same), np.mean(different), auc)


def test_impossible_pair_counts_are_one_line_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"--heldout 5: 3 person-disjoint folds need at least 6"):
        ids.generate_identities(tmp_path / "a", 2, per_identity=3, heldout=5, pairs_per_fold=1, folds=3,
                                progress=False)
    with pytest.raises(InputError, match=r"--pairs-per-fold 7: a fold of 2 identities x 3 images has only 6 "
                                         r"same-person and 9 different-person pairs"):
        ids.generate_identities(tmp_path / "b", 2, per_identity=3, heldout=4, pairs_per_fold=7, folds=2,
                                progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_synth_identities_cli_writes_the_layout(tmp_path):
    out = tmp_path / "rec"
    proc = run("synth", "--out", out, "--identities", 2, "--per-identity", 3, "--heldout", 4, "--pairs-per-fold", 2,
               "--folds", 2, "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    assert "pairs.txt: 2 folds x (2 same + 2 different)" in proc.stdout
    assert read_imagefolder(out / "imagefolder").classes == ["id_00000", "id_00001"]
    assert sorted(p.name for p in (out / "lfw").iterdir()) == ["id_00002", "id_00003", "id_00004", "id_00005"]
    assert len(read_pairs(out / "pairs.txt", out / "lfw")) == 8
    assert not (out / "WFLW").exists()
    assert_user_error(run("synth", "--out", tmp_path / "bad", "--identities", 2, "--heldout", 3, "--folds", 2),
                      "--heldout 3", "at least 4 held-out identities")
    again = run("synth", "--out", out, "--identities", 2, "--per-identity", 3, "--heldout", 4, "--pairs-per-fold", 2,
                "--folds", 2)
    assert_user_error(again, str(out), "--force")
    help_text = run("synth", "--help").stdout
    assert f"[default: {ids.DEFAULT_PER_IDENTITY}]" in help_text and f"[default: {ids.DEFAULT_HELDOUT}]" in help_text
