"""Pieces shared by the speed benchmarks (``cpu.py``, ``gpu.py``): text modes, class names,
timed training steps, JSON lines.

Text modes, all exact (the same features and gradients up to float round-off):
- ``naive``: every prompt at the full context length (77 tokens), as the official repos;
- ``cut``: sequences cut after the longest EOT (cpbench before issue 21);
- ``shared``: the shared prefix encoded once and each class's own tokens packed (cpbench now).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

MODES = ("naive", "cut", "shared")


def set_text_mode(backbone, mode: str) -> None:
    backbone.text.truncate = mode != "naive"
    backbone.text.share_prefix = mode == "shared"


def class_names(n: int) -> list[str]:
    """``n`` real class names with ImageNet's length mix: evenly spaced over CLIP's 1000 ImageNet
    names (tokens per name matter: the shared pass costs each class its own length)."""
    from cpbench.data.readers import imagenet_names

    names = imagenet_names()
    if n <= len(names):
        step = len(names) / n
        return [names[int(i * step)] for i in range(n)]
    return [f"{names[i % len(names)]} {i // len(names)}" for i in range(n)]


def coop_options(n_ctx: int):
    """CoOp few-shot (16 random context tokens, "X X … X") or base-to-new (4 from "a photo of a")."""
    from cpbench.methods.coop import CoOpOptions

    return CoOpOptions(ctx_init="", n_ctx=16) if n_ctx == 16 else CoOpOptions(ctx_init="a photo of a", n_ctx=n_ctx)


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "loadavg": loadavg()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class Recorder:
    """Prints each record as a JSON line and appends it to ``out`` (a fresh file per run)."""

    def __init__(self, out: Path | None):
        self.out = Path(out) if out else None
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text("", encoding="utf-8")

    def __call__(self, record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if self.out:
            with self.out.open("a", encoding="utf-8") as f:
                f.write(line + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def train_step(method, precision, device, images=None, features=None, labels=None, opt=None):
    """One training step: forward (from images, or from precomputed image features for methods
    with a frozen unprompted image encoder), backward, SGD."""
    from cpbench.engine.train import batch_loss

    loss, _, _ = batch_loss(method, images if features is None else features, labels, precision, device,
                      features=features is not None)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sgd(method) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)


def text_tokens(method, mode: str) -> int:
    """Token positions the text transformer processes per forward in ``mode`` (CoOp-style
    methods with one ClassPrompts): naive = C x context length, cut = C x longest prompt,
    shared = prefix + the sum of each class's own tokens."""
    p = method.prompts
    eot = p.eot
    c = int(eot.shape[0])
    if mode == "naive":
        return c * int(p.ids.shape[1])
    if mode == "cut":
        return c * (int(eot.max()) + 1)
    shared = method.shared_prefix() if hasattr(method, "shared_prefix") else p.shared
    return shared + int((eot - shared + 1).sum())
