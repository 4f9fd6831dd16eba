"""Synthetic identities for face recognition: the built-in data of the `facerec` demo, since no face-recognition
set can be downloaded here.

An identity is a fixed head shape (FaceShape), a fixed appearance (skin, hair colour, style and hairline, iris,
lips, make-up) and a fixed random texture design (skin blotches, hair strands, brow strokes: FaceParams
.texture_seed), all drawn from a generator seeded by (seed, identity index). Each picture of it draws its own
pose, expression, lighting, mild blur and noise, and background. Faces are rendered small at one constant scale
(so the texture design repeats exactly), aligned through their own exact 98 points (pfpld.align: five_points,
align_face) to ArcFace's 112x112 frame, and written the way recognition data is distributed:

  out/imagefolder/<identity>/<NNNN>.jpg     training identities, ImageFolder layout (sources/imagefolder.py)
  out/lfw/<name>/<name>_<NNNN>.jpg          held-out identities, never in the training folder (sources/lfw.py)
  out/pairs.txt                             LFW pairs over the held-out identities, person-disjoint folds
  out/preview.png, out/synth.json           a contact sheet (one identity a row) and what was generated
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..align import align_face, five_points
from ..errors import InputError
from ..fileio import output_folder
from ..landmarks import NUM_POINTS
from ..progress import progress as progress_bar
from . import face3d
from .face3d import FaceShape
from .sources.common import write_jpeg
from .sources.lfw import PAIRS_FILE, DifferentPair, Fold, SamePair, image_path, write_pairs
from .synthetic import (SYNTH_JSON, Appearance, Capture, FaceParams, SynthFace, contact_sheet, render_face,
                        sample_appearance, sample_expression, sample_shape)

GENERATOR = "pfpld.data.identities"
GENERATOR_VERSION = "1.0"
IMAGEFOLDER_DIR = "imagefolder"
LFW_DIR = "lfw"
PREVIEW_FILE = "preview.png"

ALIGNED_SIZE = 112                 # ArcFace's crop
RENDER_SIZE_PX = 192               # the rendered picture; the aligned crop (rotated by the roll) stays inside it
RENDER_SCALE_PX = 44.0             # px per model unit: eye centres ~38 px apart, the template's 35 after alignment
YAW_SD_DEG, YAW_LIMIT_DEG = 18.0, 40.0
PITCH_SD_DEG, PITCH_LIMIT_DEG = 10.0, 25.0
ROLL_SD_DEG, ROLL_LIMIT_DEG = 12.0, 30.0

DEFAULT_PER_IDENTITY = 15
DEFAULT_HELDOUT = 50
DEFAULT_PAIRS_PER_FOLD = 30
DEFAULT_FOLDS = 10
PREVIEW_IDENTITIES = 8
PREVIEW_IMAGES = 8

# independent random streams of one seed (synthetic.py's formats use 1-4)
_IDENTITY_STREAM, _IMAGE_STREAM, _PAIRS_STREAM = 11, 12, 13


def identity_name(index: int) -> str:
    return f"id_{index:05d}"


@dataclass(frozen=True)
class Identity:
    """What stays the same on every picture of one person."""
    index: int
    shape: FaceShape
    appearance: Appearance         # its lighting is replaced per picture
    texture_seed: int

    @property
    def name(self) -> str:
        return identity_name(self.index)


def sample_identity(seed: int, index: int) -> Identity:
    """Identity `index` of the set generated with `seed`: independent of every other identity."""
    rng = np.random.default_rng([seed, _IDENTITY_STREAM, index])
    shape = sample_shape(rng)
    appearance = sample_appearance(rng)
    return Identity(index=index, shape=shape, appearance=appearance, texture_seed=int(rng.integers(2 ** 63)))


def _angle_deg(rng: np.random.Generator, sd: float, limit: float) -> float:
    return float(np.clip(rng.normal(0.0, sd), -limit, limit))


def picture_params(identity: Identity, rng: np.random.Generator) -> FaceParams:
    """One picture of `identity`: its own pose (moderate yaw and pitch; roll, which alignment removes), expression,
    lighting, blur, noise and background; sized so the face is drawn at RENDER_SCALE_PX px per model unit
    whatever the pose (place_face scales the rotated landmark box to face_frac of the picture)."""
    yaw, pitch, roll = (np.radians(_angle_deg(rng, sd, lim)) for sd, lim in (
        (YAW_SD_DEG, YAW_LIMIT_DEG), (PITCH_SD_DEG, PITCH_LIMIT_DEG), (ROLL_SD_DEG, ROLL_LIMIT_DEG)))
    expression = sample_expression(rng)
    lighting = sample_appearance(rng).lighting
    rotated = face3d.model_points(identity.shape, expression)[:NUM_POINTS] @ face3d.rotation_matrix(pitch, yaw, roll).T
    extent = float(np.ptp(rotated[:, :2], axis=0).max())
    capture = Capture(
        face_frac=RENDER_SCALE_PX * extent / RENDER_SIZE_PX,
        offset=(float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3))),
        blur_sigma_rel=float(rng.uniform(0.002, 0.008)) if rng.random() < 0.25 else 0.0,
        noise_sigma=float(rng.uniform(1.0, 6.0)) if rng.random() < 0.35 else 0.0,
        occluder="none", background=str(rng.choice(["shapes", "texture", "indoor"])))
    return FaceParams(shape=identity.shape, expression=expression, pose_rad=(float(yaw), float(pitch), float(roll)),
                      appearance=dataclasses.replace(identity.appearance, lighting=lighting), capture=capture,
                      texture_seed=identity.texture_seed)


@dataclass
class AlignedFace:
    image: np.ndarray              # ALIGNED_SIZE x ALIGNED_SIZE BGR uint8
    points5: np.ndarray            # (5, 2) the rendered face's 5 points in the aligned crop
    face: SynthFace                # the render it was cut from


def render_identity_face(identity: Identity, seed: int, image_index: int, size: int = ALIGNED_SIZE) -> AlignedFace:
    """Picture `image_index` (0-based) of `identity`, rendered and aligned; re-rendered alone exactly as written."""
    rng = np.random.default_rng([seed, _IMAGE_STREAM, identity.index, image_index])
    face = render_face(rng, image_size=RENDER_SIZE_PX, params=picture_params(identity, rng))
    points5 = five_points(face.points_98)
    aligned, matrix = align_face(face.image, points5, size=size)
    return AlignedFace(image=aligned, points5=points5 @ matrix[:, :2].T + matrix[:, 2], face=face)


# --- LFW pairs over the held-out identities -----------------------------------------------------------------------

def split_folds(names: list[str], folds: int) -> list[list[str]]:
    """Held-out identities in `folds` contiguous, person-disjoint groups (sizes differ by at most one)."""
    return [list(part) for part in np.array_split(np.array(names, dtype=object), folds)]


def check_pairs_possible(heldout: int, per_identity: int, pairs_per_fold: int, folds: int) -> None:
    """InputError (one line, what to raise) unless every fold can hold pairs_per_fold distinct same-person and
    different-person pairs."""
    if folds < 1:
        raise InputError(f"--folds {folds}: expected at least 1")
    if pairs_per_fold < 1:
        raise InputError(f"--pairs-per-fold {pairs_per_fold}: expected at least 1")
    if heldout < 2 * folds:
        raise InputError(f"--heldout {heldout}: {folds} person-disjoint folds need at least {2 * folds} held-out "
                         f"identities (2 a fold, for different-person pairs)")
    smallest = heldout // folds
    same = smallest * (per_identity * (per_identity - 1) // 2)
    different = smallest * (smallest - 1) // 2 * per_identity ** 2
    if pairs_per_fold > min(same, different):
        raise InputError(f"--pairs-per-fold {pairs_per_fold}: a fold of {smallest} identities x {per_identity} images "
                         f"has only {same} same-person and {different} different-person pairs; raise --heldout or "
                         f"--per-identity, or lower --pairs-per-fold")


def choose_pairs(fold_names: list[list[str]], per_identity: int, pairs_per_fold: int,
                 rng: np.random.Generator) -> list[Fold]:
    """Per fold, pairs_per_fold distinct same-person pairs (two different images of one identity) and as many
    distinct different-person pairs, drawn uniformly among all such pairs of the fold's identities; sorted by
    name as LFW's are. Image numbers are 1-based."""
    k = per_identity
    within = [(i, j) for i in range(1, k + 1) for j in range(i + 1, k + 1)]
    out = []
    for names in fold_names:
        picks = rng.choice(len(names) * len(within), size=pairs_per_fold, replace=False)
        same = sorted((SamePair(names[p // len(within)], *within[p % len(within)]) for p in picks.tolist()),
                      key=lambda s: (s.name, s.index_a, s.index_b))
        couples = [(a, b) for a in range(len(names)) for b in range(a + 1, len(names))]
        picks = rng.choice(len(couples) * k * k, size=pairs_per_fold, replace=False)
        different = []
        for p in picks.tolist():
            c, rest = divmod(p, k * k)
            a, b = couples[c]
            different.append(DifferentPair(names[a], rest // k + 1, names[b], rest % k + 1))
        out.append(Fold(same=same, different=sorted(different, key=lambda d: (d.name_a, d.index_a, d.name_b,
                                                                                d.index_b))))
    return out


# --- the whole set -----------------------------------------------------------------------------------------------

@dataclass
class IdentitySummary:
    out: Path
    seed: int
    identities: int                # training identities (imagefolder/)
    heldout: int                   # held-out identities (lfw/)
    per_identity: int
    folds: int
    pairs_per_fold: int
    images: dict[str, int]         # "imagefolder" / "lfw" -> image files written
    seconds: float

    def table(self) -> str:
        n = sum(self.images.values())
        lines = [f"{'part':<14}{'identities':>11}{'images':>8}", "-" * 33,
                 f"{'imagefolder':<14}{self.identities:>11}{self.images['imagefolder']:>8}",
                 f"{'lfw':<14}{self.heldout:>11}{self.images['lfw']:>8}", "-" * 33,
                 f"{PAIRS_FILE}: {self.folds} folds x ({self.pairs_per_fold} same + {self.pairs_per_fold} different)",
                 f"{n} aligned {ALIGNED_SIZE}x{ALIGNED_SIZE} faces in {self.seconds:.1f} s "
                 f"({1000 * self.seconds / max(n, 1):.0f} ms/face), seed {self.seed} -> {self.out}"]
        return "\n".join(lines)


def _labelled(image: np.ndarray, text: str) -> np.ndarray:
    thumb = image.copy()
    cv2.rectangle(thumb, (0, 0), (thumb.shape[1], 13), (0, 0, 0), -1)
    cv2.putText(thumb, text, (3, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1, cv2.LINE_AA)
    return thumb


def generate_identities(out: Path, identities: int, per_identity: int = DEFAULT_PER_IDENTITY,
                        heldout: int = DEFAULT_HELDOUT, pairs_per_fold: int = DEFAULT_PAIRS_PER_FOLD,
                        folds: int = DEFAULT_FOLDS, seed: int = 0, progress: bool = True,
                        force: bool = False) -> IdentitySummary:
    """Render `identities` training identities and `heldout` other ones, `per_identity` aligned faces each, and
    write the ImageFolder set, the LFW folder and pairs.txt (`folds` person-disjoint folds of pairs_per_fold same
    and pairs_per_fold different pairs) under `out`, with preview.png and synth.json. Deterministic for a seed.
    Written to a temporary sibling folder and renamed at the end; an earlier synth output at `out` is replaced
    only with force (pfpld.fileio.check_output_folder)."""
    out = Path(out)
    if identities < 1:
        raise InputError(f"--identities {identities}: expected at least 1 training identity")
    if per_identity < 2:
        raise InputError(f"--per-identity {per_identity}: expected at least 2 images an identity (same-person pairs)")
    check_pairs_possible(heldout, per_identity, pairs_per_fold, folds)
    train_names = [identity_name(i) for i in range(identities)]
    heldout_indices = list(range(identities, identities + heldout))
    start = time.perf_counter()
    preview_rows = set(range(min(PREVIEW_IDENTITIES, identities + heldout)))
    thumbs: list[np.ndarray] = []
    columns = min(PREVIEW_IMAGES, per_identity)
    with output_folder(out, "synth", force) as tmp:
        total = (identities + heldout) * per_identity
        with progress_bar(total=total, desc="synth identities", unit="face", enabled=progress) as bar:
            for index in range(identities + heldout):
                identity = sample_identity(seed, index)
                for j in range(per_identity):
                    aligned = render_identity_face(identity, seed, j)
                    if index < identities:
                        path = tmp / IMAGEFOLDER_DIR / identity.name / f"{j + 1:04d}.jpg"
                    else:
                        path = image_path(tmp / LFW_DIR, identity.name, j + 1)
                    write_jpeg(path, aligned.image)
                    if index in preview_rows and j < columns:
                        thumbs.append(_labelled(aligned.image, identity.name) if j == 0 else aligned.image)
                    bar.update(1)
        fold_names = split_folds([identity_name(i) for i in heldout_indices], folds)
        pair_folds = choose_pairs(fold_names, per_identity, pairs_per_fold,
                                  np.random.default_rng([seed, _PAIRS_STREAM]))
        write_pairs(tmp / PAIRS_FILE, pair_folds)
        cv2.imwrite(str(tmp / PREVIEW_FILE), contact_sheet(thumbs, columns=columns))
        seconds = time.perf_counter() - start
        images = {IMAGEFOLDER_DIR: identities * per_identity, LFW_DIR: heldout * per_identity}
        (tmp / SYNTH_JSON).write_text(json.dumps({
            "generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed, "identities": identities,
            "heldout": heldout, "per_identity": per_identity, "folds": folds, "pairs_per_fold": pairs_per_fold,
            "aligned_size": ALIGNED_SIZE, "render_size": RENDER_SIZE_PX, "images": images,
            "train_identities": [train_names[0], train_names[-1]],
            "heldout_identities": [identity_name(heldout_indices[0]), identity_name(heldout_indices[-1])],
            "seconds": round(seconds, 2)}, indent=2) + "\n")
    return IdentitySummary(out=out, seed=seed, identities=identities, heldout=heldout, per_identity=per_identity,
                           folds=folds, pairs_per_fold=pairs_per_fold, images=images, seconds=seconds)
