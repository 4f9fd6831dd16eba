"""img2pose's 6DoF tools and the solvePnP pose labeller (pfpld.pose6d), on templates and rendered faces whose pose
is known, and `pfpld label-pose` end to end into prepare-data."""
import json
import math
import shutil

import numpy as np
import pytest

from pfpld import pose6d
from pfpld.data import face3d
from pfpld.data.sources.wflw import pose_labels_path, read_wflw
from pfpld.data.synthetic import Expression, FaceShape, generate_dataset, render_face, sample_params
from pfpld.errors import DatasetError

from cli_run import assert_user_error, run


def _rx(a):    # the standard right-handed rotations, written independently of pfpld.pose
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_intrinsics_use_width_plus_height_as_focal_length():
    assert np.array_equal(pose6d.intrinsics(640, 480), [[1120, 0, 320], [0, 1120, 240], [0, 0, 1]])
    assert np.array_equal(pose6d.intrinsics(301, 200), [[501, 0, 150.5], [0, 501, 100], [0, 0, 1]])


def test_euler_to_rotvec_is_img2pose_conversion():
    # img2pose: R_cam = (extrinsic xyz rotation of (pitch, -yaw, -roll))^T = (Rz(-roll) Ry(-yaw) Rx(pitch))^T
    yaw, pitch, roll = 0.7, -0.3, 0.4
    expected = (_rz(-roll) @ _ry(-yaw) @ _rx(pitch)).T
    got = pose6d.rotvec_to_matrix(pose6d.euler_to_rotvec(yaw, pitch, roll))
    assert np.allclose(got, expected, atol=1e-12)


def test_rotvec_euler_round_trips_up_to_90_degrees_yaw():
    worst = 0.0
    for yaw in np.radians([-90, -89.9, -75, -45, -10, 0, 10, 45, 75, 89.9, 90]):
        for pitch in np.radians([-85, -40, 0, 25, 85]):
            for roll in np.radians([-170, -60, 0, 30, 179]):
                rotvec = pose6d.euler_to_rotvec(yaw, pitch, roll)
                back = pose6d.rotvec_to_euler(rotvec)
                # the rotation itself always comes back; at |yaw| = 90 only pitch -+ roll is defined
                assert np.allclose(pose6d.rotvec_to_matrix(pose6d.euler_to_rotvec(*back)),
                                   pose6d.rotvec_to_matrix(rotvec), atol=1e-9)
                if abs(abs(yaw) - np.pi / 2) > 1e-9:
                    worst = max(worst, float(np.abs(back - [yaw, pitch, roll]).max()))
    assert np.degrees(worst) < 1e-6
    rng = np.random.default_rng(0)
    for axis, angle in zip(rng.normal(size=(50, 3)), rng.uniform(0, 3.1, 50)):
        rotvec = axis / np.linalg.norm(axis) * angle          # |rotvec| < pi: the canonical vector of its rotation
        assert np.allclose(pose6d.euler_to_rotvec(*pose6d.rotvec_to_euler(rotvec)), rotvec, atol=1e-9)


def test_camera_pose_projects_like_the_300wlp_formula_far_away():
    # a frontal-plane check of the frame change: with the head far away (weak perspective) the camera projection
    # of the template matches face3d.project's s R X + t with image_y = H + 1 - y, up to the offset
    yaw, pitch, roll = np.radians([30.0, -15.0, 20.0])
    k = pose6d.intrinsics(1e6, 1e6)
    pose = np.concatenate([pose6d.euler_to_rotvec(yaw, pitch, roll), [0.0, 0.0, 2e6 * 70.0 / 100.0]])
    cam = pose6d.pose_to_landmarks(pose, k)
    ortho = face3d.project(face3d.TEMPLATE_98, [pitch, yaw, roll, 0, 0, 0, 100.0], 0)[:, :2]
    cam, ortho = cam - cam.mean(0), ortho - ortho.mean(0)
    assert np.abs(cam - ortho).max() < 0.02 * np.ptp(ortho[:, 0])


def _random_pose_and_box(rng, size):
    w, h = size
    side = rng.uniform(60, 220)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    box = np.array([cx - side / 2, cy - side * 0.55, cx + side / 2, cy + side * 0.55])
    tz = (box[2] - box[0] + box[3] - box[1]) * 140.0 / side      # box-relative t_z: head about `side` px wide
    return np.concatenate([pose6d.euler_to_rotvec(*rng.uniform(-0.9, 0.9, 3)), rng.uniform(-10, 10, 2), [tz]]), box


def test_bbox_pose_to_full_image_and_back_is_exact():
    rng = np.random.default_rng(1)
    for _ in range(40):
        size = (int(rng.integers(200, 900)), int(rng.integers(200, 900)))
        pose_box, box = _random_pose_and_box(rng, size)
        full = pose6d.pose_bbox_to_full_image(pose_box, size, box)
        assert np.abs(pose6d.pose_full_image_to_bbox(full, size, box) - pose_box).max() < 1e-9
        assert np.abs(pose6d.pose_bbox_to_full_image(pose6d.pose_full_image_to_bbox(full, size, box), size, box)
                      - full).max() < 1e-9


def test_full_image_pose_projects_where_the_box_pose_does():
    """The box pose projects with the image's camera moved to the box centre (t_z in box units); the whole-image
    pose with the image's camera. The head centre matches exactly; the rest as far as img2pose's rotation
    approximation allows: the shear K_img^-1 K_box is not a rotation, so its nearest rotation moves a point at
    depth d by about |box centre - image centre| d / (2 t_z)."""
    rng = np.random.default_rng(2)
    template = pose6d.template_points()
    for _ in range(30):
        size = (int(rng.integers(300, 900)), int(rng.integers(300, 900)))
        pose_box, box = _random_pose_and_box(rng, size)
        k_img = pose6d.intrinsics(*size)
        f = k_img[0, 0]
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        k_box = k_img.copy()
        k_box[:2, 2] = centre
        scaled = pose_box.copy()
        scaled[5] *= f / ((box[2] - box[0]) + (box[3] - box[1]))
        full = pose6d.pose_bbox_to_full_image(pose_box, size, box)
        want = pose6d.project_points(scaled, k_box, template)
        got = pose6d.project_points(full, k_img, template)
        head_centre = pose6d.project_points(scaled, k_box, np.zeros((1, 3)))
        assert np.abs(pose6d.project_points(full, k_img, np.zeros((1, 3))) - head_centre).max() < 1e-9
        depth = np.abs(template @ pose6d.rotvec_to_matrix(scaled[:3]).T)[:, 2].max()
        shift = np.linalg.norm(centre - k_img[:2, 2])
        bound = shift * depth / (2 * scaled[5])             # px, first order in shift / f
        assert np.linalg.norm(got - want, axis=1).max() <= 1.5 * bound + 1e-6
    # a box centred on the principal point: no shear, the same pixels exactly
    size = (640, 480)
    box = np.array([270.0, 180.0, 370.0, 300.0])
    pose_box = np.concatenate([pose6d.euler_to_rotvec(0.5, -0.2, 0.3), [3.0, -2.0, 310.0]])
    full = pose6d.pose_bbox_to_full_image(pose_box, size, box)
    scaled = pose_box.copy()
    scaled[5] *= 1120.0 / 220.0
    assert np.abs(pose6d.project_points(full, pose6d.intrinsics(*size), template)
                  - pose6d.project_points(scaled, pose6d.intrinsics(*size), template)).max() < 1e-9


def test_template_68_is_the_98_through_the_index_map_and_rigid_points_are_distinct():
    t98, t68 = pose6d.template_points("98"), pose6d.template_points("68")
    assert t68.shape == (68, 3) and np.array_equal(t68[36], t98[60]) and np.array_equal(t68[30], t98[54])
    assert np.allclose(t98, face3d.TEMPLATE_98 * [70.0, -70.0, -70.0])
    rigid = t98[pose6d.RIGID_98]
    gaps = np.linalg.norm(rigid[:, None] - rigid[None], axis=2) + np.eye(len(rigid)) * 1e9
    assert gaps.min() > 1.0                                   # mm: no two rigid points coincide
    assert not set(pose6d.RIGID_98.tolist()) & set(range(33))  # no jaw contour point


def test_pose_to_box_follows_img2pose_rule():
    size = (640, 480)
    k = pose6d.intrinsics(*size)
    pose = np.concatenate([pose6d.euler_to_rotvec(0.2, 0.1, 0.05), [10.0, 5.0, 900.0]])
    pts = pose6d.pose_to_landmarks(pose, k, "68")
    x0, y0, x1, y1 = pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()
    sx, sy = int((x1 - x0) * 1.1), int((y1 - y0) * 1.1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    expected = [int(cx - sx / 2), int(cy - sy / 2 - 0.3 * (y1 - y0)), int(cx + sx / 2), int(cy + sy / 2)]
    assert np.array_equal(pose6d.pose_to_box(pose, k, size), expected)
    # lying on its side, turned clockwise (rotation vector z = roll > 1 rad): the forehead is to the right
    side = np.concatenate([pose6d.euler_to_rotvec(0.0, 0.0, 1.4), [0.0, 0.0, 900.0]])
    assert side[2] == pytest.approx(1.4)
    pts = pose6d.pose_to_landmarks(side, k, "68")
    box = pose6d.pose_to_box(side, k, size)
    assert box[2] - pts[:, 0].max() > 0.25 * np.ptp(pts[:, 0]) and pts[:, 1].min() - box[1] < 0.1 * np.ptp(pts[:, 1])
    # clipped to the picture
    near_edge = np.concatenate([pose6d.euler_to_rotvec(0.0, 0.0, 0.0), [-330.0, 0.0, 900.0]])
    assert pose6d.pose_to_box(near_edge, k, size)[0] == 0


def test_label_pose_recovers_a_projected_template_pose():
    rng = np.random.default_rng(3)
    for i in range(20):
        size = (int(rng.integers(300, 800)), int(rng.integers(300, 800)))
        k = pose6d.intrinsics(*size)
        angles = np.radians([rng.uniform(-80, 80), rng.uniform(-50, 50), rng.uniform(-40, 40)])
        pose = np.concatenate([pose6d.euler_to_rotvec(*angles), rng.uniform(-80, 80, 2), [rng.uniform(500, 1500)]])
        kind = "68" if i % 2 else "98"
        label = pose6d.label_pose(pose6d.pose_to_landmarks(pose, k, kind), None, size)
        assert label.ok and label.reprojection_px < 1e-6
        assert np.degrees(np.abs(pose6d.rotvec_to_euler(label.rotvec) - angles)).max() < 0.1
        assert np.abs(label.translation - pose[3:]).max() < 0.1
        assert np.degrees(np.abs(label.pose_rad - pose6d.apparent_euler(pose))).max() < 0.1


def test_label_pose_refuses_too_few_points_and_ignores_masked_ones():
    size = (400, 400)
    k = pose6d.intrinsics(*size)
    pose = np.concatenate([pose6d.euler_to_rotvec(0.3, 0.1, -0.2), [0.0, 0.0, 800.0]])
    pts = pose6d.pose_to_landmarks(pose, k)
    mask = np.zeros(98, dtype=bool)
    mask[[60, 64, 68, 72, 54]] = True
    refused = pose6d.label_pose(pts, mask, size)
    assert not refused.ok and refused.points_used == 5 and np.isnan(refused.pose_rad).all()
    wrong = pts.copy()
    wrong[51:55] += 40.0                                    # the nose bridge is garbage but masked out
    mask = np.ones(98, dtype=bool)
    mask[51:55] = False
    label = pose6d.label_pose(wrong, mask, size)
    assert label.ok and label.points_used == len(pose6d.RIGID_98) - 4
    assert np.degrees(np.abs(label.pose_rad - pose6d.apparent_euler(pose))).max() < 0.1


def test_label_pose_of_a_neutral_orthographic_face_far_away_is_its_pose():
    # face3d's own neutral face, rendered by the 300W-LP formula (orthographic): in a picture so large that the
    # perspective camera is nearly affine, the labeller gets the generator's angles back
    rng = np.random.default_rng(4)
    for _ in range(10):
        params = sample_params(rng, shape=FaceShape(), expression=Expression(), clean=True)
        face = render_face(rng, image_size=300, params=params)
        big = 100 * 300
        label = pose6d.label_pose(face.points_98 + (big - 300) / 2, None, (big, big))
        assert label.ok and np.degrees(np.abs(label.pose_rad - face.pose_rad)).max() < 0.3


def test_labeller_mae_on_rendered_synthetic_faces():
    """Faces with random identity, expression and pose up to 95 degrees of yaw, rendered orthographically (the
    300W-LP model) while the labeller assumes img2pose's perspective camera with f = w + h. Measured on these 100
    faces: MAE yaw 3.64, pitch 3.48, roll 2.08 degrees (other seeds: 3.5-3.8, 3.5-5.2, 2.1-3.3); mostly the
    perspective mismatch (the face's own 3D shape in the same camera: 3.6, 2.7, 1.9) and then the template's
    fixed shape (far away, where the camera is nearly affine: 0.7, 2.9, 1.4)."""
    errors = []
    for i in range(100):
        rng = np.random.default_rng([0, i])
        face = render_face(rng, image_size=(int(rng.integers(300, 481)), int(rng.integers(300, 481))))
        h, w = face.image.shape[:2]
        label = pose6d.label_pose(face.points_98, None, (w, h))
        assert label.ok
        errors.append(np.degrees(np.abs(label.pose_rad - face.pose_rad)))
    mae = np.mean(errors, axis=0)
    assert mae[0] < 4.5 and mae[1] < 4.5 and mae[2] < 3.0, mae


@pytest.fixture(scope="module")
def wflw_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("pose6d") / "synth"
    generate_dataset(out, n=24, seed=3, progress=False)
    return out / "WFLW"


def test_label_pose_command_feeds_prepare_data(wflw_root, tmp_path):
    proc = run("label-pose", "--data", wflw_root)
    assert proc.returncode == 0, proc.stderr
    assert "labelled" in proc.stdout and "median" in proc.stdout
    sidecar = pose_labels_path(wflw_root)
    lines = sidecar.read_text().splitlines()
    records = read_wflw(wflw_root, "train") + read_wflw(wflw_root, "test")
    assert lines[0].startswith("# pfpld-pose-labels 1") and len(lines) == 1 + len(records)
    assert all(r.pose_rad is not None for r in records)
    first = lines[1].split()
    assert first[:2] == ["train", "1"] and np.allclose(np.radians([float(v) for v in first[2:5]]),
                                                       records[0].pose_rad, atol=1e-6)
    prepared = tmp_path / "prepared"
    proc = run("prepare-data", "--out", prepared, "--wflw", wflw_root)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (prepared / "index.jsonl").read_text().splitlines()[1:]]
    wflw_rows = [r for r in rows if r["source"] == "wflw"]
    assert len(wflw_rows) == len(records) and all(r["pose"] is not None and len(r["pose"]) == 3 for r in wflw_rows)
    by_name = {r.name: r.pose_rad for r in records}
    assert all(np.allclose(r["pose"], by_name[r["name"]], atol=1e-4) for r in wflw_rows)


def pose6d_records(root, split, labels):
    from pfpld.data.sources.wflw import iter_wflw
    return list(iter_wflw(root, split, pose_labels=labels))


def test_label_pose_out_file_and_bad_inputs(wflw_root, tmp_path):
    out = tmp_path / "labels.txt"
    summary = pose6d.label_wflw(wflw_root, out=out, progress=False)
    assert out.is_file() and summary.faces == summary.labelled + summary.too_few_points + summary.fit_failed
    assert summary.labelled == summary.faces and 0 < summary.median_reprojection_px < 5
    assert_user_error(run("label-pose", "--data", tmp_path / "nowhere"), "nowhere", "not found")
    # labels written elsewhere are read with --wflw-pose: the WFLW folder itself has no sidecar
    pose_labels_path(wflw_root).unlink(missing_ok=True)         # the first test's sidecar, if it ran
    prepared = tmp_path / "prepared"
    proc = run("prepare-data", "--out", prepared, "--wflw", wflw_root, "--wflw-pose", out)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (prepared / "index.jsonl").read_text().splitlines()[1:]]
    labelled = {r.name: r.pose_rad for r in read_wflw(wflw_root, "train") + read_wflw(wflw_root, "test")}
    assert all(v is None for v in labelled.values())                  # without the file: no pose
    with_file = {r.name: r.pose_rad for s in ("train", "test") for r in pose6d_records(wflw_root, s, out)}
    assert all(np.allclose(r["pose"], with_file[r["name"]], atol=1e-4) for r in rows if r["source"] == "wflw")
    assert_user_error(run("prepare-data", "--out", tmp_path / "q", "--wflw", wflw_root, "--wflw-pose",
                          tmp_path / "missing.txt"), "missing.txt", "not found")
    # a sidecar that lost a line is refused by prepare-data, naming both files
    broken = tmp_path / "WFLW"
    shutil.copytree(wflw_root, broken)
    pose6d.label_wflw(broken, progress=False)
    sidecar = pose_labels_path(broken)
    lines = sidecar.read_text().splitlines()
    sidecar.write_text("\n".join(lines[:-1]) + "\n")
    assert_user_error(run("prepare-data", "--out", tmp_path / "p", "--wflw", broken), sidecar.name,
                      "list_98pt_rect_attr_test.txt", "label-pose")
    sidecar.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DatasetError, match="header"):
        read_wflw(broken, "train")
    sidecar.write_text("\n".join(lines[:2] + ["train 2 1.0 nan 3.0 0.5"] + lines[3:]) + "\n")
    with pytest.raises(DatasetError, match=f"{sidecar.name}:3"):
        read_wflw(broken, "train")
    sidecar.write_text("\n".join(lines[:1] + [lines[2], lines[1]] + lines[3:]) + "\n")
    with pytest.raises(DatasetError, match="train face at line 1 is not listed in order"):
        read_wflw(broken, "train")
    # label-pose replaces a stale sidecar rather than tripping over it
    pose6d.label_wflw(broken, progress=False)
    assert sidecar.read_text().splitlines() == lines
