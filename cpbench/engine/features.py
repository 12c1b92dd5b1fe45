"""Frozen image features of a list of images: encoded batch by batch in the run's precision
(``encode_all``), from the exact feature cache of test views (``image_features``), or of K
augmented training views (``cached_views``). The loops (``evaluate.py``, ``train.py``) and methods
that fit on features (the linear probe, Tip-Adapter's cache) use them; they need of a method only
what ``Encoder`` names.

Images travel as uint8 pixels and are normalised on the device (``to_model_input``, bit-identical).
On a GPU, ``num_workers=0`` means ``eval_workers``: decoding runs in up to 8 worker processes
with prefetching, off the GPU's critical path (the test transform draws no random numbers, so
results do not depend on it). On a CPU the workers would compete with the encoder for the same
cores, so decoding stays in the main process unless ``num_workers`` says otherwise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch.utils.data import DataLoader

from cpbench.config import TrainConfig
from cpbench.data.images import ImageList, describe, test_pixels, test_transform, to_model_input
from cpbench.data.splits import Item
from cpbench.engine.cache import FeatureCache
from cpbench.engine.precision import Precision, epoch_seed
from cpbench.threads import available_cpus, loader_worker_init

BatchCallback = Callable[[int, int], None]


class Encoder(Protocol):
    """What feature extraction needs of a method, an ``nn.Module`` (``methods/base.py``: every
    ``Method`` has it)."""
    backbone: Any                  # preprocess, fingerprint()
    image_prompted: bool           # prompts enter the image encoder: nothing is cached

    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...


def eval_workers(requested: int, device: torch.device) -> int:
    """Decode workers for evaluation: ``requested`` if > 0; else up to 8 on a GPU, 0 on a CPU."""
    if requested > 0 or device.type != "cuda":
        return requested
    return max(0, min(8, available_cpus()[0] - 1))


def image_loader(items, image_root, method: Encoder, batch_size: int, num_workers: int, device: torch.device):
    """Batches of (uint8 test-view pixels, label, index) of ``items``, in order."""
    ds = ImageList(items, image_root, test_pixels(method.backbone.preprocess))
    workers = eval_workers(num_workers, device)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                      worker_init_fn=loader_worker_init)


def model_inputs(pixels: torch.Tensor, method: Encoder, device: torch.device, precision: Precision) -> torch.Tensor:
    """A batch of pixels as the image encoder takes it: normalised on ``device``, in its dtype."""
    dtype = torch.float16 if precision.param_dtype == torch.float16 else torch.float32
    return to_model_input(pixels, method.backbone.preprocess, device, dtype)


@torch.no_grad()
def encode_all(method: Encoder, items, image_root, device, precision: Precision, batch_size: int,
               num_workers: int = 0, on_batch: BatchCallback | None = None) -> torch.Tensor:
    """``method.encode_images`` of every item's test view, in order, as one fp32 tensor on the CPU."""
    loader = image_loader(items, image_root, method, batch_size, num_workers, device)
    out = []
    for b, (pixels, _, _) in enumerate(loader):
        images = model_inputs(pixels, method, device, precision)
        with precision.autocast(device):
            out.append(method.encode_images(images).float().cpu())
        if on_batch:
            on_batch(b + 1, len(loader))
    return torch.cat(out) if out else torch.zeros(0)


def image_features(method: Encoder, items: Sequence[Item], image_root: Path, device: torch.device,
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


def image_dtype(precision: Precision) -> torch.dtype:
    """The dtype images enter the image encoder in."""
    return torch.float16 if precision.param_dtype == torch.float16 else torch.float32


@torch.no_grad()
def cached_views(method: Encoder, dataset: ImageList, cfg: TrainConfig, device: torch.device,
                 precision: Precision, seed: int, views: int | None = None,
                 encode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """[K, N, E] frozen features of K = ``views`` (default ``feature_views``) augmented views per
    training image, each view's augmentation drawn from its own seed; ``encode`` (default the
    method's ``encode_images``: normalised features) maps a batch of images to features. For
    ``feature_views`` an approximation of fresh per-epoch augmentation, recorded as such in the
    results row; Tip-Adapter's cache is built this way by definition (its ``augment_epoch``)."""
    out = []
    was_training = method.training
    method.eval()
    encode = encode or method.encode_images
    for v in range(cfg.feature_views if views is None else views):
        torch.manual_seed(epoch_seed(seed, 100_000 + v))
        loader = DataLoader(dataset, batch_size=cfg.test_batch_size, shuffle=False, num_workers=cfg.num_workers,
                            worker_init_fn=loader_worker_init)
        feats = []
        for pixels, _, _ in loader:
            images = to_model_input(pixels, method.backbone.preprocess, device, image_dtype(precision))
            with precision.autocast(device):
                feats.append(encode(images).float())
        out.append(torch.cat(feats))
    method.train(was_training)
    return torch.stack(out).to(device)


def train_preprocess(method: Encoder, cfg: TrainConfig):
    """The backbone's preprocessing facts with the training crop scale ``cfg`` asks for."""
    pre = method.backbone.preprocess
    if cfg.crop_scale_min > 0 and pre.train_crop_scale is not None:
        pre = dataclasses.replace(pre, train_crop_scale=(cfg.crop_scale_min, 1.0))
    return pre
