"""`pfpld models`: every registry model in one table, read from the registry itself (nothing here names a model):
input and contract, outputs, loss, metric, export targets, and the parity verdict of the newest export of that
model under the current folder. The README's table is this one (tests/test_catalog.py holds them together)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pfpld.models import MODELS, build_model, model_task

MANIFEST = "manifest.json"
SEARCH_DEPTH = 4            # folders below the current one searched for export manifests


@dataclass(frozen=True)
class ModelRow:
    name: str
    summary: str
    input: str
    contract: str
    outputs: str
    loss: str
    metric: str
    targets: str
    parity: str = "-"

    COLUMNS = ("model", "what it is", "input", "contract", "outputs (name: kind)", "loss", "metric",
               "export targets", "last parity here")

    def cells(self, with_parity: bool = True) -> list[str]:
        cells = [self.name, self.summary, self.input, self.contract, self.outputs, self.loss, self.metric,
                 self.targets]
        return cells + [self.parity] if with_parity else cells


METRIC_TEXT = {"nme": "NME (normalised by {norm}), failure rate and AUC at 0.1; best.pt on validation NME",
               "pose_mae_deg": "yaw / pitch / roll MAE in degrees, AFLW2000 protocol (|angle| <= 99); best.pt on "
                               "validation MAE",
               "id_error": "LFW-protocol verification on pairs: 10-fold accuracy, TAR at FAR 1e-3, ROC; best.pt on "
                           "the identification error of held-out images of the training identities"}


def model_rows(targets: list[str], root: Path | None = None) -> list[ModelRow]:
    """One row per registry model, built with its default options."""
    rows = []
    verdicts = last_parity(root) if root is not None else {}
    for name, entry in MODELS.items():
        _, spec, contract = build_model(name)
        task = model_task(spec)
        crop = contract.crop
        loose = f", loose k {crop.loose_k:g}" if crop.loose_k else ""
        landmarks = spec.output_of_kind("landmarks")
        norm = f"points {landmarks.norm_points[0]} and {landmarks.norm_points[1]}" if landmarks and \
            landmarks.norm_points else "-"
        options = ", ".join(f"{k} {v}" for k, v in spec.options.items())
        rows.append(ModelRow(
            name=name, summary=entry.summary,
            input=f"{contract.input_size}x{contract.input_size} {contract.color_order} ({options})",
            contract=f"(pixel - mean {tuple(round(m, 3) for m in contract.mean)}) x {contract.scale:.6g}; " + (
                "an aligned face, the whole image" if contract.aligned else
                f"square {crop.expand:.4g} x {crop.side} side of the landmark box{loose}"),
            outputs=", ".join(f"{o.name}: {o.kind or 'values'} {list(o.shape)}" for o in spec.outputs),
            loss=_first_sentence(task.loss.__doc__ or task.loss.__name__),
            metric=METRIC_TEXT[task.select_metric].format(norm=norm),
            targets=", ".join(targets),
            parity=verdicts.get(name, "no export here")))
    return rows


def last_parity(root: Path) -> dict[str, str]:
    """model name -> "VERDICT (folder, date)" of the newest export manifest under root that was parity-checked."""
    newest: dict[str, tuple[str, str]] = {}
    for depth in range(SEARCH_DEPTH + 1):
        for path in root.glob("/".join(["*"] * depth + [MANIFEST])):
            try:
                manifest = json.loads(path.read_text())
                name, created = manifest["spec"]["name"], str(manifest.get("created", ""))
                parity = manifest.get("parity") or {}
            except (OSError, ValueError, KeyError, TypeError):
                continue                # not an export manifest: not ours to judge
            verdict = parity.get("verdict") if isinstance(parity, dict) else None
            label = f"{verdict.upper()} ({path.parent}, {created[:10]})" if verdict else \
                f"not checked ({path.parent}, {created[:10]})"
            if name not in newest or created > newest[name][0]:
                newest[name] = (created, label)
    return {name: label for name, (_, label) in newest.items()}


def _first_sentence(text: str) -> str:
    line = " ".join(text.split())
    return line.split(". ")[0].rstrip(".")
