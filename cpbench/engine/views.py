"""The training-view store: the frozen image encoder's output on every keyed training view of an
epoch, computed once and read by every later method that trains on the same images and seed.

With keyed augmentation (``engine/augment.py``) the view of an image at an epoch is a pure
function of (seed, epoch, image). A batched encoder does not give bit-identical rows for
different batch compositions (measured on CPU: up to 4e-6 apart between batches of 1, 7 and 40
on ViT-B/32), so the features of an epoch are always computed the same way, whatever the
method's batch size: one pass over the epoch's views in image order, in chunks of
``VIEW_CHUNK`` (``encode_views``). A ``view_store`` method trains from that pass, or from the
store that holds it (the same bits), batched by its own sampler. The store keys a training set by
what decides the encoder's output: the weights fingerprint, the precision, the device model (on a
CPU its instruction set and thread count), the training transform, the dataset and its ordered
image list, the seed, the chunk size and the augmentation's version.

Layout: ``<cache>/views/<context>/epoch-NNNN.safetensors`` holds ``features`` [N, E] in the dtype
the encoder returned; ``about.json`` says what the context is, for ``cpbench cache``. One epoch is
loaded at a time, so an ImageNet-size run (16 k images x 50 epochs) sits on disk, never in memory
at once. Shards are written atomically (temp file and rename); two processes filling the same
shard both write the same bits, the last rename wins. Writes keep the cache's size cap
(``engine/cache.py``, least recently used first).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from cpbench import atomic
from cpbench.data.images import to_model_input
from cpbench.data.splits import Item
from cpbench.engine.augment import AUGMENT_VERSION
from cpbench.engine.cache import limit_bytes, prune, read_features
from cpbench.engine.features import eval_workers, image_dtype
from cpbench.engine.precision import Precision
from cpbench.threads import loader_worker_init

VIEW_CHUNK = 128   # images per encoder call in the canonical pass (part of the key)


@torch.no_grad()
def encode_views(method, dataset, device: torch.device, precision: Precision, num_workers: int = 0) -> torch.Tensor:
    """``method.backbone.encode_image`` of every item of ``dataset`` (a ``KeyedImageList`` set to its
    epoch), in order, in chunks of ``VIEW_CHUNK``, in the dtype the encoder returns, on the CPU.
    Keyed views do not depend on the loader workers (up to 8 decode on a GPU: ``eval_workers``)."""
    workers = eval_workers(num_workers, device)
    loader = DataLoader(dataset, batch_size=VIEW_CHUNK, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                        worker_init_fn=loader_worker_init)
    out = []
    for pixels, _, _ in loader:
        images = to_model_input(pixels, method.backbone.preprocess, device, image_dtype(precision))
        with precision.autocast(device):
            out.append(method.backbone.encode_image(images).detach().cpu())
    return torch.cat(out)


class ViewStore:
    def __init__(self, directory: Path):
        self.directory = Path(directory)   # <cache>/views

    @staticmethod
    def context(backbone_fp: str, precision: str, device: str, transform: str, dataset: str,
                items: Sequence[Item], seed: int) -> tuple[str, dict]:
        """(key, description) of a training context: everything that decides the encoder's output
        on each view of each epoch."""
        about = {"backbone": backbone_fp, "precision": precision, "device": device, "transform": transform,
                 "dataset": dataset, "images": len(items), "seed": int(seed), "chunk": VIEW_CHUNK,
                 "augment": AUGMENT_VERSION}
        h = hashlib.sha256(json.dumps(about, sort_keys=True).encode())
        for it in items:
            h.update(it.path.encode("utf-8", "surrogateescape"))
            h.update(b"\0")
        return h.hexdigest()[:24], about

    def shard(self, key: str, epoch: int) -> Path:
        return self.directory / key / f"epoch-{epoch:04d}.safetensors"

    def load(self, key: str, epoch: int, n: int) -> torch.Tensor | None:
        """Features [n, E] of ``epoch``, or None when they are not stored (or unreadable)."""
        feats = read_features(self.shard(key, epoch))
        return feats if feats is not None and feats.shape[0] == n else None

    def save(self, key: str, epoch: int, features: torch.Tensor, about: dict) -> None:
        folder = self.directory / key
        if not (folder / "about.json").exists():
            atomic.write_json(folder / "about.json", about)
        path = self.shard(key, epoch)
        with atomic.atomic_path(path) as tmp:
            save_file({"features": features.contiguous().cpu()}, str(tmp))
        prune(self.directory.parent, limit_bytes(self.directory.parent), keep=path)
