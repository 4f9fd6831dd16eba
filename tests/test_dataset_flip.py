"""The training mirror goes through pfpld.landmarks' flip helpers (one pixel convention: x_px -> size-1-x_px) and
gives the same samples as the matrix-only path it replaced."""
import cv2
import numpy as np
import pytest

from pfpld.data.augment import AugmentConfig, photometric_reference, similarity_matrix
from pfpld.data.dataset import PreparedFaces
from pfpld.landmarks import MIRROR_98, flip_points, mirror_matrix
from pfpld.pose import pose_after_image_transform


def matrix_only_sample(ds: PreparedFaces, index: int) -> dict:
    """The per-sample augmentation as it was before the helpers, on the face's draw: the mirror folded into the
    similarity matrix, the points mapped through that whole matrix and reordered by MIRROR_98, the pose through
    pose_after_image_transform of the whole matrix."""
    size = ds.contract.input_size
    image = ds.load_crop(index)
    offset = (ds.crop_size_px - size) / 2.0
    points_px = ds.points[index] * size + offset
    mask, pose = ds.mask[index], ds.pose[index]
    draw = ds.draw(index)
    m = similarity_matrix(draw, ds.crop_size_px, size)
    if draw.flip:
        m = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0, 0, 1]])
    out = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    out = photometric_reference(out, draw)
    if ds.has_pose[index]:
        pose = pose_after_image_transform(pose, m[:, :2]).astype(np.float32)
    points = (points_px @ m[:, :2].T + m[:, 2]) / size
    if draw.flip:
        points, mask = points[MIRROR_98], mask[MIRROR_98]
    return {"image": ds.contract.to_tensor_layout(out), "points": points.astype(np.float32),
            "mask": mask, "pose": np.asarray(pose, dtype=np.float32), "flipped": draw.flip}


@pytest.mark.parametrize("seed", [0, 7])
def test_augmented_samples_equal_the_matrix_only_path(prepared_dir, seed):
    ds = PreparedFaces(prepared_dir, "train", AugmentConfig(), seed=seed)
    ds.set_epoch(3)
    flips = 0
    for index in range(min(len(ds), 24)):
        (image, labels), want = ds.reference_sample(index), matrix_only_sample(ds, index)
        flips += want["flipped"]
        assert np.array_equal(image, want["image"])       # the same single resampling
        assert np.array_equal(labels.mask, want["mask"])
        assert np.allclose(labels.points, want["points"], rtol=0, atol=1e-6)
        assert np.allclose(labels.pose, want["pose"], rtol=0, atol=1e-6)
    assert 0 < flips < min(len(ds), 24)          # both branches were exercised


def test_flip_points_follows_the_image_mirror():
    """A point on pixel x lands, after flip_points, where mirror_matrix sends pixel x."""
    size = 112
    rng = np.random.default_rng(4)
    points = rng.uniform(0, size - 1, (98, 2))
    moved = points @ mirror_matrix(size)[:, :2].T + mirror_matrix(size)[:, 2]
    assert np.allclose(flip_points(points / size, size) * size, moved[MIRROR_98])
    image = np.zeros((size, size), np.uint8)
    image[40, 10] = 255
    mirrored = cv2.warpAffine(image, mirror_matrix(size), (size, size), flags=cv2.INTER_LINEAR)
    assert np.array_equal(mirrored, image[:, ::-1])
