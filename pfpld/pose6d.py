"""img2pose's 6DoF head pose, and a solvePnP pose labeller that gives WFLW-style sets a pose label.

img2pose (Albiero et al.) describes a face by a 6DoF pose in a pinhole camera: a rotation vector and a
translation (FACTS section 9). This module holds its camera (focal length w + h), its conversion between a pose
seen in a face box and the same pose in the whole image, the projection of the project's own 3D face template
(pfpld.data.face3d) to landmarks and to img2pose's face box, and the bridge to the 300W-LP Euler angles that
PFPLD's pose branch learns (pfpld.pose, FACTS section 3). label_pose() fits the template to 98 or 68 labelled
points with cv2.solvePnP; label_wflw() runs it over a WFLW release folder and writes the sidecar file that the
WFLW reader (pfpld.data.sources.wflw) turns into FaceRecord.pose_rad, so prepare-data carries a pose for WFLW.

Conventions
- Camera frame (OpenCV's): x to the image right, y down, z forward (away from the camera). A pose6 is
  (rx, ry, rz, tx, ty, tz): the rotation vector (radians, cv2.Rodrigues) and the translation of the template's
  origin (the head's rotation centre) in millimetres; a template point X lands at K (R X + t).
- The 300W-LP frame (face3d, pfpld.pose) is y up and z toward the camera. The two differ by F = diag(1, -1, -1),
  a half turn about x. The template is given to the camera in its frame (X_cam = F X_300w), and a camera
  rotation is R_cam = F R_300w F. This is exactly img2pose's own conversion (its convert_to_aflw builds the
  rotation from scipy's extrinsic "xyz" Euler angles (pitch, -yaw, -roll) and transposes it; written out, that
  is F Rx(pitch) Ry(yaw) Rz(roll) F with FACTS section 3's matrices), so angles round-trip exactly.
- Euler angles are (yaw, pitch, roll) in radians, in that order, as everywhere in pfpld.
- A box is (x_min, y_min, x_max, y_max) in image pixels; an image size is (width, height).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .data import face3d
from .errors import DatasetError
from .landmarks import MAP_68_TO_98, NUM_POINTS
from .pose import matrix_to_angles, rotation_matrix

# The 300W-LP frame (y up, z toward the camera) -> the camera frame (y down, z forward): a half turn about x.
F_300W_TO_CAMERA = np.diag([1.0, -1.0, -1.0])
F_300W_TO_CAMERA.setflags(write=False)

# face3d's unit is half the head width (temples at x = +-1); its outer eye corners (60, 72) are 1.28 units
# apart. Adult outer-canthal width is about 90 mm, so one unit is taken as 70 mm: translations come out in
# millimetres (a face 200 px wide in a 400 x 400 picture, f = 800 px, sits about 0.6 m away).
MM_PER_UNIT = 70.0

# The points the labeller fits, 98-indices: the four eye corners (60, 64, 68, 72) and the nose (bridge 51-54,
# lower contour 55-59), which neither expression nor gaze moves, and the brows' upper arcs (33-37, 42-46, also
# in the 68-point scheme). Left out: the jaw contour 0-32 (its labels slide along the outline as the head turns,
# FACTS section 2, so no fixed 3D point matches them), the eyelids and pupils (blinks, gaze), and the mouth
# (it opens and smiles). Every one is a distinct 3D point of the template (a test checks it).
RIGID_98 = np.array([33, 34, 35, 36, 37, 42, 43, 44, 45, 46, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 64, 68, 72],
                    dtype=np.int64)
RIGID_98.setflags(write=False)
MIN_POINTS = 6                      # fewer rigid points than this and a label is refused

# img2pose's face box around the projected template (utils/image_operations.py expand_bbox_rectangle, called with
# bbox_x_factor = bbox_y_factor = 1.1 and expand_forehead = 0.3 by transform_pose_global_project_bbox).
BOX_FACTOR = 1.1
FOREHEAD = 0.3


# --- camera -------------------------------------------------------------------------------------------------

def intrinsics(width: float, height: float) -> np.ndarray:
    """img2pose's camera for a width x height picture: focal length w + h, principal point at the centre.
    (img2pose writes the centre as w // 2, h // 2; here it is the exact w / 2, h / 2.)"""
    f = float(width) + float(height)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def _image_camera_at_box(image_size, bbox) -> tuple[np.ndarray, np.ndarray, float, float]:
    """K_img, K_img with its principal point moved to the box centre (img2pose's bbox intrinsics), the image's
    focal length and the box size w_box + h_box."""
    width, height = image_size
    x0, y0, x1, y1 = (float(v) for v in bbox)
    box_size = (x1 - x0) + (y1 - y0)
    if not box_size > 0:
        raise ValueError(f"box {tuple(bbox)}: expected x_max > x_min or y_max > y_min")
    k_img = intrinsics(width, height)
    k_box = k_img.copy()
    k_box[0, 2], k_box[1, 2] = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return k_img, k_box, float(k_img[0, 0]), box_size


# --- rotations ----------------------------------------------------------------------------------------------

def rotvec_to_matrix(rotvec) -> np.ndarray:
    r, _ = cv2.Rodrigues(np.asarray(rotvec, dtype=np.float64).reshape(3, 1))
    return r


def matrix_to_rotvec(r: np.ndarray) -> np.ndarray:
    v, _ = cv2.Rodrigues(np.asarray(r, dtype=np.float64))
    return v.reshape(3)


def nearest_rotation(m: np.ndarray) -> np.ndarray:
    """The rotation closest to m (Frobenius norm): the orthogonal factor of its polar decomposition, through the
    SVD. This is what scipy's Rotation.from_matrix, which img2pose calls, does with a matrix that is not one."""
    u, _, vt = np.linalg.svd(np.asarray(m, dtype=np.float64))
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def euler_to_rotvec(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """300W-LP angles (radians) -> camera-frame rotation vector: R_cam = F R_300w(yaw, pitch, roll) F."""
    r300 = rotation_matrix(float(yaw), float(pitch), float(roll))
    return matrix_to_rotvec(F_300W_TO_CAMERA @ r300 @ F_300W_TO_CAMERA)


def camera_matrix_to_euler(r_cam: np.ndarray) -> np.ndarray:
    """Camera-frame rotation matrix -> (3,) yaw, pitch, roll radians: pfpld.pose.matrix_to_angles of
    F R_cam F, with yaw read as atan2(sin, cos) (row 0 of R is cos(yaw) (cos roll, sin roll), -sin yaw), which
    keeps full precision near 90 degrees where arcsin loses half the digits. At |yaw| = 90 degrees (gimbal
    lock) only pitch - sin(yaw) roll is defined; there roll is set to 0 and pitch carries it, instead of the
    arbitrary split matrix_to_angles would read from rounding noise."""
    r300 = F_300W_TO_CAMERA @ np.asarray(r_cam, dtype=np.float64) @ F_300W_TO_CAMERA
    angles = np.asarray(matrix_to_angles(r300), dtype=np.float64)
    cos_yaw = math.hypot(r300[0, 0], r300[0, 1])
    angles[0] = math.atan2(-r300[0, 2], cos_yaw)
    if cos_yaw < 1e-9:
        angles[1], angles[2] = math.atan2(-r300[2, 1], r300[1, 1]), 0.0
    return angles


def rotvec_to_euler(rotvec) -> np.ndarray:
    """Camera-frame rotation vector -> (3,) yaw, pitch, roll in radians (300W-LP convention, yaw in
    [-pi/2, pi/2], pitch and roll in [-pi, pi])."""
    return camera_matrix_to_euler(rotvec_to_matrix(rotvec))


def rotation_toward(direction) -> np.ndarray:
    """The smallest rotation that turns the optical axis (0, 0, 1) onto `direction`: the turn of a camera that
    looks straight at a point instead of straight ahead."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    axis = np.cross([0.0, 0.0, 1.0], d)
    s, c = np.linalg.norm(axis), d[2]
    if s < 1e-15:
        return np.eye(3)
    return rotvec_to_matrix(axis / s * math.atan2(s, c))


def apparent_euler(pose6) -> np.ndarray:
    """(3,) yaw, pitch, roll of the face as its crop shows it: the rotation relative to a camera turned to look
    at the head's centre, R_ray^T R. A face away from the image centre is seen along a slanted ray; 300W-LP's
    weak-perspective labels and a crop-based network see the pose relative to that ray, not to the optical
    axis. For a face at the principal point it equals rotvec_to_euler(pose6[:3])."""
    pose6 = np.asarray(pose6, dtype=np.float64).reshape(6)
    return camera_matrix_to_euler(rotation_toward(pose6[3:]).T @ rotvec_to_matrix(pose6[:3]))


# --- box pose <-> whole-image pose (img2pose, utils/pose_operations.py) ----------------------------------------

def pose_bbox_to_full_image(pose6, image_size, bbox) -> np.ndarray:
    """A pose predicted relative to a face box -> the same face's pose in the whole image's camera, as img2pose
    does: with K_img = intrinsics(w, h), K_box = K_img with its principal point at the box centre and f its
    focal length, t_z *= f / (w_box + h_box), t = K_img^-1 K_box t, R = nearest_rotation(K_img^-1 K_box R).

    What stays the same: the box pose, its t_z multiplied by f / (w_box + h_box), projected with K_box, puts the
    head's centre on the same pixel as the result does with K_img (exactly), and the rest of the head nearly
    so: K_img^-1 K_box is a shear, not a rotation, so its nearest rotation moves a point at depth d from the
    head's centre by about |box centre - image centre| d / (2 t_z) pixels (img2pose's approximation; exact for
    a box centred on the principal point). A box pose's t_z is thus in units of the box."""
    pose6 = np.asarray(pose6, dtype=np.float64).reshape(6)
    k_img, k_box, f, box_size = _image_camera_at_box(image_size, bbox)
    shear = np.linalg.solve(k_img, k_box)
    t = pose6[3:].copy()
    t[2] *= f / box_size
    r = nearest_rotation(shear @ rotvec_to_matrix(pose6[:3]))
    return np.concatenate([matrix_to_rotvec(r), shear @ t])


def pose_full_image_to_bbox(pose6, image_size, bbox) -> np.ndarray:
    """Inverse of pose_bbox_to_full_image: t = K_box^-1 K_img t, t_z /= f / (w_box + h_box),
    R = nearest_rotation(K_box^-1 K_img R). Exact inverse: the polar factor of (S^-1 polar(S R)) is R again."""
    pose6 = np.asarray(pose6, dtype=np.float64).reshape(6)
    k_img, k_box, f, box_size = _image_camera_at_box(image_size, bbox)
    unshear = np.linalg.solve(k_box, k_img)
    t = unshear @ pose6[3:]
    t[2] /= f / box_size
    r = nearest_rotation(unshear @ rotvec_to_matrix(pose6[:3]))
    return np.concatenate([matrix_to_rotvec(r), t])


# --- the template and its projection --------------------------------------------------------------------------

_TEMPLATE_98_CAM = (face3d.TEMPLATE_98 @ F_300W_TO_CAMERA.T) * MM_PER_UNIT
_TEMPLATE_98_CAM.setflags(write=False)


def template_points(kind: str = "98") -> np.ndarray:
    """The project's 3D face template in the camera's model frame (x right, y down, z away from the viewer of a
    frontal face), millimetres, origin at the head's rotation centre: face3d's neutral identity and expression,
    98 WFLW points or the 68 iBUG ones (through MAP_68_TO_98). Read-only."""
    if kind == "98":
        return _TEMPLATE_98_CAM
    if kind == "68":
        pts = _TEMPLATE_98_CAM[MAP_68_TO_98].copy()
        pts.setflags(write=False)
        return pts
    raise ValueError(f"template kind {kind!r}: expected '98' or '68'")


def project_points(pose6, k: np.ndarray, points3d: np.ndarray) -> np.ndarray:
    """(N, 3) model points -> (N, 2) pixels: K (R X + t), divided by its third row."""
    pose6 = np.asarray(pose6, dtype=np.float64).reshape(6)
    cam = np.asarray(points3d, dtype=np.float64) @ rotvec_to_matrix(pose6[:3]).T + pose6[3:]
    pix = cam @ np.asarray(k, dtype=np.float64).T
    return pix[:, :2] / pix[:, 2:3]


def pose_to_landmarks(pose6, k: np.ndarray, kind: str = "98") -> np.ndarray:
    """The template's landmarks (98 or 68) in the picture for this pose: (N, 2) pixels."""
    return project_points(pose6, k, template_points(kind))


def pose_to_box(pose6, k: np.ndarray, image_size=None, *, factor: float = BOX_FACTOR,
                forehead: float = FOREHEAD) -> np.ndarray:
    """img2pose's face box for a whole-image pose: its rule (expand_bbox_rectangle) applied to the projected
    68-point template. Around the centre of the points' extent, a box of int(extent x 1.1) on each axis; then
    the forehead side grows by 0.3 x the points' extent (their height, or their width when the head lies on its
    side), the side chosen by the rotation vector's z component rz (radians): |rz| > 2.5 (upside down) the
    bottom, rz > 1 the right, rz < -1 the left, otherwise the top. Corners are truncated to integers; with
    image_size (w, h) a corner outside the picture is clipped to it, as img2pose does. Returns (4,) x_min,
    y_min, x_max, y_max."""
    pose6 = np.asarray(pose6, dtype=np.float64).reshape(6)
    pts = pose_to_landmarks(pose6, k, "68")
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    extent, centre = hi - lo, (lo + hi) / 2.0
    size = np.floor(extent * factor)
    box = np.array([centre[0] - size[0] / 2, centre[1] - size[1] / 2, centre[0] + size[0] / 2,
                    centre[1] + size[1] / 2])
    rz = pose6[2]
    if abs(rz) > 2.5:
        box[3] += forehead * extent[1]
    elif rz > 1:
        box[2] += forehead * extent[0]
    elif rz < -1:
        box[0] -= forehead * extent[0]
    else:
        box[1] -= forehead * extent[1]
    box = np.trunc(box)
    if image_size is not None:
        width, height = image_size
        box = np.array([max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height))])
    return box


# --- the labeller ---------------------------------------------------------------------------------------------

@dataclass
class PoseLabel:
    """One face's fitted pose. When ok is False the numbers are NaN and `reason` says why."""
    rotvec: np.ndarray                  # (3,) camera-frame rotation vector, radians
    translation: np.ndarray             # (3,) mm, camera frame
    pose_rad: np.ndarray                # (3,) yaw, pitch, roll radians as the face's crop shows it (apparent_euler)
    reprojection_px: float              # mean distance between the labelled points and the fitted template's
    points_used: int
    ok: bool
    reason: str = ""

    @property
    def pose6(self) -> np.ndarray:
        return np.concatenate([self.rotvec, self.translation])

    @property
    def yaw_rad(self) -> float:
        return float(self.pose_rad[0])

    @property
    def pitch_rad(self) -> float:
        return float(self.pose_rad[1])

    @property
    def roll_rad(self) -> float:
        return float(self.pose_rad[2])


def _refused(points_used: int, reason: str) -> PoseLabel:
    nan3 = np.full(3, np.nan)
    return PoseLabel(rotvec=nan3, translation=nan3.copy(), pose_rad=nan3.copy(), reprojection_px=float("nan"),
                     points_used=points_used, ok=False, reason=reason)


def points_to_98(points2d, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """98 or 68 labelled points (and their mask, True = labelled) -> (98, 2) points and (98,) mask in WFLW
    order; 68 points go to their 98-indices (MAP_68_TO_98), the other 30 are missing."""
    pts = np.asarray(points2d, dtype=np.float64)
    n = pts.shape[0] if pts.ndim == 2 else -1
    if pts.ndim != 2 or pts.shape[1] != 2 or n not in (NUM_POINTS, 68):
        raise ValueError(f"points of shape {pts.shape}: expected (98, 2) or (68, 2) pixels")
    m = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool).reshape(n)
    m = m & np.all(np.isfinite(pts), axis=1)
    if n == NUM_POINTS:
        return pts, m
    out, out_mask = np.full((NUM_POINTS, 2), np.nan), np.zeros(NUM_POINTS, dtype=bool)
    out[MAP_68_TO_98], out_mask[MAP_68_TO_98] = pts, m
    return out, out_mask


# SQPnP finds the global minimum in most cases but gives up on nearly affine views (a small face far away);
# EPnP and OpenCV's iterative DLT + LM cover those. Each result is refined by Levenberg-Marquardt and the
# smallest reprojection error wins.
_PNP_SOLVERS = (cv2.SOLVEPNP_SQPNP, cv2.SOLVEPNP_EPNP, cv2.SOLVEPNP_ITERATIVE)


def _solve_pnp(obj: np.ndarray, img: np.ndarray, k: np.ndarray, flag: int) -> np.ndarray | None:
    """One solver's refined pose6, or None when it fails or puts the head behind the camera."""
    try:
        ok, rvec, tvec = cv2.solvePnP(obj, img, k, None, flags=flag)
        if not ok:
            return None
        rvec, tvec = cv2.solvePnPRefineLM(obj, img, k, None, rvec, tvec)
    except cv2.error:
        return None
    pose6 = np.concatenate([rvec.reshape(3), tvec.reshape(3)])
    return pose6 if np.all(np.isfinite(pose6)) and pose6[5] > 0 else None


def label_pose(points2d, mask=None, image_size=None) -> PoseLabel:
    """Fit the template's rigid points (RIGID_98) to a face's labelled pixels with cv2.solvePnP in img2pose's
    camera K = intrinsics(w, h) (SQPnP, EPnP and the iterative solver, each refined by Levenberg-Marquardt;
    the smallest reprojection error wins). points2d is (98, 2)
    or (68, 2) in pixels of the whole picture (never normalised coordinates); mask (N,) marks the labelled
    points (None: all); image_size is (width, height). A face with fewer than MIN_POINTS rigid points, or whose
    fit is behind the camera or not finite, is refused (ok False)."""
    if image_size is None:
        raise ValueError("label_pose needs the picture's (width, height): the camera depends on it")
    pts98, m98 = points_to_98(points2d, mask)
    use = RIGID_98[m98[RIGID_98]]
    if len(use) < MIN_POINTS:
        return _refused(len(use), f"{len(use)} rigid points labelled, {MIN_POINTS} needed")
    k = intrinsics(*image_size)
    obj = np.ascontiguousarray(_TEMPLATE_98_CAM[use])
    img = np.ascontiguousarray(pts98[use])
    best = None
    for flag in _PNP_SOLVERS:
        pose6 = _solve_pnp(obj, img, k, flag)
        if pose6 is None:
            continue
        err = float(np.mean(np.linalg.norm(project_points(pose6, k, obj) - img, axis=1)))
        if best is None or err < best[1]:
            best = (pose6, err)
    if best is None:
        return _refused(len(use), "solvePnP found no pose in front of the camera")
    pose6, err = best
    return PoseLabel(rotvec=pose6[:3], translation=pose6[3:], pose_rad=apparent_euler(pose6),
                     reprojection_px=err, points_used=len(use), ok=True)


# --- a WFLW folder -> its pose sidecar --------------------------------------------------------------------------

@dataclass
class LabelSummary:
    out: Path
    faces: int
    labelled: int
    too_few_points: int
    fit_failed: int
    reprojection_px: list[float] = field(default_factory=list)   # of the labelled faces
    seconds: float = 0.0

    @property
    def median_reprojection_px(self) -> float:
        return float(np.median(self.reprojection_px)) if self.reprojection_px else float("nan")

    def table(self) -> str:
        return "\n".join([
            f"faces              {self.faces}",
            f"labelled           {self.labelled}",
            f"refused            {self.too_few_points} with too few rigid points, "
            f"{self.fit_failed} where the fit failed",
            f"reprojection (px)  median {self.median_reprojection_px:.2f} over the labelled faces",
            f"{self.seconds:.1f} s -> {self.out}",
        ])


def _image_size(path: Path, where: str, cache: dict) -> tuple[int, int]:
    if path not in cache:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
        if image is None:
            raise DatasetError(f"{where}: image {path} not found or not readable")
        cache[path] = (int(image.shape[1]), int(image.shape[0]))
    return cache[path]


def label_wflw(root: Path, out: Path | None = None, progress: bool = True) -> LabelSummary:
    """Fit a pose to every face of a WFLW release folder (train then test, annotation order) and write the pose
    sidecar atomically: to `out`, or where the WFLW reader looks for it (wflw.POSE_LABELS_FILE). Reads the
    annotation files directly, not through the reader, so a stale sidecar never stops its own replacement."""
    import time

    from .data.sources.common import read_text_lines, require_dir, require_file
    from .data.sources.wflw import (IMAGES_DIR, SPLITS, PoseLine, annotation_path, format_pose_labels,
                                    parse_line, pose_labels_path)
    from .fileio import write_text_atomic
    from .progress import progress as progress_bar

    start = time.monotonic()
    root = Path(root)
    require_dir(root, "WFLW root")
    images = require_dir(root / IMAGES_DIR, "WFLW images")
    faces = []
    for split in SPLITS:
        ann = require_file(annotation_path(root, split), "WFLW annotation file")
        faces += [(split, ann, n, line) for n, line in enumerate(read_text_lines(ann), start=1) if line.strip()]
    out = pose_labels_path(root) if out is None else Path(out)
    summary = LabelSummary(out=out, faces=len(faces), labelled=0, too_few_points=0, fit_failed=0)
    sizes: dict[Path, tuple[int, int]] = {}
    lines = []
    for split, ann, lineno, line in progress_bar(faces, desc="label-pose", unit="face", enabled=progress):
        where = f"{ann}:{lineno}"
        points, _, _, rel_path = parse_line(line, where)
        label = label_pose(points, None, _image_size(images / rel_path, where, sizes))
        if label.ok:
            summary.labelled += 1
            summary.reprojection_px.append(label.reprojection_px)
        elif label.points_used < MIN_POINTS:
            summary.too_few_points += 1
        else:
            summary.fit_failed += 1
        lines.append(PoseLine(split=split, annotation_line=lineno,
                              pose_deg=np.degrees(label.pose_rad) if label.ok else None,
                              reprojection_px=label.reprojection_px))
    write_text_atomic(out, format_pose_labels(lines))
    summary.seconds = time.monotonic() - start
    return summary
