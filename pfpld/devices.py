"""Where training, evaluation and prediction run: `--device auto|cpu|cuda|cuda:N` and `--amp auto|bf16|fp16|off`,
resolved once into a torch.device and an autocast dtype, with one clear error for a device this machine lacks.
Checkpoints stay device-independent: weights are saved from the CPU and loaded onto whatever device is chosen."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def resolve_device(name: str = "auto") -> torch.device:
    """auto: the first CUDA device when there is one, else the CPU."""
    import torch     # here, so that the command line reads AMP_CHOICES without loading torch
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__}); "
                             f"use --device cpu or auto")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise InputError(f"--device {name}: expected cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
        return device
    raise InputError(f"--device {name}: expected auto, cpu, cuda or cuda:N")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of mixed precision, or None for full fp32. On CUDA, auto picks bf16 where the GPU supports
    it, else fp16 (with a GradScaler in the loop). On the CPU auto means off; bf16 or fp16 asked for explicitly run
    the same autocast and GradScaler code as on CUDA (bf16 is fast on CPUs with AMX, slow on the others)."""
    import torch
    amp = (amp or "auto").lower()
    if amp not in AMP_CHOICES:
        raise InputError(f"--amp {amp}: expected one of {', '.join(AMP_CHOICES)}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise InputError(f"--amp bf16: {torch.cuda.get_device_name(device)} does not support bf16; use --amp fp16")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
