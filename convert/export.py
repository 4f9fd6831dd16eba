"""`pfpld export`: a model (checkpoint, random init, or a user's ONNX) -> one folder with every stage's files and
manifest.json. Ultralytics-style: one function per stage with the same shape (job in, files written out), one
wrapper that times each stage and turns its failure into a ConversionError naming the stage.

Stages, in chain order: torch reference (<stem>.pt, what parity rebuilds the PyTorch model from) -> onnx
(<stem>.onnx, spec + contract in metadata) -> onnxsim (<stem>.sim.onnx) -> caffe (BatchNorm merged, prototxt +
caffemodel + name map) and ncnn (pnnx, param + bin + name map). Caffe and ncnn both start from the onnxsim file.
The folder is built under a temporary name and renamed at the end: a failed export leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import onnx
import torch

from pfpld.checkpoint import load_model, save_checkpoint
from pfpld.contract import PreprocessContract
from pfpld.errors import ConversionError, PfpldError
from pfpld.fileio import swap_in_folder, write_json_atomic
from pfpld.models import build_model
from pfpld.models.spec import ModelSpec

from .fold_bn import assert_no_foldable_batchnorm, fold_batchnorm_into_conv
from .ncnn import convert_onnx_to_ncnn
from .onnx2caffe import convert_onnx_to_caffe
from .onnx_export import (DEFAULT_OPSET, export_onnx, load_checked_onnx, read_metadata, set_metadata,
                          save_onnx_atomic, simplify_onnx, spec_from_graph)
from .onnx_graph import first_line, opset_version

EXPORT_FORMAT = "pfpld-export"
EXPORT_VERSION = 1
MANIFEST = "manifest.json"
TARGETS = ("onnx", "caffe", "ncnn")
STAGES_OF_TARGET = {"onnx": ("onnx", "onnxsim"), "caffe": ("onnx", "onnxsim", "caffe"),
                    "ncnn": ("onnx", "onnxsim", "ncnn")}
CHAIN_ORDER = ("torch", "onnx", "onnxsim", "caffe", "ncnn")


# --- where the model comes from -------------------------------------------------------------------------------
@dataclass
class ExportSource:
    kind: str                                   # "checkpoint" | "random" | "onnx"
    spec: ModelSpec
    contract: PreprocessContract
    record: dict                                # how the manifest describes the source
    module: torch.nn.Module | None = None       # checkpoint and random init
    onnx_model: onnx.ModelProto | None = None   # a user's ONNX

    @property
    def stem(self) -> str:
        return self.spec.name.replace("/", "_") or "model"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_from_checkpoint(path: Path) -> ExportSource:
    module, ckpt = load_model(path)
    return ExportSource("checkpoint", ckpt.spec, ckpt.contract, module=module,
                        record={"kind": "checkpoint", "path": str(Path(path).resolve()), "sha256": sha256_of(path),
                                "epoch": ckpt.epoch})


def randomize_batchnorm(module: torch.nn.Module, input_size: int, seed: int) -> None:
    """Non-trivial BatchNorm parameters and statistics for a freshly built model, so that exporting it exercises
    BN folding: random affine (gamma in [0.5, 1.5], beta in [-0.25, 0.25]), then running mean / var measured on
    random inputs in train mode (cumulative average), which keeps activations at a sane scale through the net."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in norms:
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.bias.copy_((torch.rand(bn.num_features, generator=generator) - 0.5) * 0.5)
            bn.reset_running_stats()
            bn.momentum = None                 # cumulative moving average over the calibration batches
        module.train()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)     # tiny batches: extra threads only spin (badly, when another process is busy)
        try:
            for _ in range(4):
                module(torch.rand(8, 3, input_size, input_size, generator=generator))
        finally:
            torch.set_num_threads(threads)
        for bn in norms:
            if int(bn.num_batches_tracked) == 0:   # a BN forward never reaches (the reference's unused bn8)
                bn.running_mean.copy_(torch.rand(bn.num_features, generator=generator) - 0.5)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.momentum = 0.1
    module.eval()


def source_from_random_init(model: str, width: float, seed: int = 0) -> ExportSource:
    torch.manual_seed(seed)
    try:
        module, spec, contract = build_model(model, width=width)
    except (KeyError, ValueError) as exc:
        raise ConversionError(f"--model {model} --width {width}: {exc}") from None
    randomize_batchnorm(module, spec.input_size, seed)
    return ExportSource("random", spec, contract, module=module,
                        record={"kind": "random", "model": model, "options": spec.options, "seed": seed,
                                "batchnorm": "random affine, statistics measured on random inputs"})


def parse_scale(text: str) -> float:
    """'0.0039216' or '1/255'."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/")
            return float(numerator) / float(denominator)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ConversionError(f"--scale {text!r}: expected a number or a fraction such as 1/255") from None


def contract_for_onnx(path: Path, from_metadata: PreprocessContract | None, input_size: int,
                      options: dict) -> tuple[PreprocessContract, str]:
    """The contract of a user's ONNX: the file's metadata, with any option given on the command line replacing
    its field. A file without metadata needs at least the colour order and the scale: the chain will not guess
    how pixels become the input. Returns the contract and where it came from."""
    options = {k: v for k, v in options.items() if v is not None}
    where = "metadata" if not options else ("options" if from_metadata is None else "metadata+options")
    if from_metadata is None and not {"color_order", "scale"} <= set(options):
        raise ConversionError(f"{path}: no pfpld contract in the ONNX metadata; give at least --color-order and "
                              f"--scale (and --mean, --crop-expand, --crop-shift-y where they differ from "
                              f"0, 1.2 and 0)")
    base = from_metadata or PreprocessContract(input_size=input_size)
    crop = replace(base.crop, **{k: options.pop(k) for k in ("expand", "shift_y") if k in options})
    if "scale" in options:
        options["scale"] = parse_scale(str(options["scale"]))
    if "mean" in options:
        options["mean"] = tuple(options["mean"])
    try:
        contract = replace(base, crop=crop, **options)
    except PfpldError as exc:
        raise ConversionError(f"{path}: contract options: {exc}") from None
    if contract.input_size != input_size:
        raise ConversionError(f"{path}: the contract says input_size {contract.input_size} but the graph input is "
                              f"{input_size}x{input_size}")
    return contract, where


def source_from_onnx(path: Path, contract_options: dict | None = None) -> ExportSource:
    path = Path(path)
    model = load_checked_onnx(path)
    spec, contract = read_metadata(model)
    spec_from = "metadata" if spec is not None else "graph"
    if spec is None:
        spec = spec_from_graph(model, name=path.stem.split(".")[0] or "model")
    contract, contract_from = contract_for_onnx(path, contract, spec.input_size, contract_options or {})
    return ExportSource("onnx", spec, contract, onnx_model=model,
                        record={"kind": "onnx", "path": str(path.resolve()), "sha256": sha256_of(path),
                                "spec_from": spec_from, "contract_from": contract_from})


# --- the stages -------------------------------------------------------------------------------------------------
@dataclass
class ExportJob:
    """What the stages share: the source, the folder being filled, options, and the files so far by role."""
    source: ExportSource
    folder: Path
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    files: dict[str, Path] = field(default_factory=dict)      # role -> path ("onnx", "caffe.prototxt", ...)
    info: dict[str, dict] = field(default_factory=dict)       # stage -> facts for the manifest
    options: dict = field(default_factory=dict)               # stage name -> options of an extra stage
    # Folders a stage built outside the export folder (temporary, final, commit function): moved into place
    # only after the export folder itself, removed if anything fails before.
    commits: list[tuple[Path, Path, Callable[[Path, Path], None]]] = field(default_factory=list)

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.source.stem}{suffix}"


def export_torch_reference(job: ExportJob) -> dict[str, Path]:
    """The weights, spec and contract as a slim checkpoint: parity rebuilds the PyTorch reference from it."""
    source = job.source
    path = job.path(".pt")
    save_checkpoint(path, state_dict=source.module.state_dict(), spec=source.spec, contract=source.contract,
                    config={"exported_from": source.record})
    return {"torch": path}


def export_onnx_stage(job: ExportJob) -> dict[str, Path]:
    source = job.source
    path = job.path(".onnx")
    if source.onnx_model is not None:     # a user's ONNX enters the chain: same graph, our metadata added
        model = onnx.ModelProto.FromString(source.onnx_model.SerializeToString())
        set_metadata(model, source.spec, source.contract)
        onnx.checker.check_model(model)
        save_onnx_atomic(model, path)
    else:
        export_onnx(source.module, source.spec, source.contract, path, opset=job.opset)
    job.info["onnx"] = {"opset": opset_version(onnx.load(str(path), load_external_data=False))}
    return {"onnx": path}


def export_simplified(job: ExportJob) -> dict[str, Path]:
    path = job.path(".sim.onnx")
    simplify_onnx(job.files["onnx"], path)
    return {"onnxsim": path}


def export_caffe(job: ExportJob) -> dict[str, Path]:
    """BatchNorm merged into the convs (and checked: none that could be merged remains), then ONNX -> Caffe 1.0,
    plus the name map (ONNX input / outputs / every tensor -> Caffe blob) that parity and devices read by."""
    source_file = job.files["onnxsim"]
    folded, folded_names = fold_batchnorm_into_conv(load_checked_onnx(source_file))
    assert_no_foldable_batchnorm(folded)
    prototxt, caffemodel, names = job.path(".prototxt"), job.path(".caffemodel"), job.path(".caffe.names.json")
    conversion = convert_onnx_to_caffe(folded, prototxt, caffemodel, source_name=source_file.name)
    layer_types = [t for _, t in conversion.layers]
    job.info["caffe"] = {"layers": len(layer_types), "folded_batchnorms": len(folded_names),
                         "batchnorm_layers_left": layer_types.count("BatchNorm"),
                         "layer_types": sorted(set(layer_types))}
    names.write_text(json.dumps({"format": "pfpld-caffe-names", "input": conversion.input_name,
                                 "input_shape": list(conversion.input_shape), "outputs": conversion.outputs,
                                 "blob_map": conversion.blob_map}, indent=1) + "\n")
    return {"caffe.prototxt": prototxt, "caffe.caffemodel": caffemodel, "caffe.names": names}


def export_ncnn(job: ExportJob) -> dict[str, Path]:
    result = convert_onnx_to_ncnn(job.files["onnxsim"], job.folder, job.source.stem, fp16=job.fp16)
    job.info["ncnn"] = {"fp16": job.fp16, "outputs": result.name_map["outputs"],
                        "name_map_same_as_positional_order":
                            result.name_map["verification"]["same_as_positional_order"]}
    return {"ncnn.param": result.param, "ncnn.bin": result.bin, "ncnn.names": result.name_map_path}


STAGE_FUNCTIONS: dict[str, Callable[[ExportJob], dict[str, Path]]] = {
    "torch": export_torch_reference, "onnx": export_onnx_stage, "onnxsim": export_simplified,
    "caffe": export_caffe, "ncnn": export_ncnn,
}


@dataclass
class StageRecord:
    name: str
    seconds: float
    files: dict[str, str]           # role -> file name inside the export folder


def run_stage(name: str, job: ExportJob, function: Callable[[ExportJob], dict[str, Path]] | None = None) -> StageRecord:
    """Time one stage; any failure becomes one ConversionError that names the stage."""
    start = time.perf_counter()
    try:
        files = (function or STAGE_FUNCTIONS[name])(job)
    except PfpldError as exc:
        raise ConversionError(f"export stage {name}: {exc}") from exc
    except Exception as exc:    # a tool's own exception (onnx checker, onnxsim, protobuf, ...): still one line
        raise ConversionError(f"export stage {name} failed: {type(exc).__name__}: {first_line(exc)[:200]}") from exc
    job.files.update(files)
    return StageRecord(name, time.perf_counter() - start, {role: p.name for role, p in files.items()})


def stages_for(targets: list[str] | tuple[str, ...], source: ExportSource) -> list[str]:
    wanted = set()
    for target in targets:
        if target == "all":
            wanted.update(CHAIN_ORDER)
        elif target in STAGES_OF_TARGET:
            wanted.update(STAGES_OF_TARGET[target])
        else:
            raise ConversionError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)} or all")
    wanted.add("torch")
    if source.module is None:
        wanted.discard("torch")
    return [s for s in CHAIN_ORDER if s in wanted]


# --- the folder and its manifest --------------------------------------------------------------------------------
def tool_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("pfpld", "torch", "onnx", "onnxruntime", "onnxsim", "opencv-python-headless", "ncnn", "pnnx",
                    "numpy", "protobuf"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def is_export_folder(path: Path) -> bool:
    try:
        return json.loads((Path(path) / MANIFEST).read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out_folder(out: Path, force: bool) -> None:
    """An export may create `out`, fill an empty folder, or (with force) replace a previous export; never
    anything else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConversionError(f"{out}: exists and is not a folder")
    if is_export_folder(out):
        if not force:
            raise ConversionError(f"{out}: holds a previous export; pass --force to replace it")
    elif any(out.iterdir()):
        raise ConversionError(f"{out}: exists, is not empty and has no {MANIFEST} of a pfpld export: "
                              f"refusing to replace it")


def file_records(folder: Path, stages: list[StageRecord]) -> dict[str, dict]:
    stage_of = {name: s.name for s in stages for name in s.files.values()}
    return {p.name: {"sha256": sha256_of(p), "size": p.stat().st_size, "stage": stage_of.get(p.name)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except OSError:
        raise ConversionError(f"{folder}: no {MANIFEST} (expected a folder written by `pfpld export`)") from None
    except ValueError as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ConversionError(f"{path}: not a pfpld export manifest (format {EXPORT_FORMAT!r} expected)")
    if manifest.get("version", 0) > EXPORT_VERSION:
        raise ConversionError(f"{path}: export version {manifest['version']} is newer than this pfpld")
    return manifest


@dataclass
class ExportResult:
    folder: Path
    manifest: dict

    def table(self) -> str:
        rows = [f"{'stage':<8} {'seconds':>8}  files"]
        for stage in self.manifest["stages"]:
            sizes = ", ".join(f"{name} ({self.manifest['files'][name]['size'] / 1e6:.2f} MB)"
                              for name in stage["files"].values())
            rows.append(f"{stage['name']:<8} {stage['seconds']:>8.2f}  {sizes}")
        rows.append(f"{'total':<8} {self.manifest['export_seconds']:>8.2f}")
        return "\n".join(rows)


def export(source: ExportSource, targets, out: Path, *, opset: int = DEFAULT_OPSET, fp16: bool = False,
           force: bool = False, log: Callable[[str], None] | None = None,
           extra_stages: list[tuple[str, Callable[[ExportJob], dict[str, Path]]]] = (),
           options: dict | None = None) -> ExportResult:
    """Run the stages the targets need into a temporary sibling of `out`, write manifest.json, rename.
    `extra_stages` (name, function) run after the chain's stages, with `options` in job.options (the quant
    package adds its stages this way: convert knows nothing of them)."""
    out = Path(out)
    stages = stages_for(list(targets), source)
    check_out_folder(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    job = ExportJob(source=source, folder=tmp, opset=opset, fp16=fp16, options=dict(options or {}))
    start = time.perf_counter()
    try:
        records = []
        for name, function in [(s, None) for s in stages] + list(extra_stages):
            record = run_stage(name, job, function)
            records.append(record)
            if log:
                log(f"  {name:<8} {record.seconds:6.2f} s  {', '.join(record.files.values())}")
        manifest = {
            "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": source.record, "targets": sorted(set(targets) | {name for name, _ in extra_stages}),
            "opset": job.info.get("onnx", {}).get("opset"),
            "fp16": fp16, "spec": source.spec.to_dict(), "contract": source.contract.to_dict(),
            "stages": [{"name": r.name, "seconds": round(r.seconds, 4), "files": r.files,
                        **({"info": job.info[r.name]} if r.name in job.info else {})} for r in records],
            "export_seconds": round(time.perf_counter() - start, 4),
            "files": file_records(tmp, records),
            "tools": tool_versions(),
            "parity": None,
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        check_out_folder(out, force)        # someone may have written there meanwhile
        swap_in_folder(tmp, out)
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


def record_in_manifest(folder: Path, key: str, value) -> None:
    """Add a check's result (parity, int8) to an export's manifest.json, atomically."""
    manifest = read_manifest(folder)
    manifest[key] = value
    write_json_atomic(Path(folder) / MANIFEST, manifest)


def stage_file(folder: Path, manifest: dict, role: str) -> Path | None:
    """The file playing `role` ("onnx", "caffe.prototxt", ...) in an export folder, or None."""
    for stage in manifest["stages"]:
        if role in stage["files"]:
            return Path(folder) / stage["files"][role]
    return None
