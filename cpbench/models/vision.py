"""Prompt-aware image encoder over an open_clip ViT.

Vision prompts (MaPLe / IVLP / PromptSRC) are appended after ``[CLS, patches]`` once the
positional embedding has been added (so they get none) and before ``ln_pre``. Deep prompts
replace the *last* ``n`` tokens at the start of layer ``i >= 1``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _expand(p: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    p = p.to(dtype)
    return p.unsqueeze(0).expand(batch, -1, -1) if p.dim() == 2 else p


class PromptImageEncoder(nn.Module):
    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        pool = getattr(visual, "pool_type", "tok")
        self.supports_prompts = (
            hasattr(visual, "conv1") and pool == "tok" and getattr(visual, "attn_pool", None) is None
            and not getattr(visual, "final_ln_after_pool", False)
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype if hasattr(self.visual, "conv1") else next(self.visual.parameters()).dtype

    @property
    def width(self) -> int:
        return int(self.visual.class_embedding.shape[-1]) if hasattr(self.visual, "class_embedding") else 0

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | None = None,
                deep: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        if prompts is None and not deep:
            return self.visual(images.to(self.dtype))
        if not self.supports_prompts:
            raise ValueError("this vision tower does not support vision prompts (needs a plain CLIP ViT)")
        v = self.visual
        x = images.to(self.dtype)
        x = v.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        if prompts is not None:
            x = torch.cat([x, _expand(prompts, x.shape[0], x.dtype)], dim=1)
        x = v.ln_pre(x)
        for i, block in enumerate(v.transformer.resblocks):
            if deep is not None and 0 < i < len(deep) and deep[i] is not None:
                p = _expand(deep[i], x.shape[0], x.dtype)
                x = torch.cat([x[:, : x.shape[1] - p.shape[1]], p], dim=1)
            x = block(x)
        pooled = v.ln_post(x[:, 0])
        return pooled @ v.proj if v.proj is not None else pooled
