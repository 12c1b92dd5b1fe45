"""Prompt-aware text encoder over an open_clip CLIP text tower.

Input: prompt *embeddings* ``[N, L, D]`` (token embeddings with learned context already put in
place) and the EOT position of each row. Optional deep prompts replace tokens ``1..n`` at the
start of layer ``i >= 1`` (MaPLe / IVLP / PromptSRC), never accumulating.

Two exact savings, both consequences of CLIP's causal mask:

- Sequences are cut after the longest EOT in the batch: nothing after the EOT token reaches it.
- A shared prefix is encoded once (``shared=P``): when the first ``P`` positions hold the same
  vectors in every row (the start token and a context shared by all classes), their hidden
  states are the same in every row at every layer, because they only attend to each other (deep
  prompts that replace positions ``1..n < P`` with one tensor for all rows keep this true). They
  are computed once, and each row's remaining positions attend to them as broadcast keys and
  values (``shared_block``). ``groups=G`` splits the rows into ``G`` consecutive groups that
  each share their own prefix (CoCoOp and Bayesian PL: one prompt set per image or sample).
  The caller promises that the prefix of every row of a group is the *same tensor broadcast*
  (``expand``), not merely equal values: the gradient reaches the prefix through the group's
  first row only, which is exact for a broadcast and wrong for per-row parameters (CoOp's
  class-specific context must pass ``shared=0``).

Features and gradients equal the full pass up to float round-off (``tests/test_shared_prefix.py``).
Blocks other than open_clip's plain ``ResidualAttentionBlock``, a non-causal mask, per-row deep
prompts or deep prompts reaching past the prefix fall back to the full pass.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _replace_front(x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    n = prompt.shape[-2]
    p = prompt.to(x.dtype)
    if p.dim() == 2:
        p = p.unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :1], p, x[:, 1 + n:]], dim=1)


def _is_causal(mask: torch.Tensor | None) -> bool:
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    blocked = torch.isneginf(mask)
    upper = torch.ones_like(blocked).triu(1)
    return bool(torch.equal(blocked, upper) and (mask[~blocked] == 0).all())


def _plain_block(block: nn.Module) -> bool:
    """open_clip's ResidualAttentionBlock around a standard nn.MultiheadAttention (no cross
    attention, no extra key/value biases, no attention dropout)."""
    attn = getattr(block, "attn", None)
    return (type(block).__name__ == "ResidualAttentionBlock" and isinstance(attn, nn.MultiheadAttention)
            and not hasattr(block, "ln_1_kv") and attn._qkv_same_embed_dim and attn.in_proj_weight is not None
            and attn.bias_k is None and not attn.add_zero_attn and attn.dropout == 0.0)


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """[..., T, D] -> [..., H, T, D/H]"""
    return x.unflatten(-1, (h, -1)).transpose(-3, -2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[..., H, T, D/H] -> [..., T, D]"""
    return x.transpose(-3, -2).flatten(-2)


def shared_block(block: nn.Module, prefix: torch.Tensor, rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One ResidualAttentionBlock over ``prefix`` [G, P, D] (shared by the rows of a group) and
    ``rest`` [G, C, R, D] (each row's own positions P..P+R-1), with the block's own weights.
    The prefix attends causally to itself; the rest attends to the whole prefix and causally to
    itself, exactly what each row sees in the full causal pass."""
    attn = block.attn
    h = attn.num_heads
    g, c, r, d = rest.shape
    p = prefix.shape[1]
    qp, kp, vp = F.linear(block.ln_1(prefix), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    qr, kr, vr = F.linear(block.ln_1(rest), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    qp, kp, vp = _heads(qp, h), _heads(kp, h), _heads(vp, h)            # [G, H, P, hd]
    qr, kr, vr = _heads(qr, h), _heads(kr, h), _heads(vr, h)            # [G, C, H, R, hd]
    out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
    keys = torch.cat([kp.unsqueeze(1).expand(g, c, h, p, kp.shape[-1]), kr], dim=-2)
    values = torch.cat([vp.unsqueeze(1).expand(g, c, h, p, vp.shape[-1]), vr], dim=-2)
    row = torch.arange(r, device=rest.device).unsqueeze(1)
    col = torch.arange(p + r, device=rest.device).unsqueeze(0)
    allowed = col <= row + p                                              # [R, P+R]: prefix, then causal
    out_r = F.scaled_dot_product_attention(qr, keys, values, attn_mask=allowed)
    out_w, out_b = attn.out_proj.weight, attn.out_proj.bias
    prefix = prefix + block.ls_1(F.linear(_merge(out_p), out_w, out_b))
    rest = rest + block.ls_1(F.linear(_merge(out_r), out_w, out_b))
    prefix = prefix + block.ls_2(block.mlp(block.ln_2(prefix)))
    rest = rest + block.ls_2(block.mlp(block.ln_2(rest)))
    return prefix, rest


class PromptTextEncoder(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.transformer = clip.transformer
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask.clone(), persistent=False)
        self.truncate = True       # cut sequences after the longest EOT (exact)
        self.share_prefix = True   # encode a declared shared prefix once (exact); False: full pass
        self.shareable = _is_causal(self.attn_mask) and all(_plain_block(b) for b in self.transformer.resblocks)

    @property
    def dtype(self) -> torch.dtype:
        return self.ln_final.weight.dtype

    def forward(self, prompts: torch.Tensor, eot: torch.Tensor,
                deep: Sequence[torch.Tensor | None] | None = None, shared: int = 0,
                groups: int = 1) -> torch.Tensor:
        """prompts: [N, L, D]; eot: [N] int; deep[i]: [n, D] or [N, n, D] inserted before layer i.
        ``shared``: the first ``shared`` positions are one broadcast tensor within each of
        ``groups`` consecutive row groups (see the module docstring); 0 = nothing shared."""
        if shared > 0 and self._can_share(prompts, eot, deep, shared, groups):
            return self._shared_pass(prompts, eot, deep, shared, groups)
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
        return self._project(x[torch.arange(x.shape[0], device=x.device), eot])

    def _can_share(self, prompts, eot, deep, shared: int, groups: int) -> bool:
        if not (self.share_prefix and self.shareable) or groups < 1 or prompts.shape[0] % groups:
            return False
        if deep is not None and any(p is not None and (p.dim() != 2 or p.shape[0] + 1 > shared) for p in deep[1:]):
            return False
        return int(eot.min().item()) >= shared  # every EOT lies after the prefix

    def _shared_pass(self, prompts, eot, deep, shared: int, groups: int) -> torch.Tensor:
        n, length, d = prompts.shape
        c = n // groups
        if self.truncate:
            length = int(eot.max().item()) + 1
        rows = prompts.view(groups, c, prompts.shape[1], d)
        pos = self.positional_embedding.to(self.dtype)
        prefix = rows[:, 0, :shared].to(self.dtype) + pos[:shared]               # [G, P, D]
        rest = rows[:, :, shared:length].to(self.dtype) + pos[shared:length]     # [G, C, R, D]
        for i, block in enumerate(self.transformer.resblocks):
            if deep is not None and 0 < i < len(deep) and deep[i] is not None:
                prefix = _replace_front(prefix, deep[i])
            prefix, rest = shared_block(block, prefix, rest)
        rest = rest.reshape(n, rest.shape[2], d)
        x = rest[torch.arange(n, device=rest.device), eot - shared]
        return self._project(self.ln_final(x))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.text_projection
        if proj is None:
            return x
        if isinstance(proj, nn.Linear):
            return proj(x)
        return x @ proj.to(x.dtype)


def common_prefix(ids: torch.Tensor) -> int:
    """Leading token positions equal in every row of ``ids`` [N, L], capped so that every EOT
    (the row's argmax) stays after it: the ``shared`` a frozen prompt batch can declare."""
    if ids.shape[0] == 0:
        return 0
    same = (ids == ids[:1]).all(dim=0)
    n = int(same.long().cumprod(0).sum().item())
    return min(n, int(ids.argmax(dim=-1).min().item()))

