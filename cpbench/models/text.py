"""Prompt-aware text encoder over an open_clip CLIP text tower.

Input: prompt *embeddings* ``[N, L, D]`` (token embeddings with learned context already put in
place) and the EOT position of each row. Optional deep prompts replace tokens ``1..n`` at the
start of layer ``i >= 1`` (MaPLe / IVLP / PromptSRC), never accumulating.

Sequences are cut after the longest EOT in the batch: under CLIP's causal mask nothing after the
EOT token reaches it, so the features are the same and the text transformer does less work.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _replace_front(x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    n = prompt.shape[-2]
    p = prompt.to(x.dtype)
    if p.dim() == 2:
        p = p.unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :1], p, x[:, 1 + n:]], dim=1)


class PromptTextEncoder(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.transformer = clip.transformer
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask.clone(), persistent=False)
        self.truncate = True

    @property
    def dtype(self) -> torch.dtype:
        return self.ln_final.weight.dtype

    def forward(self, prompts: torch.Tensor, eot: torch.Tensor,
                deep: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """prompts: [N, L, D]; eot: [N] int; deep[i]: [n, D] or [N, n, D] inserted before layer i."""
        length = prompts.shape[1]
        if self.truncate:
            length = int(eot.max().item()) + 1
            prompts = prompts[:, :length]
        x = prompts.to(self.dtype) + self.positional_embedding[:length].to(self.dtype)
        mask = self.attn_mask[:length, :length].to(x.dtype) if self.attn_mask is not None else None
        for i, block in enumerate(self.transformer.resblocks):
            if deep is not None and 0 < i < len(deep) and deep[i] is not None:
                x = _replace_front(x, deep[i])
            x = block(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = self.text_projection
        if proj is None:
            return x
        if isinstance(proj, nn.Linear):
            return proj(x)
        return x @ proj.to(x.dtype)
