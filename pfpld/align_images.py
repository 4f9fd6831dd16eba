"""`pfpld align`: a folder of raw face photos (LFW's 250x250 pictures, CASIA-WebFace, a user's own) -> the same
folder of faces aligned to ArcFace's five-point template (pfpld.align; SphereFace's at 112x96), the only frame a
recognition model sees: `prepare-data --imagefolder`, `eval --pairs` and `calib` read the result as they read any
aligned set.

Each face's five points come from a points file (one image a line, the layout of MTCNN's output and of the public
five-point files of LFW and CASIA-WebFace that SphereFace's preprocessing uses) or from a landmark checkpoint (the
98-point PFPLD or the 5-point landmark5) run on a face box. Images keep their relative path, so a folder per
identity stays one; the output folder is written whole to a temporary sibling and swapped in (pfpld.fileio).
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .align import TEMPLATE_SIZE, align_face, five_points_of, rows_cols, template_name
from .data.boxes import read_boxes_file
from .data.sources.common import write_image
from .data.sources.imagefolder import IMAGE_EXTENSIONS, images_under, is_image_file
from .contract import hw_text
from .errors import InputError
from .fileio import output_folder, read_image, read_text_lines
from .landmarks import POINT_LAYOUTS, layout_for
from .progress import progress as progress_bar

ALIGN_JSON = "align.json"
REPORT_FILE = "align_report.txt"
POINTS_FILE = "align_points.txt"
FORMAT = "pfpld-aligned"
VERSION = 1

POINT_ORDER = ("left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner; left = image "
               "left (the subject's right)")
POINTS_EXPECTED = ("expected 'relative/path x1 y1 x2 y2 x3 y3 x4 y4 x5 y5' (an integer label after the path is "
                   f"allowed, as in CASIA-WebFace's file): five points in image pixels, {POINT_ORDER}")

# why an image was not aligned: reason -> what the summary and the report call it
SKIP_REASONS = {
    "missing": "listed but not found",
    "no_points": "no points",
    "no_box": "no box",
    "unreadable": "unreadable image",
    "box_off_image": "box off the image",
    "bad_points": "unusable points",
}


@dataclass(frozen=True)
class FacePoints:
    """One line of a points file."""
    image: str                   # path relative to the images folder, '/'-separated
    points: np.ndarray           # (5, 2) image pixels, in POINT_ORDER
    line: int                    # 1-based line number in `source`
    source: Path

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Skipped:
    image: str                   # relative path
    reason: str                  # a key of SKIP_REASONS
    detail: str = ""


@dataclass
class AlignSummary:
    images: Path
    out: Path
    size: tuple[int, int]        # rows, columns
    source: str                  # where the points came from, in words
    aligned: int
    skipped: list[Skipped]
    seconds: float

    def counts(self) -> dict[str, int]:
        """Skipped images per reason, in SKIP_REASONS order."""
        found = Counter(s.reason for s in self.skipped)
        return {reason: found[reason] for reason in SKIP_REASONS if found[reason]}

    def line(self) -> str:
        skipped = ", ".join(f"{n} {SKIP_REASONS[reason]}" for reason, n in self.counts().items())
        tail = f"skipped {len(self.skipped)} ({skipped}): see {self.out / REPORT_FILE}" if self.skipped else \
            "skipped none"
        return (f"aligned {self.aligned} images to {hw_text(*self.size)} in {self.seconds:.1f} s -> {self.out}; "
                f"{tail}")

    def report(self) -> str:
        lines = [f"# pfpld align {self.images} -> {self.out}: {hw_text(*self.size)}, {template_name(self.size)} "
                 f"template, points from {self.source}", f"# {self.line()}",
                 "# skipped images: reason<TAB>image<TAB>detail"]
        lines += [f"{SKIP_REASONS[s.reason]}\t{s.image}\t{s.detail}".rstrip("\t") for s in self.skipped]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        height, width = self.size
        # "size": the side of a square, as the first files wrote it; "size_hw": rows, columns, in every file
        return {"format": FORMAT, "version": VERSION, "images": str(self.images),
                **({"size": height} if height == width else {}), "size_hw": [height, width],
                "template": "arcface" if height == width else f"arcface centred in the columns: "
                                                              f"{template_name(self.size)}",
                "points_from": self.source, "aligned": self.aligned,
                "skipped": self.counts(), "seconds": round(self.seconds, 2)}


def aligned_size_of(folder: Path) -> tuple[int, int] | None:
    """(rows, columns) of the faces `pfpld align` wrote into `folder` (its align.json), or None when it holds no
    align.json."""
    path = Path(folder) / ALIGN_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        height, width = record["size_hw"] if "size_hw" in record else (record["size"], record["size"])
        return int(height), int(width)
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: no size (expected the align.json `pfpld align` writes, with size_hw)") from None


# --- the points file ---------------------------------------------------------------------------------------------

def _numbers(fields: list[str]) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in fields], dtype=np.float64)
    except ValueError:
        return None
    return values.reshape(5, 2) if np.all(np.isfinite(values)) else None


def _is_label(token: str) -> bool:
    return token.isdigit()


def parse_points_line(text: str) -> tuple[str, np.ndarray] | None:
    """`path x1 y1 ... x5 y5` or `path label x1 y1 ... x5 y5` (tabs or spaces; the path may hold spaces) ->
    (path, (5, 2) points), or None when the line is not that."""
    tokens = text.split()
    if len(tokens) == 12 and _is_label(tokens[1]):              # CASIA-WebFace's file: path, identity label, points
        points = _numbers(tokens[2:])
        return (tokens[0], points) if points is not None else None
    fields = text.rsplit(maxsplit=10)                           # the numbers hold no spaces, a file name may
    if len(fields) != 11:
        return None
    points = _numbers(fields[1:])
    return (fields[0].strip(), points) if points is not None else None


def _relative_to(images: Path, path: Path) -> str | None:
    """`path` as a '/'-separated path relative to the images folder, or None when it is outside it."""
    rel = os.path.relpath(os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(images)))
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return None
    return Path(rel).as_posix()


def read_points_file(path: Path, images: Path) -> list[FacePoints]:
    """Every face of a points file, in file order, its paths relative to `images` (absolute paths inside it are
    accepted). Blank lines and `#` comments are skipped. A malformed line, a path outside `images`, a second line for
    one image, a file without points, or a file whose first eye is mostly the image-right one (the other order
    convention) is an InputError naming the file (and line)."""
    path = Path(path)
    lines = read_text_lines(path, POINTS_EXPECTED)
    entries: list[FacePoints] = []
    first_line: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        parsed = parse_points_line(text)
        shown = text.strip() if len(text.strip()) <= 80 else text.strip()[:77] + "..."
        if parsed is None:
            raise InputError(f"{path}:{number}: {shown!r}: {POINTS_EXPECTED}")
        name, points = parsed
        rel = _relative_to(images, images / name)
        if rel is None:
            raise InputError(f"{path}:{number}: {name} is not inside the images folder {images} (paths are relative "
                             f"to it)")
        if rel in first_line:
            raise InputError(f"{path}:{number}: {rel} already has points on line {first_line[rel]}: one face an "
                             f"image (keep the line of the face to align)")
        first_line[rel] = number
        entries.append(FacePoints(image=rel, points=points, line=number, source=path))
    if not entries:
        raise InputError(f"{path}: no points ({POINTS_EXPECTED}, one image a line)")
    mirrored = sum(e.points[0, 0] > e.points[1, 0] for e in entries)
    if 2 * mirrored > len(entries):
        raise InputError(f"{path}: on {mirrored} of {len(entries)} lines the first eye is right of the second in the "
                         f"image; expected the image-left eye first ({POINT_ORDER}), as MTCNN, insightface and "
                         f"SphereFace's files give them")
    return entries


# --- where each face's points come from --------------------------------------------------------------------------

@dataclass(frozen=True)
class AlignJob:
    image: str                           # relative path, also the output's
    path: Path                           # the file to read
    points: np.ndarray | None = None     # (5, 2) given points, or
    box: tuple[float, float, float, float] | None = None     # the face box a landmark model looks in


@dataclass
class AlignPlan:
    jobs: list[AlignJob]
    skipped: list[Skipped]               # decided before any image is read
    source: str


def plan_from_points(images: Path, points_file: Path) -> AlignPlan:
    """Align every image the points file lists. A listed image that is not there is skipped (public points files
    cover a whole dataset; a copy may lack some), unless none is there: then the folder is the wrong one. An image
    of the folder without points is skipped."""
    entries = read_points_file(points_file, images)
    present = [e for e in entries if (images / e.image).is_file()]
    if not present:
        raise InputError(f"{points_file}: none of its {len(entries)} images is in {images} (first: "
                         f"{images / entries[0].image}); paths in the file are relative to that folder")
    listed = {e.image for e in entries}
    skipped = [Skipped(e.image, "missing", f"{e.where}") for e in entries if not (images / e.image).is_file()]
    skipped += [Skipped(rel, "no_points") for rel in _folder_images(images) if rel not in listed]
    jobs = [AlignJob(e.image, images / e.image, points=e.points) for e in present]
    return AlignPlan(jobs=jobs, skipped=skipped, source=str(points_file))


def plan_from_boxes(images: Path, boxes_file: Path) -> AlignPlan:
    """One face box an image from a boxes.txt (pfpld.data.boxes: its files relative to its own folder, which must
    lie in the images folder); images of the folder without a box are skipped."""
    jobs: list[AlignJob] = []
    first_line: dict[str, int] = {}
    for entry in read_boxes_file(boxes_file):
        rel = _relative_to(images, entry.image)
        if rel is None:
            raise InputError(f"{entry.where}: {entry.image} is not inside the images folder {images}")
        if rel in first_line:
            raise InputError(f"{entry.where}: {rel} already has a box on line {first_line[rel]}: one face an image")
        first_line[rel] = entry.line
        jobs.append(AlignJob(rel, entry.image, box=entry.box))
    skipped = [Skipped(rel, "no_box") for rel in _folder_images(images) if rel not in first_line]
    return AlignPlan(jobs=jobs, skipped=skipped, source=f"the boxes of {boxes_file}")


def plan_from_box(images: Path, box: tuple[float, float, float, float]) -> AlignPlan:
    """The same face box for every image of the folder (LFW's centred faces)."""
    jobs = [AlignJob(rel, images / rel, box=tuple(float(v) for v in box)) for rel in _folder_images(images)]
    if not jobs:
        raise InputError(f"{images}: no images (jpg, jpeg, png, bmp) in it or its sub-folders")
    return AlignPlan(jobs=jobs, skipped=[], source="the box " + ",".join(f"{v:g}" for v in box))


def _folder_images(images: Path) -> list[str]:
    return [p.relative_to(images).as_posix() for p in images_under(images)]


class SkipImage(Exception):
    """An image the run goes on without; reason is a key of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def landmark_locator(ckpt: Path) -> tuple[Callable[[np.ndarray, tuple], np.ndarray], str]:
    """A function (image, face box) -> the face's five points from a landmark checkpoint's prediction (its crop
    rule on the box, exactly as `pfpld predict`), and the checkpoint described. A checkpoint whose model outputs no
    5, 68 or 98 landmarks is an InputError."""
    from .checkpoint import load_model
    from .predict import check_box_on_image, predict_face
    model, record = load_model(ckpt)
    output = record.spec.output_of_kind("landmarks")
    if output is None or layout_for(output.num_points) is None:
        what = f"{output.num_points} landmarks" if output is not None else "no landmarks"
        raise InputError(f"{ckpt}: model {record.spec.name} outputs {what}; --landmarks needs a landmark model with "
                         f"{', '.join(map(str, POINT_LAYOUTS))} points (landmark5, pfpld)")

    def locate(image: np.ndarray, box) -> np.ndarray:
        try:
            check_box_on_image(box, image.shape)
        except InputError as exc:
            raise SkipImage("box_off_image", str(exc)) from None
        return five_points_of(predict_face(model, record.spec, record.contract, image, box).points_px)

    return locate, f"{record.spec.name} ({output.num_points} points) in {ckpt}"


# --- the run -----------------------------------------------------------------------------------------------------

def _check_folders(images: Path, out: Path) -> None:
    if not images.is_dir():
        raise InputError(f"{images}: not a folder (expected the folder of face images to align)")
    a, b = Path(os.path.abspath(images)), Path(os.path.abspath(out))
    if a == b or a in b.parents or b in a.parents:
        raise InputError(f"--out {out}: must be outside the images folder {images} and not hold it")


def align_images(images: Path, out: Path, *, points_file: Path | None = None, landmarks: Path | None = None,
                 boxes_file: Path | None = None, box: tuple[float, float, float, float] | None = None,
                 size: int | tuple[int, int] = TEMPLATE_SIZE, force: bool = False,
                 progress: bool = True) -> AlignSummary:
    """Align the faces of `images` to the ArcFace template at size x size, or at (rows, columns) (pfpld.align.template:
    SphereFace's at (112, 96)), and write them under `out` at the same relative paths (and format), with align.json,
    align_report.txt (the skipped images and why) and align_points.txt (the five points each face was aligned with,
    in the points-file layout). The points come from `points_file`, or from the `landmarks` checkpoint on a box from
    `boxes_file` or the one `box`. Images that cannot be aligned are skipped and counted; nothing aligned is an
    InputError and writes nothing. `out` follows the output-folder rule (pfpld.fileio.output_folder): an earlier
    align output is replaced only with force."""
    images, out = Path(images), Path(out)
    if (points_file is None) == (landmarks is None):
        raise InputError("give either a points file or a landmark checkpoint")
    if landmarks is not None and (boxes_file is None) == (box is None):
        raise InputError("a landmark checkpoint needs either a boxes file or one box for every image")
    size = rows_cols(size)
    if min(size) < 16:
        raise InputError(f"--size {hw_text(*size)}: expected at least 16 pixels each way")
    _check_folders(images, out)
    start = time.perf_counter()
    if points_file is not None:
        plan, locate = plan_from_points(images, points_file), None
    else:
        plan = plan_from_boxes(images, boxes_file) if boxes_file is not None else plan_from_box(images, box)
        locate, model = landmark_locator(landmarks)
        plan.source = f"{model} on {plan.source}"
    skipped = list(plan.skipped)
    used: list[tuple[str, np.ndarray]] = []
    with output_folder(out, "aligned", force) as tmp:
        for job in progress_bar(plan.jobs, desc="align", unit="image", enabled=progress):
            try:
                aligned, points = _align_one(job, locate, size)
            except SkipImage as skip:
                skipped.append(Skipped(job.image, skip.reason, skip.detail))
                continue
            write_image(tmp / job.image, aligned)
            used.append((job.image, points))
        summary = AlignSummary(images=images, out=out, size=size, source=plan.source, aligned=len(used),
                               skipped=sorted(skipped, key=lambda s: (list(SKIP_REASONS).index(s.reason), s.image)),
                               seconds=time.perf_counter() - start)
        if not used:
            counts = ", ".join(f"{n} {SKIP_REASONS[r]}" for r, n in summary.counts().items())
            raise InputError(f"{images}: no image aligned ({counts}); nothing written to {out}")
        (tmp / ALIGN_JSON).write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
        (tmp / REPORT_FILE).write_text(summary.report(), encoding="utf-8")
        (tmp / POINTS_FILE).write_text(
            f"# the five points ({POINT_ORDER}) each image of {out} was aligned with, in {images}'s pixels; "
            f"`pfpld align --points` reads this file\n"
            + "".join(f"{rel}\t" + "\t".join(f"{v:.3f}" for v in p.ravel()) + "\n" for rel, p in used),
            encoding="utf-8")
    return summary


def _align_one(job: AlignJob, locate, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(aligned image, the five points used) for one job, or SkipImage."""
    if not is_image_file(Path(job.image)):      # a file a points or boxes file names: written back in its format
        raise SkipImage("unreadable", f"not a {', '.join(IMAGE_EXTENSIONS)} file")
    try:
        image = read_image(job.path)
    except InputError as exc:
        raise SkipImage("unreadable", str(exc)) from None
    points = job.points if job.points is not None else locate(image, job.box)
    if not np.all(np.isfinite(points)):
        raise SkipImage("bad_points", "not finite")
    try:
        aligned, _ = align_face(image, points, size=size)
    except ValueError as exc:                # the five points coincide: no similarity maps them onto the template
        raise SkipImage("bad_points", str(exc)) from None
    return aligned, points
