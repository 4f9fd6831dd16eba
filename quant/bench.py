"""int8 benchmark: single-image latency at 1 thread of every int8 export against fp32 (onnxruntime QDQ with u8
and with s8 activations, ncnn int8; fp32 onnxruntime and ncnn), for PFPLD width 1.0 (random init with randomised
BatchNorm statistics: latency only, its accuracy means nothing) and width 0.25 (a trained checkpoint when given,
whose int8 accuracy is then measured too). Writes bench/results_int8.md.

    python -m quant.bench [--ckpt best.pt --data prepared/] [--calib calib_data/NAME] [--out bench/results_int8.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

TARGET_SPEEDUP = 2.0


def synthetic_calibration(folder: Path, n: int = 32, seed: int = 0) -> Path:
    """A calibration folder of synthetic faces cut with the default contract (when no set is given)."""
    from pfpld.contract import PreprocessContract, landmark_box
    from pfpld.data.synthetic import render_face
    contract = PreprocessContract()
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    names = []
    for i in range(n):
        face = render_face(rng, image_size=300)
        crop, _ = contract.crop_image(face.image, landmark_box(face.points_98))
        cv2.imwrite(str(folder / "images" / f"{i:03d}.png"), crop)
        names.append(f"images/{i:03d}.png")
    (folder / "image_list.txt").write_text("\n".join(names) + "\n")
    return folder


def bench_export(folder: Path, log=print) -> list[dict]:
    from convert.bench import median_latency_ms
    from convert.runtimes import NcnnRunner, OnnxRunner
    x = np.random.default_rng(0).random((1, 3, 112, 112), dtype=np.float32)
    rows = [("fp32", "onnxruntime", lambda: OnnxRunner(folder / "pfpld.sim.onnx")),
            ("fp32", "ncnn (Winograd on)", lambda: NcnnRunner(folder / "pfpld.ncnn.param", folder / "pfpld.ncnn.bin",
                                                              folder / "pfpld.ncnn.names.json", winograd=True)),
            ("int8", "onnxruntime QDQ, u8 activations", lambda: OnnxRunner(folder / "pfpld.int8.onnx")),
            ("int8", "onnxruntime QDQ, s8 activations", lambda: OnnxRunner(folder / "pfpld.int8.s8.onnx")),
            ("int8", "ncnn int8", lambda: NcnnRunner(folder / "pfpld.int8.ncnn.param", folder / "pfpld.int8.ncnn.bin",
                                                     folder / "pfpld.int8.ncnn.names.json", winograd=True))]
    out = []
    for precision, runtime, make in rows:
        runner = make()
        ms = median_latency_ms(runner.run, x)
        log(f"  {folder.name:<10} {precision} {runtime:<36} {ms:8.3f} ms")
        out.append({"precision": precision, "runtime": runtime, "ms": ms})
    return out


def make_export(source, folder: Path, calib: Path) -> Path:
    from convert.export import export
    from quant.export import Int8Options, quant_stages
    from quant.ort_int8 import quantize_qdq
    from quant.calibration import read_calibration_set
    chain, extra, options = quant_stages(["ncnn", "caffe"], None, Int8Options(calib))
    export(source, chain, folder, extra_stages=extra, options=options)
    x = read_calibration_set(calib, source.contract).inputs(source.contract)
    quantize_qdq(folder / "pfpld.sim.onnx", folder / "pfpld.int8.s8.onnx", x, activations="s8")
    return folder


def markdown(results: dict, int8_table: str | None, load: tuple) -> str:
    lines = ["## int8 exports (`python -m quant.bench`)", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average "
             f"before/after {load[0]:.2f} / {load[1]:.2f}. Single image 1x3x112x112, 1 thread, median of >= 30 runs "
             f"after warm-up, runtimes with their default algorithms.", ""]
    for label, rows in results.items():
        fp32 = {r["runtime"]: r["ms"] for r in rows if r["precision"] == "fp32"}
        best_fp32 = min(fp32.values())
        lines += [f"### {label}", "", "| precision | runtime | latency 1T (ms) | vs fastest fp32 | vs onnxruntime "
                  "fp32 |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['precision']} | {r['runtime']} | {r['ms']:.3f} | {best_fp32 / r['ms']:.2f}x | "
                         f"{fp32['onnxruntime'] / r['ms']:.2f}x |")
        int8 = min((r for r in rows if r["precision"] == "int8"), key=lambda r: r["ms"])
        speedup = best_fp32 / int8["ms"]
        lines += ["", f"Fastest int8: **{int8['runtime']}**, {int8['ms']:.3f} ms: {speedup:.2f}x the fastest fp32 "
                      f"({best_fp32:.3f} ms); target >= {TARGET_SPEEDUP}x: "
                      f"{'met' if speedup >= TARGET_SPEEDUP else '**not met**'}.", ""]
    if int8_table:
        lines += ["### int8 accuracy of the trained width-0.25 checkpoint", "", "```", int8_table, "```", ""]
    return "\n".join(lines)


def run_int8_benchmark(ckpt: Path | None = None, data: Path | None = None, calib: Path | None = None,
                       log=print) -> str:
    """Latency of every int8 export against fp32 (and, with a checkpoint and data, its accuracy cost)."""
    from convert.export import source_from_checkpoint, source_from_random_init
    load0 = os.getloadavg()[0]
    results, int8_table = {}, None
    with tempfile.TemporaryDirectory(prefix="pfpld-int8-bench-") as work:
        work = Path(work)
        calib = calib or synthetic_calibration(work / "calib")
        start = time.perf_counter()
        wide = make_export(source_from_random_init("pfpld", 1.0, seed=0), work / "w1", calib)
        log(f"width 1.0 exported in {time.perf_counter() - start:.1f} s")
        results["PFPLD width 1.0 (random init, randomised BatchNorm statistics: latency only)"] = bench_export(wide)
        source = source_from_checkpoint(ckpt) if ckpt else source_from_random_init("pfpld", 0.25, seed=0)
        small = make_export(source, work / "w025", calib)
        label = f"PFPLD width 0.25 ({'checkpoint ' + Path(ckpt).name if ckpt else 'random init'})"
        results[label] = bench_export(small)
        if ckpt and data:
            from quant.int8 import check_int8
            int8_table = check_int8(small, images=data, calib=calib, n=256, write=False).table()
            log(int8_table)
    return markdown(results, int8_table, (load0, os.getloadavg()[0]))


def main(argv=None) -> None:
    from pfpld.fileio import write_text_atomic
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, help="Trained checkpoint (width 0.25 row); default: random init.")
    ap.add_argument("--data", type=Path, help="Prepared dataset whose test split measures the int8 accuracy.")
    ap.add_argument("--calib", type=Path, help="Calibration set (default: 32 synthetic faces).")
    ap.add_argument("--out", type=Path, default=Path("bench/results_int8.md"))
    args = ap.parse_args(argv)
    text = run_int8_benchmark(args.ckpt, args.data, args.calib)
    write_text_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
