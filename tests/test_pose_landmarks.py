import numpy as np
import pytest

from pfpld.landmarks import (MAP_68_TO_98, MIRROR_98, SUPERVISED_300WLP_98, eye_aspect_ratio, flip_points,
                             flip_pose, points_68_to_98, points_106_to_98)
from pfpld.pose import matrix_to_angles, pose_after_image_transform, rotation_matrix


def test_mirror98_is_an_involution_and_pairs_left_with_right():
    assert sorted(MIRROR_98.tolist()) == list(range(98))
    assert (MIRROR_98[MIRROR_98] == np.arange(98)).all()
    assert MIRROR_98[0] == 32 and MIRROR_98[60] == 72 and MIRROR_98[96] == 97 and MIRROR_98[54] == 54


def test_flip_twice_is_identity_and_keeps_point_meaning():
    pts = np.random.default_rng(0).random((98, 2))
    assert np.allclose(flip_points(flip_points(pts, 112), 112), pts)
    flipped = flip_points(pts, 112)
    assert flipped[60, 0] == pytest.approx(111 / 112 - pts[72, 0])   # new outer corner 60 is the old 72, mirrored


def test_flip_negates_yaw_and_roll():
    """flip_pose is what the dataset applies to the label when it mirrors a crop: yaw and roll change sign,
    pitch stays, and the mirrored projection of a head is the mirrored head projected with that pose."""
    assert np.allclose(flip_pose(np.array([0.3, 0.2, -0.1])), [-0.3, 0.2, 0.1])
    rng = np.random.default_rng(5)
    cloud = rng.normal(size=(3, 40))
    cloud_mirror = cloud * np.array([[-1], [1], [1]])
    for _ in range(50):
        pose = rng.uniform([-1.2, -1, -1], [1.2, 1, 1])
        image = (rotation_matrix(*pose) @ cloud)[:2]
        mirrored = image * np.array([[-1], [1]])
        assert np.allclose(mirrored, (rotation_matrix(*flip_pose(pose)) @ cloud_mirror)[:2], atol=1e-9)


def test_68_to_98_placement_and_43_point_mask():
    p68 = np.arange(136, dtype=np.float32).reshape(68, 2)
    p98, mask = points_68_to_98(p68)
    assert mask.sum() == 43 and set(np.flatnonzero(mask)) == set(SUPERVISED_300WLP_98.tolist())
    assert (p98[MAP_68_TO_98] == p68).all()
    assert (p98[60] == p68[36]).all() and (p98[72] == p68[45]).all() and (p98[76] == p68[48]).all()


def test_lapa_106_to_98_drops_the_eight_extra_points():
    p106 = np.stack([np.arange(106), np.zeros(106)], 1)
    p98 = points_106_to_98(p106)
    assert p98.shape == (98, 2)
    assert not set(p98[:, 0].astype(int)) & {55, 56, 57, 63, 64, 65, 74, 83}
    assert p98[55, 0] == 58 and p98[97, 0] == 105


def test_eye_aspect_ratio_by_hand():
    eye = np.array([[0, 0], [1, 1], [2, 1], [3, 1], [4, 0], [3, -1], [2, -1], [1, -1]], float)
    assert eye_aspect_ratio(eye) == pytest.approx(2 * 3 / (3 * 4))


def test_euler_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(200):
        p = rng.uniform([-1.5, -1.5, -3], [1.5, 1.5, 3])
        assert np.allclose(rotation_matrix(*matrix_to_angles(rotation_matrix(*p))), rotation_matrix(*p))


@pytest.mark.parametrize("mirror", [False, True])
def test_pose_after_image_transform_matches_reprojection(mirror):
    """Rotating (and mirroring) the image equals projecting the (mirrored) template with the new pose."""
    rng = np.random.default_rng(2)
    cloud = rng.normal(size=(3, 40))
    cloud_mirror = cloud * np.array([[-1], [1], [1]])
    for _ in range(50):
        pose = rng.uniform([-1.2, -1, -1], [1.2, 1, 1])
        th = rng.uniform(-0.6, 0.6)
        a = 1.1 * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        if mirror:
            a = a @ np.diag([-1.0, 1.0])
        img = (rotation_matrix(*pose) @ cloud)[:2] * [[1], [-1]]     # image frame: y down
        new_pose = pose_after_image_transform(pose, a)
        ref = (rotation_matrix(*new_pose) @ (cloud_mirror if mirror else cloud))[:2] * [[1.1], [-1.1]]
        assert np.allclose(a @ img, ref, atol=1e-9)
