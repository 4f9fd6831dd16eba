"""`pfpld export`: a model (checkpoint, random init, or a user's ONNX) -> one folder with every format's files and
manifest.json. Ultralytics-style: each format of the registry (convert/formats.py) has one export function with
the same shape (job in, files written out); `export` resolves the targets to formats in chain order, times each
one and turns its failure into a ConversionError naming it. The folder is built under a temporary name and
swapped into place at the end (pfpld.fileio's output-folder rule): a failed export leaves nothing behind.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from pfpld.checkpoint import load_model, tool_versions
from pfpld.contract import PreprocessContract, aligned_crop, hw_text
from pfpld.errors import ConversionError, PfpldError, one_line
from pfpld.fileio import check_output_folder, commit_output_folder, temporary_sibling
from pfpld.models import build_model

from . import stages as _builtin_formats  # noqa: F401  (registers convert's formats)
from .artifacts import TOOL_PACKAGES, Manifest, StageRecord, file_records, sha256_of, write_manifest
from .deploy import export_runtimes, write_deploy
from .formats import ExportJob, ExportSource, Format, SourceRecord, missing_options, resolve_targets
from .onnx_bins import declare_bin_outputs
from .onnx_export import DEFAULT_OPSET, declare_outputs, load_checked_onnx, read_metadata, spec_from_graph
from .runtimes import process_threads

OUTPUT_KIND = "export"


# --- where the model comes from -------------------------------------------------------------------------------
def source_from_checkpoint(path: Path) -> ExportSource:
    module, ckpt = load_model(path)
    return ExportSource(ckpt.spec, ckpt.contract, module=module,
                        record=SourceRecord("checkpoint", path=str(Path(path).resolve()), sha256=sha256_of(path),
                                            epoch=ckpt.epoch))


def randomize_batchnorm(module: torch.nn.Module, input_size: int, seed: int,
                        contract: PreprocessContract | None = None) -> None:
    """Non-trivial BatchNorm parameters and statistics for a freshly built model, so that exporting it exercises
    BN folding: random affine (gamma in [0.5, 1.5], beta in [-0.25, 0.25]), then running mean / var measured on
    random inputs in train mode (cumulative average), which keeps activations at a sane scale through the net.
    The inputs are uniform over what `contract` makes of 8-bit pixels ((0..255 - mean) x scale per channel;
    [0, 1] without one): statistics measured on another range (an ImageNet-normalised HopeNet fed [0, 1]) let
    activations grow layer by layer, to logits of +-90 that no trained net has."""
    generator = torch.Generator().manual_seed(seed)
    low, span = 0.0, 1.0
    if contract is not None:
        mean = torch.tensor(contract.mean, dtype=torch.float32).view(1, 3, 1, 1)
        low, span = (0.0 - mean) * contract.scale, torch.full_like(mean, 255.0 * contract.scale)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in norms:
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.bias.copy_((torch.rand(bn.num_features, generator=generator) - 0.5) * 0.5)
            bn.reset_running_stats()
            bn.momentum = None                 # cumulative moving average over the calibration batches
        module.train()
        with process_threads(1):   # tiny batches: extra threads only spin (badly, when another process is busy)
            for _ in range(4):
                module(low + span * torch.rand(8, 3, input_size, input_size, generator=generator))
        for bn in norms:
            if int(bn.num_batches_tracked) == 0:   # a BN forward never reaches (the reference's unused bn8)
                bn.running_mean.copy_(torch.rand(bn.num_features, generator=generator) - 0.5)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.momentum = 0.1
    module.eval()


def parse_model_options(pairs) -> dict:
    """['backbone=mobilenetv2', 'input_size=112'] -> {'backbone': 'mobilenetv2', 'input_size': 112}: a value that
    reads as an int or a float becomes one, anything else stays text (the model's spec checks the values)."""
    options = {}
    for pair in pairs:
        key, sep, text = str(pair).partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key.isidentifier() or not text:
            raise ConversionError(f"model option {pair!r}: expected KEY=VALUE, e.g. backbone=mobilenetv2")
        if key in options:
            raise ConversionError(f"model option {key!r} is given twice")
        value: object = text
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        options[key] = value
    return options


def source_from_random_init(model: str, width: float | None = 1.0, seed: int = 0,
                            options: dict | None = None) -> ExportSource:
    """A registry model with random weights; `options` are its constructor options beside the width (hopenet:
    backbone, input_size). The input size is the spec's, so the export runs at the model's own size."""
    options = dict(options or {})
    if width is not None:
        if "width" in options and options["width"] != width:
            raise ConversionError(f"--model {model}: width {width} and model option width={options['width']} "
                                  f"disagree; give it once")
        options["width"] = width
    torch.manual_seed(seed)
    try:
        module, spec, contract = build_model(model, **options)
    except PfpldError:
        raise
    except (KeyError, ValueError, TypeError) as exc:
        described = " ".join(f"{k}={v}" for k, v in options.items())
        raise ConversionError(f"--model {model} {described}: {one_line(exc)}") from None
    randomize_batchnorm(module, spec.input_size, seed, contract)
    return ExportSource(spec, contract, module=module,
                        record=SourceRecord("random", model=model, options=dict(spec.options), seed=seed,
                                            batchnorm="random affine, statistics measured on random inputs"))


def parse_scale(text: str) -> float:
    """'0.0039216' or '1/255'."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/")
            return float(numerator) / float(denominator)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ConversionError(f"--scale {text!r}: expected a number or a fraction such as 1/255") from None


CROP_OPTIONS = ("expand", "shift_y", "box_source", "loose_k", "side")     # contract options of its CropRule


def contract_for_onnx(path: Path, from_metadata: PreprocessContract | None, input_hw: tuple[int, int],
                      options: dict) -> tuple[PreprocessContract, str]:
    """The contract of a user's ONNX: the file's metadata, with any option given on the command line replacing
    its field. A file without metadata needs at least the colour order and the scale: the chain will not guess
    how pixels become the input; its input size is the graph's (rows x columns: a rectangle, such as SphereFace's
    112x96, for an aligned contract only). Returns the contract and where it came from."""
    options = {k: v for k, v in options.items() if v is not None}
    where = "metadata" if not options else ("options" if from_metadata is None else "metadata+options")
    if from_metadata is None and not {"color_order", "scale"} <= set(options):
        raise ConversionError(f"{path}: no pfpld contract in the ONNX metadata; give at least --color-order and "
                              f"--scale (and --mean, --crop-expand, --crop-shift-y where they differ from "
                              f"0, 1.2 and 0; --crop-box-source aligned for a recognition model)")
    height, width = input_hw
    crop_options = {k: options.pop(k) for k in CROP_OPTIONS if k in options}
    if "scale" in options:
        options["scale"] = parse_scale(str(options["scale"]))
    if "mean" in options:
        options["mean"] = tuple(options["mean"])
    base_crop = from_metadata.crop if from_metadata is not None else PreprocessContract().crop
    aligned = crop_options.get("box_source") == "aligned" and base_crop.box_source != "aligned"
    try:   # aligned: expand 1 unless given (a rectangle: side min, pfpld.contract.aligned_crop)
        crop = replace(aligned_crop(height, width) if aligned else base_crop, **crop_options)
    except PfpldError as exc:
        raise ConversionError(f"{path}: contract options: {exc}") from None
    if height != width and crop.box_source != "aligned":
        raise ConversionError(f"{path}: the graph input is {hw_text(height, width)} (rows x columns), not square: "
                              f"only an aligned face model takes a rectangle; give --crop-box-source aligned")
    if from_metadata is not None and from_metadata.input_hw != input_hw:
        raise ConversionError(f"{path}: the contract says input size {from_metadata.size_text} but the graph input "
                              f"is {hw_text(height, width)} (rows x columns)")
    try:
        contract = replace(from_metadata or PreprocessContract(), input_size=height, input_width=width, crop=crop,
                           **options)
    except PfpldError as exc:
        raise ConversionError(f"{path}: contract options: {exc}") from None
    return contract, where


def source_from_onnx(path: Path, contract_options: dict | None = None,
                     output_kinds: dict[str, str] | None = None) -> ExportSource:
    """A user's ONNX file: its spec and contract from our metadata when it has them, else from the graph and the
    contract options; `output_kinds` ({output name: kind}, --output NAME=KIND) says what outputs mean, so parity
    and the int8 check judge them in their task's terms (landmarks NME, pose MAE, embedding cosine)."""
    path = Path(path)
    model = load_checked_onnx(path)
    spec, contract = read_metadata(model)
    spec_from = "metadata" if spec is not None else "graph"
    if spec is None:
        try:
            spec = spec_from_graph(model, name=path.stem.split(".")[0] or "model")
        except ConversionError as exc:
            raise ConversionError(f"{path}: {exc}") from None
    if output_kinds:      # bins first: their decode is appended to the graph (convert/onnx_bins.py)
        model, spec, output_kinds = declare_bin_outputs(model, spec, output_kinds, str(path))
        spec = declare_outputs(spec, output_kinds, str(path))
        spec_from += "+options"
    contract, contract_from = contract_for_onnx(path, contract, spec.input_hw, contract_options or {})
    return ExportSource(spec, contract, onnx_model=model,
                        record=SourceRecord("onnx", path=str(path.resolve()), sha256=sha256_of(path),
                                            spec_from=spec_from, contract_from=contract_from))


# --- running the formats -----------------------------------------------------------------------------------------
def run_stage(fmt: Format, job: ExportJob) -> StageRecord:
    """Time one format's export; any failure becomes one ConversionError that names the format."""
    start = time.perf_counter()
    try:
        files = fmt.export(job)
    except PfpldError as exc:
        raise ConversionError(f"export stage {fmt.name}: {exc}") from exc
    except Exception as exc:    # a tool's own exception (onnx checker, onnxsim, protobuf, ...): still one line
        raise ConversionError(f"export stage {fmt.name} failed: {one_line(exc)}") from exc
    job.files.update(files)
    return StageRecord(fmt.name, time.perf_counter() - start, {role: p.name for role, p in files.items()},
                       dict(job.info.get(fmt.name, {})))


@dataclass
class ExportResult:
    folder: Path
    manifest: Manifest

    def table(self) -> str:
        return self.manifest.table()


def export(source: ExportSource, targets, out: Path, *, opset: int = DEFAULT_OPSET, with_int8: bool = False,
           force: bool = False, log: Callable[[str], None] | None = None, options: dict | None = None) -> ExportResult:
    """Export the formats `targets` resolve to (convert/formats.py) into a temporary sibling of `out`, write
    manifest.json, and swap it into place under the output-folder rule (pfpld.fileio). `options` are what the
    formats read from job.options (calib, nnie, int8, ...); a format whose required option is missing is refused
    before anything runs."""
    out = Path(out)
    formats = resolve_targets(list(targets), with_int8=with_int8, has_module=source.module is not None)
    options = dict(options or {})
    missing = missing_options(formats, options)
    if missing:
        raise ConversionError("; ".join(missing))
    check_output_folder(out, OUTPUT_KIND, force)
    tmp = temporary_sibling(out)
    job = ExportJob(source=source, folder=tmp, opset=opset, options=options)
    start = time.perf_counter()
    try:
        records = []
        for fmt in formats:
            record = run_stage(fmt, job)
            records.append(record)
            if log:
                log(f"  {fmt.name:<10} {record.seconds:6.2f} s  {', '.join(record.files.values())}")
        write_deploy(tmp, source.spec, source.contract, export_runtimes(tmp, source.spec, records))
        manifest = Manifest(
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), source=source.record,
            targets=sorted(set(targets)), spec=source.spec, contract=source.contract, stages=records,
            files=file_records(tmp, records), export_seconds=time.perf_counter() - start,
            tools=tool_versions(TOOL_PACKAGES),
            opset=job.info.get("onnx", {}).get("opset"))
        write_manifest(tmp, manifest)
        commit_output_folder(tmp, out, OUTPUT_KIND, force)
        while job.commits:
            built, final, commit = job.commits[0]
            commit(built, final)
            job.commits.pop(0)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for built, _, _ in job.commits:
            shutil.rmtree(built, ignore_errors=True)
        raise
    return ExportResult(out, manifest)
