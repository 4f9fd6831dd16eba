"""WFLW (98 points, box, 6 attribute flags): reader into FaceRecord and writer of the release layout.

The reader feeds prepare.py (train and test splits); the writer is how the synthetic generator produces a
WFLW-shaped folder, so tests and the demo run the same parser as the real release. WFLW has no pose label:
`pfpld label-pose` (pfpld.pose6d) fits one per face and writes a sidecar file next to the annotations
(POSE_LABELS_FILE); when it is there the reader gives FaceRecord.pose_rad from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ...landmarks import NUM_POINTS
from ..record import DatasetError, FaceRecord
from .common import read_text_lines, require_dir, require_file, write_jpeg

ANNOTATION_FILE = "WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{split}.txt"
IMAGES_DIR = "WFLW_images"
SPLITS = ("train", "test")

NUM_COORDS = 2 * NUM_POINTS          # 196
NUM_TOKENS = NUM_COORDS + 4 + 6 + 1  # coordinates, box, attribute flags, image path = 207

# The pose sidecar: a header line, then one line per face of both splits in annotation order,
# "split annotation_line yaw_deg pitch_deg roll_deg reprojection_px" (300W-LP convention; nan = no label).
POSE_LABELS_FILE = "WFLW_annotations/list_98pt_rect_attr_train_test/pfpld_pose_labels.txt"
POSE_LABELS_HEADER = ("# pfpld-pose-labels 1: split annotation_line yaw_deg pitch_deg roll_deg reprojection_px "
                      "(300W-LP convention, fitted by pfpld label-pose; nan = not labelled)")


@dataclass
class WflwFace:
    rel_path: str                       # relative to WFLW_images, e.g. "12--Group/12_Group_x_1.jpg"
    image: np.ndarray | None            # BGR uint8; None = written with an earlier face of the same image
    points: np.ndarray                  # (98, 2) pixels
    box: tuple[int, int, int, int]      # x_min, y_min, x_max, y_max
    attributes: Sequence[int]           # 6 flags 0/1 in WFLW_ATTRIBUTES order


def annotation_path(root: Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"WFLW split {split!r}: expected one of {SPLITS}")
    return Path(root) / ANNOTATION_FILE.format(split=split)


# --- writer ----------------------------------------------------------------------------------------------

def format_line(face: WflwFace) -> str:
    points = np.asarray(face.points, dtype=np.float64)
    if points.shape != (NUM_POINTS, 2) or not np.all(np.isfinite(points)):
        raise ValueError(f"{face.rel_path}: points must be a finite ({NUM_POINTS}, 2) array, got {points.shape}")
    if len(face.box) != 4 or len(face.attributes) != 6:
        raise ValueError(f"{face.rel_path}: expected 4 box values and 6 attribute flags")
    if any(int(a) not in (0, 1) for a in face.attributes):
        raise ValueError(f"{face.rel_path}: attribute flags must be 0 or 1, got {list(face.attributes)}")
    if any(c.isspace() for c in face.rel_path):
        raise ValueError(f"{face.rel_path!r}: the annotation format is whitespace-separated, paths cannot hold spaces")
    tokens = [f"{v:.6f}" for v in points.reshape(-1)]
    tokens += [str(int(round(v))) for v in face.box]
    tokens += [str(int(a)) for a in face.attributes]
    tokens.append(face.rel_path)
    return " ".join(tokens)


def write_wflw(root: Path, split: str, faces: list[WflwFace]) -> None:
    """Write the faces' images (JPEG quality 95) under WFLW_images/ and the split's annotation file, one face a
    line as the real release. Several faces may share an image: give it once, then image=None."""
    root = Path(root)
    ann = annotation_path(root, split)
    lines = [format_line(face) for face in faces]   # validate everything before touching the disk
    for face in faces:
        if face.image is not None:
            write_jpeg(root / IMAGES_DIR / face.rel_path, face.image)
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# --- reader ----------------------------------------------------------------------------------------------

def parse_numbers(tokens: list[str], first: int, where: str, what: str) -> np.ndarray:
    """tokens -> float64 array; `first` is the 1-based position of tokens[0] on the line, for the message."""
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        bad = next(i for i, t in enumerate(tokens) if not _is_float(t))
        raise DatasetError(f"{where}: token {first + bad} {tokens[bad]!r} is not a number "
                           f"(expected {len(tokens)} numbers: {what})") from None
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise DatasetError(f"{where}: token {first + bad} is {tokens[bad]!r}: expected finite {what}")
    return values


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def parse_line(line: str, where: str) -> tuple[np.ndarray, tuple[float, float, float, float], np.ndarray, str]:
    """One annotation line -> (points (98,2), box, attributes (6,), image path relative to WFLW_images)."""
    tokens = line.split()
    if len(tokens) != NUM_TOKENS:
        raise DatasetError(f"{where}: {len(tokens)} tokens, expected {NUM_TOKENS} "
                           f"({NUM_COORDS} landmark coordinates, 4 box values, 6 attribute flags, image path)")
    points = parse_numbers(tokens[:NUM_COORDS], 1, where, "landmark coordinates").reshape(NUM_POINTS, 2)
    box = parse_numbers(tokens[NUM_COORDS:NUM_COORDS + 4], NUM_COORDS + 1, where, "box x_min y_min x_max y_max")
    flags = tokens[NUM_COORDS + 4:NUM_COORDS + 10]
    if any(f not in ("0", "1") for f in flags):
        raise DatasetError(f"{where}: attribute flags {' '.join(flags)}: expected 6 flags 0 or 1 "
                           f"(tokens {NUM_COORDS + 5}-{NUM_COORDS + 10})")
    attributes = np.array([int(f) for f in flags], dtype=np.int8)
    return points, (float(box[0]), float(box[1]), float(box[2]), float(box[3])), attributes, tokens[-1]


def iter_wflw(root: Path, split: str, pose_labels: Path | None = None) -> Iterator[FaceRecord]:
    """Faces of one split, in file order. Checks each referenced image exists (without decoding it). The pose
    comes from `pose_labels` (a `pfpld label-pose --out` file) when given, else from the pose sidecar when the
    folder has one, else it is None."""
    root = Path(root)
    ann = annotation_path(root, split)
    require_dir(root, "WFLW root")
    require_file(ann, "WFLW annotation file")
    images = require_dir(root / IMAGES_DIR, "WFLW images")
    lines = read_text_lines(ann)
    poses = split_pose_labels(root, split, [n for n, line in enumerate(lines, start=1) if line.strip()],
                              pose_labels)
    seen_images: set[Path] = set()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue                    # a trailing blank line is not a face
        where = f"{ann}:{lineno}"
        points, box, attributes, rel_path = parse_line(line, where)
        image_path = images / rel_path
        if image_path not in seen_images:
            require_file(image_path, "image", where)
            seen_images.add(image_path)
        yield FaceRecord(
            image_path=image_path, points=points, point_mask=np.ones(NUM_POINTS, dtype=bool), source="wflw",
            split=split, box=box, pose_rad=poses.get(lineno), attributes=attributes, name=f"{rel_path}#{lineno}",
        )


def read_wflw(root: Path, split: str) -> list[FaceRecord]:
    return list(iter_wflw(root, split))


# --- pose sidecar (written by pfpld label-pose) -------------------------------------------------------------

@dataclass
class PoseLine:
    split: str
    annotation_line: int                # 1-based line of the face in its split's annotation file
    pose_deg: np.ndarray | None         # (3,) yaw, pitch, roll degrees; None = the face could not be labelled
    reprojection_px: float


def pose_labels_path(root: Path) -> Path:
    return Path(root) / POSE_LABELS_FILE


def format_pose_labels(lines: list[PoseLine]) -> str:
    out = [POSE_LABELS_HEADER]
    for p in lines:
        angles = ["nan"] * 3 if p.pose_deg is None else [f"{float(v):.6f}" for v in p.pose_deg]
        err = "nan" if not np.isfinite(p.reprojection_px) else f"{p.reprojection_px:.4f}"
        out.append(" ".join([p.split, str(p.annotation_line), *angles, err]))
    return "\n".join(out) + "\n"


def read_pose_labels(path: Path) -> list[PoseLine]:
    """Every line of a pose sidecar, checked: the header, 6 tokens a line, a known split, numbers."""
    text = read_text_lines(path)
    if not text or text[0].strip() != POSE_LABELS_HEADER:
        raise DatasetError(f"{path}:1: expected the header line {POSE_LABELS_HEADER.split(':')[0]!r} "
                           f"(written by `pfpld label-pose`)")
    labels = []
    for lineno, line in enumerate(text[1:], start=2):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        tokens = line.split()
        if len(tokens) != 6 or tokens[0] not in SPLITS or not tokens[1].isdigit():
            raise DatasetError(f"{where}: expected 'split annotation_line yaw_deg pitch_deg roll_deg "
                               f"reprojection_px' with split in {SPLITS}, got {line.strip()[:80]!r}")
        try:
            values = np.array([float(t) for t in tokens[2:]], dtype=np.float64)
        except ValueError:
            raise DatasetError(f"{where}: yaw pitch roll and reprojection error must be numbers or nan, "
                               f"got {' '.join(tokens[2:])!r}") from None
        angles = values[:3]
        if np.isnan(angles).all():
            pose = None
        elif np.all(np.isfinite(angles)):
            pose = angles
        else:
            raise DatasetError(f"{where}: yaw pitch roll must be three finite numbers or three nan")
        labels.append(PoseLine(split=tokens[0], annotation_line=int(tokens[1]), pose_deg=pose,
                               reprojection_px=float(values[3])))
    return labels


def split_pose_labels(root: Path, split: str, face_lines: list[int],
                      path: Path | None = None) -> dict[int, np.ndarray]:
    """{annotation line: (3,) yaw, pitch, roll radians} of one split from the labels file `path` (which must
    exist), else from the sidecar, or {} without one. The file must list exactly the split's faces, in order: an
    annotation file edited after labelling is an error, not a silent shift of every pose onto the wrong face."""
    if path is not None:
        require_file(Path(path), "pose labels file (`pfpld label-pose --out`)")
    path = pose_labels_path(root) if path is None else Path(path)
    if not path.is_file():
        return {}
    mine = [p for p in read_pose_labels(path) if p.split == split]
    listed = [p.annotation_line for p in mine]
    if listed != list(face_lines):
        ann = annotation_path(root, split)
        if len(listed) != len(face_lines):
            detail = f"{len(listed)} {split} lines for {len(face_lines)} faces"
        else:
            first = next(a for a, b in zip(face_lines, listed) if a != b)
            detail = f"the {split} face at line {first} is not listed in order"
        raise DatasetError(f"{path}: does not match {ann} ({detail}): run `pfpld label-pose --data {root}` again "
                           f"(a labels file of another WFLW folder?)")
    return {p.annotation_line: np.radians(p.pose_deg) for p in mine if p.pose_deg is not None}
