"""`pfpld train`: one loop read top to bottom. Build data, build model, loop, validate, checkpoint.

Runs on the CPU or a CUDA device (`--device`; mixed precision on CUDA with `--amp`, a GradScaler for fp16, pinned
memory and non-blocking copies, optional channels-last), single-process or data-parallel when started with
torchrun (gloo on CPU, NCCL on GPU, one GPU per process by LOCAL_RANK): the global batch is split over the
processes and only rank 0 validates and writes. The loader hands over raw crops memory-mapped from the prepared
folder with each face's augmentation draw; the augmentation itself runs batched on the training device once the
batch is there (PreparedFaces.network_batch). Every epoch writes RUN/last.pt (and RUN/best.pt when the
task's validation number improves: NME, pose MAE or identification error) atomically; `--resume` continues
exactly, because every random draw of the data pipeline is seeded by (seed, epoch, index) and the shuffle by
(seed, epoch). A recognition task's margin head trains beside the model and is saved beside its weights.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from . import DEFAULT_MODEL
from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .contract import PreprocessContract
from .devices import resolve_amp, resolve_device
from .data.augment import AugmentConfig
from .data.dataset import PreparedFaces
from .data.prepare import read_prepared_header
from .errors import DatasetError, InputError, ModelError
from .evaluate import check_data_contract, evaluate_predictions, predict_dataset
from .fileio import write_text_atomic
from .losses import LossConfig
from .models import build_model, check_model_options, model_task
from .models.task import Task
from .plots import plot_training_curves
from .progress import progress as progress_bar
from .recognition import identification_error


# What a checkpoint written before a setting existed was trained with.
LEGACY_CONFIG = {"val_fraction": 0.0, "output_lr_factor": 1.0}
POSTFIX_EVERY = 10                      # batches between the progress bar's loss updates


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = DEFAULT_MODEL
    width: float = 1.0
    model_options: dict = field(default_factory=dict)   # the model's other options (hopenet: backbone)
    epochs: int = 80
    batch_size: int = 128               # global, split over data-parallel processes
    lr: float = 1e-3
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] = ()    # empty: at 3/8 and 3/4 of the epochs (the reference's 30 and 60 of 80)
    gamma: float = 0.1
    schedule: str = "step"              # step: x gamma at the milestones | cosine: cosine decay to lr x final_lr_frac
    warmup_epochs: float = 0.0          # linear warm-up from lr/100 first (either schedule; fractions allowed)
    final_lr_frac: float = 0.01
    seed: int = 0
    workers: int | None = None          # loader processes; None: 0 on the CPU, 2 with CUDA (see loader_workers)
    augment: bool = True
    device: str = "auto"                # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    amp: str = "auto"                   # auto | bf16 | fp16 | off (mixed precision on CUDA only)
    channels_last: bool = False
    val_fraction: float = 0.05          # of the training split, held out to validate every epoch and pick best.pt
    output_lr_factor: float | None = None   # lr of the model's output layers / lr (None: the model's, Task's)
    init_from: str | None = None        # start from this checkpoint's weights, model and options (fresh optimizer)
    loss: LossConfig = field(default_factory=LossConfig)

    def resolved_milestones(self) -> list[int]:
        if self.milestones:
            return sorted(int(m) for m in self.milestones)
        return sorted({max(1, round(self.epochs * 0.375)), max(1, round(self.epochs * 0.75))})

    def model_options_for(self, input_size: int) -> dict:
        """What build_model gets: the width, the prepared data's input size and the model's other options."""
        return {"width": self.width, "input_size": input_size, **self.model_options}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = list(self.resolved_milestones())
        return d


VAL_COLUMNS = ["val_nme", "val_failure_rate", "val_auc", "val_pose_mae_deg",     # NaN where the model has no such
               "val_id_error"]
TIMING_COLUMNS = ["train_images_per_s", "epoch_seconds", "data_seconds"]          # output or nothing is held out


def metric_columns(task: Task) -> list[str]:
    """metrics.csv's columns: the task's loss parts between the total and the validation numbers."""
    return ["epoch", "lr", "train_loss"] + [f"train_{p}_loss" for p in task.loss_parts] + VAL_COLUMNS + \
        TIMING_COLUMNS


def loader_workers(cfg: TrainConfig, device: torch.device) -> int:
    """Loader processes: as configured, else none on the CPU (reading memory-mapped crops is cheap, and workers
    would compete with the training step for the same cores) and 2 with CUDA (they overlap the read and the
    pinned copy with the GPU's work)."""
    if cfg.workers is not None:
        return cfg.workers
    return 2 if device.type == "cuda" else 0


SCHEDULES = ("step", "cosine")


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier as a function of the optimizer step (the scheduler steps once per batch, so a
    warm-up and a cosine decay are smooth even in a run of a few epochs). The step schedule changes at the first
    step of each milestone epoch, as an epoch-stepped MultiStepLR does."""
    if cfg.schedule not in SCHEDULES:
        raise InputError(f"schedule {cfg.schedule!r}: expected one of {', '.join(SCHEDULES)}")
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    milestones = [m * steps_per_epoch for m in cfg.resolved_milestones()]

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        if cfg.schedule == "cosine":
            t = min(1.0, (step - warmup) / max(1.0, total - warmup))
            return cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))
        return cfg.gamma ** sum(step >= m for m in milestones)
    return factor


def output_lr_factor(cfg: TrainConfig, task: Task) -> float:
    """The output layers' learning rate as a multiple of cfg.lr: the config's, else the model's (Task)."""
    factor = task.output_lr_factor if cfg.output_lr_factor is None else float(cfg.output_lr_factor)
    if not factor > 0:
        raise InputError(f"--output-lr-factor {factor:g}: expected a positive multiple of --lr")
    if factor != 1.0 and not task.output_layers:
        raise InputError(f"--output-lr-factor {factor:g}: model {cfg.model} declares no output layers to apply it "
                         f"to; leave it at 1")
    return factor


def parameter_groups(model: torch.nn.Module, head: torch.nn.Module | None, task: Task, cfg: TrainConfig) -> list:
    """The optimizer's groups: everything at cfg.lr, and the task's output layers at cfg.lr x their factor (a
    second group only when it is not 1, so runs saved with one group resume)."""
    named = list(model.named_parameters()) + (list(head.named_parameters(prefix="head")) if head is not None else [])
    if cfg.output_lr_factor == 1.0:
        return [{"params": [p for _, p in named], "lr": cfg.lr}]
    outputs = [p for n, p in named if n.startswith(task.output_layers)]
    if not outputs:
        raise ModelError(f"model {cfg.model}: no parameter is named after its output layers "
                         f"{', '.join(task.output_layers)}")
    rest = [p for n, p in named if not n.startswith(task.output_layers)]
    return [{"params": rest, "lr": cfg.lr}, {"params": outputs, "lr": cfg.lr * cfg.output_lr_factor}]


def _distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initialises the process group when torchrun started us (NCCL for CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


def _training_device(cfg: TrainConfig) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:     # torchrun: one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _write_metrics_csv(path: Path, history: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())


def train(cfg: TrainConfig, resume: str | None = None, progress: bool = True) -> dict:
    """Train and return the last epoch's metrics row."""
    device = _training_device(cfg)
    amp_dtype = resolve_amp(cfg.amp, device)
    rank, world = _distributed(device)
    out = Path(cfg.out)
    header = read_prepared_header(Path(cfg.data))
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        if resume:
            raise InputError(f"--init-from {cfg.init_from} and --resume {resume}: give one (--resume continues a run "
                             f"with its optimizer, --init-from starts a new one from a checkpoint's weights)")
        model, start = load_model(Path(cfg.init_from))
        spec, contract = start.spec, start.contract
        options = dict(spec.options)
        cfg = replace(cfg, model=spec.name, width=options.pop("width", 1.0),
                      model_options={k: v for k, v in options.items() if k != "input_size"})
    else:
        options = cfg.model_options_for(header["contract"]["input_size"])
        check_model_options(cfg.model, options)
        try:
            model, spec, contract = build_model(cfg.model, **options)
        except ModelError as e:     # e.g. another model's input size: say where it came from
            raise ModelError(f"{e}; {Path(cfg.data) / 'index.jsonl'} was prepared for input size "
                             f"{header['contract']['input_size']}: prepare the data with `pfpld prepare-data --model "
                             f"{cfg.model}`") from None
    task = model_task(spec)
    check_data_contract(PreprocessContract.from_dict(header["contract"]), contract, Path(cfg.data), spec)

    # best.pt is chosen on faces held out of the training split, never on the test split that `pfpld eval` reports.
    augment = (task.augment or AugmentConfig()) if cfg.augment else None
    train_set = PreparedFaces(Path(cfg.data), "train", augment, seed=cfg.seed, val_fraction=cfg.val_fraction,
                              require_pose=task.pose_only)
    val_set = (PreparedFaces(Path(cfg.data), "val", val_fraction=cfg.val_fraction)
               if rank == 0 and cfg.val_fraction > 0 else None)
    if cfg.batch_size % world:
        raise InputError(f"--batch-size {cfg.batch_size} does not split evenly over {world} processes")
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader_args = dict(batch_size=cfg.batch_size // world, sampler=sampler, num_workers=loader_workers(cfg, device),
                       drop_last=len(train_set) >= 2 * cfg.batch_size, pin_memory=device.type == "cuda")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)

    # An identity task's margin head (facerec) learns with the model and is saved beside it, never in its weights.
    head = None
    if task.identities:
        if not train_set.identity_names or (train_set.identity < 0).any():
            raise DatasetError(f"{Path(cfg.data) / 'index.jsonl'}: has no identity labels: model {cfg.model} learns "
                               f"identities from an ImageFolder set (`pfpld prepare-data --model {cfg.model} "
                               f"--imagefolder DIR`)")
        head = task.head(spec, len(train_set.identity_names), cfg.loss).to(device)
    cfg = replace(cfg, output_lr_factor=output_lr_factor(cfg, task))    # saved with the run: resume checks it
    optimizer = torch.optim.Adam(parameter_groups(model, head, task, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(DataLoader(train_set, **loader_args))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    select = f"val_{task.select_metric}"           # what best.pt is chosen on (lower is better)
    start_epoch, history, best_val = 0, [], math.inf
    if resume:
        ckpt = load_checkpoint(Path(resume))
        if ckpt.spec != spec:
            raise CheckpointError(f"{resume}: model {ckpt.spec.name} {ckpt.spec.options} differs from the requested "
                                  f"{spec.name} {spec.options}")
        if ckpt.optimizer is None or ckpt.scheduler is None:
            raise CheckpointError(f"{resume}: has no optimizer/scheduler state to resume from")
        model.load_state_dict(ckpt.state_dict)
        if head is not None:
            saved_head = ((ckpt.config or {}).get("loss") or {}).get("head")
            if ckpt.head is None or saved_head != cfg.loss.head:
                raise CheckpointError(f"{resume}: was trained with head {saved_head!r}, this run asks for "
                                      f"{cfg.loss.head!r}: resume with the same --head")
            try:
                head.load_state_dict(ckpt.head)
            except RuntimeError:
                raise CheckpointError(f"{resume}: its {saved_head} head does not fit the "
                                      f"{len(train_set.identity_names)} identities of {cfg.data}") from None
        # The scheduler state is a step count: the curve must match; and so must the faces trained on, and the
        # optimizer's parameter groups.
        for key in ("schedule", "warmup_epochs", "val_fraction", "output_lr_factor"):
            saved = (ckpt.config or {}).get(key, LEGACY_CONFIG.get(key, getattr(TrainConfig, key)))
            if saved != getattr(cfg, key):
                raise CheckpointError(f"{resume}: was trained with {key} {saved!r}, this run asks for "
                                      f"{getattr(cfg, key)!r}: resume with the same --{key.replace('_', '-')}")
        optimizer.load_state_dict(ckpt.optimizer)
        if "lr_lambdas" not in ckpt.scheduler:
            raise CheckpointError(f"{resume}: its scheduler state is an older pfpld's epoch-stepped MultiStepLR, not "
                                  f"the per-step schedule: resume it with the pfpld version that wrote it")
        scheduler.load_state_dict(ckpt.scheduler)
        start_epoch, history = ckpt.epoch, list(ckpt.history)
        best_val = min((h[select] for h in history if not math.isnan(h.get(select, math.nan))), default=math.inf)
    if not resume and not cfg.init_from and hasattr(model, "init_landmark_head"):
        model.init_landmark_head(torch.from_numpy(train_set.mean_landmarks()))
    # bn8 and fc_aux exist only so released state_dicts load strictly: forward never uses them.
    ddp_model, ddp_head = model, head
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
        if head is not None:
            ddp_head = torch.nn.parallel.DistributedDataParallel(
                head, device_ids=[device.index] if device.type == "cuda" else None)
    with_head = {"head": ddp_head} if head is not None else {}
    # fp16 needs loss scaling against underflowing gradients; bf16 and fp32 do not (the scaler is then a no-op).
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if scaler.is_enabled():     # a step the scaler skips (inf gradients) is still a step of the per-step schedule
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
    if resume and scaler.is_enabled():
        if ckpt.scaler is None:
            raise CheckpointError(f"{resume}: was not trained with --amp fp16 (no loss-scaler state): resume with its "
                                  f"--amp")
        scaler.load_state_dict(ckpt.scaler)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    row = history[-1] if history else {}
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        loader = DataLoader(train_set, **loader_args)
        model.train()
        if head is not None:
            head.train()
        lr = optimizer.param_groups[0]["lr"]                        # at the epoch's first step
        t0 = time.perf_counter()
        parts = len(task.loss_parts)
        sums = torch.zeros(2 + parts, dtype=torch.float64, device=device)   # loss, its parts, images
        # The host's time from asking for a batch to having its augmented input: what the step waits for data
        # (on CUDA the augmentation itself is queued on the GPU, so this is the loader's share).
        data_seconds, ready = 0.0, time.perf_counter()
        bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                           enabled=progress and rank == 0, leave=False)
        for step, batch in enumerate(bar):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            batch = train_set.network_batch(batch)          # the augmentation, batched on the training device
            data_seconds += time.perf_counter() - ready
            image = batch["image"].contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = ddp_model(image)
            # the loss in fp32, whatever precision the forward ran in
            targets = task.targets(batch["points"], batch["mask"], batch["pose"], batch["has_pose"], batch["identity"])
            loss, loss_parts = task.loss(tuple(o.float() for o in outputs), targets, contract.input_size, cfg.loss,
                                         **with_head)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            n = batch["image"].shape[0]
            sums[:-1] += torch.stack([loss.detach()] + [loss_parts[p] for p in task.loss_parts]).double() * n
            sums[-1] += n
            if step % POSTFIX_EVERY == 0:       # .item() waits for the device: not every step on a GPU
                bar.set_postfix(loss=f"{loss.item():.3f}")
            ready = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if world > 1:
            dist.all_reduce(sums)
        sums = sums.cpu()

        if rank == 0:
            val = dict.fromkeys(VAL_COLUMNS, float("nan"))
            if val_set is not None and task.select_metric == "id_error":
                val["val_id_error"] = identification_error(model, spec, val_set, head)
            elif val_set is not None:
                lmk, pose_pred = predict_dataset(model, spec, val_set, batch_size=64)
                report = evaluate_predictions(val_set, spec, lmk, pose_pred)
                nan = float("nan")
                val.update({"val_nme": report.landmarks.get("nme", nan),
                            "val_failure_rate": report.landmarks.get("failure_rate", nan),
                            "val_auc": report.landmarks.get("auc", nan),
                            "val_pose_mae_deg": report.pose.get("mean", nan)})
            images = float(sums[-1])
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": float(sums[0]) / images,
                   **{f"train_{p}_loss": float(sums[1 + i]) / images for i, p in enumerate(task.loss_parts)},
                   **val, "train_images": images, "train_images_per_s": images / seconds,
                   "epoch_seconds": seconds, "data_seconds": data_seconds}
            history.append(row)
            common = dict(state_dict=model.state_dict(), spec=spec, contract=contract, epoch=epoch + 1,
                          metrics=row, config={**cfg.to_dict(), "world_size": world}, history=history,
                          optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                          head=head.state_dict() if head is not None else None,
                          scaler=scaler.state_dict() if scaler.is_enabled() else None)
            save_checkpoint(out / "last.pt", **common)
            if not math.isnan(row[select]) and row[select] < best_val:
                best_val = row[select]
                save_checkpoint(out / "best.pt", **common)
            _write_metrics_csv(out / "metrics.csv", history, metric_columns(task))
            plot_training_curves(history, out / "curves.png", task.loss_parts)
            if progress:
                pose_mae = row["val_pose_mae_deg"]
                pose_txt = "" if math.isnan(pose_mae) else f"  pose MAE {pose_mae:.2f} deg"
                val_txt = "" if math.isnan(row["val_nme"]) else f"  val NME {100 * row['val_nme']:.2f}%"
                if not math.isnan(row["val_id_error"]):
                    val_txt += f"  val identification error {100 * row['val_id_error']:.1f}%"
                bar.write(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.3f}{val_txt}{pose_txt}  "
                          f"{row['train_images_per_s']:.0f} img/s ({100 * data_seconds / seconds:.0f} % waiting "
                          f"for data)")
        if world > 1:
            dist.barrier()
    if world > 1:
        dist.destroy_process_group()
    return row
