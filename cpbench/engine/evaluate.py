"""Top-1 accuracy of a method on an image list.

The class-side context (e.g. text features) is computed once per evaluation, not per batch.
For methods whose image encoder is unprompted, frozen image features come from the exact
feature cache when one is given (``features.py``: how images are decoded, batched and encoded).

Besides the accuracy, ``EvalResult`` carries the per-image outcome (true label, predicted label,
the softmax probability of the true class), which the protocol stores beside the results rows
(``cpbench/results/predictions.py``) for intervals, paired tests and per-class views.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cpbench.data.splits import Item
from cpbench.engine.cache import FeatureCache
from cpbench.engine.features import BatchCallback, image_features, image_loader, model_inputs
from cpbench.engine.precision import Precision
from cpbench.methods.base import Method


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
        loader = image_loader(items, image_root, method, batch_size, num_workers, device)
        preds, probs, start = [], [], 0
        for b, (pixels, _, _) in enumerate(loader):
            images = model_inputs(pixels, method, device, precision)
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
