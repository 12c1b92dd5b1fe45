"""Precision modes.

- ``fp16`` (the papers' ``PREC=fp16``): CLIP *and* the learnable parameters in half precision,
  SGD on fp16 parameters, as the official code. On CPU it falls back to fp32.
- ``amp``: fp32 weights, fp16 autocast and a GradScaler. On CPU: fp32.
- ``bf16``: fp32 weights, bf16 autocast (no loss scaling); works on CPU and recent GPUs.
- ``fp32``.
The row records both the requested and the effective mode.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    requested: str
    effective: str
    param_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    grad_scaler: bool

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    cuda = device.type == "cuda"
    if requested == "fp16" and cuda:
        return Precision(requested, "fp16", torch.float16, None, False)
    if requested == "amp" and cuda:
        return Precision(requested, "amp", torch.float32, torch.float16, True)
    if requested == "bf16":
        return Precision(requested, "bf16", torch.float32, torch.bfloat16, False)
    return Precision(requested, "fp32", torch.float32, None, False)


def resolve_device(name: str = "auto") -> torch.device:
    from cpbench.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA GPU is visible; use --device cpu or auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's (or one numbered draw's) shuffling and augmentation: a run and its
    resumption draw the same."""
    return (seed * 1_000_003 + epoch * 7919) % (2**31)
