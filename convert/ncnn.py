"""ncnn stage of the export chain: ONNX -> .ncnn.param/.ncnn.bin through the pnnx command line, plus the name map
pnnx makes necessary (its blobs are called in0, out0, out1, ...: a device reading `out0` must know it is
`landmarks`). The map is not assumed from positions: it is checked by running ncnn and onnxruntime on the same
random input and matching every ncnn output to the ONNX output holding the same values.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pfpld.errors import ConversionError, one_line

from .runtimes import NcnnRunner, OnnxRunner, ncnn_graph_outputs, read_ncnn_param

NAME_MAP_FORMAT = "pfpld-ncnn-names"
PNNX_TIMEOUT_S = 600


@dataclass
class NcnnExport:
    param: Path
    bin: Path
    name_map_path: Path
    name_map: dict
    pnnx_param: Path | None = None

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.param, self.bin, self.name_map_path, self.pnnx_param) if p is not None]


def pnnx_executable() -> str:
    """The pnnx CLI of this environment (next to the running python first: a venv need not be on PATH)."""
    beside = Path(sys.executable).parent / "pnnx"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("pnnx")
    if not found:
        raise ConversionError("pnnx not found (install it with pip after torch==2.13.0; see the Makefile)")
    return found


def onnx_input_shape(onnx_path: Path) -> tuple[str, tuple[int, ...]]:
    import onnx
    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise ConversionError(f"{onnx_path}: {len(inputs)} graph inputs; the ncnn stage takes exactly one")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else (1 if i == 0 else 0) for i, d in enumerate(dims))
    if not shape or 0 in shape:
        raise ConversionError(f"{onnx_path}: input '{inputs[0].name}' has no fixed shape {shape}; export with a "
                              f"fixed input size")
    return inputs[0].name, shape


def run_pnnx(onnx_path: Path, workdir: Path, input_shape: tuple[int, ...], fp16: bool) -> tuple[Path, Path, Path]:
    """Run pnnx on a copy of the file inside `workdir` (it writes ~8 side files next to its input)."""
    model = workdir / "model.onnx"
    shutil.copyfile(onnx_path, model)
    shape = ",".join(str(d) for d in input_shape)
    command = [pnnx_executable(), model.name, f"inputshape=[{shape}]", f"fp16={int(fp16)}"]
    try:
        proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"{onnx_path}: pnnx did not finish within {PNNX_TIMEOUT_S} s") from None
    except OSError as exc:
        raise ConversionError(f"cannot run pnnx ({one_line(exc)})") from None
    param, weights, pnnx_param = (workdir / "model.ncnn.param", workdir / "model.ncnn.bin",
                                  workdir / "model.pnnx.param")
    if proc.returncode != 0 or not param.is_file() or not weights.is_file():
        log = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = log[-1][:200] if log else "no output"
        raise ConversionError(f"{onnx_path}: pnnx failed (exit code {proc.returncode}; last line: {last})")
    return param, weights, pnnx_param


def match_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """The assignment reference name -> candidate name with equal sizes and the smallest total relative
    difference; returns it and each pair's max abs difference. Raises when no size-compatible assignment
    exists."""
    ref_names, cand_names = list(reference), list(candidate)
    if len(ref_names) != len(cand_names):
        raise ConversionError(f"ncnn has {len(cand_names)} outputs ({cand_names}), ONNX {len(ref_names)} "
                              f"({ref_names})")

    def cost(r: str, c: str) -> float:
        a, b = reference[r].reshape(-1), candidate[c].reshape(-1)
        if a.size != b.size:
            return np.inf
        return float(np.abs(a - b).max() / max(1e-12, float(np.abs(a).max())))

    costs = {(r, c): cost(r, c) for r in ref_names for c in cand_names}
    if len(ref_names) <= 7:
        best = min(itertools.permutations(cand_names), key=lambda p: sum(costs[r, c] for r, c in zip(ref_names, p)))
        mapping = dict(zip(ref_names, best))
    else:   # greedy, for graphs with many outputs
        mapping, free = {}, set(cand_names)
        for r in ref_names:
            c = min(free, key=lambda c: costs[r, c])
            mapping[r] = c
            free.discard(c)
    if any(np.isinf(costs[r, c]) for r, c in mapping.items()):
        sizes = {n: int(v.size) for n, v in {**reference, **candidate}.items()}
        raise ConversionError(f"ncnn outputs do not match the ONNX outputs by size ({sizes})")
    diffs = {r: float(np.abs(reference[r].reshape(-1) - candidate[c].reshape(-1)).max()) for r, c in mapping.items()}
    return mapping, diffs


def verified_name_map(onnx_path: Path, param: Path, weights: Path, fp16: bool, seed: int = 0) -> dict:
    """{inputs: {onnx input: in0}, outputs: {onnx output: outK}, output_shapes, fp16, verification}."""
    layers = read_ncnn_param(param)
    ncnn_inputs = [t for layer in layers if layer.type == "Input" for t in layer.tops]
    ncnn_outputs = ncnn_graph_outputs(layers)
    input_name, input_shape = onnx_input_shape(onnx_path)
    if len(ncnn_inputs) != 1:
        raise ConversionError(f"{param}: {len(ncnn_inputs)} Input layers; expected one")
    reference_runner = OnnxRunner(onnx_path, threads=1)
    x = np.random.default_rng(seed).random(input_shape, dtype=np.float32)
    reference = reference_runner.run(x)
    provisional = {"inputs": {input_name: ncnn_inputs[0]}, "outputs": {b: b for b in ncnn_outputs}, "fp16": fp16}
    candidate = NcnnRunner(param, weights, provisional, threads=1).run(x)
    mapping, diffs = match_outputs(reference, candidate)
    positional = list(mapping.values()) == ncnn_outputs
    return {
        "format": NAME_MAP_FORMAT,
        "inputs": {input_name: ncnn_inputs[0]},
        "outputs": mapping,
        "output_shapes": {n: list(v.shape[1:]) for n, v in reference.items()},
        "input_shape": list(input_shape),
        "fp16": fp16,
        "verification": {"method": "one seeded random input through onnxruntime and ncnn; each ONNX output "
                                   "matched to the ncnn output of equal size with the closest values",
                         "max_abs_diff": diffs, "same_as_positional_order": positional},
    }


def convert_onnx_to_ncnn(onnx_path: Path, out_dir: Path, stem: str, fp16: bool = False,
                         keep_pnnx_param: bool = False) -> NcnnExport:
    """Write `<stem>.ncnn.param`, `<stem>.ncnn.bin` and `<stem>.ncnn.names.json` (and with keep_pnnx_param the
    intermediate `<stem>.pnnx.param`, for debugging) into out_dir; pnnx's other files stay in a temp folder."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    _, input_shape = onnx_input_shape(onnx_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pfpld-pnnx-") as work:
        param, weights, pnnx_param = run_pnnx(onnx_path, Path(work), input_shape, fp16)
        name_map = verified_name_map(onnx_path, param, weights, fp16)
        result = NcnnExport(param=out_dir / f"{stem}.ncnn.param", bin=out_dir / f"{stem}.ncnn.bin",
                            name_map_path=out_dir / f"{stem}.ncnn.names.json", name_map=name_map)
        shutil.move(str(param), result.param)
        shutil.move(str(weights), result.bin)
        if keep_pnnx_param and pnnx_param.is_file():
            result.pnnx_param = out_dir / f"{stem}.pnnx.param"
            shutil.move(str(pnnx_param), result.pnnx_param)
    result.name_map_path.write_text(json.dumps(name_map, indent=2) + "\n")
    return result
