"""`make bench`: throughput and latency numbers of this machine, written as markdown (bench/results.md).

Training images/s (forward + backward + Adam step) for PFPLD width 1.0 and 0.25, the data loader's images/s
with the training augmentation, and their ratio (above 1: the loader keeps up with training). Targets live
here, never in timed tests. The export section (stage times, runtime latencies, % of FMA peak) comes from
convert/bench.py.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pfpld.data.dataset import AugmentConfig, PreparedFaces
from pfpld.data.prepare import prepare_dataset
from pfpld.data.synthetic import generate_dataset
from pfpld.fileio import write_text_atomic
from pfpld.losses import total_loss
from pfpld.models import build_model


def train_images_per_s(width: float, batch_size: int = 64, steps: int = 8, warmup: int = 2) -> float:
    torch.manual_seed(0)
    model, spec, contract = build_model("pfpld", width=width)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = {"image": torch.rand(batch_size, 3, spec.input_size, spec.input_size),
             "points": torch.rand(batch_size, 196), "mask": torch.ones(batch_size, 98, dtype=torch.bool),
             "pose": torch.zeros(batch_size, 3), "has_pose": torch.ones(batch_size, dtype=torch.bool)}
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        lmk, pose = model(batch["image"])
        loss, _, _ = total_loss(lmk, pose, batch, contract.input_size)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - t0)


def loader_images_per_s(data: Path, workers: int, batch_size: int = 64, batches: int = 20) -> float:
    ds = PreparedFaces(data, "train", AugmentConfig(), seed=0)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=False)
    n, t0 = 0, None
    for epoch in range(100):
        for i, batch in enumerate(loader):
            if t0 is None:          # the first batch pays for worker start-up
                t0 = time.perf_counter()
                continue
            n += batch["image"].shape[0]
            if n >= batches * batch_size:
                return n / (time.perf_counter() - t0)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench/results.md"))
    ap.add_argument("--training-only", action="store_true", help="Skip the export and runtime latency section.")
    ap.add_argument("--ckpt", type=Path, action="append", default=[],
                    help="A trained checkpoint for the int8 rows of its width (repeatable; e.g. the demo's).")
    ap.add_argument("--data", type=Path, help="A prepared dataset whose test split measures int8 accuracy.")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        synth = Path(tmp) / "synth"
        generate_dataset(synth, n=300, seed=0, progress=False)
        data = Path(tmp) / "prepared"
        prepare_dataset(data, wflw=synth / "WFLW", lapa=synth / "LaPa", w300lp=synth / "300W_LP",
                        aflw2000=synth / "AFLW2000", progress=False)
        loaders = {w: loader_images_per_s(data, w) for w in (0, 2)}
    trains = {w: train_images_per_s(w) for w in (1.0, 0.25)}
    for w, ips in trains.items():
        rows.append((f"train PFPLD width {w} (batch 64, {threads} threads)", f"{ips:.1f}"))
    for k, ips in loaders.items():
        rows.append((f"data loader with augmentation, {k} workers", f"{ips:.1f}"))
    best_loader = max(loaders.values())
    lines = ["# pfpld benchmark", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}.", "",
             "| measurement | images/s |", "|---|---:|"] + [f"| {a} | {b} |" for a, b in rows] + [
             "", "| ratio: best loader / training | value |", "|---|---:|"] + [
             f"| width {w} | {best_loader / ips:.2f} |" for w, ips in trains.items()] + [
             "", "A ratio above 1 means the loader outpaces training on its own; during training they share "
             "the same cores."]
    text = "\n".join(lines) + "\n"
    if not args.training_only:
        from convert.bench import run_export_benchmark     # the application layer may use every package
        from quant.bench import run_int8_benchmark
        text += "\n" + run_export_benchmark()
        text += "\n" + run_int8_benchmark(args.ckpt, args.data)
    write_text_atomic(args.out, text)
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
