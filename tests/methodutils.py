"""Shared by the method tests: class names, seeded random images and a seeded nudge of a tensor (so
a learnable is not at its initial value), all on the tiny random backbone."""

from __future__ import annotations

import torch

NAMES = ["golden retriever", "tabby_cat", "airliner", "red fox", "sports car"]
NEW = ["tree frog", "golden retriever", "canoe"]


def images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def perturb(t: torch.Tensor, seed: int, scale: float = 0.05) -> None:
    with torch.no_grad():
        t.add_(scale * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed)).to(t.dtype))
