"""Checkpoints of learned parameters only (safetensors) plus a small JSON index, written
atomically: the tensors file first, the JSON that names it last. A crash at any point leaves
either the previous complete checkpoint or the new one, never a torn one."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cpbench import atomic


def save(ckpt_dir: Path, tag: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    fname = f"{tag}-{meta.get('epoch', 'x')}.safetensors"
    with atomic.atomic_path(ckpt_dir / fname) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    old = read_meta(ckpt_dir, tag)
    atomic.write_json(ckpt_dir / f"{tag}.json", {**meta, "file": fname})
    if old and old.get("file") and old["file"] != fname:
        (ckpt_dir / old["file"]).unlink(missing_ok=True)


def read_meta(ckpt_dir: Path, tag: str) -> dict | None:
    path = ckpt_dir / f"{tag}.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (ckpt_dir / meta.get("file", "")).is_file():
        return None
    return meta


def load(ckpt_dir: Path, tag: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    meta = read_meta(ckpt_dir, tag)
    if meta is None:
        return None
    try:
        return load_file(str(ckpt_dir / meta["file"])), meta
    except Exception:
        return None
