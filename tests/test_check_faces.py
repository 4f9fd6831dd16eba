"""synthetic_check_faces: the one way the checks render labelled synthetic face crops."""
import numpy as np

from pfpld.contract import PreprocessContract, landmark_box
from pfpld.data.check_faces import synthetic_check_faces
from pfpld.data.synthetic import render_face


def test_shapes_types_and_inputs_follow_the_contract():
    contract = PreprocessContract(input_size=96, color_order="BGR", mean=(10.0, 20.0, 30.0), scale=0.5)
    faces = synthetic_check_faces(contract, 3, seed=1)
    assert len(faces) == 3
    assert faces.crops_bgr.shape == (3, 96, 96, 3) and faces.crops_bgr.dtype == np.uint8
    assert faces.inputs.shape == (3, 3, 96, 96) and faces.inputs.dtype == np.float32
    assert faces.points.shape == (3, 98, 2) and faces.points.dtype == np.float32
    assert faces.pose_rad.shape == (3, 3)
    assert np.array_equal(faces.inputs[2], contract.to_tensor_layout(faces.crops_bgr[2]))
    assert "3 synthetic faces" in faces.source and "seed 1" in faces.source


def test_points_land_where_the_crop_rule_puts_the_face():
    """The crop is the contract's square around the landmark extent: the points span 1/expand of the crop
    along the box's longer side, centred; and they are the rendered face's own labels, cut by that crop."""
    contract = PreprocessContract()
    faces = synthetic_check_faces(contract, 4, seed=2)
    rng = np.random.default_rng(2)
    margin = (1 - 1 / contract.crop.expand) / 2
    for crop, points in zip(faces.crops_bgr, faces.points):
        lo, hi = points.min(0), points.max(0)
        longer = int(np.argmax(hi - lo))
        assert abs(lo[longer] - margin) < 1e-5 and abs(hi[longer] - (1 - margin)) < 1e-5
        assert np.allclose((lo + hi) / 2, 0.5, atol=1e-5)
        face = render_face(rng, image_size=2 * contract.input_size + 64)
        again, matrix = contract.crop_image(face.image, landmark_box(face.points_98))
        assert np.array_equal(crop, again)
        assert np.allclose(points, contract.points_to_crop(face.points_98, matrix))


def test_same_seed_same_faces_other_seed_or_clean_other_faces():
    contract = PreprocessContract()
    a = synthetic_check_faces(contract, 2, seed=5, image_size=200)
    b = synthetic_check_faces(contract, 2, seed=5, image_size=200)
    assert np.array_equal(a.crops_bgr, b.crops_bgr) and np.array_equal(a.points, b.points)
    assert np.array_equal(a.pose_rad, b.pose_rad) and a.source == b.source
    assert not np.array_equal(a.crops_bgr, synthetic_check_faces(contract, 2, seed=6, image_size=200).crops_bgr)
    clean = synthetic_check_faces(contract, 2, seed=5, image_size=200, clean=True)
    assert "clean" in clean.source and not np.array_equal(a.crops_bgr, clean.crops_bgr)
    empty = synthetic_check_faces(contract, 0, seed=5)
    assert empty.inputs.shape == (0, 3, 112, 112) and empty.points.shape == (0, 98, 2)
