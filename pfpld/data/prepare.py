"""Dataset sources on disk -> one prepared folder of face crops + index.jsonl, what training and eval read.

Each face is cropped with the preprocessing contract's crop rule (box = extent of its valid landmarks), with
extra context around it for augmentation; the contract crop itself is exactly the centre input_size window.
Every crop is stored twice: as a PNG for people to look at, and as one row of crops.npy (N, S, S, 3) uint8 BGR,
rows in the order of the index's face lines, which training memory-maps instead of decoding images. The folder
is written under a temporary name and renamed at the end, so it is either complete or absent.
"""
from __future__ import annotations

import datetime
import io
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..contract import ContractError, PreprocessContract, landmark_box
from ..errors import one_line
from ..fileio import output_folder
from ..landmarks import NUM_POINTS
from ..progress import progress as progress_bar
from .record import DatasetError, FaceRecord
from .sources import iter_300wlp, iter_aflw2000, iter_lapa, iter_wflw

FORMAT = "pfpld-prepared"
VERSION = 2                 # 2: crops.npy beside the PNGs (version 1 folders have PNGs only and still read)
READABLE_VERSIONS = (1, 2)
INDEX_FILE = "index.jsonl"
ARRAY_FILE = "crops.npy"
README_FILE = "README.txt"
SPLITS = ("train", "test")
SOURCE_ORDER = ("wflw", "lapa", "300wlp", "aflw2000", "imagefolder")
POINT_DECIMALS = 6          # 1e-6 of a 112-px crop is far below annotation noise
POSE_DECIMALS = 7
HEADER_KEYS = ("format", "version", "contract", "context", "crop_size_px", "counts")


@dataclass
class PrepareSummary:
    out: Path
    counts: dict[str, int]          # "<source>/<split>" -> faces written
    crop_size_px: int
    seconds: float = 0.0

    def count(self, source: str, split: str) -> int:
        return self.counts.get(f"{source}/{split}", 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def table(self) -> str:
        sources = [s for s in SOURCE_ORDER if any(k.startswith(s + "/") for k in self.counts)]
        sources += sorted({k.split("/")[0] for k in self.counts} - set(sources))
        rows = [("source", *SPLITS, "total")]
        for s in sources:
            per_split = [self.count(s, sp) for sp in SPLITS]
            rows.append((s, *map(str, per_split), str(sum(per_split))))
        totals = [sum(self.count(s, sp) for s in sources) for sp in SPLITS]
        rows.append(("total", *map(str, totals), str(sum(totals))))
        return "\n".join(f"{r[0]:<10}" + "".join(f"{c:>8}" for c in r[1:]) for r in rows)


@dataclass
class SourceStream:
    """One (source, on-disk split) to read; `records` opens the reader lazily so faces stream through."""
    source: str
    split: str                      # the record split it yields: train or test
    label: str                      # for the progress bar, e.g. "lapa val"
    records: Callable[[], Iterator[FaceRecord]] = field(repr=False)


def source_streams(wflw: Path | None, lapa: Path | None, w300lp: Path | None,
                   aflw2000: Path | None, wflw_pose: Path | None = None) -> list[SourceStream]:
    streams = []
    if wflw is not None:
        for split in ("train", "test"):
            streams.append(SourceStream("wflw", split, f"wflw {split}",
                                        lambda s=split: iter_wflw(wflw, s, pose_labels=wflw_pose)))
    if lapa is not None:
        for lapa_split, split in (("train", "train"), ("val", "test"), ("test", "test")):
            streams.append(SourceStream("lapa", split, f"lapa {lapa_split}",
                                        lambda s=lapa_split: iter_lapa(lapa, s, closed_eye_only=True)))
    if w300lp is not None:
        streams.append(SourceStream("300wlp", "train", "300wlp", lambda: iter_300wlp(w300lp)))
    if aflw2000 is not None:
        streams.append(SourceStream("aflw2000", "test", "aflw2000", lambda: iter_aflw2000(aflw2000, protocol=True)))
    return streams


def imagefolder_stream(folder) -> SourceStream:
    """An ImageFolder set (pfpld/data/sources/imagefolder.py: one folder per identity of aligned face images) as
    training faces without landmarks, each carrying its identity's class index."""
    def records() -> Iterator[FaceRecord]:
        for path, identity in folder.items:
            yield FaceRecord(image_path=path, points=np.zeros((NUM_POINTS, 2)), point_mask=np.zeros(NUM_POINTS, bool),
                             source="imagefolder", split="train", name=f"{folder.classes[identity]}/{path.name}",
                             extra={"identity": identity})
    return SourceStream("imagefolder", "train", "imagefolder", records)


def crop_size_for(contract: PreprocessContract, context: float) -> int:
    """Side of the stored crops. The contract crop must sit on whole pixels in their centre, so
    input_size * context has to be an integer with the parity of input_size."""
    size = contract.input_size * context
    size_px = int(round(size))
    if context < 1.0 or not math.isclose(size, size_px, abs_tol=1e-6) or (size_px - contract.input_size) % 2:
        raise ContractError(f"context {context}: expected >= 1 with input_size x context ({size:g}) a whole number "
                            f"of pixels of the same parity as input_size {contract.input_size}")
    return size_px


# --- one face --------------------------------------------------------------------------------------------

def face_box(record: FaceRecord) -> tuple[float, float, float, float]:
    if not record.point_mask.any():
        raise DatasetError(f"{record.image_path} ({record.name}): no valid landmark to measure the face box on")
    return landmark_box(record.points, record.point_mask)


def crop_face(image: np.ndarray, record: FaceRecord, contract: PreprocessContract,
              context: float) -> tuple[np.ndarray, np.ndarray]:
    """(stored crop BGR, points (98,2) in [0,1] of the contract crop). The centre window is pasted from the
    contract crop itself: warping the wider crop gives the same pixels only up to 1 grey level of rounding. An
    aligned contract crops the whole image (its faces need no landmarks)."""
    box = contract.aligned_box(image) if contract.aligned else face_box(record)
    try:
        crop, _ = contract.crop_image(image, box, context=context)
        centre, matrix = contract.crop_image(image, box)
    except ContractError as e:
        raise DatasetError(f"{record.image_path} ({record.name}): {e}") from None
    offset = (crop.shape[0] - contract.input_size) // 2
    crop[offset:offset + contract.input_size, offset:offset + contract.input_size] = centre
    points = contract.points_to_crop(record.points, matrix)
    if not np.all(np.isfinite(points)):
        raise DatasetError(f"{record.image_path} ({record.name}): landmarks are not finite")
    return crop, points


def index_entry(record: FaceRecord, image_rel: str, points_crop: np.ndarray) -> dict:
    return {
        "image": image_rel,
        "split": record.split,
        "source": record.source,
        "name": record.name,
        "points": [round(float(v), POINT_DECIMALS) for v in points_crop.reshape(-1)],
        "mask": "".join("1" if m else "0" for m in record.point_mask),
        "pose": None if record.pose_rad is None else [round(float(v), POSE_DECIMALS) for v in record.pose_rad],
        "attributes": None if record.attributes is None else [int(a) for a in record.attributes],
        **({"identity": int(record.extra["identity"])} if "identity" in record.extra else {}),
    }


class ImageReader:
    """Decodes images, keeping the last one: WFLW lists several faces of one photo on consecutive lines."""

    def __init__(self):
        self.path: Path | None = None
        self.image: np.ndarray | None = None

    def read(self, path: Path) -> np.ndarray:
        if path != self.path:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise DatasetError(f"{path}: cannot decode image (missing, unreadable or corrupt)")
            self.path, self.image = path, image
        return self.image


def write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise DatasetError(f"{path}: cannot encode crop as PNG")
    path.write_bytes(buf.tobytes())


def npy_header(rows: int, size_px: int) -> bytes:
    """The .npy (version 1.0) header of crops.npy with `rows` crops of size_px x size_px x 3 uint8. numpy pads it
    so that the first dimension can grow to 21 digits with the header keeping its length."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                               "fortran_order": False, "shape": (rows, size_px, size_px, 3)})
    return buf.getvalue()


def array_entry(rows: int, size_px: int) -> dict:
    """The header's description of crops.npy (what the reader checks the file against)."""
    return {"file": ARRAY_FILE, "dtype": "uint8", "shape": [rows, size_px, size_px, 3], "channels": "BGR"}


# --- the folder ------------------------------------------------------------------------------------------

def write_faces(tmp: Path, streams: list[SourceStream], contract: PreprocessContract, context: float,
                progress: bool) -> dict[str, int]:
    """Crop every face of every stream into tmp/<split>/<source>/NNNNNN.png, append its pixels to tmp/crops.npy
    and its index line to tmp/index.body.jsonl. Returns the counts per "<source>/<split>".

    crops.npy starts with the header of an empty array; once the count is known its header is rewritten in
    place (the same length, see npy_header): the array of a full dataset is many GB, and this way it is
    written once, never copied."""
    counts: dict[str, int] = {}
    for s in streams:
        counts.setdefault(f"{s.source}/{s.split}", 0)
    size_px = crop_size_for(contract, context)
    reader = ImageReader()
    body = tmp / "index.body.jsonl"
    with open(body, "w", encoding="utf-8") as f, open(tmp / ARRAY_FILE, "wb") as crops, \
            progress_bar(desc="prepare", unit="face", enabled=progress) as bar:
        crops.write(npy_header(0, size_px))
        for stream in streams:
            bar.set_description_str(stream.label)
            for record in stream.records():
                key = f"{record.source}/{record.split}"
                n = counts.get(key, 0)
                image_rel = f"{record.split}/{record.source}/{n:06d}.png"
                crop, points = crop_face(reader.read(record.image_path), record, contract, context)
                (tmp / image_rel).parent.mkdir(parents=True, exist_ok=True)
                write_png(tmp / image_rel, crop)
                crops.write(np.ascontiguousarray(crop).data)
                f.write(json.dumps(index_entry(record, image_rel, points), separators=(",", ":")) + "\n")
                counts[key] = n + 1
                bar.update(1)
        header = npy_header(sum(counts.values()), size_px)
        if len(header) != len(npy_header(0, size_px)):
            raise RuntimeError(f"numpy {np.__version__} writes .npy headers of varying length: cannot finish "
                               f"{ARRAY_FILE} in place")
        crops.seek(0)
        crops.write(header)
    return counts


def write_index(tmp: Path, header: dict) -> None:
    """index.jsonl = header line + the face lines streamed to the body file (counts are known only now)."""
    body = tmp / "index.body.jsonl"
    with open(tmp / INDEX_FILE, "w", encoding="utf-8") as f:
        f.write(json.dumps(header, sort_keys=False) + "\n")
        with open(body, encoding="utf-8") as b:
            shutil.copyfileobj(b, f)
    body.unlink()


def write_readme(tmp: Path, summary: PrepareSummary, contract: PreprocessContract, sources: dict[str, Path]) -> None:
    made_from = ", ".join(f"{k}={v}" for k, v in sources.items())
    size, inp = summary.crop_size_px, contract.input_size
    text = (
        f"pfpld prepared dataset ({FORMAT} v{VERSION}): {size}x{size} px face crops (PNG) and {INDEX_FILE} "
        f"(line 1 a header, then one face a line; points in [0,1] of the centre {inp}x{inp} contract crop).\n"
        f"The same crops, one row per face line in index order, are in {ARRAY_FILE} ({summary.total}x{size}x{size}x3 "
        f"uint8 BGR, numpy's .npy format), which training memory-maps.\n"
        f"Made by `pfpld prepare-data` (pfpld.data.prepare.prepare_dataset) on "
        f"{datetime.date.today().isoformat()} from {made_from}.\n"
        "Re-run the command to rebuild it: the folder is replaced as a whole, do not edit it by hand.\n\n"
        f"{summary.table()}\n"
    )
    (tmp / README_FILE).write_text(text, encoding="utf-8")


def prepare_dataset(out: Path, *, wflw: Path | None = None, lapa: Path | None = None, w300lp: Path | None = None,
                    aflw2000: Path | None = None, imagefolder: Path | None = None, wflw_pose: Path | None = None,
                    contract: PreprocessContract | None = None, context: float | None = None,
                    progress: bool = True, force: bool = False) -> PrepareSummary:
    """Read the given sources (WFLW train+test, LaPa closed-eye train -> train and val/test -> test, 300W-LP ->
    train, AFLW2000 protocol -> test; or, for an aligned contract, an ImageFolder set of identities -> train), crop
    every face and write the prepared folder `out` atomically. Context (the stored margin for augmentation) defaults
    to 1.5, and to 1 for aligned faces, which augmentation never moves. A previous prepared dataset at `out` is
    replaced only with force, anything else never (fileio.check_output_folder). `wflw_pose`: WFLW's pose labels
    written elsewhere by `pfpld label-pose --out` (default: its sidecar in the WFLW folder, when there is one)."""
    start = time.monotonic()
    out = Path(out)
    contract = contract or PreprocessContract()
    context = context if context is not None else (1.0 if contract.aligned else 1.5)
    size_px = crop_size_for(contract, context)
    sources = {k: Path(v) for k, v in (("wflw", wflw), ("lapa", lapa), ("300wlp", w300lp), ("aflw2000", aflw2000),
                                       ("imagefolder", imagefolder)) if v is not None}
    if not sources:
        raise DatasetError(f"{out}: nothing to prepare: give at least one of wflw, lapa, w300lp, aflw2000, "
                           f"imagefolder")
    landmark_sources = sorted(set(sources) - {"imagefolder"})
    if contract.aligned and landmark_sources:
        raise DatasetError(f"{out}: this model takes aligned faces of identities (an ImageFolder set), not the "
                           f"landmark datasets given ({', '.join(landmark_sources)})")
    if imagefolder is not None and not contract.aligned:
        raise DatasetError(f"{imagefolder}: an ImageFolder set holds aligned faces without landmarks: prepare it for "
                           f"a recognition model (`pfpld prepare-data --model facerec --imagefolder DIR`)")
    if wflw_pose is not None and wflw is None:
        raise DatasetError(f"{wflw_pose}: pose labels of a WFLW folder: give the folder too (--wflw)")
    extra: dict = {}
    if imagefolder is not None:
        from .sources.imagefolder import read_imagefolder
        folder = read_imagefolder(sources["imagefolder"])
        streams = [imagefolder_stream(folder)]
        extra["identities"] = list(folder.classes)
    else:
        streams = source_streams(sources.get("wflw"), sources.get("lapa"), sources.get("300wlp"),
                                 sources.get("aflw2000"), wflw_pose)
    with output_folder(out, "prepared", force) as tmp:      # checked first: fail before hours of cropping
        counts = write_faces(tmp, streams, contract, context, progress)
        header = {"format": FORMAT, "version": VERSION, "contract": contract.to_dict(), "context": float(context),
                  "crop_size_px": size_px, "counts": counts, "array": array_entry(sum(counts.values()), size_px),
                  **extra}
        write_index(tmp, header)
        summary = PrepareSummary(out=out, counts=counts, crop_size_px=size_px)
        write_readme(tmp, summary, contract, sources)
    summary.seconds = time.monotonic() - start
    return summary


# --- reading it back (for the torch Dataset and eval) ----------------------------------------------------

def read_prepared_header(out: Path) -> dict:
    index = Path(out) / INDEX_FILE
    if not index.is_file():
        raise DatasetError(f"{index}: not found: {out} is not a prepared dataset (make one with `pfpld prepare-data`)")
    try:
        with open(index, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{index}: cannot read ({type(e).__name__}: {one_line(e)})") from None
    return parse_header(first, f"{index}:1")


def parse_header(line: str, where: str) -> dict:
    header = _json_object(line, where)
    if header.get("format") != FORMAT:
        raise DatasetError(f"{where}: format {header.get('format')!r}: expected {FORMAT!r} header")
    if header.get("version") not in READABLE_VERSIONS:
        raise DatasetError(f"{where}: version {header.get('version')!r}: this pfpld reads versions "
                           f"{', '.join(map(str, READABLE_VERSIONS))} (re-run `pfpld prepare-data`)")
    missing = [k for k in HEADER_KEYS + (("array",) if header["version"] >= 2 else ()) if k not in header]
    if missing:
        raise DatasetError(f"{where}: header lacks {', '.join(missing)}")
    counts = header["counts"]
    if not isinstance(counts, dict) or not all(isinstance(v, int) and v >= 0 for v in counts.values()):
        raise DatasetError(f"{where}: 'counts' must map '<source>/<split>' to face counts")
    if not isinstance(header["crop_size_px"], int) or not isinstance(header["contract"], dict):
        raise DatasetError(f"{where}: 'crop_size_px' must be an integer and 'contract' an object")
    if "array" in header:
        expected = array_entry(sum(counts.values()), header["crop_size_px"])
        if header["array"] != expected:
            raise DatasetError(f"{where}: 'array' is {json.dumps(header['array'])}: expected {json.dumps(expected)} "
                               f"(from 'counts' and 'crop_size_px')")
    return header


def open_crop_array(out: Path, header: dict) -> np.ndarray | None:
    """The crops of a prepared folder as a read-only memory map (N, S, S, 3) uint8 BGR, rows in index order;
    None for a version-1 folder (PNGs only). The file is checked against the header first: a missing,
    truncated or reshaped array is one DatasetError naming the file and what was expected."""
    if "array" not in header:
        return None
    path = Path(out) / header["array"]["file"]
    shape = tuple(header["array"]["shape"])
    expected = f"a uint8 .npy array of shape {shape} (header of {Path(out) / INDEX_FILE})"
    redo = "re-run `pfpld prepare-data`"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version != (1, 0):
                raise ValueError(f".npy format version {version}")
            file_shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            offset = f.tell()
    except FileNotFoundError:
        raise DatasetError(f"{path}: not found: expected {expected}; {redo}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{path}: not a readable .npy file ({one_line(e)}): expected {expected}; {redo}") from None
    if file_shape != shape or dtype != np.uint8 or fortran_order:
        raise DatasetError(f"{path}: holds a {dtype} array of shape {file_shape}"
                           f"{' in Fortran order' if fortran_order else ''}: expected {expected}; {redo}")
    size = path.stat().st_size
    if size != offset + math.prod(shape):
        raise DatasetError(f"{path}: {size} bytes: expected {offset + math.prod(shape)} for {expected}: truncated "
                           f"or damaged; {redo}")
    return np.load(path, mmap_mode="r")


def _json_object(line: str, where: str) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: expected a JSON object")
    return value


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_face_entry(entry: dict, where: str) -> dict:
    for key, kind in (("image", str), ("split", str), ("source", str), ("name", str), ("mask", str),
                      ("points", list)):
        if not isinstance(entry.get(key), kind):
            raise DatasetError(f"{where}: '{key}' missing or not a {kind.__name__}")
    if entry["split"] not in SPLITS:
        raise DatasetError(f"{where}: split {entry['split']!r}: expected one of {SPLITS}")
    points = entry["points"]
    if len(points) != 2 * NUM_POINTS or not all(_is_number(v) for v in points):
        raise DatasetError(f"{where}: 'points' must be {2 * NUM_POINTS} finite numbers, got {len(points)} values")
    mask = entry["mask"]
    if len(mask) != NUM_POINTS or set(mask) - {"0", "1"}:
        raise DatasetError(f"{where}: 'mask' must be {NUM_POINTS} characters 0/1")
    pose = entry.get("pose")
    if pose is not None and not (isinstance(pose, list) and len(pose) == 3 and all(_is_number(v) for v in pose)):
        raise DatasetError(f"{where}: 'pose' must be null or [yaw, pitch, roll] in radians")
    identity = entry.get("identity")
    if identity is not None and not (isinstance(identity, int) and not isinstance(identity, bool) and identity >= 0):
        raise DatasetError(f"{where}: 'identity' must be a class index >= 0")
    attrs = entry.get("attributes")
    if attrs is not None and not (isinstance(attrs, list) and len(attrs) == 6 and all(a in (0, 1) for a in attrs)):
        raise DatasetError(f"{where}: 'attributes' must be null or 6 flags 0/1")
    return entry


def iter_prepared(out: Path, split: str | None = None) -> Iterator[dict]:
    """Yield the face entries of a prepared dataset (optionally one split), each checked. At the end, the
    number of faces is checked against the header's counts, so a truncated index does not pass unnoticed."""
    index = Path(out) / INDEX_FILE
    header = read_prepared_header(out)
    seen: dict[str, int] = {}
    try:
        with open(index, encoding="utf-8") as f:
            next(f)                              # the header, checked above
            for lineno, line in enumerate(f, start=2):
                if not line.strip():
                    continue
                entry = check_face_entry(_json_object(line, f"{index}:{lineno}"), f"{index}:{lineno}")
                key = f"{entry['source']}/{entry['split']}"
                seen[key] = seen.get(key, 0) + 1
                if split is None or entry["split"] == split:
                    yield entry
    except UnicodeDecodeError as e:
        raise DatasetError(f"{index}: not UTF-8 text (byte {e.start})") from None
    expected = {k: v for k, v in header["counts"].items() if v}
    if seen != expected:
        raise DatasetError(f"{index}: header counts {expected} but the file lists {seen}: truncated or edited index")
