"""The format registry: one entry per export target, in the style of the converter's OPS table.

Each `Format` says what it needs (the formats whose files it reads, the options it cannot run without), how it is
exported (one function: job in, files by role out), the files it writes (by role), how to build a runner for its
files, its parity tolerance and whether it is a deployed int8 stage. `pfpld export`, `check-parity`, the int8
check, the CLI's option checks and `pfpld bench` all iterate over this table. convert's own formats are declared in
convert/stages.py; quant registers its own (quant/formats.py). Adding a format = one `register_format` call + one
test.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import onnx
import torch

from pfpld.contract import PreprocessContract
from pfpld.errors import ConversionError
from pfpld.models.spec import ModelSpec

if TYPE_CHECKING:
    from .artifacts import ExportFolder
    from .runtimes import Runner


# --- what an export function receives --------------------------------------------------------------------------
@dataclass
class SourceRecord:
    """How the manifest describes where the model came from."""
    kind: str                                   # "checkpoint" | "random" | "onnx"
    path: str | None = None                     # checkpoint or ONNX file
    sha256: str | None = None
    epoch: int | None = None                    # checkpoint
    model: str | None = None                    # random init: registry name, options, seed
    options: dict | None = None
    seed: int | None = None
    batchnorm: str | None = None
    spec_from: str | None = None                # ONNX: "metadata" | "graph", "+options" with --output
    contract_from: str | None = None            # ONNX: "metadata" | "options" | "metadata+options"

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "SourceRecord":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ExportSource:
    spec: ModelSpec
    contract: PreprocessContract
    record: SourceRecord
    module: torch.nn.Module | None = None       # checkpoint and random init
    onnx_model: onnx.ModelProto | None = None   # a user's ONNX

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def stem(self) -> str:
        """File stem of every file of the export: the model's name (pfpld.onnx, hopenet.onnx, ...)."""
        return self.spec.name.replace("/", "_") or "model"


@dataclass
class ExportJob:
    """What the stages share: the source, the folder being filled, the options, and the files so far by role."""
    source: ExportSource
    folder: Path
    opset: int = 13
    files: dict[str, Path] = field(default_factory=dict)      # role -> path ("onnx", "caffe.prototxt", ...)
    info: dict[str, dict] = field(default_factory=dict)       # format -> facts for the manifest
    options: dict = field(default_factory=dict)               # option name -> value (calib, nnie, int8, ...)
    # Folders a stage built outside the export folder (temporary, final, commit function): moved into place
    # only after the export folder itself, removed if anything fails before.
    commits: list[tuple[Path, Path, Callable[[Path, Path], None]]] = field(default_factory=list)

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.source.stem}{suffix}"


@dataclass(frozen=True)
class RunOptions:
    threads: int = 1
    winograd: bool = False          # parity runs without it (exact arithmetic); the bench times the default too


# --- the entry ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Format:
    name: str                                               # --target name and manifest stage name
    title: str                                              # what tables call it
    export: Callable[[ExportJob], dict[str, Path]]          # writes the files, returns them by role
    roles: tuple[str, ...]                                  # the roles of the files it writes
    needs: tuple[str, ...] = ()                             # formats whose files it reads
    runner: Callable[["ExportFolder", RunOptions], "Runner"] | None = None
    tolerance: float | None = None        # parity: max abs diff against the reference (None: not a parity stage)
    cosine_tolerance: float | None = None  # parity of an "embedding" output: largest 1 - cosine against the reference
    layer_tolerance: float | None = None  # parity localisation: relative divergence of an inner tensor
    int8: bool = False                    # a deployed int8 stage: judged by the int8 check's accuracy budget
    reference: bool = False               # the stage every other one is compared with (the PyTorch module)
    requires: tuple[str, ...] = ()        # export options it cannot run without (e.g. "calib")
    selectable: bool = True               # a `--target` choice
    with_int8_flag: bool = False          # `--int8` adds it when the formats it needs are exported
    in_all: bool = True                   # part of `--target all`
    timed: bool = True                    # `pfpld bench` measures its latency (not for a simulation)
    runtime: str = ""                     # what runs it, for tables ("onnxruntime", "OpenCV dnn", ...)
    device: str = ""                      # the deploy_cpp backend that runs its files ("ncnn"): deploy.json lists it

    @property
    def parity(self) -> bool:
        return self.tolerance is not None


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format, *, replace: bool = False) -> Format:
    """Add a format to the registry (insertion order is chain order: a format comes after what it needs)."""
    if fmt.name in FORMATS and not replace:
        raise ValueError(f"format {fmt.name!r} is already registered")
    missing = [n for n in fmt.needs if n not in FORMATS and n != fmt.name]
    if missing:
        raise ValueError(f"format {fmt.name!r} needs {missing}, which are not registered (register them first)")
    FORMATS[fmt.name] = fmt
    return fmt


def unregister_format(name: str) -> None:
    FORMATS.pop(name, None)


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConversionError(f"unknown format {name!r}; known: {', '.join(FORMATS)}") from None


def target_names() -> list[str]:
    """The `--target` choices, in chain order."""
    return [f.name for f in FORMATS.values() if f.selectable]


def resolve_targets(targets, *, with_int8: bool = False, has_module: bool = True) -> list[Format]:
    """The formats to export for `targets` ("all" = every format marked in_all), with what
    they need, in chain order. `with_int8` adds the formats marked for `--int8` whose needs are exported. The
    reference (torch) stage is included whenever the source is a PyTorch module."""
    wanted: set[str] = set()
    for name in targets:
        if name == "all":
            wanted |= {f.name for f in FORMATS.values() if f.selectable and f.in_all}
        else:
            fmt = get_format(name)
            if not fmt.selectable:
                raise ConversionError(f"format {name!r} is not an export target; targets: "
                                      f"{', '.join(target_names())} or all")
            wanted.add(name)

    def close(names: set[str]) -> set[str]:
        done = set(names)
        stack = list(names)
        while stack:
            for need in get_format(stack.pop()).needs:
                if need not in done:
                    done.add(need)
                    stack.append(need)
        return done

    wanted = close(wanted)
    if with_int8:
        wanted |= {f.name for f in FORMATS.values() if f.with_int8_flag and set(f.needs) <= wanted}
        wanted = close(wanted)
    reference = {f.name for f in FORMATS.values() if f.reference}
    wanted = (wanted | reference) if has_module else (wanted - reference)
    return [f for f in FORMATS.values() if f.name in wanted]


def missing_options(formats: list[Format], given: dict) -> list[str]:
    """'--target nnie needs --calib' for every option a format requires and `given` lacks (export and the CLI's
    option checks both ask here)."""
    return [f"{'--int8' if f.with_int8_flag else '--target ' + f.name} needs --{option.replace('_', '-')}"
            for f in formats for option in f.requires if given.get(option) is None]
