"""int8 benchmark: single-image latency at 1 thread of every int8 export against fp32 (onnxruntime QDQ with u8
and with s8 activations, ncnn int8; fp32 onnxruntime and ncnn), for PFPLD width 1.0 and 0.25. Each width runs a
trained checkpoint when one is given (its int8 accuracy cost is then measured on the same exports, and the
issue's target, >= 2x faster at <= 0.3 NME points, is judged on that one model), else a random init with
randomised BatchNorm statistics (latency only). Writes bench/results_int8.md.

    python -m quant.bench [--ckpt w1/best.pt --ckpt w025/best.pt --data prepared/] [--calib calib_data/NAME]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
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


RUNTIME_STAGE = {"onnxruntime QDQ, u8 activations": "onnx-int8", "ncnn int8": "ncnn-int8"}   # check_int8's rows


@dataclass
class ModelBench:
    label: str
    rows: list[dict]                     # latency rows of bench_export
    accuracy: object | None = None       # quant.int8.Int8Report when the model is trained and data is given

    def verdict(self) -> str:
        """One sentence on the issue's target: fastest int8 >= 2x the fastest fp32 at <= 0.3 NME points (only the
        speed half when the accuracy was not measured)."""
        from quant.int8 import BUDGET_NME_POINTS
        fp32 = min(r["ms"] for r in self.rows if r["precision"] == "fp32")
        int8 = min((r for r in self.rows if r["precision"] == "int8"), key=lambda r: r["ms"])
        speedup = fp32 / int8["ms"]
        fast = speedup >= TARGET_SPEEDUP
        text = (f"Fastest int8: **{int8['runtime']}**, {int8['ms']:.3f} ms: {speedup:.2f}x the fastest fp32 "
                f"({fp32:.3f} ms); target >= {TARGET_SPEEDUP}x: {'met' if fast else '**not met**'}.")
        if self.accuracy is None:
            return text + " Accuracy cost not measured (no trained checkpoint for this width)."
        row = next((r for r in self.accuracy.rows if r.stage == RUNTIME_STAGE.get(int8["runtime"])), None)
        if row is None or row.delta_nme_points is None:
            return text + " Its accuracy cost was not measured."
        cheap = row.delta_nme_points <= BUDGET_NME_POINTS
        met = fast and cheap
        return (text + f" Its accuracy cost on {self.accuracy.n_faces} held-out faces: {row.delta_nme_points:+.3f} "
                f"NME points (budget {BUDGET_NME_POINTS}): {'met' if cheap else '**not met**'}. "
                f"**Target {'met' if met else 'not met'}** for this model.")


def markdown(results: list[ModelBench], load: tuple) -> str:
    lines = ["## int8 exports (`python -m quant.bench`)", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average "
             f"before/after {load[0]:.2f} / {load[1]:.2f}. Single image 1x3x112x112, 1 thread, median of >= 30 runs "
             f"after warm-up, runtimes with their default algorithms.", ""]
    for bench in results:
        rows = bench.rows
        fp32 = {r["runtime"]: r["ms"] for r in rows if r["precision"] == "fp32"}
        best_fp32 = min(fp32.values())
        lines += [f"### {bench.label}", "", "| precision | runtime | latency 1T (ms) | vs fastest fp32 | vs "
                  "onnxruntime fp32 |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['precision']} | {r['runtime']} | {r['ms']:.3f} | {best_fp32 / r['ms']:.2f}x | "
                         f"{fp32['onnxruntime'] / r['ms']:.2f}x |")
        lines += ["", bench.verdict(), ""]
        if bench.accuracy is not None:
            lines += ["int8 accuracy of this checkpoint:", "", "```", bench.accuracy.table(), "```", ""]
    return "\n".join(lines)


def run_int8_benchmark(ckpts: list[Path] | tuple = (), data: Path | None = None, calib: Path | None = None,
                       n_faces: int = 256, log=print) -> str:
    """Latency of every int8 export against fp32 for PFPLD width 1.0 and 0.25. A trained checkpoint given for a
    width replaces its random init, and with `data` (a prepared dataset) the int8 accuracy cost is measured on
    the same exports, so the issue's target (speed and accuracy together) is judged on one model."""
    from convert.export import source_from_checkpoint, source_from_random_init
    load0 = os.getloadavg()[0]
    trained = {}          # width -> (checkpoint, its export source), each checkpoint loaded once
    for ckpt in ckpts:
        source = source_from_checkpoint(ckpt)
        trained[float(source.spec.options.get("width", 1.0))] = (Path(ckpt), source)
    results = []
    with tempfile.TemporaryDirectory(prefix="pfpld-int8-bench-") as work:
        work = Path(work)
        calib = calib or synthetic_calibration(work / "calib")
        for width in sorted(set(trained) | {1.0, 0.25}, reverse=True):
            ckpt, source = trained.get(width, (None, None))
            source = source or source_from_random_init("pfpld", width, seed=0)
            start = time.perf_counter()
            folder = make_export(source, work / f"w{width}", calib)
            log(f"width {width} exported in {time.perf_counter() - start:.1f} s")
            label = (f"PFPLD width {width} (checkpoint {ckpt})" if ckpt else
                     f"PFPLD width {width} (random init, randomised BatchNorm statistics: latency only)")
            bench = ModelBench(label, bench_export(folder, log=log))
            if ckpt and data:
                from quant.int8 import check_int8
                bench.accuracy = check_int8(folder, images=data, calib=calib, n=n_faces, write=False)
                log(bench.accuracy.table())
            log(bench.verdict())
            results.append(bench)
    return markdown(results, (load0, os.getloadavg()[0]))


def main(argv=None) -> None:
    from pfpld.fileio import write_text_atomic
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, action="append", default=[],
                    help="Trained checkpoint; replaces the random init of its width (repeat for several widths).")
    ap.add_argument("--data", type=Path, help="Prepared dataset whose test split measures the int8 accuracy.")
    ap.add_argument("--calib", type=Path, help="Calibration set (default: 32 synthetic faces).")
    ap.add_argument("--n-faces", type=int, default=256, help="Held-out faces for the accuracy cost.")
    ap.add_argument("--out", type=Path, default=Path("bench/results_int8.md"))
    args = ap.parse_args(argv)
    text = run_int8_benchmark(args.ckpt, args.data, args.calib, args.n_faces)
    write_text_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
