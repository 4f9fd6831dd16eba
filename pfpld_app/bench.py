"""`pfpld bench` / `make bench`: one Ultralytics-style table of every registered format, for every model benchmarked.

For each model (a trained checkpoint, or a registry model with random weights and randomised BatchNorm statistics),
every format of the registry is exported with one `pfpld export` (int8 formats calibrated on a calibration set),
then each row gives: status, size, parity against PyTorch (the format's own tolerance), accuracy delta against the
float model on held-out labelled faces (trained models only: NME points), single-image latency at 1 and 2 threads
with the runtime's default options, that latency as a share of this core's measured fp32 FMA peak, and its ratio
to a reference measured in the same run: the same module exported by a plain `torch.onnx.export` and run by
onnxruntime. No absolute time is a target: machines differ (FACTS section 10). `--training` adds the training
throughput section: the bare training step against the end-to-end `pfpld train` loop, measured in the same run.
Beside the Python ncnn row, the C++ side (deploy_cpp's pfpld_bench, when built) runs the same ncnn files on the
same face, in alternation with Python ncnn, and times its preprocessing per face. Written to bench/results.md.
"""
from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

FMA_KERNEL = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* CHAINS independent accumulators of WIDTH floats, each updated acc = acc * a + b: with -ffp-contract=fast one
   vector FMA per update and no dependency between chains, so the loop runs at the FMA units' throughput. */
#define CHAINS 16
typedef float vec __attribute__((vector_size(WIDTH * 4)));
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 20000000L;
    vec acc[CHAINS], a, b;
    for (int i = 0; i < WIDTH; i++) { a[i] = 0.999999f; b[i] = 1e-7f; }
    for (int c = 0; c < CHAINS; c++) for (int i = 0; i < WIDTH; i++) acc[c][i] = (float)(c + i);
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        for (long n = 0; n < iters; n++) {
#pragma GCC unroll 16
            for (int c = 0; c < CHAINS; c++) acc[c] = acc[c] * a + b;
            __asm__ volatile("" : "+x"(a));   /* keep the loop from being folded away */
        }
        double gflops = 2.0 * WIDTH * CHAINS * (double)iters / (now() - t0) / 1e9;
        if (gflops > best) best = gflops;
    }
    float s = 0; for (int c = 0; c < CHAINS; c++) for (int i = 0; i < WIDTH; i++) s += acc[c][i];
    printf("%.3f %g\n", best, (double)s);
    return 0;
}
"""


def fma_peak_gflops(workdir: Path, iterations: int = 20_000_000) -> tuple[float | None, str]:
    """Best single-core fp32 GFLOP/s (2 flops per FMA) over 8- and 16-float vectors; (None, why) without gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None, "no C compiler"
    source = workdir / "fma.c"
    source.write_text(FMA_KERNEL)
    results = {}
    for width in (8, 16):
        binary = workdir / f"fma{width}"
        build = subprocess.run([gcc, "-O3", "-march=native", "-ffp-contract=fast", f"-DWIDTH={width}", str(source),
                                "-o", str(binary)], capture_output=True, text=True)
        if build.returncode != 0:
            continue
        run = subprocess.run([str(binary), str(iterations)], capture_output=True, text=True, timeout=120)
        if run.returncode == 0:
            results[width] = float(run.stdout.split()[0])
    if not results:
        return None, "FMA kernel did not build"
    width = max(results, key=results.get)
    return results[width], f"{width}-float vectors x 16 chains, gcc -O3 -march=native, best of 5"


def count_macs(onnx_path: Path) -> float:
    """Multiply-adds of Conv, ConvTranspose, Gemm and MatMul nodes, from the graph's inferred shapes."""
    import onnx
    from onnx import numpy_helper, shape_inference
    model = shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and node.input[1] in weights:
            w = weights[node.input[1]]
            reference = node.output[0] if node.op_type == "Conv" else node.input[0]
            total += int(np.prod(shapes[reference])) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in weights:
            total += int(np.prod(shapes[node.output[0]][:-1] or [1])) * int(np.prod(weights[node.input[1]]))
    return float(total)


def median_latency_ms(fn, x: np.ndarray, budget_s: float = 1.5, min_runs: int = 30, max_runs: int = 1000) -> float:
    """Median time of fn(x) after a warm-up: runs until `budget_s` is spent and `min_runs` are done; a pathological
    configuration (threads spinning against another process) stops after 5 runs at 3x the budget."""
    warm = time.perf_counter()
    for i in range(10):
        fn(x)
        if i >= 1 and time.perf_counter() - warm > budget_s:
            break
    times = []
    start = time.perf_counter()
    while len(times) < max_runs:
        elapsed = time.perf_counter() - start
        if (len(times) >= min_runs and elapsed > budget_s) or (len(times) >= 5 and elapsed > 3 * budget_s):
            break
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


# --- the table ---------------------------------------------------------------------------------------------------
@dataclass
class BenchRow:
    model: str
    format: str
    title: str
    status: str = "ok"
    size_mb: float | None = None
    parity: str = "-"
    accuracy_delta: float | None = None         # NME points against the float model on held-out faces
    latency_ms: dict[int, float] = field(default_factory=dict)
    peak_pct: float | None = None               # 1-thread latency as a share of the FMA peak (2 x MACs / time)
    vs_reference: dict[int, float] = field(default_factory=dict)    # reference latency / this latency


@dataclass
class CppComparison:
    """deploy_cpp's ncnn backend against Python ncnn on the same files, face and options; otherwise status is the
    one line that says why not."""
    model: str
    status: str = "ok"
    python_ms: dict[int, float] = field(default_factory=dict)
    cpp_ms: dict[int, float] = field(default_factory=dict)
    cpp_preprocess_us: float | None = None      # crop_face + pack_float_chw, one face
    python_preprocess_us: float | None = None   # contract.crop_image + to_tensor_layout (cv2, numpy), one face


@dataclass
class ModelBench:
    label: str
    macs: float
    rows: list[BenchRow]
    accuracy_note: str
    cpp: CppComparison | None = None            # None: no ncnn export to compare


REPO_ROOT = Path(__file__).resolve().parent.parent
CPP_BENCH = "pfpld_bench"                       # built by `make cpp-test` into build/deploy_cpp/host
CPP_FORMAT = "ncnn"                             # the fp32 ncnn files, deploy.json's runtime "ncnn"


@dataclass
class BenchSettings:
    threads: tuple[int, ...] = (1, 2)
    budget_s: float = 1.5
    min_runs: int = 30
    n_parity: int = 4
    heldout: int = 256
    formats: tuple[str, ...] | None = None      # None: every registered target
    cpp_build: Path = REPO_ROOT / "build" / "deploy_cpp" / "host"
    calibration: str = ""                       # what the int8 formats were calibrated on (for the report)


def plain_onnx_reference(module, spec, folder: Path) -> Path:
    """The same module exported the way a user would without pfpld: torch.onnx.export with its defaults (the
    TorchScript exporter, opset 13, no simplification)."""
    import torch
    path = folder / "reference.onnx"
    x = torch.zeros(1, 3, *spec.input_hw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), dynamo=False, opset_version=13)
    return path


def bench_model(source, label: str, work: Path, calib: Path, settings: BenchSettings, data: Path | None,
                trained: bool, face: "BenchFace", log: Callable[[str], None]) -> ModelBench:
    from convert.artifacts import ExportFolder
    from convert.export import export
    from convert.formats import FORMATS, RunOptions, target_names
    from convert.parity import check_parity
    from convert.runtimes import OnnxRunner, process_threads
    from pfpld.errors import one_line
    from quant.int8 import face_metrics, float_format, heldout_faces
    from quant.nnie import NnieOptions

    folder = work / label.replace(" ", "_").replace("/", "_")
    targets = list(settings.formats or target_names())
    start = time.perf_counter()
    result = export(source, targets, folder, with_int8=settings.formats is None,
                    options={"calib": calib, "nnie": NnieOptions(calib=calib)})
    log(f"{label}: exported {', '.join(result.manifest.targets)} in {time.perf_counter() - start:.1f} s")
    exported = ExportFolder.open(folder)
    parity = {r.stage: r for r in check_parity(folder, n=settings.n_parity, seed=0, write=False).rows}
    reference_path = plain_onnx_reference(source.module, source.spec, work)
    macs = count_macs(reference_path)

    recognition = exported.spec.output_of_kind("embedding") is not None
    faces = heldout_faces(exported.contract, data, settings.heldout, seed=0) if trained and not recognition else None
    float_metrics = None
    if faces is not None:
        float_metrics = face_metrics(exported.runner(float_format(exported)).run(faces.x), faces, exported.spec)

    x = np.random.default_rng(0).random((1, 3, *exported.spec.input_hw), dtype=np.float32)
    reference = BenchRow(label, "reference", "torch.onnx.export (plain), onnxruntime")
    reference.size_mb = reference_path.stat().st_size / 1e6
    rows = [reference]
    for name in exported.formats():
        fmt = FORMATS[name]
        row = BenchRow(label, name, f"{fmt.title} ({fmt.runtime})" if fmt.runtime else fmt.title,
                       size_mb=exported.size_bytes(name) / 1e6)
        if name in parity and parity[name].verdict != "reference":
            p = parity[name]
            if p.embedding_1mcos is not None:       # an embedding is judged by its cosine (convert/parity.py)
                row.parity = f"{p.verdict} (1-cos {p.embedding_1mcos:.1e})"
            else:
                row.parity = f"{p.verdict} ({p.max_abs:.1e})" if p.max_abs is not None else p.verdict
        elif fmt.reference:
            row.parity = "reference"
        rows.append(row)
    for threads in settings.threads:
        with process_threads(threads):
            runner = OnnxRunner(reference_path, threads=threads)
            reference.latency_ms[threads] = median_latency_ms(runner.run, x, settings.budget_s, settings.min_runs)
            log(f"  {label} {'reference':<10} {threads}T {reference.latency_ms[threads]:8.3f} ms")
            for row in rows[1:]:
                fmt = FORMATS[row.format]
                if not fmt.timed or row.status != "ok":
                    continue
                try:
                    runner = exported.runner(row.format, RunOptions(threads=threads, winograd=True))
                    row.latency_ms[threads] = median_latency_ms(runner.run, x, settings.budget_s, settings.min_runs)
                    log(f"  {label} {row.format:<10} {threads}T {row.latency_ms[threads]:8.3f} ms")
                except Exception as exc:  # a format that cannot run is a row saying so, as in Ultralytics' table
                    row.status = f"error: {one_line(exc, 120)}"
    for row in rows:
        for threads, ms in row.latency_ms.items():
            if threads in reference.latency_ms:
                row.vs_reference[threads] = reference.latency_ms[threads] / ms
        if faces is not None and row.format != "reference" and FORMATS[row.format].runner is not None:
            try:
                m = face_metrics(exported.runner(row.format).run(faces.x), faces, exported.spec)
                row.accuracy_delta = m.nme_pct - float_metrics.nme_pct
            except Exception as exc:
                row.status = f"error: {one_line(exc, 120)}"
    note = (f"accuracy delta: NME points against the float model on {len(faces.x)} held-out faces ({faces.source}); "
            f"float NME {float_metrics.nme_pct:.2f}%" if faces is not None else
            "accuracy delta not measured: a recognition model is judged in verification terms by `pfpld check-parity "
            "--int8 --pairs`" if trained and recognition else
            "accuracy delta not measured: random weights (give a trained --ckpt and --data)")
    cpp = compare_cpp_ncnn(exported, label, face, settings, log) if exported.has(CPP_FORMAT) else None
    return ModelBench(label, macs, rows, note, cpp)


def table_rows(results: list[ModelBench], threads: tuple[int, ...]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "format", "status", "size (MB)", "parity vs torch", "accuracy delta (NME pts)"]
    header += [f"latency {t}T (ms)" for t in threads] + ["% FMA peak (1T)"]
    header += [f"x reference {t}T" for t in threads]
    rows = []
    for res in results:
        for r in res.rows:
            rows.append([r.model, r.format, r.status, "-" if r.size_mb is None else f"{r.size_mb:.2f}", r.parity,
                         "-" if r.accuracy_delta is None else f"{r.accuracy_delta:+.3f}"]
                        + [f"{r.latency_ms[t]:.3f}" if t in r.latency_ms else "-" for t in threads]
                        + ["-" if r.peak_pct is None else f"{r.peak_pct:.0f}%"]
                        + [f"{r.vs_reference[t]:.2f}x" if t in r.vs_reference else "-" for t in threads])
    return header, rows


# --- the C++ side (deploy_cpp) beside Python ncnn ----------------------------------------------------------------
@dataclass
class BenchFace:
    path: Path                                  # a PPM the C++ side reads
    box: tuple[float, float, float, float]      # its landmark box: what the crop rule is measured on


def bench_face(folder: Path, seed: int = 0, contract=None) -> BenchFace:
    """One synthetic face on a 640 x 480 picture, written as PPM, and its landmark box; for an aligned contract (a
    recognition model) one synthetic aligned face (convert.parity.synthetic_aligned_faces) and the whole image."""
    import cv2
    if contract is not None and contract.aligned:
        from convert.parity import synthetic_aligned_faces
        from pfpld.align import TEMPLATE_SIZE
        from pfpld.contract import PreprocessContract
        crops, _ = synthetic_aligned_faces(PreprocessContract(input_size=TEMPLATE_SIZE), 1, seed)
        path = folder / "aligned_face.ppm"
        cv2.imwrite(str(path), crops[0])
        return BenchFace(path, contract.aligned_box(crops[0]))
    from pfpld.contract import landmark_box
    from pfpld.data.synthetic import render_face
    face = render_face(np.random.default_rng(seed), image_size=(640, 480))
    path = folder / "face.ppm"
    cv2.imwrite(str(path), face.image)
    return BenchFace(path, landmark_box(face.points_98))


def run_cpp_bench(binary: Path, export_folder: Path, face: BenchFace, threads: int, winograd: bool,
                  seconds: float) -> dict:
    """pfpld_bench's JSON line; RuntimeError with its one-line message when it fails."""
    import json
    command = [str(binary), str(export_folder), str(face.path), "--box", ",".join(f"{v:.3f}" for v in face.box),
               "--runtime", CPP_FORMAT, "--threads", str(threads), "--seconds", str(seconds)]
    run = subprocess.run(command + (["--winograd"] if winograd else []), capture_output=True, text=True,
                         timeout=60 + 10 * seconds)
    if run.returncode != 0:
        raise RuntimeError(f"{binary.name} exit {run.returncode}: {(run.stderr.strip() or 'no message')[:200]}")
    return json.loads(run.stdout)


def compare_cpp_ncnn(exported, label: str, face: BenchFace, settings: BenchSettings,
                     log: Callable[[str], None]) -> CppComparison:
    """Python ncnn and pfpld_bench on the export's ncnn files and the same face crop, Winograd on as in the table,
    at each thread count: two rounds in the order Python, C++, C++, Python, each keeping its faster median (another
    process only ever slows a run down). Then the preprocessing of one face: C++ (from the same pfpld_bench runs)
    and the Python contract's, at 1 thread."""
    import cv2
    from convert.formats import RunOptions
    from convert.runtimes import process_threads
    binary = settings.cpp_build / CPP_BENCH
    if not binary.is_file():
        return CppComparison(label, f"not measured: {binary} not found (build it with `make cpp-test`)")
    contract = exported.contract
    image = cv2.imread(str(face.path), cv2.IMREAD_COLOR)
    x = contract.to_tensor_layout(contract.crop_image(image, face.box)[0])[None]
    result = CppComparison(label)
    cpp_preprocess = []
    try:
        for threads in settings.threads:
            with process_threads(threads):
                runner = exported.runner(CPP_FORMAT, RunOptions(threads=threads, winograd=True))
                python, cpp = [], []
                for side in ("python", "cpp", "cpp", "python"):     # a drift in the machine's load hits both
                    if side == "python":
                        python.append(median_latency_ms(runner.run, x, settings.budget_s, settings.min_runs))
                    else:
                        line = run_cpp_bench(binary, exported.folder, face, threads, True, settings.budget_s)
                        cpp.append(line["infer_ms"]["median"])
                        cpp_preprocess.append(line["preprocess_us"]["median"])
                result.python_ms[threads], result.cpp_ms[threads] = min(python), min(cpp)
                log(f"  {label} {'ncnn':<10} {threads}T {min(python):8.3f} ms (Python)  {min(cpp):8.3f} ms (C++)")
    except (OSError, RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
        from pfpld.errors import one_line
        return CppComparison(label, f"{label}: error: {one_line(exc, 200)}")
    result.cpp_preprocess_us = min(cpp_preprocess)
    with process_threads(1):
        result.python_preprocess_us = 1e3 * median_latency_ms(
            lambda img: contract.to_tensor_layout(contract.crop_image(img, face.box)[0]), image,
            settings.budget_s / 4, min_runs=100)
    log(f"  {label} preprocess per face {result.cpp_preprocess_us:.1f} us (C++)  "
        f"{result.python_preprocess_us:.1f} us (Python)")
    return result


def cpp_table_rows(results: list[ModelBench], threads: tuple[int, ...]) -> tuple[list[str], list[list[str]],
                                                                                  list[str]]:
    """The C++ table's header and rows, and the lines that say why a model has none (each said once)."""
    header = (["model"] + [f"Python ncnn {t}T (ms)" for t in threads] + [f"C++ ncnn {t}T (ms)" for t in threads]
              + [f"C++ / Python {t}T" for t in threads] + ["C++ preprocess (us/face)", "Python preprocess (us/face)"])
    rows, notes = [], []
    for cmp in (res.cpp for res in results if res.cpp is not None):
        if cmp.status != "ok":
            if cmp.status not in notes:
                notes.append(cmp.status)
            continue
        rows.append([cmp.model] + [f"{cmp.python_ms[t]:.3f}" for t in threads]
                    + [f"{cmp.cpp_ms[t]:.3f}" for t in threads]
                    + [f"{cmp.cpp_ms[t] / cmp.python_ms[t]:.2f}" for t in threads]
                    + [f"{cmp.cpp_preprocess_us:.1f}", f"{cmp.python_preprocess_us:.1f}"])
    return header, rows, notes


def cpp_markdown(results: list[ModelBench], settings: BenchSettings) -> list[str]:
    from pfpld.tables import markdown_table
    header, rows, notes = cpp_table_rows(results, settings.threads)
    notes = [f"- C++ ncnn {note}." for note in notes]
    if not rows:
        return notes
    lines = ["", "### C++ ncnn (deploy_cpp) beside Python ncnn", "",
             f"The `{CPP_FORMAT}` files of each export (fp32), Winograd on as in the table above, on the crop of one "
             f"synthetic face (640 x 480 picture, its landmark box; for a recognition model one synthetic aligned "
             f"face, the whole image). Python: the table's runner (`ncnn` wheel); C++: "
             f"`{CPP_BENCH}` (deploy_cpp's ncnn backend on ncnn's C++ library as deploy_cpp/tools/build_ncnn.sh builds "
             f"it: one x86 variant, AVX2 + FMA, where the wheel picks its kernels at run time), its backend's infer "
             f"on the crop, packing included. Each thread count: two rounds in the order Python, "
             f"C++, C++, Python, the faster median of each kept. Preprocessing per face: the contract's crop and "
             f"float packing, C++ (`crop_face` + `pack_float_chw`) against Python (`crop_image` + "
             f"`to_tensor_layout`: cv2 and numpy) at 1 thread.", ""]
    return lines + markdown_table(header, rows) + ([""] + notes if notes else [])


def run_format_benchmark(sources: list[tuple[object, str, bool]], settings: BenchSettings | None = None,
                         data: Path | None = None, calib: Path | None = None,
                         log: Callable[[str], None] = print) -> tuple[list[ModelBench], float | None, str]:
    """Benchmark every (export source, label, trained) given; returns the per-model results and the FMA peak."""
    settings = settings or BenchSettings()
    with tempfile.TemporaryDirectory(prefix="pfpld-bench-") as tmp:
        work = Path(tmp)
        peak, how = fma_peak_gflops(work)
        log(f"FMA peak: {peak} GFLOP/s ({how})")
        calibrations = CalibrationSets(work / "calib", calib)
        face = bench_face(work)
        aligned_face = None
        results = []
        for source, label, trained in sources:
            if source.contract.aligned and aligned_face is None:
                aligned_face = bench_face(work, contract=source.contract)
            results.append(bench_model(source, label, work, calibrations.for_contract(source.contract), settings, data,
                                       trained, aligned_face if source.contract.aligned else face, log))
        settings.calibration = calibrations.describe()
        # Measured again at the end: a core shared with another process reads low once; the best of the two
        # is the closer bound.
        again, _ = fma_peak_gflops(work)
        if again and (peak is None or again > peak):
            peak = again
        log(f"FMA peak: {peak} GFLOP/s (best of the start and the end)")
    for res in results:
        for row in res.rows:
            if peak and res.macs and 1 in row.latency_ms:
                row.peak_pct = 100 * 2 * res.macs / (row.latency_ms[1] * 1e-3) / (peak * 1e9)
    return results, peak, how


SYNTHETIC_CALIBRATION = 32


class CalibrationSets:
    """The int8 formats' calibration set per contract: --calib where it was made with the model's contract, else
    synthetic faces cropped with the model's own contract (one set per contract, made once)."""

    def __init__(self, folder: Path, given: Path | None):
        self.folder, self.given = folder, given
        self.made: dict[str, Path] = {}
        self.used_given = False

    def for_contract(self, contract) -> Path:
        from quant.calibration import read_calibration_set
        from pfpld.errors import InputError
        if self.given is not None:
            try:
                read_calibration_set(self.given, contract)
                self.used_given = True
                return self.given
            except InputError:
                pass                    # made for another model's contract
        key = contract.to_json()
        if key not in self.made:
            self.made[key] = synthetic_calibration(self.folder / str(len(self.made)), contract)
        return self.made[key]

    def describe(self) -> str:
        parts = [f"`{self.given}` (--calib)"] if self.used_given else []
        if self.made:
            parts.append(f"{SYNTHETIC_CALIBRATION} synthetic crops of the bench's own made with the model's contract "
                         f"(aligned synthetic identities for a recognition model; for "
                         f"{'the other models' if parts else 'every model'}; the int8 deltas can differ from "
                         f"those of a checkpoint's own calibration set)")
        return "; ".join(parts)


SYNTHETIC_CALIBRATION_IDENTITIES = 16   # an aligned contract's synthetic set: identities x 2 faces to choose from


def synthetic_calibration(folder: Path, contract, n: int = SYNTHETIC_CALIBRATION, seed: int = 0) -> Path:
    """A calibration set of synthetic faces cropped with `contract` (prepared, then chosen by `pfpld calib`'s rules)
    when none fits; for an aligned contract, synthetic identities (pfpld.data.identities) chosen over identities."""
    from pfpld.data.prepare import prepare_dataset
    from pfpld.data.synthetic import generate_dataset
    from quant.calibration import make_calibration_set
    if contract.aligned:
        from pfpld.data.identities import generate_identities
        per_identity = max(2, -(-2 * n // SYNTHETIC_CALIBRATION_IDENTITIES))
        generate_identities(folder / "identities", identities=SYNTHETIC_CALIBRATION_IDENTITIES,
                            per_identity=per_identity, heldout=2, pairs_per_fold=1, folds=1, seed=seed,
                            progress=False)
        prepare_dataset(folder / "prepared", imagefolder=folder / "identities" / "imagefolder", contract=contract,
                        progress=False)
        make_calibration_set(folder / "prepared", folder / "set", n=n, seed=seed, contract=contract)
        return folder / "set"
    generate_dataset(folder / "synth", n=max(60, 2 * n), seed=seed, progress=False)
    prepare_dataset(folder / "prepared", wflw=folder / "synth" / "WFLW", w300lp=folder / "synth" / "300W_LP",
                    contract=contract, progress=False)
    make_calibration_set(folder / "prepared", folder / "set", n=n, seed=seed, contract=contract)
    return folder / "set"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"


def format_markdown(results: list[ModelBench], peak: float | None, how: str, settings: BenchSettings) -> str:
    from pfpld.tables import markdown_table
    header, rows = table_rows(results, settings.threads)
    lines = ["## Formats (`pfpld bench`)", "",
             f"Machine: {machine_line()}. Single image, median of >= {settings.min_runs} runs after warm-up, "
             f"runtimes with their default options (Winograd on); parity with exact arithmetic (Winograd off) on "
             f"{settings.n_parity} random inputs and {settings.n_parity} synthetic faces. "
             + (f"fp32 FMA peak of one core: **{peak:.1f} GFLOP/s** ({how}; best of a measurement before and after "
                f"the runs)." if peak else f"FMA peak: {how}."), "",
             "The reference row is the same module exported by a plain `torch.onnx.export` and run by onnxruntime; "
             "`x reference` is its latency divided by the row's (above 1: faster). The NNIE row is a simulation "
             "(no board latency).", ""]
    if settings.calibration:
        lines += [f"int8 formats calibrated on {settings.calibration}.", ""]
    lines += markdown_table(header, rows)
    lines.append("")
    for res in results:
        lines.append(f"- {res.label}: {res.macs / 1e6:.1f} M multiply-adds; {res.accuracy_note}.")
    lines += cpp_markdown(results, settings)
    return "\n".join(lines) + "\n"


# --- training throughput -------------------------------------------------------------------------------------------
# The targets for `pfpld train` against the bare step: the data pipeline may cost at most 15 % at width 0.25
# and 5 % at width 1.0 (a bigger model leaves it relatively more time).
END_TO_END_TARGETS = {0.25: 0.85, 1.0: 0.95}
END_TO_END_ROUNDS = 4           # pairs of (bare step, one epoch of the loop), after a start-up epoch


BENCH_IDENTITIES = 1000         # classes of a recognition model's margin head in the bare step


def train_images_per_s(model: str, width: float, batch_size: int = 64, steps: int = 8, warmup: int = 2,
                       device: str = "cpu") -> float:
    """Forward + backward + Adam step images/s of a registry model on random batches shaped by its spec: the
    training step with no data pipeline at all."""
    import torch
    from pfpld.landmarks import NUM_POINTS
    from pfpld.losses import LossConfig
    from pfpld.models import build_model, model_task
    from pfpld.train import TrainConfig
    torch.manual_seed(0)
    module, spec, contract = build_model(model, width=width)
    task = model_task(spec)
    module.to(device).train()
    opt = torch.optim.Adam(module.parameters(), lr=1e-3, weight_decay=TrainConfig.weight_decay)
    size = contract.input_size
    # labels as the prepared data holds them (98 points, a pose inside every model's range), mapped by the task
    targets = task.targets(torch.rand(batch_size, 2 * NUM_POINTS, device=device),
                           torch.ones(batch_size, NUM_POINTS, dtype=torch.bool, device=device),
                           (torch.rand(batch_size, 3, device=device) - 0.5), torch.ones(batch_size, dtype=torch.bool,
                                                                                          device=device))
    image = torch.rand(batch_size, 3, size, size, device=device)
    extra = {}
    if task.identities:         # a recognition model learns through its margin head, here over 1,000 identities
        head = task.head(spec, BENCH_IDENTITIES, LossConfig()).to(device).train()
        opt.add_param_group({"params": list(head.parameters())})
        targets = replace(targets, identity=torch.randint(0, BENCH_IDENTITIES, (batch_size,), device=device))
        extra = {"head": head}
    for i in range(warmup + steps):
        if i == warmup:
            if device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss, _ = task.loss(module(image), targets, size, LossConfig(), **extra)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device != "cpu":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


@dataclass
class EndToEnd:
    """One width on one device: the bare step against the real `pfpld train` loop on prepared data, measured in
    alternation (a bare measurement, then one epoch of the loop, and again), so that a neighbour on the machine
    that comes and goes slows both sides of a pair alike."""
    width: float
    device: str
    bare_images_per_s: list[float]      # one per round
    loop_images_per_s: list[float]      # the loop's own train_images_per_s of the epoch right after each bare run
    data_share: list[float]             # of each of those epochs' time, what the step waited for data

    @property
    def ratios(self) -> list[float]:
        return [loop / bare for loop, bare in zip(self.loop_images_per_s, self.bare_images_per_s)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def in_loop_ratio(self) -> float:
        """The loop's rate over the rate of its own steps alone (1 - the share waiting for data): both sides timed
        in the same batches, so no drift of the machine enters it. The target is judged on this one; `ratio`
        checks that a step in the loop is as fast as a bare step."""
        return 1.0 - statistics.median(self.data_share)

    @property
    def target(self) -> float | None:
        return END_TO_END_TARGETS.get(self.width) if self.device == "cpu" else None

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f">= {self.target:.2f} ({'met' if self.in_loop_ratio >= self.target else 'missed'})"


def end_to_end(model: str, width: float, data: Path, work: Path, device: str, batch_size: int = 64,
               rounds: int = END_TO_END_ROUNDS) -> EndToEnd:
    """Run `pfpld train` (the train() loop itself, default loader settings, augmentation on, fp32 like the bare
    step) on a prepared set one epoch at a time, resuming from last.pt, with a bare-step measurement before each
    epoch. The first epoch (start-up: allocator, thread pools, page cache) is not counted."""
    from pfpld.checkpoint import load_checkpoint
    from pfpld.train import TrainConfig, train
    out = work / f"run_{width}_{device}"
    # fixed milestones: the step schedule must not move as the run is extended one epoch at a time
    cfg = TrainConfig(data=str(data), out=str(out), model=model, width=width, epochs=1, batch_size=batch_size,
                      lr=1e-3, device=device, amp="off", milestones=(1000,), val_fraction=0.0)
    train(cfg, progress=False)
    bare, loop, share = [], [], []
    for r in range(rounds):
        bare.append(train_images_per_s(model, width, batch_size, device=device))
        train(replace(cfg, epochs=r + 2), resume=str(out / "last.pt"), progress=False)
        row = load_checkpoint(out / "last.pt").history[-1]
        loop.append(row["train_images_per_s"])
        share.append(row["data_seconds"] / row["epoch_seconds"])
    return EndToEnd(width=width, device=device, bare_images_per_s=bare, loop_images_per_s=loop, data_share=share)


def training_markdown(model: str, widths: tuple[float, ...], log: Callable[[str], None] = print,
                      faces: int = 2000) -> str:
    """The training-throughput section: per width (and on the GPU too when there is one), the bare step and the
    end-to-end `pfpld train` rate measured in the same run, their ratio and the issue's target. The demo's 2,000
    synthetic faces (about 1,380 training faces, 21 batches an epoch): with 600 (6 batches) each resumed epoch's
    start (a new process state, the first batch) weighed on the loop's rate as it never does in a real epoch."""
    import torch
    from pfpld.data.prepare import prepare_dataset
    from pfpld.data.synthetic import generate_dataset
    from pfpld.tables import markdown_table
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory(prefix="pfpld-bench-train-") as tmp:
        synth, data = Path(tmp) / "synth", Path(tmp) / "prepared"
        generate_dataset(synth, n=faces, seed=0, progress=False)
        summary = prepare_dataset(data, wflw=synth / "WFLW", lapa=synth / "LaPa", w300lp=synth / "300W_LP",
                                  aflw2000=synth / "AFLW2000", progress=False)
        results = []
        for device in devices:
            for width in sorted(widths):
                r = end_to_end(model, width, data, Path(tmp), device)
                log(f"  {model} w{width} {device}: bare {_spread(r.bare_images_per_s)} img/s, train loop "
                    f"{_spread(r.loop_images_per_s)} img/s, loop / bare {_spread(r.ratios, '.2f')} "
                    f"(median {r.ratio:.2f}), waiting for data {100 * statistics.median(r.data_share):.1f} %")
                results.append(r)
    train_faces = sum(v for k, v in summary.counts.items() if k.endswith("/train"))
    header = ["model", "device", "bare step (img/s)", "`pfpld train` loop (img/s)", "loop / bare per round",
              "loop / bare (median)", "waiting for data (median)", "loop / its own steps", "target"]
    rows = [[f"{model} w{r.width}",
             f"cpu ({torch.get_num_threads()} threads)" if r.device == "cpu" else torch.cuda.get_device_name(0),
             _spread(r.bare_images_per_s), _spread(r.loop_images_per_s), ", ".join(f"{x:.2f}" for x in r.ratios),
             f"{r.ratio:.2f}", f"{100 * statistics.median(r.data_share):.1f} %", f"{r.in_loop_ratio:.3f}",
             r.target_text()] for r in results]
    how = (f"Machine: {machine_line()}. Batch 64, fp32 on every device. {END_TO_END_ROUNDS} rounds per width, after "
           f"one start-up epoch: the bare step (forward + backward + Adam with the training's weight decay on random "
           f"tensors, no data at all), then one epoch of `pfpld train` resumed from last.pt (its own "
           f"`train_images_per_s`) on {train_faces} prepared synthetic training faces, augmentation on, default loader "
           f"settings (on the CPU no loader process: crops memory-mapped from crops.npy, augmentation batched in the "
           f"training process). \"Waiting for data\" is the share of the loop's epoch between asking the loader for a "
           f"batch and having its augmented input (the loop's `data_seconds`); \"loop / its own steps\" is 1 minus "
           f"it, both sides timed in the same batches, and the issue's target is judged on it. The loop / bare "
           f"ratios compare measurements taken tens of seconds apart: on a shared virtual machine they swing with "
           f"the neighbours (their spread is shown), and their median checks that a step inside the loop runs as "
           f"fast as a bare one.")
    return "\n".join(["## Training throughput", "", how, ""] + markdown_table(header, rows)) + "\n"


def _spread(values: list[float], fmt: str = ".1f") -> str:
    """min-max of a few measurements."""
    return f"{min(values):{fmt}}-{max(values):{fmt}}"
