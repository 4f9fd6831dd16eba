"""`make bench`, export part: time of each export stage, file sizes, parity, and single-image latency of PFPLD
width 1.0 and 0.25 in torch, onnxruntime, OpenCV-Caffe and ncnn at 1 and 2 threads, each also as a fraction of
this core's fp32 FMA peak (measured by a small C kernel of independent vector FMA chains, compiled here with
-O3 -march=native). One Ultralytics-style table per width, the issue's targets next to the numbers, written to
bench/results_export.md. Runtimes are timed with their default algorithms (Winograd on); parity is checked with
Winograd off (see convert/runtimes.py), and the table states what the defaults cost in accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from pfpld.fileio import write_text_atomic

PFPLD_1X_MACS = 433.6e6          # the figure, checked against the graph count below
TARGETS = {                      # issue 3, "Benchmark": reference PFPLD measured on the project's machines
    "onnxruntime_1x_1t_ms": 5.7,
    "ncnn_fp32_1x_1t_ms": 7.0,
    "onnxruntime_025x_1t_ms": 0.6,
    "export_chain_1x_s": 15.0,
}

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


def fma_peak_gflops(workdir: Path) -> tuple[float | None, str]:
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
        run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
        if run.returncode == 0:
            results[width] = float(run.stdout.split()[0])
    if not results:
        return None, "FMA kernel did not build"
    width = max(results, key=results.get)
    return results[width], f"{width}-float vectors x 16 chains, gcc -O3 -march=native, best of 5"


def count_macs(onnx_path: Path) -> float:
    """Multiply-adds of Conv, ConvTranspose, Gemm and MatMul nodes, from the graph's inferred shapes."""
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


def onnxruntime_op_shares(onnx_path: Path, workdir: Path, runs: int = 100) -> dict[str, float]:
    """Fraction of onnxruntime's kernel time per op type (1 thread, default optimisations, its profiler): shows
    whether time goes to the model's convolutions or to ops the export or the runtime added."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / "ort_profile")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 112, 112), dtype=np.float32)
    for _ in range(runs):
        session.run(None, {session.get_inputs()[0].name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op = Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values()) or 1
    return {op: t / total for op, t in per_op.most_common()}


def median_latency_ms(fn, x: np.ndarray, budget_s: float = 1.5, min_runs: int = 30, max_runs: int = 1000) -> float:
    warm = time.perf_counter()
    for i in range(10):      # warm-up: allocations, lazy init, caches
        fn(x)
        if i >= 1 and time.perf_counter() - warm > budget_s:
            break
    times = []
    start = time.perf_counter()
    # Runs until the budget is spent and min_runs are done; a pathological configuration (threads spinning
    # against another process) stops after 5 runs at 3x the budget instead of holding the bench for minutes.
    while len(times) < max_runs:
        elapsed = time.perf_counter() - start
        if (len(times) >= min_runs and elapsed > budget_s) or (len(times) >= 5 and elapsed > 3 * budget_s):
            break
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


@dataclass
class FormatRow:
    format: str
    files: list[str]
    size_mb: float
    status: str = "ok"
    parity: str = "-"
    latency_ms: dict[int, float] = field(default_factory=dict)      # threads -> median ms
    default_options_diff: float | None = None                        # max abs vs torch with runtime defaults


def runners_for(folder: Path, threads: int, stage: str, winograd: bool = True):
    from .runtimes import CaffeRunner, NcnnRunner, OnnxRunner, TorchRunner
    stem = folder / "pfpld"
    if stage == "torch":
        from pfpld.checkpoint import load_model
        module, ckpt = load_model(folder / "pfpld.pt")
        return TorchRunner(module, ckpt.spec.output_names, threads=threads)
    if stage == "onnx":
        return OnnxRunner(folder / "pfpld.onnx", threads=threads)
    if stage == "onnxsim":
        return OnnxRunner(folder / "pfpld.sim.onnx", threads=threads)
    if stage == "caffe":
        return CaffeRunner(f"{stem}.prototxt", f"{stem}.caffemodel", Path(f"{stem}.caffe.names.json"),
                           threads=threads, winograd=winograd)
    if stage in ("ncnn", "ncnn-fp16"):
        sub = folder if stage == "ncnn" else folder / "fp16"
        return NcnnRunner(sub / "pfpld.ncnn.param", sub / "pfpld.ncnn.bin", sub / "pfpld.ncnn.names.json",
                          threads=threads, winograd=winograd)
    raise ValueError(stage)


FORMATS = [("PyTorch", "torch", ["pfpld.pt"]), ("ONNX (onnxruntime)", "onnx", ["pfpld.onnx"]),
           ("ONNX simplified (onnxruntime)", "onnxsim", ["pfpld.sim.onnx"]),
           ("Caffe 1.0 (OpenCV dnn)", "caffe", ["pfpld.prototxt", "pfpld.caffemodel"]),
           ("ncnn fp32", "ncnn", ["pfpld.ncnn.param", "pfpld.ncnn.bin"]),
           ("ncnn fp16", "ncnn-fp16", ["fp16/pfpld.ncnn.param", "fp16/pfpld.ncnn.bin"])]


def bench_width(width: float, workdir: Path, threads_list=(1, 2), log=print) -> dict:
    from .export import export, source_from_random_init
    from .parity import check_parity
    folder = workdir / f"pfpld_{width}"
    result = export(source_from_random_init("pfpld", width, seed=0), ["all"], folder)
    export(source_from_random_init("pfpld", width, seed=0), ["ncnn"], workdir / f"fp16_{width}", fp16=True)
    (folder / "fp16").mkdir()
    for name in ("pfpld.ncnn.param", "pfpld.ncnn.bin", "pfpld.ncnn.names.json"):
        shutil.copy(workdir / f"fp16_{width}" / name, folder / "fp16" / name)
    parity = {r.stage: r for r in check_parity(folder, n=4, write=False).rows}
    parity_fp16 = {r.stage: r for r in check_parity(workdir / f"fp16_{width}", n=4, write=False).rows}
    macs = count_macs(folder / "pfpld.sim.onnx")
    ops = Counter(n.op_type for n in onnx.load(str(folder / "pfpld.sim.onnx")).graph.node)
    shares = onnxruntime_op_shares(folder / "pfpld.sim.onnx", workdir)

    x = np.random.default_rng(0).random((1, 3, 112, 112), dtype=np.float32)
    reference = runners_for(folder, 1, "torch").run(x)
    rows = []
    for label, stage, files in FORMATS:
        size = sum((folder / f).stat().st_size for f in files) / 1e6
        row = FormatRow(label, files, size)
        source = parity_fp16.get("ncnn") if stage == "ncnn-fp16" else parity.get(stage)
        if source is not None:
            row.parity = (f"{source.verdict} ({source.max_abs:.1e})" if source.max_abs is not None
                          else source.verdict)
        try:
            for threads in threads_list:
                runner = runners_for(folder, threads, stage)
                row.latency_ms[threads] = median_latency_ms(runner.run, x)
                log(f"  width {width} {label:<30} {threads}T {row.latency_ms[threads]:8.3f} ms")
            if stage not in ("torch",):
                got = runners_for(folder, 1, stage).run(x)
                row.default_options_diff = max(float(np.abs(got[k] - reference[k]).max()) for k in reference)
        except Exception as exc:     # a format that cannot run is a row that says so, as in Ultralytics' table
            row.status = f"error: {type(exc).__name__}: {str(exc)[:120]}"
        rows.append(row)
    return {"width": width, "manifest": result.manifest, "rows": rows, "macs": macs, "ops": dict(ops),
            "ort_shares": shares}


def markdown(results: list[dict], peak: float | None, peak_how: str, load: tuple, cpu: str) -> str:
    lines = ["## Export chain and runtimes (`convert/bench.py`)", "",
             f"Machine: {cpu}, {os.cpu_count()} cores; load average before/after {load[0]:.2f} / {load[1]:.2f} "
             f"(other jobs share these cores: 2-thread numbers suffer most). Single image 1x3x112x112, median "
             f"of >= 30 runs after 10 warm-ups; runtimes with their default options (Winograd on).",
             f"fp32 FMA peak of one core: **{peak:.1f} GFLOP/s** ({peak_how})." if peak else
             f"fp32 FMA peak: not measured ({peak_how}).", ""]
    targets = []
    for res in results:
        width, macs = res["width"], res["macs"]
        stages = res["manifest"]["stages"]
        lines += [f"### PFPLD width {width}: {macs / 1e6:.1f} M multiply-adds"
                  + (f" (lower bound at 100% of the FMA peak: {2 * macs / (peak * 1e9) * 1e3:.2f} ms)" if peak else ""),
                  "", "Export stages: " + ", ".join(f"{s['name']} {s['seconds']:.2f} s" for s in stages)
                  + f"; total {res['manifest']['export_seconds']:.2f} s.", "",
                  "Graph ops after onnxsim: " + ", ".join(f"{k} x{v}" for k, v in sorted(res["ops"].items())) + ". "
                  "onnxruntime kernel time by op (1 thread, its profiler; Reorder* are its own NCHWc layout "
                  "changes): " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in res["ort_shares"].items()) + ".",
                  "", "| format | status | size (MB) | parity vs torch (max abs) | diff with runtime defaults | "
                  "latency 1T (ms) | latency 2T (ms) | % of FMA peak (1T) |", "|---|---|---|---|---|---|---|---|"]
        for row in res["rows"]:
            one = row.latency_ms.get(1)
            pct = f"{100 * 2 * macs / (one * 1e-3) / (peak * 1e9):.0f}%" if (peak and one) else "-"
            diff = f"{row.default_options_diff:.1e}" if row.default_options_diff is not None else "-"
            lat = [f"{row.latency_ms[t]:.3f}" if t in row.latency_ms else "-" for t in (1, 2)]
            lines.append(f"| {row.format} | {row.status} | {row.size_mb:.2f} | {row.parity} | {diff} | {lat[0]} | "
                         f"{lat[1]} | {pct} |")
        lines.append("")
        by = {r.format: r for r in res["rows"]}
        ort1 = by["ONNX simplified (onnxruntime)"].latency_ms.get(1)
        if width == 1.0:
            ncnn1 = by["ncnn fp32"].latency_ms.get(1)
            targets += [("onnxruntime, width 1.0, 1 thread", ort1, TARGETS["onnxruntime_1x_1t_ms"], "ms", macs),
                        ("ncnn fp32, width 1.0, 1 thread", ncnn1, TARGETS["ncnn_fp32_1x_1t_ms"], "ms", macs),
                        ("export chain, width 1.0", res["manifest"]["export_seconds"], TARGETS["export_chain_1x_s"],
                         "s", None)]
        if width == 0.25:
            targets.append(("onnxruntime, width 0.25, 1 thread", ort1, TARGETS["onnxruntime_025x_1t_ms"], "ms", macs))
    lines += ["### Targets of issue 3", "", "| target | measured | limit | met | the limit needs (direct arithmetic, "
              "% of FMA peak) |", "|---|---|---|---|---|"]
    for name, value, limit, unit, macs in targets:
        met = "-" if value is None else ("yes" if value <= limit else "**no**")
        shown = "-" if value is None else f"{value:.3f} {unit}"
        need = f"{100 * 2 * macs / (limit * 1e-3) / (peak * 1e9):.0f}%" if (macs and peak) else "-"
        lines.append(f"| {name} | {shown} | <= {limit} {unit} | {met} | {need} |")
    full = next((r for r in results if r["width"] == 1.0), None)
    if peak and full:
        by = {r.format: r for r in full["rows"]}
        ort, ncnn = by["ONNX simplified (onnxruntime)"].latency_ms, by["ncnn fp32"].latency_ms
        pct = {name: 100 * 2 * full["macs"] / (lat[1] * 1e-3) / (peak * 1e9) for name, lat in
               (("onnxruntime", ort), ("ncnn", ncnn)) if 1 in lat}
        lines += ["", f"Why: the graph count is {full['macs'] / 1e6:.1f} M multiply-adds (the issue says "
                  f"{PFPLD_1X_MACS / 1e6:.1f} M). The exported graph holds only the model's own ops, and onnxruntime "
                  f"spends {100 * full['ort_shares'].get('Conv', 0):.1f}% of its kernel time in Conv. At 1 thread "
                  f"onnxruntime already runs at {pct.get('onnxruntime', 0):.0f}% and ncnn at {pct.get('ncnn', 0):.0f}% "
                  f"of this core's FMA peak; a limit that needs more than 100% cannot be met on this core by any "
                  f"change to the exported graph, only by fewer multiplies (Winograd, which ncnn uses for the 3x3 "
                  f"stride-1 convs) or a faster core. With 2 threads: onnxruntime {ort.get(2, float('nan')):.2f} ms, "
                  f"ncnn {ncnn.get(2, float('nan')):.2f} ms."]
    return "\n".join(lines) + "\n"


def run_export_benchmark(widths=(1.0, 0.25), log=print) -> str:
    """Measure everything this module benchmarks and return the markdown section."""
    warnings.filterwarnings("ignore")
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pfpld-bench-") as tmp:
        work = Path(tmp)
        peak, how = fma_peak_gflops(work)
        log(f"FMA peak: {peak} GFLOP/s ({how})")
        results = [bench_width(float(w), work, log=log) for w in widths]
    return markdown(results, peak, how, (load_before, os.getloadavg()[0]), cpu)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results_export.md"))
    parser.add_argument("--widths", default="1.0,0.25")
    args = parser.parse_args(argv)
    text = run_export_benchmark(tuple(float(w) for w in args.widths.split(",")))
    write_text_atomic(args.out, text)
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
