"""`pfpld check-parity`: the same inputs through every parity format of an export (the registry's formats with a
tolerance: torch -> onnx -> onnxsim -> caffe -> ncnn, ...), each compared with the reference (torch, or the first
format for a user's ONNX) by output name, in the terms the model's spec gives its outputs (landmark NME, pose
degrees, embedding cosine). A folder whose files no longer match manifest.json fails, naming the changed files.

Inputs are N random tensors over the contract's value range plus N real-looking face crops (synthetic faces cut
with the contract's crop rule, or a folder of the user's). A model of an aligned contract (a recognition model)
takes aligned faces, whole images resized: the user's aligned images (a flat folder, an ImageFolder or LFW layout,
spread over identities, or a prepared set), else synthetic faces aligned on their five points with pfpld.align.
A stage that misses its tolerance is localised: its intermediate tensors are compared with the previous stage's
(ONNX tensor names through onnxruntime, Caffe blobs through the converter's name map; torch submodule tensors and
ncnn blobs, which have no ONNX names, by matching each one to the tensor holding the same values) and the first
layer that diverges is named. Results: a table, parity.md with a picture of every stage's landmarks (or pose axes)
on the same faces, and the verdict in manifest.json.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from pfpld.contract import PreprocessContract
from pfpld.data.boxes import BOXES_FILE, read_boxes_file
from pfpld.data.check_faces import synthetic_check_faces
from pfpld.data.sources.imagefolder import is_image_file
from pfpld.errors import ConversionError, InputError, one_line
from pfpld.fileio import atomic_path, write_json_atomic, write_text_atomic
from pfpld.metrics import nme_per_face
from pfpld.models.spec import ModelSpec, pose_radians
from pfpld.pose_bins import BIN_CENTRES_DEG
from pfpld.pose import project_axes
from pfpld.tables import markdown_table, text_table

from . import stages as _builtin_formats  # noqa: F401  (registers convert's formats)
from .artifacts import MANIFEST, ExportFolder
from .formats import FORMATS, Format, RunOptions
from .runtimes import CaffeRunner, NcnnRunner, OnnxRunner, Runner, TorchRunner
from .stages import FP16_MAX_ABS, FP32_MAX_ABS  # noqa: F401  (re-exported: the tolerances parity applies)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


# --- inputs -----------------------------------------------------------------------------------------------------
@dataclass
class ParityInputs:
    x: np.ndarray                   # (N, 3, H, W) float32, random inputs first, then faces
    n_random: int
    faces: str                      # where the face crops came from

    @property
    def face_slice(self) -> slice:
        return slice(self.n_random, len(self.x))


def random_inputs(contract: PreprocessContract, n: int, seed: int) -> np.ndarray:
    """Uniform over what the contract can produce from 8-bit pixels: (0..255 - mean) x scale per channel."""
    rng = np.random.default_rng(seed)
    low = (0.0 - np.asarray(contract.mean, dtype=np.float64)) * contract.scale
    high = (255.0 - np.asarray(contract.mean, dtype=np.float64)) * contract.scale
    u = rng.random((n, 3, *contract.input_hw))     # mean is in the network's channel order (to_tensor_layout)
    return (low[None, :, None, None] + u * (high - low)[None, :, None, None]).astype(np.float32)


# --- aligned faces (a contract with box_source "aligned") ----------------------------------------------------------
ALIGNED_RENDER_SIZE = 288           # synthetic pictures the aligned faces are warped from


def synthetic_aligned_faces(contract: PreprocessContract, n: int, seed: int) -> tuple[np.ndarray, str]:
    """n synthetic faces (render_face from `seed`) aligned as recognition sets are: the five points of each face
    (pfpld.align.five_points of its 98) warped onto the template at 112 rows and the input's aspect (ArcFace's
    112x112; SphereFace's 112x96 for a 112x96 input), then the contract's crop of that aligned image (the whole
    image, resized to the input size). Returns the BGR crops (N, H, W, 3) and a line saying how they were made."""
    from pfpld.align import TEMPLATE_SIZE, align_face, five_points, template_name
    from pfpld.data.synthetic import render_face
    rng = np.random.default_rng(seed)
    frame = (TEMPLATE_SIZE, round(TEMPLATE_SIZE * contract.width / contract.height))
    crops = []
    for _ in range(n):
        face = render_face(rng, image_size=ALIGNED_RENDER_SIZE)
        aligned, _ = align_face(face.image, five_points(face.points_98), frame)
        crops.append(contract.crop_image(aligned, contract.aligned_box(aligned))[0])
    stacked = np.stack(crops) if crops else np.zeros((0, *contract.input_hw, 3), np.uint8)
    return stacked, (f"{n} synthetic faces (render_face, seed {seed}) aligned on their five points to the "
                     f"{template_name(frame)} template (pfpld.align)")


def spread_over_identities(labels, n: int) -> list[int]:
    """Indexes of up to n items taken round-robin over their identities (sorted), first items first: n faces of
    as many identities as there are, so that a check never looks at one person only."""
    by_identity: dict = {}
    for i, label in enumerate(labels):
        by_identity.setdefault(label, []).append(i)
    queues = [by_identity[k] for k in sorted(by_identity, key=str)]
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][:n - len(picked)]
        depth += 1
    return picked


def aligned_image_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The aligned face images of a folder and their identity: one sub-folder per identity (an ImageFolder set, or
    LFW's <name>/<name>_NNNN.jpg; files beside them such as pairs.txt are ignored), else the folder's own images,
    each its own identity."""
    from pfpld.data.sources.imagefolder import read_imagefolder
    folder = Path(folder)
    if any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir()):
        found = read_imagefolder(folder)
        return [p for p, _ in found.items], [found.classes[k] for _, k in found.items]
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    return files, [p.name for p in files]


def prepared_split_with_faces(folder: Path) -> str:
    """The test split of a prepared set when it has faces, else train (an ImageFolder set is prepared as train)."""
    from pfpld.data.prepare import read_prepared_header
    counts = read_prepared_header(folder).get("counts") or {}
    return "test" if any(k.endswith("/test") and v for k, v in counts.items()) else "train"


def aligned_face_crops(folder: Path, contract: PreprocessContract, n: int) -> tuple[list[np.ndarray], str]:
    """Up to n aligned faces for an aligned contract, spread over identities: from a prepared set (its test split,
    else train; prepared with this contract), or from aligned images (aligned_image_files), each resized whole to
    the input size (pfpld.recognition.read_aligned). Returns the BGR crops and a line saying where they came from."""
    folder = Path(folder)
    if (folder / "index.jsonl").is_file():
        from pfpld.data.dataset import PreparedFaces
        split = prepared_split_with_faces(folder)
        faces = PreparedFaces(folder, split)
        check_prepared_contract(folder, faces.contract, contract)
        picks = spread_over_identities(faces.identity.tolist(), n)
        offset = (faces.crop_size_px - contract.input_size) // 2
        window = slice(offset, offset + contract.input_size)
        crops = [np.ascontiguousarray(faces.load_crop(i)[window, window]) for i in picks]
        identities = len({int(faces.identity[i]) for i in picks})
        return crops, f"{folder} ({split} split, {len(crops)} faces of {identities} identities)"
    from pfpld.recognition import read_aligned
    files, identities = aligned_image_files(folder)
    picks = spread_over_identities(identities, n)
    if not picks:
        raise InputError(f"{folder}: no aligned face images (png, jpg, bmp; one sub-folder per identity, or the "
                         f"images themselves) and no index.jsonl")
    crops = [read_aligned(files[i], contract) for i in picks]
    return crops, (f"{folder} ({len(crops)} aligned faces of {len({identities[i] for i in picks})} identities, "
                   f"resized whole)")


def folder_face_crops(folder: Path, contract: PreprocessContract, n: int) -> list[np.ndarray]:
    """Face crops from a folder: a prepared dataset (index.jsonl: its test split's contract crops), images with
    a boxes.txt (`file x1 y1 x2 y2` per line, cut with the contract), or square crops (resized to the input
    size when they are not already); for an aligned contract, aligned faces (aligned_face_crops)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (expected face crops, images with boxes.txt, or a prepared "
                         f"dataset)")
    if contract.aligned:
        return aligned_face_crops(folder, contract, n)[0]
    size = contract.input_size
    if (folder / "index.jsonl").is_file():
        from pfpld.data.dataset import PreparedFaces
        faces = PreparedFaces(folder, "test")
        check_prepared_contract(folder, faces.contract, contract)
        crops = []
        for i in range(min(n, len(faces))):
            stored = faces.load_crop(i)
            offset = (faces.crop_size_px - size) // 2
            crops.append(stored[offset:offset + size, offset:offset + size])
        return crops
    if (folder / BOXES_FILE).is_file():
        lines = read_boxes_file(folder / BOXES_FILE)[:n]
        return [contract.crop_image(_read_image(line.image), line.box)[0] for line in lines]
    crops = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]:
        image = _read_image(path)
        if image.shape[0] != image.shape[1]:
            raise InputError(f"{path}: {image.shape[1]}x{image.shape[0]} is not a square face crop (give "
                             f"boxes.txt for whole images)")
        if image.shape[0] != size:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        crops.append(image)
    if not crops:
        raise InputError(f"{folder}: no images (png, jpg, bmp), boxes.txt or index.jsonl")
    return crops


def check_prepared_contract(folder: Path, stored: PreprocessContract, contract: PreprocessContract) -> None:
    """A prepared dataset's centre crops are the model's crops only when it was prepared with the model's input
    size and crop rule (colour order, scale and mean apply when a crop becomes the input): say so in one line when
    it was not."""
    if (stored.input_hw, stored.crop) != (contract.input_hw, contract.crop):
        raise InputError(f"{folder}: prepared for {stored.size_text} px crops ({stored.crop}); the exported model "
                         f"takes {contract.size_text} px crops ({contract.crop}): prepare the data for this model")


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not a readable image")
    return image


def crop_from_input(contract: PreprocessContract, x: np.ndarray) -> np.ndarray:
    """A network input back to the BGR uint8 crop it was made from (for drawing)."""
    img = x.transpose(1, 2, 0) / np.float32(contract.scale) + np.asarray(contract.mean, dtype=np.float32)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[:, :, ::-1] if contract.color_order == "RGB" else img)


def face_crops(contract: PreprocessContract, n: int, images: Path | None, seed: int) -> tuple[list[np.ndarray], str]:
    """The face crops of a check and where they came from: the folder's (folder_face_crops), else synthetic faces
    made the way the contract takes them (aligned on five points, or cut from the landmark box)."""
    if images is not None:
        if contract.aligned and Path(images).is_dir():
            return aligned_face_crops(images, contract, n)
        return folder_face_crops(images, contract, n), str(images)
    if contract.aligned:
        crops, source = synthetic_aligned_faces(contract, n, seed)
        return list(crops), source
    synthetic = synthetic_check_faces(contract, n, seed)
    return list(synthetic.crops_bgr), synthetic.source


def build_inputs(contract: PreprocessContract, n: int, images: Path | None, seed: int) -> ParityInputs:
    crops, what = face_crops(contract, n, images, seed)
    faces = np.stack([contract.to_tensor_layout(c) for c in crops]) if crops else np.zeros((0, 3, *contract.input_hw))
    x = np.concatenate([random_inputs(contract, n, seed), faces.astype(np.float32)])
    return ParityInputs(x=x, n_random=n, faces=what)


# --- comparing ---------------------------------------------------------------------------------------------------
@dataclass
class StageParity:
    stage: str
    reference: str                          # the stage compared against ("" for the reference itself)
    tolerance: float | None = None
    max_abs: float | None = None
    mean_abs: float | None = None
    cosine: float | None = None             # smallest per-input cosine of all outputs concatenated
    nme: float | None = None                # landmark NME vs the reference (inter-ocular of the reference)
    pose_deg: float | None = None           # largest |pose difference| in degrees (pose or pose_deg output)
    per_output_max_abs: dict = field(default_factory=dict)     # name -> max |diff| (pose_deg: in radians)
    per_output_limit: dict = field(default_factory=dict)       # name -> what that max may be (output_limit)
    cosine_tolerance: float | None = None   # the format's limit on an embedding's 1 - cosine (None: no embedding)
    embedding_1mcos: float | None = None    # largest 1 - cosine(stage, reference) of the embedding over the inputs
    embedding_1mcos_mean: float | None = None
    verdict: str = "reference"              # reference | pass | FAIL | ERROR
    first_divergence: str | None = None
    error: str | None = None
    outputs: dict = field(default_factory=dict, repr=False)    # name -> (N, ...) values, not serialised

    @property
    def failed(self) -> bool:
        return self.verdict in ("FAIL", "ERROR")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("outputs")
        return d


# Output kinds judged against the tolerance as an absolute difference: landmarks in [0,1] of the crop, and poses in
# radians (a pose_deg output is converted to radians first, so one tolerance reads the same for every pose model).
# An embedding is judged by the cosine it is compared with (1 - cosine against the format's cosine_tolerance, on the
# worst input) and, like any other kind (pose_bins logits, an unknown output), by its max abs diff relative to its
# magnitude when that exceeds 1: the cosine alone is quadratic in a small error and lets a conversion fault through
# that the max abs diff catches (facerec, one weight of the global depthwise convolution 1.5 % off: 1 - cosine about
# 6e-10 under the fp32 limit of 1e-9, max abs about 1.3e-4 over the 8.8e-5 allowed on values up to 8.8).
ABSOLUTE_KINDS = ("landmarks", "pose", "pose_deg")
COSINE_KINDS = ("embedding",)


def one_minus_cosine(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per row, 1 - cosine of the two (N, D) arrays, in float64 (a zero vector against anything: 1)."""
    a, b = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(1) / np.where(norms > 0, norms, 1.0), 0.0)
    return 1.0 - cos


def judged_values(spec: ModelSpec, name: str, values: np.ndarray) -> np.ndarray:
    """An output's values in the unit its tolerance is stated in: poses in radians (pose_radians), else as they
    are."""
    output = next((o for o in spec.outputs if o.name == name), None)
    if output is not None and output.kind == "pose_deg":
        return pose_radians(output, values)
    return values


# A pose decoded in the graph from bin logits (HopeNet's softmax expectation) may differ by what its logits are
# allowed to, carried through the decode: with every logit within e, the softmax moves by at most 2 e in L1 and the
# expectation by at most (last - first bin centre) x e. Measured: ResNet-50 HopeNet at 224 (logits up to 13) ends
# 1.5e-5 rad off in Caffe and ncnn, a float32 effect of the logits, not a conversion fault (a wrong conversion moves
# the angles by degrees); the logits themselves stay within their own relative limit.
BIN_DECODE_GAIN_RAD = float(np.radians(BIN_CENTRES_DEG[-1] - BIN_CENTRES_DEG[0]))


def output_limit(spec: ModelSpec, name: str, tolerance: float, reference_judged: np.ndarray,
                 reference: dict[str, np.ndarray] | None = None) -> float:
    """The largest |difference| output `name` may show at this tolerance (its values as judged_values gives them):
    the tolerance itself for the ABSOLUTE_KINDS, else tolerance x max(1, max |reference|); a pose_deg output of a
    model that also outputs the pose_bins it is decoded from: at least the logits' limit x BIN_DECODE_GAIN_RAD."""
    kind = kind_of(spec, name)
    if kind == "pose_deg" and reference:
        logits = [reference[o.name] for o in spec.outputs if o.kind == "pose_bins" and o.name in reference]
        if logits:
            logit_limit = tolerance * max(1.0, max(float(np.abs(v).max()) for v in logits))
            return max(tolerance, logit_limit * BIN_DECODE_GAIN_RAD)
    if kind in ABSOLUTE_KINDS:
        return tolerance
    return tolerance * max(1.0, float(np.abs(reference_judged).max()))


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], face_slice: slice,
                    tolerance: float, spec: ModelSpec, cosine_tolerance: float | None = None) -> dict:
    """Metrics of a stage's outputs against the reference's, by output name, each in the unit its tolerance is
    stated in (judged_values: a pose in degrees is compared in radians); landmark NME and pose degrees for the
    outputs the spec says hold them; an embedding by 1 - cosine per input against cosine_tolerance (without one,
    like any other output)."""
    missing = set(reference) - set(candidate)
    if missing:
        raise ConversionError(f"outputs {sorted(missing)} are missing (has {sorted(candidate)})")
    n = next(iter(reference.values())).shape[0]
    per_output, limits, diffs = {}, {}, []
    embedding: dict[str, tuple[float, float]] = {}        # name -> (worst, mean) 1 - cosine
    ref_flat, cand_flat = [], []
    for name, ref in reference.items():
        ref2 = judged_values(spec, name, ref.reshape(n, -1).astype(np.float64))
        got = judged_values(spec, name, candidate[name].reshape(n, -1).astype(np.float64))
        if got.shape != ref2.shape:
            raise ConversionError(f"output {name!r} has {got.shape[1]} values per input, reference {ref2.shape[1]}")
        diff = np.abs(got - ref2)
        per_output[name] = float(diff.max())
        diffs.append(diff.reshape(-1))
        ref_flat.append(ref2)
        cand_flat.append(got)
        limits[name] = output_limit(spec, name, tolerance, ref2, reference)
        if kind_of(spec, name) in COSINE_KINDS and cosine_tolerance is not None:
            one_minus = one_minus_cosine(ref2, got)
            embedding[name] = (float(one_minus.max()), float(one_minus.mean()))
    a, b = np.concatenate(ref_flat, axis=1), np.concatenate(cand_flat, axis=1)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    metrics = {"max_abs": float(max(d.max() for d in diffs)), "mean_abs": float(np.concatenate(diffs).mean()),
               "cosine": float(cos.min()), "per_output_max_abs": per_output, "per_output_limit": limits,
               "passed": all(per_output[k] <= limits[k] for k in per_output) and
                         all(worst <= cosine_tolerance for worst, _ in embedding.values())}
    if embedding:
        metrics["embedding_1mcos"] = max(worst for worst, _ in embedding.values())
        metrics["embedding_1mcos_mean"] = max(mean for _, mean in embedding.values())
    landmarks, pose = spec.output_of_kind("landmarks"), spec.pose_output()
    if landmarks is not None and landmarks.norm_points is not None and landmarks.name in reference:
        rows = face_slice if face_slice.stop > face_slice.start else slice(None)
        k = landmarks.num_points
        ref_points = reference[landmarks.name][rows].reshape(-1, k, 2)
        got_points = candidate[landmarks.name][rows].reshape(-1, k, 2)
        metrics["nme"] = float(np.nanmean(nme_per_face(got_points, ref_points, norm_points=landmarks.norm_points)))
    if pose is not None and pose.name in reference:
        got_rad = pose_radians(pose, candidate[pose.name].reshape(n, 3).astype(np.float64))
        ref_rad = pose_radians(pose, reference[pose.name].reshape(n, 3).astype(np.float64))
        metrics["pose_deg"] = float(np.degrees(np.abs(got_rad - ref_rad)).max())
    return metrics


def kind_of(spec: ModelSpec, output_name: str) -> str:
    return next((o.kind for o in spec.outputs if o.name == output_name), "")


def _diverges(ref: np.ndarray, got: np.ndarray, rel: float) -> tuple[bool, float]:
    diff = float(np.abs(ref.reshape(-1).astype(np.float64) - got.reshape(-1)).max()) if ref.size else 0.0
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    return diff > rel * scale, diff / scale


def localize_by_name(previous: OnnxRunner, current: Runner, names: list[str], x1: np.ndarray, rel: float,
                     describe) -> str:
    """First tensor (in the previous stage's graph order) whose values differ between the two stages."""
    if not names:
        return "no intermediate tensor is shared with the previous stage"
    ref = previous.run_intermediates(x1, names)
    got = current.run_intermediates(x1, names)
    worst = (0.0, names[0])
    for name in names:
        bad, relative = _diverges(ref[name], got[name], rel)
        if bad:
            return f"first diverging layer: {describe(name)} (relative max abs diff {relative:.3g})"
        worst = max(worst, (relative, name))
    return (f"no single layer diverges from the previous stage (largest relative diff {worst[0]:.3g} at "
            f"{describe(worst[1])}): the difference accumulates over layers or comes from an earlier stage")


def localize_ncnn(previous: OnnxRunner, current: NcnnRunner, x1: np.ndarray, rel: float) -> str:
    """ncnn blobs have pnnx's numbers, not ONNX names: each blob is matched to the ONNX tensor of the same size
    holding the closest values; the first ncnn layer (file order) whose blob matches none is named."""
    onnx_names = previous.tensor_names()
    ref = previous.run_intermediates(x1, onnx_names)
    by_size: dict[int, list[str]] = {}
    for name, value in ref.items():
        by_size.setdefault(value.size, []).append(name)
    layers = [layer for layer in current.layers if layer.type not in ("Input", "Split") and layer.tops]
    blobs = [layer.tops[0] for layer in layers]
    got = current.run_intermediates(x1, blobs)
    worst = (0.0, "", "")
    for layer, blob in zip(layers, blobs):
        candidates = by_size.get(got[blob].size, [])
        if not candidates:
            continue
        relative, nearest = min((_diverges(ref[n], got[blob], rel)[1], n) for n in candidates)
        if relative > rel:
            return (f"first diverging layer: ncnn {layer.type} '{layer.name}' (blob {blob}; nearest ONNX tensor "
                    f"'{nearest}', relative max abs diff {relative:.3g})")
        worst = max(worst, (relative, layer.name, nearest))
    return (f"no single ncnn layer diverges from the ONNX model (largest relative diff {worst[0]:.3g} at "
            f"'{worst[1]}'): the difference accumulates over layers or comes from an earlier stage")


def localize_torch(previous: TorchRunner, current: OnnxRunner, x1: np.ndarray, rel: float) -> str:
    """Torch tensors have no ONNX names: every tensor a submodule receives or returns is recorded, and each ONNX
    node output (graph order) is matched to the torch tensor of the same size holding the closest values; the
    first node whose output matches none is named. A node with no same-sized torch tensor (an op written inline
    in a forward, a conv whose BatchNorm was folded) is skipped, not blamed."""
    import onnx
    model = onnx.load(str(current.path), load_external_data=False)
    producers = {out: node for node in model.graph.node for out in node.output if out}    # graph order
    names = list(producers)
    got = current.run_intermediates(x1, names)
    by_size: dict[int, list[tuple[str, np.ndarray]]] = {}
    for label, value in previous.module_tensors(x1):
        by_size.setdefault(value.size, []).append((label, value))
    worst = (0.0, "")
    for name in names:
        candidates = by_size.get(got[name].size, [])
        if not candidates:
            continue
        relative, nearest = min((_diverges(value, got[name], rel)[1], label) for label, value in candidates)
        node = producers[name]
        if relative > rel:
            return (f"first diverging layer: ONNX {node.op_type} '{node.name or name}' (tensor '{name}'; nearest "
                    f"torch tensor: {nearest}, relative max abs diff {relative:.3g})")
        worst = max(worst, (relative, node.name or name))
    return (f"no single ONNX node diverges from the torch module (largest relative diff {worst[0]:.3g} at "
            f"'{worst[1]}'): the difference accumulates over layers")


def localize(fmt: Format, runners: dict[str, Runner], x1: np.ndarray, rel: float) -> str:
    """Name the first layer of `fmt`'s files that diverges from the format it was made from (its first need, or
    the torch reference for a format made from the module), by the runners' kinds."""
    current = runners[fmt.name]
    previous_stage = fmt.needs[0] if fmt.needs else next((n for n, f in FORMATS.items() if f.reference), "")
    previous = runners.get(previous_stage)
    if isinstance(previous, TorchRunner) and isinstance(current, OnnxRunner):
        return localize_torch(previous, current, x1, rel)
    if not isinstance(previous, OnnxRunner):
        return f"no ONNX stage {previous_stage or '(reference)'} to localise against"
    if isinstance(current, NcnnRunner):
        return localize_ncnn(previous, current, x1, rel)
    graph_order = previous.tensor_names()
    if isinstance(current, CaffeRunner):
        names = [n for n in graph_order if n in current.blob_map or n in current.outputs]
        return localize_by_name(previous, current, names, x1, rel,
                                lambda n: f"Caffe layer '{current.blob_of(n)}' (ONNX tensor '{n}')")
    if not isinstance(current, OnnxRunner):
        return f"no localisation for {type(current).__name__}"
    shared = set(current.tensor_names())
    return localize_by_name(previous, current, [n for n in graph_order if n in shared], x1, rel,
                            lambda n: f"ONNX tensor '{n}'")


# --- the report ----------------------------------------------------------------------------------------------------
@dataclass
class ParityReport:
    folder: Path
    rows: list[StageParity]
    inputs: str
    n_random: int
    n_faces: int
    modified_files: list[str]
    checked: str
    picture: Path | None = None
    picture_shows: str = "landmarks"                      # what draw_stages drew (see picture_content)
    markdown: Path | None = None
    skipped: list[str] = field(default_factory=list)     # formats parity does not compare (int8, unknown)
    embedding: bool = False                              # the model's output is an embedding: judged by cosine

    @property
    def passed(self) -> bool:
        """Every stage within its tolerance, and every file still the one the manifest's sha256 names: a deployer
        trusts those hashes, so a changed file fails the check even when its numbers happen to agree."""
        return not any(r.failed for r in self.rows) and not self.modified_files

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def table_rows(self) -> list[list[str]]:
        def num(v, fmt="{:.3g}"):
            return "-" if v is None else fmt.format(v)
        rows = []
        if self.embedding:
            for r in self.rows:
                rows.append([r.stage, r.reference or "-", num(r.embedding_1mcos, "{:.2e}"),
                             num(r.embedding_1mcos_mean, "{:.2e}"), num(r.cosine_tolerance, "{:.0e}"),
                             num(r.max_abs, "{:.2e}"), num(r.mean_abs, "{:.2e}"), num(r.tolerance, "{:.0e}"),
                             r.verdict])
            return rows
        for r in self.rows:
            rows.append([r.stage, r.reference or "-", num(r.max_abs, "{:.2e}"), num(r.mean_abs, "{:.2e}"),
                         num(r.cosine, "{:.9f}"), num(r.nme, "{:.2e}"), num(r.pose_deg, "{:.2e}"),
                         num(r.tolerance, "{:.0e}"), r.verdict])
        return rows

    LANDMARK_POSE_HEADER = ["stage", "vs", "max abs diff", "mean abs diff", "cosine (min)", "landmark NME",
                            "pose diff (deg)", "tolerance", "verdict"]
    EMBEDDING_HEADER = ["stage", "vs", "1 - embedding cosine (worst)", "1 - embedding cosine (mean)",
                        "1 - cosine limit", "max abs diff", "mean abs diff", "tolerance", "verdict"]

    @property
    def HEADER(self) -> list[str]:      # noqa: N802 (read as the report's table header, as it always was)
        return self.EMBEDDING_HEADER if self.embedding else self.LANDMARK_POSE_HEADER

    def judged(self) -> str:
        """What the verdict judges, in one sentence."""
        if self.embedding:
            return ("judged on embedding cosine: per input, 1 - cosine between the stage's and the reference's "
                    "embedding, the worst input against the format's limit (fp32 1e-9, fp16 1e-4), and the max abs "
                    "diff against the format's tolerance relative to max(1, max |reference|), as for any output: "
                    "the cosine alone lets a small conversion fault through")
        return ""

    def notes(self) -> list[str]:
        lines = []
        for r in self.rows:
            if r.error:
                lines.append(f"{r.stage}: {r.error}")
            if r.first_divergence:
                lines.append(f"{r.stage}: {r.first_divergence}")
        if self.skipped:
            lines.append(f"not compared here: {', '.join(self.skipped)} (int8 formats: `check-parity --int8`)")
        if self.modified_files:
            lines.append(f"FAIL: files changed since export (sha256 differs from {MANIFEST}): "
                         f"{', '.join(self.modified_files)}")
        return lines

    def table(self) -> str:
        lines = text_table([self.HEADER] + self.table_rows())
        lines.append(f"inputs: {self.n_random} random + {self.n_faces} face crops ({self.inputs}); "
                     f"verdict: {self.verdict.upper()}" + (f" ({self.judged()})" if self.embedding else ""))
        return "\n".join(lines + self.notes())

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "checked": self.checked, "inputs": {"random": self.n_random,
                "faces": self.n_faces, "faces_from": self.inputs},
                "tolerance": {r.stage: r.tolerance for r in self.rows if r.tolerance is not None},
                "tolerance_applies_to": "landmarks ([0,1]) and pose (radians; a pose in degrees converted), "
                                        "absolute; other outputs x max(1, max |reference|)",
                **({"judged_on": "embedding cosine",
                    "cosine_tolerance": {r.stage: r.cosine_tolerance for r in self.rows
                                         if r.cosine_tolerance is not None}} if self.embedding else {}),
                "stages": [r.to_dict() for r in self.rows], "modified_files": self.modified_files,
                "not_compared": self.skipped,
                "report": self.markdown.name if self.markdown else None,
                "picture": self.picture.name if self.picture else None}

    def to_markdown(self) -> str:
        lines = [f"# Parity of {self.folder.name}", "",
                 f"Checked {self.checked}: {self.n_random} random inputs and {self.n_faces} face crops "
                 f"({self.inputs}), each stage against `{self.rows[0].stage}` by output name.", ""]
        lines += markdown_table(self.HEADER, self.table_rows())
        if self.embedding:
            lines += ["", f"**Verdict: {self.verdict.upper()}**, {self.judged()}. The limit is the format's "
                      f"`cosine_tolerance` in the registry (a direction off by at most sqrt(2 x limit) of the "
                      f"embedding's length) and its `tolerance` on the max abs diff, relative to max(1, max "
                      f"|reference|)."]
        else:
            lines += ["", f"**Verdict: {self.verdict.upper()}.** Tolerance: each stage's max abs diff (the "
                      f"tolerance column: its format's entry in the registry), absolute on landmarks ([0,1] of the "
                      f"crop) and pose (radians; an output in degrees is converted first), relative to max(1, max "
                      f"|reference|) on other outputs (logits); NME is normalised by the reference prediction's own "
                      f"normalising points."]
        notes = self.notes()
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
        if self.picture:
            lines += ["", f"![{self.picture_shows} of every stage]({self.picture.name})", "",
                      f"Each row is one face, each column one stage's {self.picture_shows} on it."]
        return "\n".join(lines) + "\n"


def picture_content(spec: ModelSpec) -> str | None:
    """What the parity picture shows of a model: its landmarks when it has them, else its head pose as axes (a pose
    model), else nothing (None)."""
    if spec.output_of_kind("landmarks") is not None:
        return "landmarks"
    if spec.pose_output() is not None:
        return "pose axes"
    return None


def draw_stages(contract: PreprocessContract, spec: ModelSpec, faces: np.ndarray, rows: list[StageParity],
                path: Path, max_faces: int = 4, zoom: int = 2) -> Path | None:
    """A grid: one face per row, one stage per column, each with that stage's landmarks (or, for a model without
    landmarks, its pose as the head's x, y, z axes from the crop centre)."""
    shows = picture_content(spec)
    output = (spec.output_of_kind("landmarks") if shows == "landmarks" else spec.pose_output()) if shows else None
    stages = [r for r in rows if output is not None and output.name in r.outputs]
    if not len(faces) or not stages:
        return None
    size = contract.input_size * zoom
    header = 24
    grid = np.full((header + size * min(max_faces, len(faces)), size * len(stages), 3), 255, np.uint8)
    for col, row in enumerate(stages):
        cv2.putText(grid, row.stage, (col * size + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        for i, x in enumerate(faces[:max_faces]):
            tile = cv2.resize(crop_from_input(contract, x), (size, size), interpolation=cv2.INTER_LINEAR)
            colour = (0, 200, 0) if not row.failed else (0, 0, 255)
            if shows == "landmarks":
                _draw_points(tile, row.outputs[output.name][i].reshape(-1, 2) * size, colour)
            else:
                _draw_pose_axes(tile, pose_radians(output, row.outputs[output.name][i].reshape(3).astype(np.float64)),
                                failed=row.failed)
            grid[header + i * size:header + (i + 1) * size, col * size:(col + 1) * size] = tile
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), grid):
            raise ConversionError(f"{path}: could not write the picture")
    return path


def _draw_points(tile: np.ndarray, points: np.ndarray, colour) -> None:
    size = tile.shape[0]
    for px, py in points:
        if np.isfinite(px) and np.isfinite(py) and -size < px < 2 * size and -size < py < 2 * size:
            cv2.circle(tile, (int(round(px)), int(round(py))), 2, colour, -1, cv2.LINE_AA)


def _draw_pose_axes(tile: np.ndarray, pose_rad: np.ndarray, failed: bool) -> None:
    """x red, y green, z blue from the centre (as `pfpld predict` draws them); all red on a failed stage."""
    if not np.all(np.isfinite(pose_rad)):
        return
    size = tile.shape[0]
    centre = np.array([size / 2.0, size / 2.0])
    colours = [(0, 0, 255)] * 3 if failed else [(0, 0, 255), (0, 200, 0), (255, 0, 0)]
    for (dx, dy), colour in zip(project_axes(pose_rad, length=0.4 * size), colours):
        tip = centre + (dx, dy)
        cv2.arrowedLine(tile, (int(centre[0]), int(centre[1])), (int(round(tip[0])), int(round(tip[1]))), colour,
                        2, cv2.LINE_AA, tipLength=0.15)


def parity_formats(export: ExportFolder) -> tuple[list[Format], list[str]]:
    """The folder's formats that parity runs (the reference and every format with a tolerance), in chain order,
    and the names of those it skips (int8 formats, judged by the int8 check; formats this version does not know)."""
    run, skipped = [], []
    for name in export.formats():
        fmt = FORMATS.get(name)
        if fmt is not None and (fmt.reference or fmt.parity):
            run.append(fmt)
        else:
            skipped.append(name)
    return run, skipped


def check_parity(export_dir: Path, images: Path | None = None, n: int = 8, seed: int = 0, threads: int = 1,
                 write: bool = True) -> ParityReport:
    """Run every parity format of the export on the same inputs; returns the report (and, with write, updates
    manifest.json and writes parity.md + parity.png in the export folder)."""
    export = ExportFolder.open(Path(export_dir))
    modified = export.modified_files()
    inputs = build_inputs(export.contract, n, images, seed)
    formats, skipped = parity_formats(export)
    options = RunOptions(threads=threads)
    runners: dict[str, Runner] = {}
    rows: list[StageParity] = []
    reference: StageParity | None = None
    for fmt in formats:
        stage = fmt.name
        tolerance = None if reference is None and fmt.reference else fmt.tolerance
        try:
            runners[stage] = export.runner(stage, options)
            outputs = runners[stage].run(inputs.x)
        except Exception as exc:   # a stage that cannot even run is a failed stage, not a crash
            rows.append(StageParity(stage, reference.stage if reference else "", tolerance, verdict="ERROR",
                                    error=f"cannot run: {one_line(exc, 300)}"))
            continue
        if reference is None:
            reference = StageParity(stage, "", outputs=outputs)
            rows.append(reference)
            continue
        cosine_tolerance = fmt.cosine_tolerance if export.spec.output_of_kind("embedding") is not None else None
        row = StageParity(stage, reference.stage, tolerance, cosine_tolerance=cosine_tolerance, outputs=outputs)
        try:
            m = compare_outputs(reference.outputs, outputs, inputs.face_slice, tolerance, export.spec,
                                cosine_tolerance)
        except ConversionError as exc:
            row.verdict, row.error = "ERROR", str(exc)
            rows.append(row)
            continue
        row.max_abs, row.mean_abs, row.cosine = m["max_abs"], m["mean_abs"], m["cosine"]
        row.nme, row.pose_deg, row.per_output_max_abs = m.get("nme"), m.get("pose_deg"), m["per_output_max_abs"]
        row.per_output_limit = m["per_output_limit"]
        row.embedding_1mcos, row.embedding_1mcos_mean = m.get("embedding_1mcos"), m.get("embedding_1mcos_mean")
        row.verdict = "pass" if m["passed"] else "FAIL"
        if not m["passed"]:
            worst = int(np.argmax(sum(np.abs(outputs[k].reshape(len(inputs.x), -1) -
                                             reference.outputs[k].reshape(len(inputs.x), -1)).max(1)
                                      for k in reference.outputs)))
            try:
                row.first_divergence = localize(fmt, runners, inputs.x[worst:worst + 1],
                                                fmt.layer_tolerance or 10 * tolerance)
            except Exception as exc:   # localisation is a diagnosis: its failure must not hide the verdict
                row.first_divergence = f"could not localise ({one_line(exc)})"
        rows.append(row)
    report = ParityReport(folder=export.folder, rows=rows, inputs=inputs.faces, n_random=inputs.n_random,
                          n_faces=len(inputs.x) - inputs.n_random, modified_files=modified, skipped=skipped,
                          embedding=export.spec.output_of_kind("embedding") is not None,
                          checked=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if write:
        report.picture = draw_stages(export.contract, export.spec, inputs.x[inputs.face_slice], rows,
                                     export.folder / "parity.png")
        report.picture_shows = picture_content(export.spec) or report.picture_shows
        report.markdown = export.folder / "parity.md"
        write_text_atomic(report.markdown, report.to_markdown())
        export.record_check("parity", report.to_dict())
    return report


def write_report_json(report: ParityReport, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report.to_dict())
