"""The format registry and the export folder's owner: a format declared in this file (a toy runtime) goes through
export, check-parity and the benchmark without any of them naming it; the registry's resolution and option checks;
the manifest's typed records; runtimes that cannot load a file; and the one-way imports between the packages."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import quant  # noqa: F401  (registers quant's formats)
from convert.artifacts import MANIFEST, ExportFolder
from convert.export import export, source_from_random_init
from convert.formats import (FORMATS, Format, RunOptions, get_format, register_format, resolve_targets,
                             target_names, unregister_format)
from convert.parity import check_parity
from convert.runtimes import CaffeRunner, NcnnRunner, OnnxRunner, Runner
from pfpld.errors import ConversionError

ROOT = Path(__file__).resolve().parents[1]
PFPLD = [sys.executable, "-m", "pfpld_app.cli"]


class NumpyReluRunner(Runner):
    """A toy runtime: onnxruntime with every graph optimisation off, its outputs passed through numpy. Stands for a
    runtime a contributor adds (TFLite, OpenVINO, ...)."""
    backend = "toy"

    def __init__(self, path: Path, threads: int = 1):
        self.inner = OnnxRunner(path, threads=threads, optimize=False)
        self.output_names = self.inner.output_names
        self.threads = threads

    def _run_one(self, x1, names):
        return {n: np.asarray(v, dtype=np.float32) for n, v in self.inner._run_one(x1, names).items()}


def export_toy(job):
    path = job.path(".toy.onnx")
    shutil.copyfile(job.files["onnxsim"], path)
    job.info["toy"] = {"copied_from": job.files["onnxsim"].name}
    return {"toy": path}


@pytest.fixture
def toy_format():
    fmt = register_format(Format("toy", "Toy runtime", export_toy, roles=("toy",), needs=("onnxsim",),
                                 runner=lambda folder, options: NumpyReluRunner(folder.require("toy"),
                                                                                options.threads),
                                 tolerance=1e-5, layer_tolerance=1e-4, in_all=False, runtime="numpy"))
    yield fmt
    unregister_format("toy")


def test_a_format_declared_in_a_test_goes_through_export_parity_and_bench(toy_format, tmp_path):
    out = tmp_path / "export"
    result = export(source_from_random_init("pfpld", 0.25, seed=0), ["toy"], out)
    assert [s.name for s in result.manifest.stages] == ["torch", "onnx", "onnxsim", "toy"]   # with what it needs
    folder = ExportFolder.open(out)
    assert folder.require("toy").name == "pfpld.toy.onnx" and folder.info("toy") == {"copied_from": "pfpld.sim.onnx"}
    assert isinstance(folder.runner("toy"), NumpyReluRunner)

    report = check_parity(out, n=2)
    rows = {r.stage: r for r in report.rows}
    assert rows["toy"].verdict == "pass" and rows["toy"].tolerance == 1e-5 and rows["toy"].max_abs < 1e-5
    assert json.loads((out / MANIFEST).read_text())["parity"]["verdict"] == "pass"

    from pfpld_app.bench import BenchSettings, run_format_benchmark
    results, _, _ = run_format_benchmark([(source_from_random_init("pfpld", 0.25, seed=0), "toy", False)],
                                         BenchSettings(threads=(1,), budget_s=0.05, min_runs=3, formats=("toy",)),
                                         log=lambda _: None)
    bench_rows = {r.format: r for r in results[0].rows}
    assert set(bench_rows) == {"reference", "torch", "onnx", "onnxsim", "toy"}
    toy = bench_rows["toy"]
    assert toy.status == "ok" and toy.latency_ms[1] > 0 and toy.vs_reference[1] > 0
    assert toy.parity.startswith("pass") and toy.size_mb > 0


def test_targets_resolve_to_formats_with_what_they_need_in_chain_order():
    names = lambda fs: [f.name for f in fs]  # noqa: E731
    assert names(resolve_targets(["caffe"])) == ["torch", "onnx", "onnxsim", "caffe"]
    assert names(resolve_targets(["all"])) == ["torch", "onnx", "onnxsim", "caffe", "ncnn"]
    assert names(resolve_targets(["ncnn"], with_int8=True)) == ["torch", "onnx", "onnxsim", "ncnn", "onnx-int8",
                                                                 "ncnn-int8"]
    assert names(resolve_targets(["nnie"], has_module=False)) == ["onnx", "onnxsim", "caffe", "nnie"]
    assert {"onnx", "caffe", "ncnn", "ncnn-fp16", "nnie", "onnx-int8", "ncnn-int8"} <= set(target_names())
    assert "torch" not in target_names()
    with pytest.raises(ConversionError, match="unknown format 'tflite'; known: torch, onnx"):
        get_format("tflite")
    with pytest.raises(ValueError, match="needs \\['nothing'\\]"):
        register_format(Format("x", "x", export_toy, roles=("x",), needs=("nothing",)))
    assert "x" not in FORMATS


def test_every_registered_format_declares_a_runner_and_deployed_int8_formats_have_no_parity_tolerance():
    for fmt in FORMATS.values():
        assert fmt.runner is not None and fmt.roles and fmt.title, fmt.name
        assert not (fmt.int8 and fmt.parity), fmt.name
        assert all(need in FORMATS for need in fmt.needs), fmt.name
        assert not fmt.requires or not fmt.in_all, fmt.name     # `all` never needs an option


def test_a_format_needing_calib_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(ConversionError, match="--target nnie needs --calib"):
        export(source_from_random_init("pfpld", 0.25, seed=0), ["nnie"], out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    proc = subprocess.run(PFPLD + ["export", "--model", "pfpld", "--width", "0.25", "--init", "random", "--target",
                                   "ncnn", "--int8", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--int8 needs --calib" in proc.stderr and not out.exists()


def test_manifest_records_round_trip_and_a_broken_manifest_is_one_error(random_export, tmp_path):
    src, _ = random_export(0.25)
    folder = ExportFolder.open(src)
    assert folder.manifest.spec.output_of_kind("landmarks").norm_points == (60, 72)
    assert folder.manifest.to_dict()["files"] == json.loads((src / MANIFEST).read_text())["files"]
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    data = json.loads((copy / MANIFEST).read_text())
    del data["stages"]
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ConversionError, match="manifest has no 'stages'"):
        ExportFolder.open(copy)
    proc = subprocess.run(PFPLD + ["check-parity", str(copy)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "manifest has no 'stages'" in proc.stderr


def test_check_parity_names_changed_files_and_fails(random_export, tmp_path):
    src, _ = random_export(0.25)
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    with open(copy / "pfpld.prototxt", "a") as f:
        f.write("# edited by hand\n")
    proc = subprocess.run(PFPLD + ["check-parity", str(copy), "--n", "2"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stdout
    assert "verdict: FAIL" in proc.stdout and "files changed since export" in proc.stdout
    assert "pfpld.prototxt" in proc.stdout.splitlines()[-3] or "pfpld.prototxt" in proc.stdout


@pytest.mark.parametrize("make", [
    lambda d, bad: OnnxRunner(bad),
    lambda d, bad: CaffeRunner(bad, bad, d / "pfpld.caffe.names.json"),
    lambda d, bad: NcnnRunner(bad, bad, d / "pfpld.ncnn.names.json"),
    lambda d, bad: NcnnRunner(d / "pfpld.ncnn.param", bad, d / "pfpld.ncnn.names.json"),
    lambda d, bad: NcnnRunner(d / "pfpld.ncnn.param", d / "pfpld.ncnn.bin", bad),
])
def test_a_runtime_that_cannot_load_a_file_says_which_in_one_line(random_export, tmp_path, make):
    src, _ = random_export(0.25)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x89\xff\x00 not a model \x00" * 4)
    with pytest.raises(ConversionError) as info:
        make(src, bad)
    message = str(info.value)
    assert str(bad) in message and "\n" not in message and "Please file" not in message


def test_runners_restore_the_process_thread_settings(random_export):
    import cv2
    import torch
    src, _ = random_export(0.25)
    folder = ExportFolder.open(src)
    before = (torch.get_num_threads(), cv2.getNumThreads())
    x = np.zeros((1, 3, 112, 112), np.float32)
    for name in ("torch", "caffe"):
        folder.runner(name, RunOptions(threads=1 if before[0] != 1 else 2)).run(x)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == before, name


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (inside functions too), relative imports resolved."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module or "")
    return found


@pytest.mark.parametrize("package, forbidden", [("pfpld", ("convert", "quant", "pfpld_app")),
                                                ("convert", ("quant", "pfpld_app")), ("quant", ("pfpld_app",))])
def test_imports_run_one_way(package, forbidden):
    offenders = [f"{path.relative_to(ROOT)} imports {name}"
                 for path in sorted((ROOT / package).rglob("*.py"))
                 for name in sorted(_imports(path)) if name.split(".")[0] in forbidden]
    assert offenders == []
