"""Top-1 accuracy of a method on an image list.

The class-side context (e.g. text features) is computed once per evaluation, not per batch.
For methods whose image encoder is unprompted, frozen image features come from the exact
feature cache when one is given.

Images travel as uint8 pixels and are normalised on the device (``to_model_input``, bit-identical).
On a GPU, ``num_workers=0`` means ``eval_workers``: decoding runs in up to 8 worker processes
with prefetching, off the GPU's critical path (the test transform draws no random numbers, so
results do not depend on it). On a CPU the workers would compete with the encoder for the same
cores, so evaluation decodes in the main process unless ``num_workers`` says otherwise.

Besides the accuracy, ``EvalResult`` carries the per-image outcome (true label, predicted label,
the softmax probability of the true class), which the protocol stores beside the results rows
(``cpbench/results/predictions.py``) for intervals, paired tests and per-class views.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from cpbench.data.images import ImageList, describe, test_pixels, test_transform, to_model_input
from cpbench.data.splits import Item
from cpbench.engine.cache import FeatureCache
from cpbench.engine.precision import Precision
from cpbench.methods.base import Method
from cpbench.threads import available_cpus, loader_worker_init

BatchCallback = Callable[[int, int], None]


@dataclass
class EvalResult:
    accuracy: float  # percent
    correct: int
    n: int
    seconds: float
    cached_features: bool
    labels: np.ndarray | None = None   # per image, in ``items`` order: the true label
    preds: np.ndarray | None = None    # the predicted label (argmax of the logits)
    p_true: np.ndarray | None = None   # float16: softmax probability of the true label


def _outcome(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted label, softmax probability of the true label) of one batch, on the CPU."""
    logits = logits.float()
    p_true = logits.softmax(dim=-1).gather(1, labels.to(logits.device).view(-1, 1)).view(-1)
    return logits.argmax(dim=-1).cpu(), p_true.cpu()


def eval_workers(requested: int, device: torch.device) -> int:
    """Decode workers for evaluation: ``requested`` if > 0; else up to 8 on a GPU, 0 on a CPU."""
    if requested > 0 or device.type != "cuda":
        return requested
    return max(0, min(8, available_cpus()[0] - 1))


def _loader(items, image_root, method, batch_size, num_workers, device):
    ds = ImageList(items, image_root, test_pixels(method.backbone.preprocess))
    workers = eval_workers(num_workers, device)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                      worker_init_fn=loader_worker_init)


def _inputs(pixels: torch.Tensor, method: Method, device: torch.device, precision: Precision) -> torch.Tensor:
    dtype = torch.float16 if precision.param_dtype == torch.float16 else torch.float32
    return to_model_input(pixels, method.backbone.preprocess, device, dtype)


@torch.no_grad()
def encode_all(method: Method, items, image_root, device, precision: Precision, batch_size: int,
               num_workers: int = 0, on_batch: BatchCallback | None = None) -> torch.Tensor:
    loader = _loader(items, image_root, method, batch_size, num_workers, device)
    out = []
    for b, (pixels, _, _) in enumerate(loader):
        images = _inputs(pixels, method, device, precision)
        with precision.autocast(device):
            out.append(method.encode_images(images).float().cpu())
        if on_batch:
            on_batch(b + 1, len(loader))
    return torch.cat(out) if out else torch.zeros(0)


def image_features(method: Method, items: Sequence[Item], image_root: Path, device: torch.device,
                   precision: Precision, batch_size: int = 100, num_workers: int = 0,
                   cache: FeatureCache | None = None, dataset: str = "",
                   on_batch: BatchCallback | None = None) -> tuple[torch.Tensor | None, bool]:
    """(features, came from the cache) of the items' test views from the exact feature cache, or
    (None, False) when there is no cache or the method's image encoder is prompted."""
    if cache is None or method.image_prompted:
        return None, False
    key = FeatureCache.key(method.backbone.fingerprint(), precision.effective,
                           describe(test_transform(method.backbone.preprocess)), f"{dataset}:{image_root}", items)
    return cache.get_or_compute(
        key, lambda: encode_all(method, items, image_root, device, precision, batch_size, num_workers, on_batch))


@torch.no_grad()
def evaluate(method: Method, items: Sequence[Item], image_root: Path, device: torch.device, precision: Precision,
             batch_size: int = 100, num_workers: int = 0, cache: FeatureCache | None = None,
             dataset: str = "", on_batch: BatchCallback | None = None,
             context_per_batch: bool = False) -> EvalResult:
    """``context_per_batch=True`` recomputes the class context for every batch (the official
    repos' behaviour; only for speed comparisons — results are identical)."""
    started = time.time()
    method.eval()
    labels = torch.tensor([it.label for it in items])
    with precision.autocast(device):
        context = method.eval_context()
    feats, cached = image_features(method, items, image_root, device, precision, batch_size, num_workers, cache,
                                   dataset, on_batch)
    if feats is not None:
        preds, probs = [], []
        for start in range(0, len(items), batch_size):
            chunk = feats[start: start + batch_size].to(device)
            with precision.autocast(device):
                logits = method.logits_from_features(chunk, context)
            pred, prob = _outcome(logits, labels[start: start + batch_size])
            preds.append(pred)
            probs.append(prob)
    else:
        loader = _loader(items, image_root, method, batch_size, num_workers, device)
        preds, probs, start = [], [], 0
        for b, (pixels, _, _) in enumerate(loader):
            images = _inputs(pixels, method, device, precision)
            with precision.autocast(device):
                if context_per_batch:
                    context = method.eval_context()
                logits = method.logits_from_features(method.encode_images(images), context)
            pred, prob = _outcome(logits, labels[start: start + len(images)])
            start += len(images)
            preds.append(pred)
            probs.append(prob)
            if on_batch:
                on_batch(b + 1, len(loader))
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    prob = torch.cat(probs) if probs else torch.zeros(0)
    correct = int((pred == labels).sum())
    n = len(items)
    return EvalResult(100.0 * correct / max(1, n), correct, n, time.time() - started, cached,
                      labels.numpy(), pred.numpy(), prob.numpy().astype(np.float16))
