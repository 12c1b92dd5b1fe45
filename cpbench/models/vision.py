"""Prompt-aware image encoder: open_clip's ViT, and timm's ViT-style trunks inside open_clip.

Without prompts every tower runs its own forward (``encode_image``: CoCa's tower returns
(pooled, tokens); the pooled feature is taken).

Vision prompts (MaPLe / IVLP / PromptSRC) are appended after the embedded tokens once the
positional embedding has been added (so they get none) and before the pre-norm (``ln_pre`` /
``norm_pre``). Deep prompts replace the *last* ``n`` tokens at the start of layer ``i >= 1``.
After the last layer the prompt tokens are dropped and the tower pools exactly the tokens it
pools without prompts, with its own head: the prompts act on the features only through attention,
as MaPLe's prompts on CLIP's class token (VPT drops them before pooling in the same way). Per
tower:

- open_clip ``VisionTransformer`` (CLIP, CLIPA, CoCa, MetaCLIP 2): the class token, the average
  of the patch tokens (``pool_type='avg'``, ``final_ln_after_pool``: CLIPA) or the attentional
  pooler over all tokens (CoCa), then ``proj``;
- timm ``VisionTransformer`` (SigLIP / SigLIP 2 with the attention-pool ``map`` head over all
  patch tokens, MobileCLIP-B/L, timm ViTs): ``norm``, then timm's ``forward_head`` (pool,
  ``fc_norm``, head) and open_clip's projection head;
- timm ``Eva`` (EVA01/EVA02, PE-Core): the same; EVA02 and PE-Core rotate queries and keys of
  the patch tokens by their 2-D position (RoPE); the prompt tokens get the identity rotation
  (sin 0, cos 1), i.e. no position, as the class token, which the rotation skips.

Any other tower (ModifiedResNet, ConvNeXt, FastViT, Swin, ViTamin) has no token sequence to take
prompts: ``supports_prompts`` is False and methods that need it are refused before loading
(``cpbench/models/families.py``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _expand(p: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    p = p.to(dtype)
    return p.unsqueeze(0).expand(batch, -1, -1) if p.dim() == 2 else p


def _replace_last(x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    p = _expand(prompt, x.shape[0], x.dtype)
    return torch.cat([x[:, : x.shape[1] - p.shape[1]], p], dim=1)


def image_tower_kind(visual: nn.Module) -> str | None:
    """``clip-vit`` | ``timm-vit`` | ``timm-eva`` for towers that take prompts, else None."""
    import open_clip

    if isinstance(visual, open_clip.transformer.VisionTransformer):
        return "clip-vit"
    trunk = getattr(visual, "trunk", None)
    if isinstance(visual, open_clip.timm_model.TimmModel) and trunk is not None:
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer

        if type(trunk) is Eva:
            return "timm-eva"
        if type(trunk) is VisionTransformer:
            return "timm-vit"
    return None


def _extend_rope(rope: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """timm's concatenated [sin, cos] rotary table with ``n`` identity rows (sin 0, cos 1) for the
    prompt tokens appended after the patches."""
    if rope is None or n == 0:
        return rope
    sin, cos = rope.chunk(2, dim=-1)
    shape = (*rope.shape[:-2], n, sin.shape[-1])
    ident = torch.cat([sin.new_zeros(shape), cos.new_ones(shape)], dim=-1)
    return torch.cat([rope, ident], dim=-2)


class PromptImageEncoder(nn.Module):
    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        self.kind = image_tower_kind(visual)
        self.supports_prompts = self.kind is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype if hasattr(self.visual, "conv1") else next(self.visual.parameters()).dtype

    @property
    def width(self) -> int:
        if self.kind == "clip-vit":
            return int(self.visual.class_embedding.shape[-1])
        if self.kind is not None:
            return int(self.visual.trunk.embed_dim)
        return 0

    @property
    def layers(self) -> int:
        if self.kind == "clip-vit":
            return len(self.visual.transformer.resblocks)
        if self.kind is not None:
            return len(self.visual.trunk.blocks)
        return 0

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | None = None,
                deep: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        if prompts is None and not deep:
            out = self.visual(images.to(self.dtype))
            return out[0] if isinstance(out, tuple) else out
        if not self.supports_prompts:
            raise ValueError("this image tower does not take vision prompts (needs a ViT; see cpbench/models/vision.py)")
        if self.kind == "clip-vit":
            return self._clip_vit(images.to(self.dtype), prompts, deep)
        return self._timm(images.to(self.dtype), prompts, deep)

    def _clip_vit(self, x: torch.Tensor, prompts, deep) -> torch.Tensor:
        v = self.visual
        x = v.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        tokens = x.shape[1]
        if prompts is not None:
            x = torch.cat([x, _expand(prompts, x.shape[0], x.dtype)], dim=1)
        x = v.ln_pre(x)
        for i, block in enumerate(v.transformer.resblocks):
            if deep is not None and 0 < i < len(deep) and deep[i] is not None:
                x = _replace_last(x, deep[i])
            x = block(x)
        if v.attn_pool is None and not v.final_ln_after_pool and v.pool_type == "tok":
            pooled = v.ln_post(x[:, 0])   # CLIP: the class token (the golden path, unchanged)
        else:
            pooled, _ = v._pool(x[:, :tokens])
        return pooled @ v.proj if v.proj is not None else pooled

    def _timm(self, x: torch.Tensor, prompts, deep) -> torch.Tensor:
        trunk = self.visual.trunk
        x = trunk.patch_embed(x)
        if self.kind == "timm-eva":
            x, rope = trunk._pos_embed(x)
        else:
            x, rope = trunk.patch_drop(trunk._pos_embed(x)), None
        tokens = x.shape[1]
        if prompts is not None:
            x = torch.cat([x, _expand(prompts, x.shape[0], x.dtype)], dim=1)
        x = trunk.norm_pre(x)
        rope = _extend_rope(rope, x.shape[1] - tokens)
        mixed = getattr(trunk, "rope_mixed", False) and rope is not None   # one table per layer
        for i, block in enumerate(trunk.blocks):
            if deep is not None and 0 < i < len(deep) and deep[i] is not None:
                x = _replace_last(x, deep[i])
            if self.kind == "timm-eva":
                x = block(x, rope=rope[i] if mixed else rope)
            else:
                x = block(x)
        x = trunk.norm(x[:, :tokens])
        return self.visual.head(trunk.forward_head(x))
