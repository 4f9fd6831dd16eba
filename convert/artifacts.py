"""The owner of an export folder: `manifest.json` as typed records, and the only reader and writer of its files.

An export folder holds one file set per format (named by the model's spec: `<stem>.onnx`, `<stem>.prototxt`, ...)
and `manifest.json`: the source, spec, contract, tool versions, every stage with its files by role, the sha256 and
size of every file, and the results of the checks run on it later (parity, int8). parity, the int8 check, the CLI
and the benchmark open a folder through `ExportFolder` and ask for files by role and runners by format; nobody
else parses the manifest or spells a file name.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pfpld.contract import PreprocessContract
from pfpld.errors import ConversionError, one_line
from pfpld.fileio import write_json_atomic
from pfpld.models.spec import ModelSpec

from .formats import RunOptions, SourceRecord, get_format

EXPORT_FORMAT = "pfpld-export"
EXPORT_VERSION = 1
MANIFEST = "manifest.json"
TOOL_PACKAGES = ("pfpld", "torch", "onnx", "onnxruntime", "onnxsim", "opencv-python-headless", "ncnn", "pnnx",
                 "numpy", "protobuf")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- the records -------------------------------------------------------------------------------------------------
@dataclass
class FileRecord:
    sha256: str
    size: int
    stage: str | None                 # the format that wrote it


@dataclass
class StageRecord:
    name: str                         # the format
    seconds: float
    files: dict[str, str]             # role -> file name inside the export folder
    info: dict = field(default_factory=dict)     # the format's own facts (opset, layer counts, precision, ...)

    def to_dict(self) -> dict:
        d = {"name": self.name, "seconds": round(self.seconds, 4), "files": dict(self.files)}
        if self.info:
            d["info"] = self.info
        return d


@dataclass
class Manifest:
    created: str
    source: SourceRecord
    targets: list[str]
    spec: ModelSpec
    contract: PreprocessContract
    stages: list[StageRecord]
    files: dict[str, FileRecord]
    export_seconds: float
    tools: dict[str, str | None]
    opset: int | None = None
    parity: dict | None = None        # the last check-parity result (convert/parity.py ParityReport.to_dict)
    int8: dict | None = None          # the last int8 estimate (quant/int8.py Int8Report.to_dict)

    def to_dict(self) -> dict:
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "created": self.created,
                "source": self.source.to_dict(), "targets": list(self.targets), "opset": self.opset,
                "spec": self.spec.to_dict(), "contract": self.contract.to_dict(),
                "stages": [s.to_dict() for s in self.stages], "export_seconds": round(self.export_seconds, 4),
                "files": {name: {"sha256": r.sha256, "size": r.size, "stage": r.stage}
                          for name, r in self.files.items()},
                "tools": dict(self.tools), "parity": self.parity, "int8": self.int8}

    @classmethod
    def from_dict(cls, d: dict, where: Path) -> "Manifest":
        if not isinstance(d, dict) or d.get("format") != EXPORT_FORMAT:
            raise ConversionError(f"{where}: not a pfpld export manifest (format {EXPORT_FORMAT!r} expected)")
        if d.get("version", 0) > EXPORT_VERSION:
            raise ConversionError(f"{where}: export version {d['version']} is newer than this pfpld")
        try:
            return cls(created=d["created"], source=SourceRecord.from_dict(d["source"]), targets=list(d["targets"]),
                       spec=ModelSpec.from_dict(d["spec"]), contract=PreprocessContract.from_dict(d["contract"]),
                       stages=[StageRecord(s["name"], float(s["seconds"]), dict(s["files"]), dict(s.get("info", {})))
                               for s in d["stages"]],
                       files={name: FileRecord(r["sha256"], int(r["size"]), r.get("stage"))
                              for name, r in d["files"].items()},
                       export_seconds=float(d["export_seconds"]), tools=dict(d.get("tools", {})),
                       opset=d.get("opset"), parity=d.get("parity"), int8=d.get("int8"))
        except KeyError as exc:
            raise ConversionError(f"{where}: manifest has no {exc.args[0]!r} (expected a folder written by "
                                  f"`pfpld export`)") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConversionError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None

    def stage(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.name == name), None)

    def table(self) -> str:
        """Stage, seconds and files with sizes, as the CLI and the demo print it."""
        rows = [f"{'stage':<10} {'seconds':>8}  files"]
        for stage in self.stages:
            sizes = ", ".join(f"{name} ({self.files[name].size / 1e6:.2f} MB)" for name in stage.files.values()
                              if name in self.files)
            rows.append(f"{stage.name:<10} {stage.seconds:>8.2f}  {sizes}")
        rows.append(f"{'total':<10} {self.export_seconds:>8.2f}")
        return "\n".join(rows)


def file_records(folder: Path, stages: list[StageRecord]) -> dict[str, FileRecord]:
    """sha256, size and writing stage of every file at the top of the folder (the manifest itself excepted)."""
    stage_of = {name: s.name for s in stages for name in s.files.values()}
    return {p.name: FileRecord(sha256_of(p), p.stat().st_size, stage_of.get(p.name))
            for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json_atomic(Path(folder) / MANIFEST, manifest.to_dict())


# --- the reader --------------------------------------------------------------------------------------------------
class ExportFolder:
    """An export folder opened for reading: files by role, runners by format, integrity against the manifest."""

    def __init__(self, folder: Path, manifest: Manifest):
        self.folder = Path(folder)
        self.manifest = manifest

    @classmethod
    def open(cls, folder: Path) -> "ExportFolder":
        folder = Path(folder)
        path = folder / MANIFEST
        if not folder.is_dir():
            raise ConversionError(f"{folder}: not a folder (expected a folder written by `pfpld export`)")
        try:
            data = json.loads(path.read_text())
        except OSError:
            raise ConversionError(f"{folder}: no {MANIFEST} (expected a folder written by `pfpld export`)") from None
        except ValueError as exc:
            raise ConversionError(f"{path}: not valid JSON ({one_line(exc)})") from None
        return cls(folder, Manifest.from_dict(data, path))

    @property
    def spec(self) -> ModelSpec:
        return self.manifest.spec

    @property
    def contract(self) -> PreprocessContract:
        return self.manifest.contract

    def formats(self) -> list[str]:
        """The formats this folder holds, in the order they were exported (chain order)."""
        return [s.name for s in self.manifest.stages]

    def has(self, format_name: str) -> bool:
        return self.manifest.stage(format_name) is not None

    def file(self, role: str) -> Path | None:
        """The file playing `role` ("onnx", "caffe.prototxt", ...), or None when no stage wrote one."""
        for stage in self.manifest.stages:
            if role in stage.files:
                path = self.folder / stage.files[role]
                if not path.is_file():
                    raise ConversionError(f"{path}: listed in {MANIFEST} but missing")
                return path
        return None

    def require(self, role: str) -> Path:
        path = self.file(role)
        if path is None:
            raise ConversionError(f"{self.folder}: no file with role {role!r} in this export "
                                  f"(formats: {', '.join(self.formats())})")
        return path

    def size_bytes(self, format_name: str) -> int:
        stage = self.manifest.stage(format_name)
        if stage is None:
            return 0
        return sum(self.manifest.files[n].size for n in stage.files.values() if n in self.manifest.files)

    def info(self, format_name: str) -> dict:
        stage = self.manifest.stage(format_name)
        return dict(stage.info) if stage is not None else {}

    def runner(self, format_name: str, options: RunOptions | None = None):
        """A Runner for this folder's files of `format_name`, built by the format's registry entry."""
        fmt = get_format(format_name)
        if fmt.runner is None:
            raise ConversionError(f"format {format_name!r} has no runner")
        if not self.has(format_name):
            raise ConversionError(f"{self.folder}: holds no {format_name} files (formats: "
                                  f"{', '.join(self.formats())})")
        return fmt.runner(self, options or RunOptions())

    def modified_files(self) -> list[str]:
        """Files whose sha256 no longer matches the manifest (edited, replaced or deleted after the export)."""
        changed = []
        for name, record in self.manifest.files.items():
            path = self.folder / name
            if not path.is_file() or path.stat().st_size != record.size or sha256_of(path) != record.sha256:
                changed.append(name)
        return changed

    def record_check(self, key: str, value: dict) -> None:
        """Store a check's result (parity, int8) in manifest.json, atomically."""
        if key not in ("parity", "int8"):
            raise ValueError(key)
        setattr(self.manifest, key, value)
        write_manifest(self.folder, self.manifest)
