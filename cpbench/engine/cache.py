"""Exact cache of frozen image features for evaluation.

Keyed by backbone (weights fingerprint), precision, test transform and the exact image list
(dataset image root + relative paths), so it is shared across methods, seeds and protocols for
every method whose image encoder is unprompted. Stored as safetensors; written atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from cpbench import atomic
from cpbench.data.splits import Item


class FeatureCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @staticmethod
    def key(backbone_fp: str, precision: str, transform: str, dataset: str, items: Sequence[Item]) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([backbone_fp, precision, transform, dataset]).encode())
        for it in items:
            h.update(it.path.encode("utf-8", "surrogateescape"))  # POSIX names may be non-UTF-8 bytes
            h.update(b"\0")
        return h.hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            return load_file(str(p))["features"]
        except Exception:
            return None

    def put(self, key: str, features: torch.Tensor) -> None:
        with atomic.atomic_path(self.path(key)) as tmp:
            save_file({"features": features.contiguous().cpu()}, str(tmp))

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
        cached = self.get(key)
        if cached is not None:
            return cached, True
        feats = compute()
        self.put(key, feats)
        return feats, False
