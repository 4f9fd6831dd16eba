"""The built-in synthetic faces: exact labels (projections of the project's 3D template under the 300W-LP pose
formula, written independently here from FACTS section 3), pose signs, eye states, symmetry, features under the
landmarks, and the four on-disk formats read back by the real readers."""
import json

import numpy as np
import pytest
import scipy.io

from pfpld.data import face3d
from pfpld.data.synthetic import (FaceParams, aflw2000_face, flip_face, format_counts, generate_dataset, render_face,
                                  render_scene, sample_params)
from pfpld.errors import InputError
from pfpld.landmarks import MAP_68_TO_98, MIRROR_98, eye_aspect_ratio, has_closed_eye


def facts_project(model_points: np.ndarray, pose_para: np.ndarray, image_height: int) -> np.ndarray:
    """FACTS section 3, typed out again on purpose: R = Rx(pitch) Ry(yaw) Rz(roll), s R X + t in a y-up frame,
    image_y = H + 1 - y."""
    pitch, yaw, roll, tx, ty, tz, s = pose_para
    c, n = np.cos, np.sin
    rx = np.array([[1, 0, 0], [0, c(pitch), n(pitch)], [0, -n(pitch), c(pitch)]])
    ry = np.array([[c(yaw), 0, -n(yaw)], [0, 1, 0], [n(yaw), 0, c(yaw)]])
    rz = np.array([[c(roll), n(roll), 0], [-n(roll), c(roll), 0], [0, 0, 1]])
    cam = s * model_points @ (rx @ ry @ rz).T + np.array([tx, ty, tz])
    return np.stack([cam[:, 0], image_height + 1 - cam[:, 1]], axis=1)


def clean_face(seed: int, pose_deg=(0.0, 0.0, 0.0), size=320, **overrides):
    rng = np.random.default_rng(seed)
    params = sample_params(rng, clean=True, pose_deg=pose_deg, face_frac=0.55, offset=(0.0, 0.0), **overrides)
    return render_face(rng, image_size=size, params=params)


def ears(face):
    return eye_aspect_ratio(face.points_98[60:68]), eye_aspect_ratio(face.points_98[68:76])


# --- rendering ---------------------------------------------------------------------------------------------

def test_render_is_deterministic_for_a_seed():
    a = render_face(np.random.default_rng(7), image_size=(300, 260))
    b = render_face(np.random.default_rng(7), image_size=(300, 260))
    c = render_face(np.random.default_rng(8), image_size=(300, 260))
    assert a.image.shape == (260, 300, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and np.array_equal(a.points_98, b.points_98)
    assert np.array_equal(a.pose_para, b.pose_para) and a.box == b.box
    assert not np.array_equal(a.image, c.image)


def test_landmarks_are_exact_projections_of_the_model_points():
    for seed in range(12):
        face = render_face(np.random.default_rng(seed), image_size=(360, 300))
        assert np.abs(facts_project(face.model_points_98, face.pose_para, 300) - face.points_98).max() < 1e-3
        assert np.abs(facts_project(face.model_points_106, face.pose_para, 300) - face.points_106).max() < 1e-3
        assert np.array_equal(face.points_68, face.points_98[MAP_68_TO_98])
        assert np.allclose(face.points3d_68[:2].T, face.points_68)
        yaw, pitch, roll = face.pose_rad
        assert np.allclose([pitch, yaw, roll], face.pose_para[:3])


def test_flipped_face_keeps_an_exact_label():
    face = render_face(np.random.default_rng(3), image_size=450, params=sample_params(np.random.default_rng(3),
                                                                                       pose_deg=(35, 10, 15)))
    flipped = flip_face(face)
    assert np.abs(facts_project(flipped.model_points_98, flipped.pose_para, 450) - flipped.points_98).max() < 1e-3
    assert np.allclose(flipped.points_98[:, 0], 449 - face.points_98[MIRROR_98, 0])
    assert np.allclose(flipped.pose_rad, face.pose_rad * np.array([-1, 1, -1]))
    assert np.array_equal(flipped.image, face.image[:, ::-1])


def test_pose_signs_match_facts():
    frontal = clean_face(1)
    # +yaw turns the face toward image-left: the nose tip is left of the eyes' middle, and in the rendered
    # depth order the image-left half (the far side) hides: its jaw first, its eye behind the nose later
    left = clean_face(1, (45, 0, 0))
    assert left.points_98[54, 0] < left.points_98[[60, 72]].mean(axis=0)[0] - 10
    assert left.visible_98[0:16].sum() < 8 and left.visible_98[17:33].all()
    right = clean_face(1, (-45, 0, 0))
    assert right.points_98[54, 0] > right.points_98[[60, 72]].mean(axis=0)[0] + 10
    assert right.visible_98[17:33].sum() < 8 and right.visible_98[0:16].all()
    profile = clean_face(1, (80, 0, 0))
    assert not profile.visible_98[60:68].any() and profile.visible_98[68:76].all()

    # +pitch looks up: the nose tip rises toward the eye line
    def nose_drop(face):
        eye_y = face.points_98[[60, 72], 1].mean()
        return (face.points_98[54, 1] - eye_y) / np.linalg.norm(face.points_98[60] - face.points_98[72])
    assert nose_drop(clean_face(1, (0, 30, 0))) < nose_drop(frontal) - 0.1
    assert nose_drop(clean_face(1, (0, -30, 0))) > nose_drop(frontal) + 0.1
    # +roll tilts clockwise on screen: the image-right eye goes down
    tilted = clean_face(1, (0, 0, 25))
    assert tilted.points_98[72, 1] > tilted.points_98[60, 1] + 10


def test_closed_eyes_have_ear_at_most_0_1_and_open_eyes_above_0_2():
    for seed in range(6):
        pose = (float(np.random.default_rng(seed).uniform(-80, 80)), 0.0, 0.0)
        closed = clean_face(seed, pose, closed_eyes=True)
        assert max(ears(closed)) <= 0.1 and closed.closed_eye and has_closed_eye(closed.points_98)
        opened = clean_face(seed, (pose[0] / 3, 0.0, 0.0), closed_eyes=False)
        assert min(ears(opened)) > 0.2 and not opened.closed_eye
    wink = clean_face(0, eye_open=(0.0, 1.0))
    assert ears(wink)[0] <= 0.1 < 0.2 < ears(wink)[1] and wink.closed_eye


def test_open_eyes_never_pass_for_closed_over_the_sampled_poses():
    for seed in range(40):
        face = render_face(np.random.default_rng(seed), image_size=200)
        for ear_value, openness in zip(ears(face), face.params.expression.eye_open):
            assert (ear_value <= 0.1) == (openness == 0.0)


def test_template_is_mirror_symmetric():
    mirrored = face3d.TEMPLATE_98[MIRROR_98] * np.array([-1.0, 1.0, 1.0])
    assert np.abs(mirrored - face3d.TEMPLATE_98).max() < 1e-9
    assert np.abs(face3d.mirror_model(face3d.TEMPLATE) - face3d.TEMPLATE).max() < 1e-9
    # any identity with a symmetric expression stays symmetric; the jaw, brows, eyes and mouth are distinct points
    params = sample_params(np.random.default_rng(4), eye_open=(0.9, 0.9), gaze=(0.0, 0.0))
    pts = face3d.model_points(params.shape, params.expression)
    assert np.abs(face3d.mirror_model(pts) - pts).max() < 1e-9
    # distinct points, except that a closed mouth's inner lips meet point on point (93-95 on 91-89, as in WFLW)
    assert len(np.unique(np.round(face3d.TEMPLATE_98, 6), axis=0)) == 95
    assert np.allclose(face3d.TEMPLATE_98[[93, 94, 95]], face3d.TEMPLATE_98[[91, 90, 89]])
    # model frame: x to image right, y up, z toward the camera
    t = face3d.TEMPLATE_98
    assert t[72, 0] > t[60, 0] and t[51, 1] > t[54, 1] and t[54, 2] > t[60, 2]


def test_landmarks_sit_on_the_drawn_features():
    def gray(face, p):
        x, y = np.round(p).astype(int)
        return float(face.image[y - 1:y + 2, x - 1:x + 2].astype(np.float32).mean())
    for seed in range(5):
        face = clean_face(seed, closed_eyes=False, gaze=(0.0, 0.0), hair_style="short")
        cheeks = [0.5 * (face.points_98[55] + face.points_98[4]), 0.5 * (face.points_98[59] + face.points_98[28])]
        cheek = min(gray(face, c) for c in cheeks)
        assert gray(face, face.points_98[96]) < 0.6 * cheek and gray(face, face.points_98[97]) < 0.6 * cheek
        for upper, lower, eye in ((35, 40, 96), (44, 49, 97)):        # a brow is darker than the forehead above
            brow = 0.5 * (face.points_98[upper] + face.points_98[lower])
            forehead = brow + 0.7 * (brow - face.points_98[eye])
            assert gray(face, brow) < gray(face, forehead) - 15
        # nostrils lie between the nose wings and the columella, just above the lower nose contour
        nostril = 0.5 * (face.points_98[55] + face.points_98[56]) + [0, -0.02 * face.pose_para[6]]
        assert gray(face, nostril) < cheek - 20
        assert face.visible_98.all()


def test_two_faces_in_one_picture_do_not_overlap():
    rng = np.random.default_rng(11)
    faces = render_scene(rng, (560, 360), [sample_params(rng), sample_params(rng)])
    a, b = faces[0].box, faces[1].box
    assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
    assert faces[0].image is faces[1].image


def test_hidden_aflw_points_are_minus_one():
    profile = clean_face(2, (85, 0, 0))
    assert (profile.points2d_21 == -1).all(axis=0).any()
    frontal = clean_face(2)
    assert (frontal.points2d_21 >= 0).all()


def test_sample_params_overrides():
    rng = np.random.default_rng(0)
    p = sample_params(rng, closed_eyes=True, mouth_open=True, pose_deg=(10, 20, 30), occluder="none")
    assert isinstance(p, FaceParams) and p.expression.eye_open == (0.0, 0.0) and p.expression.mouth_open > 0
    assert np.allclose(np.degrees(p.pose_rad), (10, 20, 30)) and p.capture.occluder == "none"
    with pytest.raises(TypeError):
        sample_params(rng, no_such_field=1)


# --- the dataset on disk -------------------------------------------------------------------------------------

N_FACES = 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "faces"
    return out, generate_dataset(out, n=N_FACES, seed=5, progress=False)


def test_every_format_is_written_and_read_back_by_the_real_readers(dataset):
    from pfpld.data.sources.aflw2000 import read_aflw2000
    from pfpld.data.sources.lapa import read_lapa
    from pfpld.data.sources.w300lp import read_300wlp
    from pfpld.data.sources.wflw import read_wflw
    out, summary = dataset
    counts = format_counts(N_FACES)
    assert sum(summary.counts.values()) == N_FACES and min(counts.values()) >= 3
    assert len(read_wflw(out / "WFLW", "train")) == summary.counts["WFLW train"] > 0
    assert len(read_wflw(out / "WFLW", "test")) == summary.counts["WFLW test"] > 0
    lapa_all = sum(len(read_lapa(out / "LaPa", s, closed_eye_only=False)) for s in ("train", "val", "test"))
    lapa_closed = sum(len(read_lapa(out / "LaPa", s)) for s in ("train", "val", "test"))
    assert lapa_all == counts["LaPa"] and 0 < lapa_closed < lapa_all      # most closed, at least one open
    w300 = read_300wlp(out / "300W_LP")
    assert len(w300) == summary.counts["300W-LP"] == counts["300W-LP"]
    aflw_all = read_aflw2000(out / "AFLW2000", protocol=False)
    assert len(aflw_all) == counts["AFLW2000"] > len(read_aflw2000(out / "AFLW2000"))   # some beyond 99 deg
    meta = json.loads((out / "synth.json").read_text())
    assert meta["seed"] == 5 and meta["n"] == N_FACES and meta["faces"] == summary.counts
    assert (out / "preview.png").stat().st_size > 10_000
    assert "WFLW train" in summary.table()


def test_written_pose_para_maps_written_points_back_onto_the_template(dataset):
    """Invert the written AFLW2000 label (pt3d_68 and Pose_Para): the 3D points must come back in the model
    frame, close to the project's template (identity and expression vary by a few hundredths of the head)."""
    out, _ = dataset
    template = face3d.TEMPLATE_98[MAP_68_TO_98]
    for mat_path in sorted((out / "AFLW2000").glob("*.mat")):
        mat = scipy.io.loadmat(str(mat_path))
        pitch, yaw, roll, tx, ty, tz, s = mat["Pose_Para"].reshape(7)
        pts = mat["pt3d_68"]
        height = 450
        cam = np.stack([pts[0], height + 1 - pts[1], pts[2]], axis=1) - [tx, ty, tz]
        rx = np.array([[1, 0, 0], [0, np.cos(pitch), np.sin(pitch)], [0, -np.sin(pitch), np.cos(pitch)]])
        ry = np.array([[np.cos(yaw), 0, -np.sin(yaw)], [0, 1, 0], [np.sin(yaw), 0, np.cos(yaw)]])
        rz = np.array([[np.cos(roll), np.sin(roll), 0], [-np.sin(roll), np.cos(roll), 0], [0, 0, 1]])
        model = cam @ (rx @ ry @ rz) / s                       # R is a rotation: R^-1 = R^T
        err = np.linalg.norm(model - template, axis=1)
        assert np.median(err) < 0.08 and err.max() < 0.35, mat_path.name
        # and the re-projection of the recovered points reproduces the written 2D points exactly
        assert np.abs(facts_project(model, mat["Pose_Para"].reshape(7), height) - pts[:2].T).max() < 1e-3


def test_written_aflw2000_face_is_the_renderers_face(dataset):
    """Each picture has its own generator, so a written face can be re-rendered alone and the file's label
    compared with the renderer's exact one (image00002 is one of the faces beyond the 99-degree protocol)."""
    out, _ = dataset
    face = aflw2000_face(5, 0, format_counts(N_FACES)["AFLW2000"])
    mat = scipy.io.loadmat(str(out / "AFLW2000" / "image00002.mat"))
    assert np.allclose(mat["Pose_Para"].reshape(7), face.pose_para)
    assert np.allclose(mat["pt3d_68"], face.points3d_68)
    assert abs(np.degrees(face.pose_rad[0])) > 99
    assert np.abs(facts_project(face.model_points_98[MAP_68_TO_98], mat["Pose_Para"].reshape(7), 450)
                  - mat["pt3d_68"][:2].T).max() < 1e-3


def test_previous_output_is_replaced_and_foreign_folders_refused(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a synthetic dataset written by pfpld"):
        generate_dataset(foreign, n=12, seed=0, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    out = tmp_path / "synth"
    generate_dataset(out, n=12, seed=0, progress=False)
    (out / "stale.txt").write_text("from an older run")
    summary = generate_dataset(out, n=12, seed=1, progress=False, force=True)
    assert not (out / "stale.txt").exists() and summary.seed == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "synth"]      # no temporary folders left
    with pytest.raises(ValueError):
        generate_dataset(tmp_path / "tiny", n=5, progress=False)
