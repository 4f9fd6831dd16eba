"""Evaluation of a recognition model (an "embedding" output): identification on held-out images of the training
identities (training's validation number) and verification on LFW-format pairs (`pfpld eval --pairs`).

Verification follows the LFW protocol (pfpld/verification.py): each pair is scored by the cosine of the two faces'
embeddings, each fold's threshold is chosen on the other folds and applied to it (LFW: nine and the tenth). Beside
the model, the same protocol runs on the faces' raw pixels (the cosine of the mean-subtracted grey input crops): the
trivial baseline a model must beat clearly, as the mean shape is for landmarks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from .contract import PreprocessContract
from .data.dataset import PreparedFaces
from .data.sources.lfw import parse_pairs, read_pairs
from .devices import model_device
from .errors import DatasetError, ModelError
from .models.spec import ModelSpec
from .progress import progress as progress_bar
from .tables import markdown_table, text_table
from .verification import VerificationReport, cosine_scores, verify


def embedding_index(spec: ModelSpec) -> int:
    """Position of the model's embedding output; a one-line error for a model without one."""
    for i, o in enumerate(spec.outputs):
        if o.kind == "embedding":
            return i
    raise ModelError(f"model {spec.name} has no embedding output (its outputs: {', '.join(spec.output_names)}): "
                     f"verification needs a recognition model")


@torch.no_grad()
def embed_batches(model: torch.nn.Module, spec: ModelSpec, inputs, progress: bool = False) -> np.ndarray:
    """Embeddings (N, D) float32 of an iterable of input batches (B, 3, H, W) tensors on the model's device."""
    model.eval()
    k = embedding_index(spec)
    out = [model(x)[k].float().cpu().numpy() for x in progress_bar(inputs, desc="embed", unit="batch",
                                                                     enabled=progress, leave=False)]
    return np.concatenate(out) if out else np.zeros((0, spec.outputs[k].shape[0]), np.float32)


def embed_dataset(model: torch.nn.Module, spec: ModelSpec, dataset: PreparedFaces, batch_size: int = 64,
                  progress: bool = False) -> np.ndarray:
    """Embeddings of a prepared split's faces, in dataset order (its input crops, augmented if it augments)."""
    device = model_device(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    batches = (dataset.network_batch({k: v.to(device) for k, v in b.items()})["image"] for b in loader)
    return embed_batches(model, spec, batches, progress)


@torch.no_grad()
def identification_error(model: torch.nn.Module, spec: ModelSpec, dataset: PreparedFaces, head) -> float:
    """Share of the faces whose nearest class weight of the margin head (largest cosine, no margin) is not their
    identity: what training watches on images it holds out of the identities it learns."""
    emb = torch.from_numpy(embed_dataset(model, spec, dataset)).to(head.weight.device)
    predicted = head.cosine(emb).argmax(1).cpu().numpy()
    return float(np.mean(predicted != dataset.identity))


def read_aligned(path: Path, contract: PreprocessContract) -> np.ndarray:
    """An aligned face image -> the contract's input crop (BGR uint8, input_size square): the whole image."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: cannot decode image (missing, unreadable or corrupt)")
    crop, _ = contract.crop_image(image, contract.aligned_box(image))
    return crop


@dataclass
class PairsEvaluation:
    pairs_file: Path
    model: VerificationReport
    baseline: VerificationReport           # the same protocol on raw pixels
    images: int                             # distinct images embedded

    HEADER = ("", "model", "raw pixels (baseline)")

    def rows(self) -> list[list[str]]:
        """The model's verification numbers beside the raw-pixel baseline's."""
        m, b = self.model, self.baseline
        return [[f"{len(m.kfold.fold_ids)}-fold accuracy",
                 f"{100 * m.accuracy_mean:.2f} % +- {100 * m.accuracy_std:.2f}",
                 f"{100 * b.accuracy_mean:.2f} % +- {100 * b.accuracy_std:.2f}"],
                [f"TAR @ FAR {m.far_point.far_target:g}", f"{100 * m.tar_at_far:.2f} %", f"{100 * b.tar_at_far:.2f} %"],
                ["ROC AUC", f"{m.auc:.4f}", f"{b.auc:.4f}"],
                ["pairs", f"{m.n_same} same + {m.n_different} different, {len(m.kfold.fold_ids)} folds", ""]]

    def table(self, markdown: bool = False) -> str:
        """The comparison, then the model's own protocol details (per-fold thresholds and accuracies)."""
        if markdown:
            return "\n".join(markdown_table(list(self.HEADER), self.rows()) + ["", self.model.table(markdown=True)])
        return "\n".join(text_table([list(self.HEADER)] + self.rows()) + ["", self.model.table()])

    def to_dict(self) -> dict:
        return {"pairs_file": str(self.pairs_file), "images": self.images, "model": self.model.to_dict(),
                "pixel_baseline": self.baseline.to_dict()}


def pairs_images_root(pairs_file: Path, images: Path | None = None) -> Path:
    """Where a pairs file's <name>/<name>_NNNN.jpg are: `images` when given, else the pairs file's folder, or its
    lfw/ sub-folder when that holds them (LFW's release and pfpld.data.identities put pairs.txt beside lfw/)."""
    if images is not None:
        return Path(images)
    folder = Path(pairs_file).parent
    pairs = parse_pairs(pairs_file)
    first = pairs[0][2] if pairs else None
    name = getattr(first, "name", None) or getattr(first, "name_a", None)
    beside = folder / "lfw"
    return beside if name and not (folder / name).is_dir() and (beside / name).is_dir() else folder


@dataclass(frozen=True)
class PairImages:
    """A pairs file's distinct images (each embedded once) and its pairs as rows of them: pair i compares
    paths[a[i]] and paths[b[i]]."""
    pairs_file: Path
    paths: list[Path]
    a: np.ndarray                   # (P,) row of the first face
    b: np.ndarray                   # (P,) row of the second face
    same: np.ndarray                # (P,) bool
    folds: np.ndarray               # (P,) fold index

    @classmethod
    def read(cls, pairs_file: Path, images: Path | None = None) -> "PairImages":
        """Read and check an LFW-format pairs file, its images under pairs_images_root."""
        records = read_pairs(Path(pairs_file), pairs_images_root(pairs_file, images))
        paths = sorted({p for r in records for p in (r.path_a, r.path_b)})
        row = {p: i for i, p in enumerate(paths)}
        return cls(pairs_file=Path(pairs_file), paths=paths, a=np.array([row[r.path_a] for r in records]),
                   b=np.array([row[r.path_b] for r in records]),
                   same=np.array([r.same for r in records], dtype=bool),
                   folds=np.array([r.fold for r in records]))

    def verify(self, embeddings: np.ndarray) -> VerificationReport:
        """The LFW protocol on the cosines of the pairs' embeddings (rows in `paths` order)."""
        return verify(cosine_scores(embeddings[self.a], embeddings[self.b]), self.same, self.folds)


def evaluate_pairs(model: torch.nn.Module, spec: ModelSpec, contract: PreprocessContract, pairs_file: Path,
                   images_root: Path | None = None, batch_size: int = 64, progress: bool = True) -> PairsEvaluation:
    """LFW-protocol verification of a recognition model on a pairs file (images under `images_root`, default
    pairs_images_root's), with the raw-pixel baseline beside it."""
    pairs = PairImages.read(pairs_file, images_root)
    crops = [read_aligned(p, contract) for p in progress_bar(pairs.paths, desc="read", unit="image",
                                                                enabled=progress, leave=False)]
    device = model_device(model)
    inputs = np.stack([contract.to_tensor_layout(c) for c in crops])
    batches = (torch.from_numpy(inputs[i:i + batch_size]).to(device) for i in range(0, len(inputs), batch_size))
    emb = embed_batches(model, spec, batches, progress)
    grey = np.stack([cv2.cvtColor(c, cv2.COLOR_BGR2GRAY).astype(np.float64).ravel() for c in crops])
    grey -= grey.mean(1, keepdims=True)
    return PairsEvaluation(pairs_file=pairs.pairs_file, model=pairs.verify(emb), baseline=pairs.verify(grey),
                           images=len(pairs.paths))
