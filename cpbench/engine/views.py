"""The training-view store: frozen image-encoder outputs of keyed training views, computed once
and read by every later method that trains on the same views.

With keyed augmentation (``engine/augment.py``) the view of an image at an epoch is a pure
function of (seed, epoch, image), so the output of the frozen, unprompted image encoder on it
is too, given the batch the encoder saw it in: a batched encoder does not give bit-identical
rows for different batch sizes (measured on CPU: up to 4e-6 apart between batches of 1, 7 and
40 on ViT-B/32). The methods' sampler orders a training set by (seed, epoch, number of images,
batch size, drop_last), so the store keys a training context by exactly that, plus what decides
the encoder's output: the weights fingerprint, the precision, the device model, the training
transform, the dataset and its ordered image list. Within a context every method sees the very
batches it would have encoded itself, and gets the very bits (``tests/test_view_store.py``).

Layout: ``<cache>/views/<context>/epoch-NNNN.safetensors`` holds ``features`` [N, E] in the
dtype the encoder returned and ``filled`` [N] (the rows the epoch's batches covered: Dassl drops
the last incomplete batch; a cut last epoch covers fewer). ``about.json`` says what the context
is, for ``cpbench cache``. One epoch is loaded at a time, so an ImageNet-size run (16 k images x
50 epochs) sits on disk, never in memory at once. Shards are written atomically (temp file and
rename); two processes filling the same shard both write the same bits, the last rename wins.
Writes keep the cache's size cap (``engine/cache.py``, least recently used first).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from cpbench import atomic
from cpbench.data.splits import Item
from cpbench.engine.augment import AUGMENT_VERSION
from cpbench.engine.cache import limit_bytes, prune, touch


class ViewStore:
    def __init__(self, directory: Path):
        self.directory = Path(directory)   # <cache>/views

    @staticmethod
    def context(backbone_fp: str, precision: str, device: str, transform: str, dataset: str,
                items: Sequence[Item], seed: int, batch_size: int, drop_last: bool) -> tuple[str, dict]:
        """(key, description) of a training context: everything that decides the encoder's output
        for each row of each epoch's batches."""
        about = {"backbone": backbone_fp, "precision": precision, "device": device, "transform": transform,
                 "dataset": dataset, "images": len(items), "seed": int(seed), "batch_size": int(batch_size),
                 "drop_last": bool(drop_last), "augment": AUGMENT_VERSION}
        h = hashlib.sha256(json.dumps(about, sort_keys=True).encode())
        for it in items:
            h.update(it.path.encode("utf-8", "surrogateescape"))
            h.update(b"\0")
        return h.hexdigest()[:24], about

    def shard(self, key: str, epoch: int) -> Path:
        return self.directory / key / f"epoch-{epoch:04d}.safetensors"

    def load(self, key: str, epoch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(features [N, E], filled [N] bool) of ``epoch``, or None when it is not stored (or unreadable)."""
        p = self.shard(key, epoch)
        if not p.exists():
            return None
        try:
            t = load_file(str(p))
            out = t["features"], t["filled"].bool()
        except Exception:
            return None
        touch(p)
        return out

    def save(self, key: str, epoch: int, features: torch.Tensor, filled: torch.Tensor, about: dict) -> None:
        folder = self.directory / key
        if not (folder / "about.json").exists():
            atomic.write_json(folder / "about.json", about)
        path = self.shard(key, epoch)
        with atomic.atomic_path(path) as tmp:
            save_file({"features": features.contiguous().cpu(), "filled": filled.to(torch.uint8).cpu()}, str(tmp))
        prune(self.directory.parent, limit_bytes(self.directory.parent), keep=path)


class EpochViews:
    """One epoch's shard while a method trains: serves the rows it holds, or collects the rows the
    method's batches compute so the shard can be written at the epoch's end."""

    def __init__(self, store: ViewStore, key: str, about: dict, epoch: int, n: int):
        self.store, self.key, self.about, self.epoch, self.n = store, key, about, epoch, n
        self.features: torch.Tensor | None = None
        self.filled = torch.zeros(n, dtype=torch.bool)
        self.added = False

    @classmethod
    def open(cls, store: ViewStore, key: str, about: dict, epoch: int, n: int) -> "EpochViews":
        ev = cls(store, key, about, epoch, n)
        found = store.load(key, epoch)
        if found is not None and found[0].shape[0] == n:
            ev.features, ev.filled = found
        return ev

    def covers(self, batches: Sequence[torch.Tensor]) -> bool:
        """Whether every row of ``batches`` (index tensors) is stored."""
        return self.features is not None and all(bool(self.filled[idx].all()) for idx in batches)

    def add(self, idx: torch.Tensor, features: torch.Tensor) -> None:
        f = features.detach().to("cpu")
        if self.features is None or self.features.dtype != f.dtype:
            self.features = torch.zeros((self.n, *f.shape[1:]), dtype=f.dtype)
            self.filled = torch.zeros(self.n, dtype=torch.bool)
        self.features[idx] = f
        self.filled[idx] = True
        self.added = True

    def write(self) -> None:
        if self.added and self.features is not None:
            self.store.save(self.key, self.epoch, self.features, self.filled, self.about)
