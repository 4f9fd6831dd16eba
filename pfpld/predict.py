"""`pfpld predict`: one image and a face box -> what the model predicts (landmarks in image pixels and/or the head
pose, drawn; or a recognition model's embedding of an aligned face, whose box is the whole image).

The crop is the contract's, exactly as at training and on the device; landmarks are mapped back through the
inverse of the same matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .contract import PreprocessContract
from .devices import model_device
from .errors import InputError
from .fileio import atomic_path, read_image  # noqa: F401  (read_image: re-exported, the CLI reads it here)
from .models.spec import ModelSpec
from .pose import project_axes


@dataclass
class Prediction:
    """What a model predicts for one face, read by output kind: landmarks and/or a pose (None when the model has
    no such output)."""
    points_px: np.ndarray | None    # (K, 2) image pixels
    points_crop: np.ndarray | None  # (K, 2) [0,1] of the crop
    pose_rad: np.ndarray | None     # (3,) yaw, pitch, roll
    box: tuple[float, float, float, float]
    embedding: np.ndarray | None = None     # (D,) as the network outputs it (not normalised)

    def to_dict(self) -> dict:
        # Full precision: deploy_cpp's end-to-end test compares its own numbers with these within 1e-3.
        out: dict = {"box": list(self.box)}
        if self.points_px is not None:
            out["landmarks_px"] = np.asarray(self.points_px, np.float64).tolist()
        if self.pose_rad is not None:
            out["pose_rad"] = dict(zip(("yaw", "pitch", "roll"), np.asarray(self.pose_rad, np.float64).tolist()))
            out["pose_deg"] = dict(zip(("yaw", "pitch", "roll"), np.degrees(self.pose_rad).tolist()))
        if self.embedding is not None:
            out["embedding"] = np.asarray(self.embedding, np.float64).tolist()
        return out


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not (values[2] > values[0] and values[3] > values[1]):
        raise InputError(f"--box {text!r}: expected X1,Y1,X2,Y2 in pixels with X1 < X2 and Y1 < Y2")
    return values  # type: ignore[return-value]


def check_box_on_image(box, image_shape) -> None:
    """A box that does not overlap the image would be predicted on a black crop: refuse it. A box partly
    outside is fine (the crop is padded with black, as on the device)."""
    height, width = image_shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise InputError(f"face box {x1:g},{y1:g},{x2:g},{y2:g} does not overlap the {width}x{height} image "
                         f"(expected X1 < {width}, Y1 < {height}, X2 > 0 and Y2 > 0, in pixels)")


@torch.no_grad()
def predict_face(model: torch.nn.Module, spec: ModelSpec, contract: PreprocessContract, image_bgr: np.ndarray,
                 box) -> Prediction:
    check_box_on_image(box, image_bgr.shape)
    crop, matrix = contract.crop_image(image_bgr, box)
    x = torch.from_numpy(contract.to_tensor_layout(crop))[None].to(model_device(model))
    outputs = [o.float().cpu().numpy() for o in model(x)]
    landmarks, pose = spec.decode(outputs)
    embedding = next((v[0] for o, v in zip(spec.outputs, outputs) if o.kind == "embedding"), None)
    points_crop = landmarks[0] if landmarks is not None else None
    return Prediction(points_px=contract.points_from_crop(points_crop, matrix) if points_crop is not None else None,
                      points_crop=points_crop,
                      pose_rad=pose[0].astype(np.float64) if pose is not None else None,
                      box=tuple(float(v) for v in box), embedding=embedding)


def draw_prediction(image_bgr: np.ndarray, pred: Prediction, gt_points: np.ndarray | None = None) -> np.ndarray:
    """What the model predicts: landmarks (green; ground truth in red when given), the box, and the pose axes
    (x red, y green, z blue) from the box centre with the angles written above the box."""
    out = image_bgr.copy()
    x1, y1, x2, y2 = pred.box
    size = max(x2 - x1, y2 - y1)
    radius = max(1, int(round(size / 150)))
    if pred.points_px is not None and len(pred.points_px) <= 10:
        radius = max(2, int(round(size / 60)))          # a few points: draw them large enough to see
    cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), (255, 200, 0), max(1, radius // 2))
    if gt_points is not None:
        for x, y in gt_points:
            cv2.circle(out, (int(round(x)), int(round(y))), radius, (0, 0, 255), -1, cv2.LINE_AA)
    if pred.points_px is not None:
        for x, y in pred.points_px:
            cv2.circle(out, (int(round(x)), int(round(y))), radius, (0, 255, 0), -1, cv2.LINE_AA)
    if pred.pose_rad is not None:
        origin = ((x1 + x2) / 2.0, (y1 + y2) / 2.0)
        axes = project_axes(pred.pose_rad, length=0.5 * size)
        for (dx, dy), colour in zip(axes, [(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
            cv2.arrowedLine(out, tuple(int(v) for v in origin), (int(origin[0] + dx), int(origin[1] + dy)), colour,
                            max(1, radius), cv2.LINE_AA, tipLength=0.15)
        yaw, pitch, roll = np.degrees(pred.pose_rad)
        cv2.putText(out, f"yaw {yaw:+.1f} pitch {pitch:+.1f} roll {roll:+.1f}", (int(x1), max(12, int(y1) - 6)),
                    cv2.FONT_HERSHEY_SIMPLEX, max(0.35, size / 400), (255, 255, 255), 1, cv2.LINE_AA)
    return out


def write_image_atomic(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise InputError(f"{path}: could not write the image (unsupported extension?)")
