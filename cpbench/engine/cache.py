"""The derived-file cache under ``cpbench.paths.cache_root()``: its two kinds, and keeping it in
bounds.

- ``features``: the exact cache of frozen image features of test views (``FeatureCache``), keyed
  by backbone (weights fingerprint), precision, test transform and the exact image list (dataset
  image root + relative paths), so it is shared across methods, seeds and protocols for every
  method whose image encoder is unprompted. One safetensors file per key, written atomically.
- ``views``: the training-view store (``engine/views.py``), one shard per (context, epoch).

A size cap (``$CPBENCH_CACHE_MAX``, else the one ``cpbench cache --max-size`` saved in the cache
folder) is kept by deleting the least recently used files (reads refresh a file's time) after
each write; ``usage`` and ``clear`` back ``cpbench cache``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from cpbench import atomic
from cpbench.data.splits import Item
from cpbench.errors import UserError

KINDS = ("features", "views")
LIMIT_FILE = "max-size"
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, where: str = "size") -> int:
    """``"50G"``, ``"500M"``, ``"1.5T"``, ``"123"`` (bytes) -> bytes (binary units; a trailing
    ``B``/``iB`` is allowed)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
    if not m:
        raise UserError(f"{where} {text!r} is not a size; write e.g. 50G, 500M or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def limit_bytes(root: Path) -> int | None:
    """The cache's size cap in bytes: ``$CPBENCH_CACHE_MAX``, else the one saved in ``root``; None: no cap."""
    env = os.environ.get("CPBENCH_CACHE_MAX", "").strip()
    if env:
        return parse_size(env, "$CPBENCH_CACHE_MAX")
    saved = Path(root) / LIMIT_FILE
    if saved.is_file():
        try:
            return parse_size(saved.read_text(encoding="utf-8").strip(), str(saved))
        except UserError:
            return None
    return None


def save_limit(root: Path, size: str | None) -> None:
    """Save (``size``) or remove (None / "none") the cap of the cache in ``root``."""
    path = Path(root) / LIMIT_FILE
    if size is None or str(size).lower() in ("none", "off", "0"):
        path.unlink(missing_ok=True)
        return
    atomic.write_text(path, f"{parse_size(size, '--max-size')}\n")


def _files(root: Path, kind: str) -> list[os.DirEntry | Path]:
    base = Path(root) / kind
    if not base.is_dir():
        return []
    return [p for p in base.rglob("*.safetensors") if not p.name.startswith(".")]


def usage(root: Path) -> dict[str, dict]:
    """Per kind: {"bytes", "files", "entries"} (views: entries = contexts, i.e. training sets)."""
    out = {}
    for kind in KINDS:
        files = _files(root, kind)
        size = 0
        for f in files:
            try:
                size += f.stat().st_size
            except FileNotFoundError:
                pass
        entries = len({f.parent for f in files}) if kind == "views" else len(files)
        out[kind] = {"bytes": size, "files": len(files), "entries": entries}
    return out


def prune(root: Path, limit: int | None, keep: Path | None = None) -> tuple[int, int]:
    """Delete least recently used cache files until the cache holds at most ``limit`` bytes
    (``keep``, the file just written, goes last); (files removed, bytes freed). A file another
    process reads at that moment is already in its memory; a shard deleted before it is read is
    computed again, exactly."""
    if limit is None:
        return 0, 0
    stats = []
    for kind in KINDS:
        for f in _files(root, kind):
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            stats.append((f == keep, st.st_mtime, st.st_size, f))
    total = sum(s[2] for s in stats)
    removed = freed = 0
    for _, _, size, f in sorted(stats, key=lambda s: (s[0], s[1])):
        if total <= limit:
            break
        try:
            f.unlink()
        except FileNotFoundError:
            continue
        total -= size
        freed += size
        removed += 1
        if f.parent.name != "features" and not any(f.parent.glob("*.safetensors")):
            for left in f.parent.iterdir():
                left.unlink(missing_ok=True)
            f.parent.rmdir()
    return removed, freed


def clear(root: Path, kinds: Sequence[str] = KINDS) -> tuple[int, int]:
    """Delete every file of ``kinds``; (files removed, bytes freed)."""
    import shutil

    removed = freed = 0
    for kind in kinds:
        u = usage(root)[kind]
        removed += u["files"]
        freed += u["bytes"]
        base = Path(root) / kind
        if base.is_dir():
            shutil.rmtree(base)
    return removed, freed


def touch(path: Path) -> None:
    """Mark ``path`` as used now (least-recently-used eviction reads the modification time)."""
    try:
        os.utime(path)
    except OSError:
        pass


def read_features(path: Path) -> torch.Tensor | None:
    """The ``features`` tensor of a cache file, marked as used; None when it is missing or unreadable
    (a half-written or foreign file is computed again)."""
    if not path.exists():
        return None
    try:
        feats = load_file(str(path))["features"]
    except Exception:
        return None
    touch(path)
    return feats


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
        return read_features(self.path(key))

    def put(self, key: str, features: torch.Tensor) -> None:
        with atomic.atomic_path(self.path(key)) as tmp:
            save_file({"features": features.contiguous().cpu()}, str(tmp))
        prune(self.directory.parent, limit_bytes(self.directory.parent), keep=self.path(key))

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
        cached = self.get(key)
        if cached is not None:
            return cached, True
        feats = compute()
        self.put(key, feats)
        return feats, False
