"""`pfpld check-parity DIR --int8`: what int8 costs, measured before the board as the task's own metrics (landmark
NME on the model's own points and pose MAE in degrees on held-out labelled faces, for the outputs the model's spec
declares), each int8 stage against the float model on the same faces:

- every deployed int8 format of the export (the registry's formats marked int8: nnie -> the NNIE simulation at the
  exported precision, onnx-int8 -> onnxruntime QDQ, ncnn-int8 -> the ncnn runtime), run by its registry runner;
- what-if rows: the NNIE simulation at the two other precisions (what _hp / int16 would buy), and estimates for
  formats the export did not write but --calib can make now (NNIE simulation of the Caffe files, QDQ).

Budget, on the metric the model's task chooses best.pt on (pfpld.models.model_task: select_metric): a landmark
model may lose at most 0.3 NME points (percentage points of NME), a pose model at most 0.5 degrees of pose MAE
(the mean of yaw, pitch and roll), for the deployed stages. The held-out faces carry 98-point labels; a model with
other points is judged on its own points (Task.map_points), normalised by its spec's norm_points.

A recognition model (an "embedding" output) is judged in verification terms: every int8 stage's embedding against
the float model's on the same aligned faces (cosine, mean and worst), and with a pairs file (LFW's pairs.txt, images
under its folder) the 10-fold verification accuracy of the float model and of each stage (pfpld.verification); the
budget is at most 1 accuracy point lost, or without pairs a mean cosine of at least 0.99 against float.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from convert.artifacts import ExportFolder
from convert.formats import FORMATS, RunOptions
from convert.parity import check_prepared_contract, face_crops, one_minus_cosine
from convert.runtimes import OnnxRunner, Runner
from pfpld.contract import PreprocessContract
from pfpld.data.check_faces import synthetic_check_faces
from pfpld.errors import ConversionError, InputError, ModelError, one_line
from pfpld.fileio import write_text_atomic
from pfpld.landmarks import NUM_POINTS, POINT_LAYOUTS, layout_for, map_points_98
from pfpld.metrics import nme_per_face, pose_mae_deg, pose_protocol_mask
from pfpld.models import model_task
from pfpld.models.spec import ModelSpec, OutputSpec, pose_radians
from pfpld.progress import progress
from pfpld.recognition import PairImages, read_aligned
from pfpld.tables import markdown_table, text_table

from .calibration import read_calibration_set
from .nnie import default_hp_layers
from .nnie_sim import PRECISIONS, CaffeGraph, NniePlan, NnieSimRunner, calibrate_ranges, hp_layers_of, read_ranges

BUDGET_NME_POINTS = 0.3
# A pose model's budget: 0.5 degrees of mean pose MAE, about 8 % of HopeNet's 6.16 degrees on AFLW2000 (the NME
# budget is about 6 % of a 5 % NME).
BUDGET_POSE_MAE_DEG = 0.5
# A recognition model's budget: at most 1 point of 10-fold verification accuracy lost against the float model. On LFW
# (6,000 pairs) that is 60 pairs; int8 MobileFaceNets are reported within a few tenths of a point of float, so a point
# says the quantisation itself is broken, not unlucky. On a small pairs file one pair weighs 100 / pairs points: the
# report states that resolution, and a budget below it cannot be resolved.
BUDGET_VERIFICATION_POINTS = 1.0
# Without pairs: the mean cosine between int8 and float embeddings of the same faces, at least 0.99 (quantised NNIE
# face models are reported at 0.991-0.996 against float, FACTS section 6).
BUDGET_EMBEDDING_COSINE = 0.99
INT8_RUN_CHUNK = 32                 # images per progress step when a stage embeds many faces
HELDOUT_SEED_OFFSET = 20_000        # synthetic held-out faces come from a generator no dataset used


@dataclass
class HeldOut:
    x: np.ndarray                   # (N, 3, S, S) network inputs
    points: np.ndarray              # (N, 98, 2) ground truth in [0,1] of the crop
    mask: np.ndarray                # (N, 98)
    pose: np.ndarray                # (N, 3) radians (zeros where unknown)
    has_pose: np.ndarray            # (N,)
    source: str
    pairs: PairImages | None = None     # recognition models: the verification pairs over these faces (rows)


def unlabelled(x: np.ndarray, source: str, pairs: PairImages | None = None) -> HeldOut:
    """Held-out faces without landmark or pose labels (aligned faces of a recognition model): every mask False."""
    n = len(x)
    return HeldOut(x=x, points=np.zeros((n, NUM_POINTS, 2), np.float32), mask=np.zeros((n, NUM_POINTS), bool),
                   pose=np.zeros((n, 3), np.float32), has_pose=np.zeros(n, bool), source=source, pairs=pairs)


def heldout_aligned_faces(contract: PreprocessContract, images: Path | None, pairs: Path | None, n: int,
                          seed: int) -> HeldOut:
    """A recognition model's held-out faces: with a pairs file, every image its pairs name (PairImages.read,
    resized whole); else n aligned faces (convert.parity.face_crops: --images spread over identities, or synthetic
    faces aligned on five points from a seed no dataset uses)."""
    if pairs is None:
        crops, source = face_crops(contract, n, images, seed + HELDOUT_SEED_OFFSET)
        if not crops:
            raise InputError(f"{images}: no aligned faces for the int8 estimate")
        return unlabelled(np.stack([contract.to_tensor_layout(c) for c in crops]).astype(np.float32),
                          f"held-out {source}")
    index = PairImages.read(pairs, images)
    x = np.stack([contract.to_tensor_layout(read_aligned(p, contract))
                  for p in progress(index.paths, desc="read pairs' faces", unit="image", leave=False)]
                 ).astype(np.float32)
    folds = len(set(index.folds.tolist()))
    return unlabelled(x, f"{index.pairs_file} ({len(index.same)} pairs in {folds} folds, {len(index.paths)} aligned "
                         f"faces)", index)


def heldout_faces(contract: PreprocessContract, images: Path | None, n: int, seed: int) -> HeldOut:
    """Labelled held-out faces: a prepared dataset's test split (evenly spaced n), or synthetic faces rendered
    from a seed no dataset uses, cut with the contract's crop rule from their landmark box."""
    if images is not None:
        images = Path(images)
        if not (images / "index.jsonl").is_file():
            raise InputError(f"{images}: the int8 estimate needs labelled faces: give a prepared dataset "
                             f"(its test split is used)")
        from pfpld.data.dataset import PreparedFaces
        faces = PreparedFaces(images, "test")
        check_prepared_contract(images, faces.contract, contract)
        picks = np.unique(np.linspace(0, len(faces) - 1, min(n, len(faces))).round().astype(int))
        offset = (faces.crop_size_px - contract.input_size) // 2      # the contract crop: the centre window
        window = slice(offset, offset + contract.input_size)
        return HeldOut(x=np.stack([contract.to_tensor_layout(faces.load_crop(int(i))[window, window])
                                   for i in picks]).astype(np.float32),
                       points=faces.points[picks], mask=faces.mask[picks], pose=faces.pose[picks],
                       has_pose=faces.has_pose[picks],
                       source=f"{images} (test split, {len(picks)} of {len(faces)} faces)")
    faces = synthetic_check_faces(contract, n, seed + HELDOUT_SEED_OFFSET)
    return HeldOut(x=faces.inputs, points=faces.points, mask=np.ones(faces.points.shape[:2], dtype=bool),
                   pose=faces.pose_rad, has_pose=np.ones(n, dtype=bool), source=f"held-out {faces.source}")


@dataclass(frozen=True)
class Budget:
    """What the verdict judges: the change of one metric, int8 minus float, at most `limit` (nme, pose_mae_deg);
    the verification accuracy lost, float minus int8, at most `limit` points (verification); or the mean cosine of
    the int8 embeddings against the float ones, at least `limit` (embedding_cosine)."""
    metric: str                     # "nme", "pose_mae_deg", "verification" or "embedding_cosine"
    limit: float
    unit: str

    def describe(self) -> str:
        if self.metric == "verification":
            return f"verification accuracy lost <= {self.limit:g} {self.unit}"
        if self.metric == "embedding_cosine":
            return f"mean embedding cosine vs float >= {self.limit:g}"
        what = "dNME" if self.metric == "nme" else "dpose MAE"
        return f"{what} <= {self.limit:g} {self.unit}"

    def within(self, judged: float) -> bool:
        """judged: int8 minus float (nme, pose_mae_deg, verification: accuracy points) or the mean cosine."""
        if self.metric == "verification":
            return -judged <= self.limit
        if self.metric == "embedding_cosine":
            return judged >= self.limit
        return judged <= self.limit


BUDGETS = {"nme": Budget("nme", BUDGET_NME_POINTS, "points"),
           "pose_mae_deg": Budget("pose_mae_deg", BUDGET_POSE_MAE_DEG, "degrees"),
           "verification": Budget("verification", BUDGET_VERIFICATION_POINTS, "points"),
           "embedding_cosine": Budget("embedding_cosine", BUDGET_EMBEDDING_COSINE, "")}


def budget_of(spec: ModelSpec, pairs: bool = False) -> Budget:
    """The budget on the metric the model's task selects best.pt on; a model the registry does not know (a user's
    ONNX) is judged on its landmarks when it has some, else on its pose. A model with an embedding output is judged
    in verification terms: its accuracy on the pairs when there are pairs, else its embeddings' cosine."""
    if spec.output_of_kind("embedding") is not None:
        return BUDGETS["verification" if pairs else "embedding_cosine"]
    try:
        metric = model_task(spec).select_metric
    except ModelError:
        landmarks = spec.output_of_kind("landmarks")
        metric = "nme" if landmarks is not None and landmarks.norm_points is not None else "pose_mae_deg"
    if metric == "nme":
        landmarks = spec.output_of_kind("landmarks")
        if landmarks is None or landmarks.norm_points is None:
            raise ConversionError(f"model {spec.name}: no landmark output with normalising points in its spec; the "
                                  f"int8 estimate of a landmark model measures NME")
    elif spec.pose_output() is None:
        raise ConversionError(f"model {spec.name}: no landmark output with normalising points and no pose output "
                              f"(kinds {', '.join(o.kind or 'unknown' for o in spec.outputs)}); the int8 estimate "
                              f"measures landmark NME or pose MAE")
    return BUDGETS[metric]


def model_points(spec: ModelSpec, landmarks: OutputSpec, faces: HeldOut) -> tuple[np.ndarray, np.ndarray]:
    """The held-out faces' labels as the model's own points: (N, K, 2) and mask (N, K), through the task's map of the
    98 WFLW points; a model the registry does not know (a user's ONNX) through the known scheme with its point count
    (pfpld.landmarks.POINT_LAYOUTS: 98, 68 or 5)."""
    try:
        weights = model_task(spec).points_from_98
    except ModelError:
        layout = layout_for(landmarks.num_points)
        weights = layout.from_98 if layout is not None else None
    if weights is None or len(weights) != landmarks.num_points:
        raise ConversionError(f"model {spec.name}: {landmarks.num_points} landmarks, and no known map from the "
                              f"{NUM_POINTS} labelled points to them (known: {', '.join(map(str, POINT_LAYOUTS))})")
    return map_points_98(weights, faces.points.astype(np.float64), faces.mask)


def pose_faces(faces: HeldOut) -> np.ndarray:
    """The held-out faces a pose MAE is measured on: a pose label with every |angle| <= 99 degrees (AFLW2000)."""
    return faces.has_pose & pose_protocol_mask(faces.pose)


@dataclass
class FaceMetrics:
    nme_pct: float | None
    pose_mae_deg: float | None
    verification_pct: float | None = None       # 10-fold accuracy on the held-out pairs (recognition models)


def face_metrics(outputs: dict[str, np.ndarray], faces: HeldOut, spec: ModelSpec) -> FaceMetrics:
    """NME (percent, on the model's own points) of the spec's landmark output and pose MAE (degrees) of its pose
    output (radians or degrees, pose_radians), on the faces; None for what the model does not output."""
    landmarks, pose_out = spec.output_of_kind("landmarks"), spec.pose_output()
    nme = None
    if landmarks is not None and landmarks.norm_points is not None:
        points, mask = model_points(spec, landmarks, faces)
        pred = outputs[landmarks.name].reshape(len(faces.x), -1, 2)
        nme = float(np.nanmean(nme_per_face(pred, points, mask, norm_points=landmarks.norm_points))) * 100
    pose = None
    keep = pose_faces(faces)
    if pose_out is not None and keep.any():
        pred_rad = pose_radians(pose_out, outputs[pose_out.name].reshape(-1, 3).astype(np.float64))
        pose = pose_mae_deg(pred_rad[keep], faces.pose[keep])["mean"]
    verification = None
    embedding = spec.output_of_kind("embedding")
    if embedding is not None and faces.pairs is not None:
        emb = outputs[embedding.name].reshape(len(faces.x), -1)
        verification = 100 * faces.pairs.verify(emb).accuracy_mean
    return FaceMetrics(nme, pose, verification)


@dataclass
class Int8Row:
    stage: str
    detail: str
    deployed: bool                          # counts for the budget verdict (not a what-if row)
    nme_pct: float | None = None
    delta_nme_points: float | None = None
    pose_mae_deg: float | None = None
    delta_pose_deg: float | None = None
    nme_vs_float_pct: float | None = None   # NME of the int8 landmarks against the float landmarks
    max_abs_landmarks: float | None = None
    max_pose_diff_deg: float | None = None
    verification_pct: float | None = None           # 10-fold accuracy on the pairs (recognition models)
    delta_verification_points: float | None = None  # int8 minus float
    cosine_mean: float | None = None                # embedding cosine against the float model, mean over faces
    cosine_worst: float | None = None               # ... and on the worst face
    seconds: float | None = None
    verdict: str = "-"
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Int8Report:
    folder: Path
    faces: str
    n_faces: int
    float_stage: str
    float_metrics: FaceMetrics
    budget: Budget = BUDGETS["nme"]
    n_pose_faces: int | None = None         # faces with a pose label inside +-99 degrees (pose MAE's faces)
    n_pairs: int | None = None              # verification pairs (recognition models with a pairs file)
    rows: list[Int8Row] = field(default_factory=list)
    checked: str = ""
    markdown: Path | None = None

    @property
    def passed(self) -> bool:
        """At least one deployed int8 stage was judged, and none is over the budget or failed to run."""
        deployed = [r for r in self.rows if r.deployed]
        return bool(deployed) and not any(r.verdict in ("OVER", "ERROR") for r in deployed)

    @property
    def nothing_deployed(self) -> str:
        """Why the verdict fails when the export has no int8 stage to judge ('' when it has one)."""
        if any(r.deployed for r in self.rows):
            return ""
        return ("no deployed int8 stage to judge: export with --target nnie, onnx-int8 or ncnn-int8 and --calib DIR, "
                "or give --calib DIR here to quantise the ONNX file now")

    LANDMARK_POSE_HEADER = ["stage", "what", "NME %", "dNME (points)", "pose MAE deg", "dpose deg", "NME vs float %",
                            "max |dlandmark|", "max |dpose| deg", "verdict"]
    EMBEDDING_HEADER = ["stage", "what", "verification acc %", "dacc (points)", "embedding cosine vs float (mean)",
                        "cosine (worst face)", "verdict"]

    @property
    def embedding(self) -> bool:
        return self.budget.metric in ("verification", "embedding_cosine")

    @property
    def HEADER(self) -> list[str]:      # noqa: N802 (read as the report's table header, as it always was)
        return self.EMBEDDING_HEADER if self.embedding else self.LANDMARK_POSE_HEADER

    def table_rows(self) -> list[list[str]]:
        def f(v, fmt):
            return "-" if v is None else fmt.format(v)
        if self.embedding:
            rows = [[f"float ({self.float_stage})", "reference", f(self.float_metrics.verification_pct, "{:.2f}"),
                     "-", "-", "-", "reference"]]
            rows += [[r.stage, r.detail, f(r.verification_pct, "{:.2f}"), f(r.delta_verification_points, "{:+.2f}"),
                      f(r.cosine_mean, "{:.5f}"), f(r.cosine_worst, "{:.5f}"), r.verdict] for r in self.rows]
            return rows
        rows = [[f"float ({self.float_stage})", "reference", f(self.float_metrics.nme_pct, "{:.3f}"), "-",
                 f(self.float_metrics.pose_mae_deg, "{:.2f}"), "-", "-", "-", "-", "reference"]]
        for r in self.rows:
            rows.append([r.stage, r.detail, f(r.nme_pct, "{:.3f}"), f(r.delta_nme_points, "{:+.3f}"),
                         f(r.pose_mae_deg, "{:.2f}"), f(r.delta_pose_deg, "{:+.2f}"), f(r.nme_vs_float_pct, "{:.3f}"),
                         f(r.max_abs_landmarks, "{:.2e}"), f(r.max_pose_diff_deg, "{:.2f}"), r.verdict])
        return rows

    def table(self) -> str:
        lines = text_table([self.HEADER] + self.table_rows())
        lines.append(f"int8 on {self.n_faces} held-out faces ({self.faces}){self._pose_faces_note()}; budget "
                     f"{self.budget.describe()} for deployed stages; verdict: {'PASS' if self.passed else 'FAIL'}")
        lines += [f"{r.stage}: {r.error}" for r in self.rows if r.error]
        lines += [self.nothing_deployed] if self.nothing_deployed else []
        return "\n".join(lines)

    def _pose_faces_note(self) -> str:
        if self.budget.metric == "verification" and self.n_pairs:
            return (f", {self.n_pairs} pairs: one pair weighs {self.pair_resolution_points:.2g} accuracy points"
                    + (" (more than the budget: the verdict cannot resolve it)"
                       if self.pair_resolution_points > self.budget.limit else ""))
        if self.budget.metric != "pose_mae_deg" or self.n_pose_faces is None:
            return ""
        return f", {self.n_pose_faces} with a pose label within +-99 degrees"

    @property
    def pair_resolution_points(self) -> float | None:
        """How much one pair moves the 10-fold accuracy, in points (about 100 / pairs)."""
        return 100.0 / self.n_pairs if self.n_pairs else None

    def to_dict(self) -> dict:
        if self.budget.metric == "verification":
            budget = {"budget_verification_points": self.budget.limit, "n_pairs": self.n_pairs,
                      "pair_resolution_points": self.pair_resolution_points}
        elif self.budget.metric == "embedding_cosine":
            budget = {"budget_embedding_cosine": self.budget.limit}
        else:
            budget = ({"budget_nme_points": self.budget.limit} if self.budget.metric == "nme" else
                      {"budget_pose_mae_deg": self.budget.limit, "n_pose_faces": self.n_pose_faces})
        return {"verdict": "pass" if self.passed else "fail", "checked": self.checked, "faces": self.faces,
                "n_faces": self.n_faces, **budget, "judged_on": self.budget.metric, "float_stage": self.float_stage,
                "float": asdict(self.float_metrics), "stages": [r.to_dict() for r in self.rows],
                "report": self.markdown.name if self.markdown else None}

    def to_markdown(self) -> str:
        lines = [f"# int8 estimate of {self.folder.name}", "",
                 f"Checked {self.checked} on {self.n_faces} held-out faces ({self.faces}). Every int8 stage runs "
                 f"the same inputs as the float model (`{self.float_stage}`); {self._metric_sentence()} Rows marked "
                 f"what-if are not deployed (other NNIE precisions of the same files).", ""]
        lines += markdown_table(self.HEADER, self.table_rows())
        lines += ["", f"**Verdict: {'PASS' if self.passed else 'FAIL'}** (budget: {self.budget.describe()} for the "
                      f"deployed stages)."]
        lines += [f"- {r.stage}: {r.error}" for r in self.rows if r.error]
        lines += [f"- {self.nothing_deployed}"] if self.nothing_deployed else []
        return "\n".join(lines) + "\n"


    def _metric_sentence(self) -> str:
        if self.budget.metric == "nme":
            return "NME is inter-ocular, in percent, against the ground truth; dNME is int8 minus float."
        if self.embedding:
            pairs = (f"verification accuracy is the LFW protocol's k-fold accuracy on the {self.n_pairs} pairs of the "
                     f"pairs file's folds (cosine scores, each fold's threshold chosen on the other folds), dacc int8 "
                     f"minus float; "
                     if self.budget.metric == "verification" else
                     "no pairs file was given, so the verdict judges the mean embedding cosine; ")
            return (pairs + "the embedding cosine is each face's int8 embedding against its float embedding (mean "
                    "over the faces, and the worst face).")
        return (f"pose MAE is the mean of the yaw, pitch and roll errors in degrees against the ground truth, on the "
                f"{self.n_pose_faces} faces with a pose label within +-99 degrees; dpose is int8 minus float.")


def _compare(row: Int8Row, outputs: dict, reference: dict, float_metrics: FaceMetrics, faces: HeldOut,
             spec: ModelSpec, budget: Budget) -> None:
    m = face_metrics(outputs, faces, spec)
    row.nme_pct, row.pose_mae_deg = m.nme_pct, m.pose_mae_deg
    if m.nme_pct is not None and float_metrics.nme_pct is not None:
        row.delta_nme_points = m.nme_pct - float_metrics.nme_pct
    if m.pose_mae_deg is not None and float_metrics.pose_mae_deg is not None:
        row.delta_pose_deg = m.pose_mae_deg - float_metrics.pose_mae_deg
    n = len(faces.x)
    landmarks, pose = spec.output_of_kind("landmarks"), spec.pose_output()
    if landmarks is not None and landmarks.norm_points is not None:
        row.nme_vs_float_pct = float(np.nanmean(nme_per_face(outputs[landmarks.name].reshape(n, -1, 2),
                                                             reference[landmarks.name].reshape(n, -1, 2),
                                                             norm_points=landmarks.norm_points))) * 100
        row.max_abs_landmarks = float(np.abs(outputs[landmarks.name] - reference[landmarks.name]).max())
    if pose is not None and pose.name in outputs:
        row.max_pose_diff_deg = float(np.degrees(np.abs(pose_radians(pose, outputs[pose.name])
                                                        - pose_radians(pose, reference[pose.name])).max()))
    embedding = spec.output_of_kind("embedding")
    if embedding is not None and embedding.name in outputs:
        cosine = 1.0 - one_minus_cosine(reference[embedding.name].reshape(n, -1),
                                        outputs[embedding.name].reshape(n, -1))
        row.cosine_mean, row.cosine_worst = float(cosine.mean()), float(cosine.min())
        row.verification_pct = m.verification_pct
        if m.verification_pct is not None and float_metrics.verification_pct is not None:
            row.delta_verification_points = m.verification_pct - float_metrics.verification_pct
    judged = {"nme": (row.nme_pct, row.delta_nme_points), "pose_mae_deg": (row.pose_mae_deg, row.delta_pose_deg),
              "verification": (row.verification_pct, row.delta_verification_points),
              "embedding_cosine": (row.cosine_worst, row.cosine_mean)}[budget.metric]
    if not all(v is not None and np.isfinite(v) for v in judged):
        row.verdict, row.error = "ERROR", "non-finite outputs"
    else:
        row.verdict = ("ok" if budget.within(judged[1]) else "OVER") if row.deployed else "what-if"


def nnie_what_if_runners(export: ExportFolder, calib_x: np.ndarray | None) -> list[tuple[str, str, bool, Runner]]:
    """(stage, detail, deployed, runner) of the NNIE simulation at every precision but the exported one (what _hp or
    int16 would buy). For an export with Caffe files and no nnie format, every precision is an estimate made from
    the Caffe files with the default _hp choice and --calib's ranges."""
    if export.has("nnie"):
        prototxt, caffemodel = export.require("nnie.prototxt"), export.require("nnie.caffemodel")
        names = json.loads(export.require("nnie.names").read_text())
        graph = CaffeGraph(prototxt, caffemodel)
        hp = hp_layers_of(graph)
        ranges = read_ranges(export.require("nnie.ranges"))     # the deployed row's ranges: comparable rows
        exported = export.info("nnie").get("precision")
    else:
        prototxt, caffemodel = export.file("caffe.prototxt"), export.file("caffe.caffemodel")
        if prototxt is None:
            return []
        names = json.loads(export.require("caffe.names").read_text())
        graph = CaffeGraph(prototxt, caffemodel)
        from convert.onnx2caffe import caffe_pb2
        from google.protobuf import text_format
        net = caffe_pb2.NetParameter()
        text_format.Parse(Path(prototxt).read_text(), net)
        hp = frozenset(default_hp_layers(net, list(names["outputs"].values())))
        ranges, exported = None, None
    if ranges is None:
        if calib_x is None:
            raise InputError("the NNIE simulation of the Caffe files needs activation ranges: give --calib DIR (or "
                             "export with --target nnie --calib DIR)")
        ranges = calibrate_ranges(graph, calib_x)
    out = []
    for precision in PRECISIONS:
        if precision == exported:
            continue          # the deployed row comes from the nnie format's own runner
        plan = NniePlan(precision, ranges, hp)
        detail = f"compile_mode {PRECISIONS[precision]}" + (f", {len(hp)} _hp layers" if precision == "mixed" else "")
        out.append((f"nnie-sim {precision}", detail + ", what-if", False, NnieSimRunner(graph, names["outputs"], plan)))
    return out


def int8_detail(name: str, info: dict) -> str:
    fmt = FORMATS[name]
    facts = [f"{k} {info[k]}" for k in ("precision", "compile_mode", "activations", "weights") if k in info]
    if info.get("float_conv_outputs"):      # onnx-int8: conv outputs only PRelu reads (quant/ort_int8.py)
        facts.append(f"{info['float_conv_outputs']} conv outputs before PRelu float")
    if info.get("float_decode_nodes"):      # onnx-int8: a decode over a Softmax (quant/ort_int8.py)
        facts.append(f"{info['float_decode_nodes']} decode nodes after a Softmax float")
    if info.get("softmax_readers_float"):   # ncnn-int8: layers decoding probabilities (quant/ncnn_int8.py)
        facts.append(f"{len(info['softmax_readers_float'])} layers reading a Softmax float")
    return ", ".join([fmt.runtime or fmt.title] + facts)


def float_format(export: ExportFolder) -> str:
    """The float model the int8 stages are compared with: the reference (PyTorch) when the export has it, else its
    first parity format (a user's ONNX)."""
    for name in export.formats():
        fmt = FORMATS.get(name)
        if fmt is not None and fmt.reference:
            return name
    for name in export.formats():
        fmt = FORMATS.get(name)
        if fmt is not None and fmt.parity:
            return name
    raise ConversionError(f"{export.folder}: no float format to compare int8 against")


def run_in_chunks(runner: Runner, x: np.ndarray, desc: str) -> dict[str, np.ndarray]:
    """runner.run over many faces with a progress report (verification pairs can name thousands)."""
    if len(x) <= INT8_RUN_CHUNK:
        return runner.run(x)
    parts = [runner.run(x[i:i + INT8_RUN_CHUNK])
             for i in progress(range(0, len(x), INT8_RUN_CHUNK), desc=desc, unit="chunk", leave=False)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def check_int8(export_dir: Path, images: Path | None = None, calib: Path | None = None, n: int = 64,
               seed: int = 0, threads: int = 1, write: bool = True, pairs: Path | None = None,
               what_if: bool = True) -> Int8Report:
    """Every int8 stage of the export against its float model on held-out faces, judged on the model's budget
    (budget_of); `pairs`: a recognition model's LFW-format pairs file (images under its folder), which makes the
    verdict one of verification accuracy. `what_if=False` skips the NNIE simulation at the precisions the export
    does not deploy (each costs as much as the deployed one: minutes on thousands of faces)."""
    export = ExportFolder.open(Path(export_dir))
    contract, spec = export.contract, export.spec
    recognition = spec.output_of_kind("embedding") is not None
    if pairs is not None and not recognition:
        raise InputError(f"{pairs}: a pairs file verifies a recognition model; {spec.name} has no embedding output "
                         f"(its outputs: {', '.join(spec.output_names)})")
    budget = budget_of(spec, pairs=pairs is not None)
    faces = (heldout_aligned_faces(contract, images, pairs, n, seed) if recognition else
             heldout_faces(contract, images, n, seed))
    if budget.metric == "pose_mae_deg" and not pose_faces(faces).any():
        raise InputError(f"{faces.source}: no held-out face has a pose label within +-99 degrees; the int8 estimate of "
                         f"a pose model needs them (a prepared dataset from 300W-LP or AFLW2000, or the synthetic "
                         f"faces)")
    calib_x = read_calibration_set(calib, contract).inputs(contract) if calib is not None else None
    options = RunOptions(threads=threads)
    float_stage = float_format(export)
    reference = run_in_chunks(export.runner(float_stage, options), faces.x, float_stage)
    report = Int8Report(folder=export.folder, faces=faces.source, n_faces=len(faces.x), float_stage=float_stage,
                        float_metrics=face_metrics(reference, faces, spec), budget=budget,
                        n_pose_faces=int(pose_faces(faces).sum()),
                        n_pairs=len(faces.pairs.same) if faces.pairs is not None else None,
                        checked=datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def run_row(row: Int8Row, make_runner) -> None:
        start = time.perf_counter()
        try:
            outputs = run_in_chunks(make_runner(), faces.x, row.stage)
            _compare(row, outputs, reference, report.float_metrics, faces, spec, budget)
        except Exception as exc:     # one stage that cannot run is a row saying so, not a crash
            row.verdict, row.error = "ERROR", one_line(exc, 300)
        row.seconds = time.perf_counter() - start
        report.rows.append(row)

    # The deployed int8 formats of the export, each through its registry runner.
    for name in export.formats():
        fmt = FORMATS.get(name)
        if fmt is not None and fmt.int8:
            run_row(Int8Row(name, int8_detail(name, export.info(name)), True),
                    lambda name=name: export.runner(name, options))
    # What the other NNIE precisions would give, and the simulation of Caffe files exported without nnie.
    try:
        for stage, detail, deployed, runner in (nnie_what_if_runners(export, calib_x) if what_if else []):
            run_row(Int8Row(stage, detail, deployed), lambda r=runner: r)
    except Exception as exc:
        report.rows.append(Int8Row("nnie-sim", "-", False, verdict="ERROR", error=one_line(exc, 300)))
    # A QDQ model made now from --calib when the export has none.
    if not export.has("onnx-int8") and calib_x is not None and export.has("onnxsim"):
        from .ort_int8 import quantize_qdq
        made_now = Int8Row("onnx-int8", "QDQ made now from --calib", True)
        with tempfile.TemporaryDirectory(prefix="pfpld-int8-") as work:
            def built_now():
                path = Path(work) / "int8.onnx"
                recipe = quantize_qdq(export.require("onnxsim"), path, calib_x)
                # the row says what the recipe did, as an exported onnx-int8's row does (int8_detail)
                made_now.detail = int8_detail("onnx-int8", recipe.info()) + " (made now from --calib)"
                return OnnxRunner(path, threads=threads)
            run_row(made_now, built_now)
    if write:
        report.markdown = export.folder / "int8.md"
        write_text_atomic(report.markdown, report.to_markdown())
        export.record_check("int8", report.to_dict())
    return report
