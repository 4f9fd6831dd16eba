"""`pfpld calib`: a calibration set for int8 quantisation (nnie_mapper's image_list, ncnn2table-style tables,
onnxruntime static quantisation), chosen so that it spreads over head pose and eye state, cut exactly as at
deployment (the contract's crop rule) and stored at the input size.

Candidates come from a prepared dataset (a split of index.jsonl: landmarks and, where the source has one, a pose
label) or from a folder of images with boxes.txt (`file x1 y1 x2 y2` per line; pose and eyes then come from a
checkpoint's predictions when one is given, else they are unknown). Crops that are near-black, near-white or
over-exposed are rejected with the thresholds of QualityRules; the rest are binned by yaw, pitch and eye state
and taken round-robin over the bins. The folder (images/, image_list.txt, calib.json, report.md, spread.png) is
written under a temporary name and renamed at the end.

A recognition model's contract takes aligned faces (box_source "aligned": the whole image, resized), which carry
neither pose nor eye labels but an identity: its candidates come from a prepared ImageFolder set (index entries
with "identity") or from a folder of aligned images (one sub-folder per identity, as ImageFolder and LFW hold them,
or the images themselves), and the crops are spread over identities instead (round-robin, the least-picked identity
first), so that no person dominates the activation ranges.

Image files: PNG (lossless), 8-bit, written from the BGR crop the contract produces, so they look right in any
viewer. nnie_mapper, ncnn2table and OpenCV read them as BGR and convert to the network's colour order themselves
(nnie_mapper: `[RGB_order]` of the cfg); nothing here stores swapped channels. image_list.txt has one path per
line, relative to the folder holding image_list.txt.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from pfpld.contract import PreprocessContract, aligned_crop, hw_text
from pfpld.data.boxes import BOXES_FILE, read_boxes_file
from pfpld.errors import DatasetError, InputError
from pfpld.fileio import check_output_folder, output_folder
from pfpld.landmarks import LEFT_EYE_8, NUM_POINTS, RIGHT_EYE_8, has_closed_eye

FORMAT = "pfpld-calib"
VERSION = 1
MANIFEST = "calib.json"
IMAGE_LIST = "image_list.txt"
IMAGES_DIR = "images"
YAW_EDGES_DEG = (-45.0, -15.0, 15.0, 45.0)          # bins: < -45, -45..-15, -15..15, 15..45, > 45
PITCH_EDGES_DEG = (-15.0, 15.0)                     # bins: down (< -15), level, up (> 15)
# Inner features for the pose fit: brows, nose, eyes, mouth (the jaw contour follows the visible outline in 2D
# annotations but the 3D contour in the model, and pupils move with gaze).
POSE_FIT_POINTS = np.r_[33:51, 51:60, 60:76, 76:96]


@dataclass(frozen=True)
class QualityRules:
    """Crop rejection thresholds on the 8-bit luma (ITU-R BT.601, cv2.COLOR_BGR2GRAY) of the contract crop."""
    near_black_mean: float = 40.0       # mean luma below this: near-black
    near_white_mean: float = 215.0      # mean luma above this: near-white
    clipped_level: int = 250            # a pixel at or above this luma counts as clipped
    overexposed_fraction: float = 0.2   # more clipped pixels than this fraction: over-exposed

    def verdict(self, luma_mean: float, clipped_fraction: float) -> str | None:
        if luma_mean < self.near_black_mean:
            return "near-black"
        if luma_mean > self.near_white_mean:
            return "near-white"
        if clipped_fraction > self.overexposed_fraction:
            return "over-exposed"
        return None

    def describe(self) -> dict[str, str]:
        return {"near-black": f"mean luma < {self.near_black_mean:g}",
                "near-white": f"mean luma > {self.near_white_mean:g}",
                "over-exposed": f"more than {100 * self.overexposed_fraction:g}% of pixels at luma >= "
                                f"{self.clipped_level}"}


def crop_quality(crop_bgr: np.ndarray, rules: QualityRules) -> tuple[float, float]:
    """(mean luma, fraction of clipped pixels) of a BGR uint8 crop."""
    luma = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2GRAY)
    return float(luma.mean()), float((luma >= rules.clipped_level).mean())


def _bin(value: float | None, edges: tuple[float, ...]) -> int | None:
    return None if value is None or not math.isfinite(value) else int(np.searchsorted(edges, value))


def bin_label(index: int | None, edges: tuple[float, ...]) -> str:
    if index is None:
        return "unknown"
    lo = "-inf" if index == 0 else f"{edges[index - 1]:+g}"
    hi = "+inf" if index == len(edges) else f"{edges[index]:+g}"
    return f"[{lo}, {hi})"


def eye_state(points: np.ndarray, mask: np.ndarray | None = None) -> str | None:
    """'closed' / 'open' from the 8-point eyes (EAR rule of pfpld.landmarks), None when they are not labelled."""
    eyes = np.r_[LEFT_EYE_8, RIGHT_EYE_8]
    if mask is not None and not np.asarray(mask, dtype=bool)[eyes].all():
        return None
    return "closed" if has_closed_eye(np.asarray(points, dtype=np.float64)) else "open"


def pose_from_landmarks(points_px: np.ndarray, mask: np.ndarray | None, image_height: float) -> np.ndarray | None:
    """(yaw, pitch, roll) in radians that best project the project's 3D face template (pfpld.data.face3d, the
    300W-LP Pose_Para convention) onto the visible inner landmarks, by least squares with a weak-perspective
    camera. Good to a few degrees on near-frontal faces: enough to put a face in a pose bin, not a label."""
    from scipy.optimize import least_squares

    from pfpld.data.face3d import TEMPLATE_98, project
    use = POSE_FIT_POINTS if mask is None else POSE_FIT_POINTS[np.asarray(mask, dtype=bool)[POSE_FIT_POINTS]]
    if len(use) < 8:
        return None
    target = np.asarray(points_px, dtype=np.float64)[use]
    model = np.asarray(TEMPLATE_98, dtype=np.float64)[use]
    spread = float(np.sqrt(((target - target.mean(0)) ** 2).sum(1).mean()))
    model_spread = float(np.sqrt(((model[:, :2] - model[:, :2].mean(0)) ** 2).sum(1).mean()))
    centre = target.mean(0)

    def residual(v):
        pitch, yaw, roll, tx, ty, log_s = v
        p = project(model, np.array([pitch, yaw, roll, tx, ty, 0.0, np.exp(log_s)]), image_height)
        return (p[:, :2] - target).ravel()

    best = None
    for yaw0 in (-0.6, 0.0, 0.6):
        start = np.array([0.0, yaw0, 0.0, centre[0], image_height + 1.0 - centre[1],
                          np.log(max(spread, 1e-6) / max(model_spread, 1e-9))])
        fit = least_squares(residual, start, method="lm", max_nfev=400)
        if best is None or fit.cost < best.cost:
            best = fit
    pitch, yaw, roll = best.x[:3]
    wrap = lambda a: float((a + np.pi) % (2 * np.pi) - np.pi)      # noqa: E731
    return np.array([wrap(yaw), wrap(pitch), wrap(roll)])


# --- candidates ---------------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    origin: str                         # where the crop came from (prepared image path, or "image.jpg box")
    crop: np.ndarray = field(repr=False)   # BGR uint8, the input's rows x columns
    yaw_deg: float | None = None
    pitch_deg: float | None = None
    pose_from: str | None = None        # label | landmarks | model | None
    eye: str | None = None              # closed | open | None
    luma_mean: float = 0.0
    clipped_fraction: float = 0.0
    rejected: str | None = None
    identity: str | None = None         # aligned faces of an identity-labelled set: spread over these instead

    @property
    def cell(self) -> tuple:
        if self.identity is not None:
            return (self.identity,)
        return (_bin(self.yaw_deg, YAW_EDGES_DEG), _bin(self.pitch_deg, PITCH_EDGES_DEG), self.eye)

    def record(self) -> dict:
        d = asdict(self)
        d.pop("crop")
        return d


def candidates_from_prepared(root: Path, split: str, contract: PreprocessContract) -> list[Candidate]:
    """The split's contract crops (centre window of the stored crops) with pose and eye state."""
    from pfpld.data.prepare import iter_prepared, read_prepared_header
    header = read_prepared_header(root)
    stored = PreprocessContract.from_dict(header["contract"])
    if stored.input_hw != contract.input_hw or stored.crop != contract.crop:
        raise DatasetError(f"{root}: prepared with input size {stored.size_text} and crop rule {stored.crop}, "
                           f"the model's contract says {contract.size_text} and {contract.crop}")
    size, crop_px = contract.input_size, int(header["crop_size_px"])
    offset = (crop_px - size) // 2
    identities = list(header.get("identities") or [])
    out = []
    for row in iter_prepared(root):
        if row["split"] != split:
            continue
        path = root / row["image"]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None or image.shape[:2] != (crop_px, crop_px):
            raise DatasetError(f"{path}: expected a readable {crop_px}x{crop_px} crop")
        crop = np.ascontiguousarray(image[offset:offset + size, offset:offset + size])
        if contract.aligned:        # aligned faces: no landmarks, an identity (its class name, else its index)
            k = row.get("identity")
            name = None if k is None else (identities[k] if k < len(identities) else str(k))
            out.append(Candidate(origin=row["image"], crop=crop, identity=name or "unknown"))
            continue
        points = np.asarray(row["points"], dtype=np.float64).reshape(NUM_POINTS, 2) * size
        mask = np.array([c == "1" for c in row["mask"]], dtype=bool)
        cand = Candidate(origin=row["image"], crop=crop, eye=eye_state(points, mask))
        if row["pose"] is not None:
            cand.yaw_deg, cand.pitch_deg = (math.degrees(row["pose"][0]), math.degrees(row["pose"][1]))
            cand.pose_from = "label"
        else:
            pose = pose_from_landmarks(points, mask, size)
            if pose is not None:
                cand.yaw_deg, cand.pitch_deg = math.degrees(pose[0]), math.degrees(pose[1])
                cand.pose_from = "landmarks"
        out.append(cand)
    if not out:
        raise DatasetError(f"{root / 'index.jsonl'}: no faces in split {split!r}")
    return out


def candidates_from_aligned(folder: Path, contract: PreprocessContract) -> list[Candidate]:
    """A folder of aligned face images (convert.parity.aligned_image_files: one sub-folder per identity, or the
    images themselves, each its own identity), each resized whole to the input size."""
    from convert.parity import aligned_image_files
    from pfpld.recognition import read_aligned
    files, identities = aligned_image_files(folder)
    if not files:
        raise InputError(f"{folder}: no aligned face images (png, jpg, bmp; one sub-folder per identity, or the "
                         f"images themselves)")
    return [Candidate(origin=Path(os.path.relpath(path, folder)).as_posix(), crop=read_aligned(path, contract),
                      identity=identity) for path, identity in zip(files, identities)]


def aligned_folder_contract(folder: Path, size: tuple[int, int] | None = None) -> PreprocessContract | None:
    """The contract a folder of aligned faces is cut with when no model gives one: an aligned crop at `size` (rows,
    columns), else at the size its align.json records (`pfpld align`); None when neither says. Only the size and
    the crop rule matter to calibration crops (the reader checks those; colour order and scale apply later)."""
    from pfpld.align_images import aligned_size_of
    size = size or aligned_size_of(folder)
    if size is None:
        return None
    return PreprocessContract(input_size=size[0], input_width=size[1], crop=aligned_crop(*size))


def candidates_from_boxes(folder: Path, contract: PreprocessContract, model=None, spec=None) -> list[Candidate]:
    """Faces of a folder with boxes.txt (`file x1 y1 x2 y2`), cut with the contract. With `model` (a torch
    module of the same contract) and its `spec`, pose and eye state come from what it predicts (the pose when it has
    a pose output, the eye state when it predicts the 98 WFLW points); the rest is unknown."""
    out = []
    for entry in read_boxes_file(folder / BOXES_FILE):
        image = cv2.imread(str(entry.image), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"{entry.image} ({entry.where}): not a readable image")
        crop, _ = contract.crop_image(image, entry.box)
        name = Path(os.path.relpath(entry.image, folder)).as_posix()
        out.append(Candidate(origin=f"{name} {' '.join(f'{v:g}' for v in entry.box)}", crop=crop))
    if model is not None:
        import torch
        x = torch.from_numpy(np.stack([contract.to_tensor_layout(c.crop) for c in out]))
        if spec is None:
            raise InputError(f"{folder}: a model for the calibration candidates needs its spec")
        with torch.inference_mode():
            landmarks, pose = spec.decode([o.float().numpy() for o in model(x)])
        for i, cand in enumerate(out):
            if landmarks is not None and landmarks.shape[1] == NUM_POINTS:
                cand.eye = eye_state(landmarks[i])
            if pose is not None:
                cand.yaw_deg, cand.pitch_deg = math.degrees(pose[i][0]), math.degrees(pose[i][1])
                cand.pose_from = "model"
    return out


# --- selection ----------------------------------------------------------------------------------------------------
def select_spread(candidates: list[Candidate], n: int, seed: int) -> list[Candidate]:
    """n accepted candidates spread over the (yaw bin, pitch bin, eye state) cells. Each pick goes to the cell
    picked least so far, and among those to the one whose yaw bin, pitch bin and eye state are the least used
    (so with fewer picks than cells every dimension still spreads); ties and the face within a cell are drawn
    from a seeded generator."""
    rng = np.random.default_rng(seed)
    cells: dict[tuple, list[Candidate]] = {}
    for cand in candidates:
        if cand.rejected is None:
            cells.setdefault(cand.cell, []).append(cand)
    keys = sorted(cells, key=lambda k: tuple(str(v) for v in k))
    tie = {k: r for k, r in zip(keys, rng.permutation(len(keys)))}
    queues = {k: [cells[k][i] for i in rng.permutation(len(cells[k]))] for k in keys}
    picked = {k: 0 for k in keys}
    dims = max((len(k) for k in keys), default=0)     # yaw, pitch, eye; or the identity alone
    used: list[dict] = [dict() for _ in range(dims)]    # per dimension: bin -> picks
    chosen: list[Candidate] = []
    while len(chosen) < n:
        open_keys = [k for k in keys if queues[k]]
        if not open_keys:
            break
        key = min(open_keys, key=lambda k: (picked[k], sum(used[d].get(k[d], 0) for d in range(len(k))), tie[k]))
        chosen.append(queues[key].pop())
        picked[key] += 1
        for d in range(len(key)):
            used[d][key[d]] = used[d].get(key[d], 0) + 1
    return chosen


@dataclass
class CalibrationSummary:
    out: Path
    selected: int
    candidates: int
    rejected: dict[str, int]
    cells: int
    spread_over: str = "pose/eye cells"     # or "identities" (aligned faces)

    def line(self) -> str:
        rejected = ", ".join(f"{k} {v}" for k, v in self.rejected.items() if v) or "none"
        return (f"{self.selected} crops from {self.candidates} candidates over {self.cells} {self.spread_over}; "
                f"rejected: {rejected}")


def spread_tables(chosen: list[Candidate]) -> tuple[list[list[str]], dict[str, int]]:
    """Yaw x pitch counts of the chosen crops (rows yaw bins, columns pitch bins) and eye-state counts."""
    yaw_bins = list(range(len(YAW_EDGES_DEG) + 1)) + [None]
    pitch_bins = list(range(len(PITCH_EDGES_DEG) + 1)) + [None]
    header = ["yaw \\ pitch (deg)"] + [bin_label(p, PITCH_EDGES_DEG) for p in pitch_bins]
    rows = [header]
    for y in yaw_bins:
        counts = [sum(1 for c in chosen if c.cell[0] == y and c.cell[1] == p) for p in pitch_bins]
        rows.append([bin_label(y, YAW_EDGES_DEG)] + [str(v) for v in counts])
    eyes = {label: sum(1 for c in chosen if c.eye == key) for label, key in
            (("open", "open"), ("closed", "closed"), ("unknown", None))}
    return rows, eyes


def identity_counts(cands: list[Candidate]) -> dict[str, int]:
    """Faces per identity, identities in sorted order."""
    counts: dict[str, int] = {}
    for c in sorted(cands, key=lambda c: str(c.identity)):
        counts[str(c.identity)] = counts.get(str(c.identity), 0) + 1
    return counts


def luma_panel(ax, candidates: list[Candidate], chosen: list[Candidate], rules: QualityRules) -> None:
    """The mean luma of the candidates (grey) and of the chosen crops (blue), with the quality rules' limits."""
    bins = np.linspace(0, 255, 52)
    ax.hist([c.luma_mean for c in candidates], bins=bins, color="0.6")
    ax.hist([c.luma_mean for c in chosen], bins=bins, color="tab:blue")
    ax.axvline(rules.near_black_mean, color="tab:red", ls="--")
    ax.axvline(rules.near_white_mean, color="tab:red", ls="--")
    ax.set_title("mean luma (grey: candidates)")


def write_identity_picture(path: Path, candidates: list[Candidate], chosen: list[Candidate],
                           rules: QualityRules) -> None:
    """Aligned faces: crops picked per identity (every identity with a candidate, grey: its candidates) and luma."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 3.2))
    axes = fig.subplots(1, 2)
    every, picked = identity_counts(candidates), identity_counts(chosen)
    names = list(every)
    axes[0].bar(range(len(names)), [every[k] for k in names], color="0.8", label="candidates")
    axes[0].bar(range(len(names)), [picked.get(k, 0) for k in names], color="tab:blue", label="selected")
    axes[0].set_title(f"faces per identity ({len(picked)} of {len(names)} identities selected)")
    axes[0].set_xlabel("identity")
    axes[0].legend()
    luma_panel(axes[1], candidates, chosen, rules)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def write_spread_picture(path: Path, candidates: list[Candidate], chosen: list[Candidate],
                         rules: QualityRules) -> None:
    if any(c.identity is not None for c in candidates):
        write_identity_picture(path, candidates, chosen, rules)
        return
    from matplotlib.figure import Figure     # no pyplot: the caller's backend and figure registry stay untouched
    fig = Figure(figsize=(15, 3.2))
    axes = fig.subplots(1, 4)
    for ax, attr, title, edges in ((axes[0], "yaw_deg", "yaw (deg)", YAW_EDGES_DEG),
                                   (axes[1], "pitch_deg", "pitch (deg)", PITCH_EDGES_DEG)):
        every = [getattr(c, attr) for c in candidates if getattr(c, attr) is not None]
        picked = [getattr(c, attr) for c in chosen if getattr(c, attr) is not None]
        bins = np.linspace(-90, 90, 37)
        if every:
            ax.hist(np.clip(every, -90, 90), bins=bins, color="0.8", label="candidates")
        ax2 = ax.twinx()
        if picked:
            ax2.hist(np.clip(picked, -90, 90), bins=bins, color="tab:blue", alpha=0.7, label="selected")
        for e in edges:
            ax.axvline(e, color="k", lw=0.6, ls="--")
        ax.set_title(title)
        ax.set_ylabel("candidates")
        ax2.set_ylabel("selected", color="tab:blue")
    labels = ["open", "closed", "unknown"]
    keys = ["open", "closed", None]
    axes[2].bar(labels, [sum(c.eye == k for c in chosen) for k in keys], color="tab:blue")
    axes[2].set_title("eye state (selected)")
    luma_panel(axes[3], candidates, chosen, rules)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def identity_report_lines(chosen: list[Candidate], candidates: list[Candidate]) -> list[str]:
    """The spread section of a set of aligned faces: over identities, since they carry no pose or eye labels."""
    every, picked = identity_counts(candidates), identity_counts(chosen)
    per = sorted(picked.values())
    lines = ["## Spread of the selected crops", "",
             f"Aligned faces of an identity-labelled set carry no head pose and no eye state, so the crops are spread "
             f"over identities instead: round-robin, the least-picked identity first. {len(picked)} of "
             f"{len(every)} identities selected, {per[0]}-{per[-1]} crops each.", "",
             "| identity | candidates | selected |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {picked.get(k, 0)} |" for k, v in every.items()]
    return lines + ["", "![spread](spread.png)", ""]


def report_markdown(name: str, source: str, contract: PreprocessContract, chosen: list[Candidate],
                    candidates: list[Candidate], rules: QualityRules, seed: int) -> str:
    if contract.aligned:
        lines = [f"# Calibration set {name}", "",
                 f"{len(chosen)} crops of {contract.size_text} px (rows x columns) chosen from "
                 f"{len(candidates)} candidates of {source} (seed {seed}): aligned faces, each image resized whole "
                 f"(the contract's crop rule, box_source aligned). Stored as PNG in normal colour order; the network "
                 f"takes {contract.color_order}, which nnie_mapper's `[RGB_order] {contract.color_order}` and the "
                 f"other tools' pixel options apply when they read them.", "",
                 "## Rejected crops", "", "| rule | threshold | rejected |", "|---|---|---|"]
        rejected = {k: sum(c.rejected == k for c in candidates) for k in rules.describe()}
        lines += [f"| {k} | {v} | {rejected[k]} |" for k, v in rules.describe().items()]
        return "\n".join(lines + [""] + identity_report_lines(chosen, candidates))
    rows, eyes = spread_tables(chosen)
    rejected = {k: sum(c.rejected == k for c in candidates) for k in rules.describe()}
    pose_from = {k: sum(c.pose_from == k for c in chosen) for k in ("label", "landmarks", "model", None)}
    lines = [f"# Calibration set {name}", "",
             f"{len(chosen)} crops of {contract.input_size}x{contract.input_size} px chosen from {len(candidates)} "
             f"candidates of {source} (seed {seed}), cut with the contract's crop rule "
             f"(square of {contract.crop.expand:g} x the {contract.crop.box_source} box, centre shift "
             f"{contract.crop.shift_y:g}). Stored as PNG in normal colour order; the network takes "
             f"{contract.color_order}, which nnie_mapper's `[RGB_order] {contract.color_order}` and the other "
             f"tools' pixel options apply when they read them.", "",
             "## Rejected crops", "", "| rule | threshold | rejected |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {rejected[k]} |" for k, v in rules.describe().items()]
    lines += ["", "## Spread of the selected crops", "",
              "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += ["", f"Eye state: open {eyes['open']}, closed {eyes['closed']}, unknown {eyes['unknown']} "
                  f"(closed: eye aspect ratio <= 0.1 on either 8-point eye).",
              f"Pose from: dataset label {pose_from['label']}, fit of the 3D template to the landmarks "
              f"{pose_from['landmarks']}, model prediction {pose_from['model']}, unknown {pose_from[None]}.",
              "", "![spread](spread.png)", ""]
    return "\n".join(lines)


def make_calibration_set(data: Path, out: Path, *, n: int = 32, split: str = "train", seed: int = 0,
                         contract: PreprocessContract | None = None, model=None, spec=None,
                         rules: QualityRules = QualityRules(), force: bool = False) -> CalibrationSummary:
    """Choose n crops from `data` (prepared dataset, or a folder with boxes.txt) and write the calibration set
    folder `out` atomically. An existing calibration set is replaced only with force; anything else never
    (pfpld.fileio.check_output_folder)."""
    data, out = Path(data), Path(out)
    if n < 1:
        raise InputError(f"--n {n}: expected at least 1 crop")
    check_output_folder(out, "calib", force)       # before reading any candidate
    if (data / "index.jsonl").is_file():
        from pfpld.data.prepare import read_prepared_header
        contract = contract or PreprocessContract.from_dict(read_prepared_header(data)["contract"])
        candidates = candidates_from_prepared(data, split, contract)
        source = f"prepared dataset {data} (split {split})"
    elif (data / BOXES_FILE).is_file():
        contract = contract or PreprocessContract()
        candidates = candidates_from_boxes(data, contract, model, spec)
        source = f"{data} (boxes.txt)"
    elif contract is not None and contract.aligned:
        candidates = candidates_from_aligned(data, contract)
        source = f"{data} (aligned faces)"
    else:
        raise InputError(f"{data}: neither a prepared dataset (index.jsonl) nor a folder of images with boxes.txt"
                         + ("" if contract is not None else " (a folder of aligned faces needs the recognition "
                            "model: --model or --ckpt)"))
    for cand in candidates:
        cand.luma_mean, cand.clipped_fraction = crop_quality(cand.crop, rules)
        cand.rejected = rules.verdict(cand.luma_mean, cand.clipped_fraction)
    chosen = select_spread(candidates, n, seed)
    if not chosen:
        raise InputError(f"{data}: every candidate crop was rejected ({rules.describe()})")

    with output_folder(out, "calib", force) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        names = []
        for i, cand in enumerate(chosen):
            rel = f"{IMAGES_DIR}/{i:03d}.png"
            ok, buf = cv2.imencode(".png", cand.crop)
            if not ok:
                raise InputError(f"{out / rel}: cannot encode PNG")
            (tmp / rel).write_bytes(buf.tobytes())
            names.append(rel)
        (tmp / IMAGE_LIST).write_text("\n".join(names) + "\n")
        rejected = {k: sum(c.rejected == k for c in candidates) for k in rules.describe()}
        manifest = {
            "format": FORMAT, "version": VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": source, "split": split if (data / "index.jsonl").is_file() else None, "seed": seed,
            "contract": contract.to_dict(), "image_list": IMAGE_LIST,
            "image_list_paths": "relative to the folder holding image_list.txt",
            "image_encoding": "PNG, 8-bit, normal colour order (decoders give BGR; the network takes "
                              f"{contract.color_order})",
            "rules": {**asdict(rules), "described": rules.describe()}, "rejected": rejected,
            "spread_over": "identities" if contract.aligned else "pose and eye state",
            "bins": ({"identities": sorted(identity_counts(candidates))} if contract.aligned else
                     {"yaw_edges_deg": YAW_EDGES_DEG, "pitch_edges_deg": PITCH_EDGES_DEG}),
            "candidates": len(candidates), "cells": len({c.cell for c in candidates if c.rejected is None}),
            "images": [{"file": name, **cand.record()} for name, cand in zip(names, chosen)],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        (tmp / "report.md").write_text(report_markdown(out.name, source, contract, chosen, candidates, rules, seed))
        write_spread_picture(tmp / "spread.png", candidates, chosen, rules)
    return CalibrationSummary(out=out, selected=len(chosen), candidates=len(candidates), rejected=rejected,
                              cells=manifest["cells"], spread_over="identities" if contract.aligned else
                              "pose/eye cells")


# --- reading a set back ---------------------------------------------------------------------------------------------
@dataclass
class CalibrationSet:
    folder: Path
    files: list[Path]                   # absolute paths, in image_list order
    crops: list[np.ndarray]             # BGR uint8

    def inputs(self, contract: PreprocessContract) -> np.ndarray:
        """The crops as the network's NCHW float32 input."""
        return np.stack([contract.to_tensor_layout(c) for c in self.crops]).astype(np.float32)


def read_calibration_set(folder: Path, contract: PreprocessContract) -> CalibrationSet:
    """A calibration set written by `pfpld calib` (or any folder with image_list.txt of input-size crops)."""
    folder = Path(folder)
    listing = folder / IMAGE_LIST
    if not listing.is_file():
        raise InputError(f"{folder}: no {IMAGE_LIST} (make a calibration set with `pfpld calib`)")
    if (folder / MANIFEST).is_file():
        stored = json.loads((folder / MANIFEST).read_text()).get("contract")
        if stored:
            stored = PreprocessContract.from_dict(stored)
            if stored.input_hw != contract.input_hw or stored.crop != contract.crop:
                how = ("faces aligned at its size" if contract.aligned else
                       "a dataset prepared with its contract, or images with boxes.txt and --ckpt")
                raise InputError(f"{folder}: made for input size {stored.size_text} and crop {stored.crop}; the "
                                 f"model's contract says {contract.size_text} and {contract.crop} (rows x columns): "
                                 f"make the set for this model (`pfpld calib` on {how})")
    files, crops = [], []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        path = Path(line.strip())
        path = path if path.is_absolute() else folder / path
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"{listing}:{number}: {path} is not a readable image")
        if image.shape[:2] != contract.input_hw:
            raise InputError(f"{path}: {hw_text(*image.shape[:2])} (rows x columns), expected the input size "
                             f"{contract.size_text}")
        files.append(path)
        crops.append(image)
    if not crops:
        raise InputError(f"{listing}: lists no image")
    return CalibrationSet(folder, files, crops)
