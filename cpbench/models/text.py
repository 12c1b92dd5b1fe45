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
  values (``shared_block``). Those remaining positions are packed without padding (``Packing``)
  for every linear layer, so each row is cut at its own EOT and costs its own length; attention
  (a small share of the work) runs on them padded, in one call.
  ``groups=G`` splits the rows into ``G`` consecutive groups that each share their own prefix
  (CoCoOp and Bayesian PL: one prompt set per image or sample; every group holds the same
  classes). The caller promises that the prefix of every row of a group is the *same tensor
  broadcast* (``expand``), not merely equal values: the gradient reaches the prefix through the
  group's first row only, which is exact for a broadcast and wrong for per-row parameters (CoOp's
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


class Packing:
    """Where each row's own tokens (positions ``P..eot``) sit in a packed ``[T, D]`` tensor without
    padding (rows in order, groups outermost), and in the padded ``[G, C, m, D]`` layout (``m`` =
    the longest row) that attention uses. Padding only ever follows a row's EOT, so under the
    causal mask no real token attends to it: one attention call serves rows of every length."""

    def __init__(self, lengths: list[int], groups: int, shared: int, device: torch.device):
        self.groups, self.classes, self.width, self.shared = groups, len(lengths), max(lengths), shared
        m = self.width
        real = torch.arange(m, device=device).unsqueeze(0) < torch.tensor(lengths, device=device).unsqueeze(1)
        self.slots = real.expand(groups, -1, -1).reshape(-1).nonzero().squeeze(1)   # [T] padded positions
        self.last = torch.tensor(lengths * groups, device=device).cumsum(0) - 1       # each row's EOT in [T]
        row = torch.arange(m, device=device).unsqueeze(1)
        col = torch.arange(shared + m, device=device).unsqueeze(0)
        self.allowed = col <= row + shared     # [m, P+m]: the whole prefix, then causal

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[G, C, m, X] -> [T, X]"""
        return padded.reshape(-1, padded.shape[-1]).index_select(0, self.slots)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """[T, X] -> [G, C, m, X] (zeros after each row's EOT)"""
        flat = packed.new_zeros(self.groups * self.classes * self.width, packed.shape[-1])
        return flat.index_copy(0, self.slots, packed).view(self.groups, self.classes, self.width, -1)

    def last_tokens(self, packed: torch.Tensor) -> torch.Tensor:
        """Each row's EOT token -> [G * C, X] in row order."""
        return packed.index_select(0, self.last)


def shared_block(block: nn.Module, x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """One ResidualAttentionBlock, with the block's own weights, over ``x`` = [G*P + T, D]: the
    prefix of each group (G*P rows) then every row's own positions, packed. Every linear layer
    runs once over all of them; the prefix attends causally to itself, and each row's tokens
    attend to their group's whole prefix and causally to each other, exactly what they see in the
    full causal pass."""
    attn = block.attn
    h = attn.num_heads
    g, p, d = packing.groups, packing.shared, x.shape[-1]
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    qp, kp, vp = (_heads(t, h) for t in qkv[: g * p].view(g, p, 3 * d).chunk(3, dim=-1))   # [G, H, P, hd]
    out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
    q, k, v = (_heads(t, h) for t in packing.unpack(qkv[g * p:]).chunk(3, dim=-1))        # [G, C, H, m, hd]
    shape = (g, q.shape[1], h, p, kp.shape[-1])
    keys = torch.cat([kp.unsqueeze(1).expand(shape), k], dim=-2)
    values = torch.cat([vp.unsqueeze(1).expand(shape), v], dim=-2)
    out_r = F.scaled_dot_product_attention(q, keys, values, attn_mask=packing.allowed)
    out = torch.cat([_merge(out_p).reshape(g * p, d), packing.pack(_merge(out_r))])
    x = x + block.ls_1(F.linear(out, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


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
        lengths = self._share_lengths(prompts, eot, deep, shared, groups) if shared > 0 else None
        if lengths is not None:
            return self._shared_pass(prompts, lengths, deep, shared, groups)
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

    def _share_lengths(self, prompts, eot, deep, shared: int, groups: int) -> list[int] | None:
        """Per-class lengths of the tokens after the prefix (the same in every group), or None
        when the shared pass does not apply (then the full pass runs)."""
        if not (self.share_prefix and self.shareable) or groups < 1 or prompts.shape[0] % groups:
            return None
        if deep is not None and any(p is not None and (p.dim() != 2 or p.shape[0] + 1 > shared) for p in deep[1:]):
            return None
        ends = eot.tolist()
        per_group = len(ends) // groups
        first = ends[:per_group]
        if min(ends) < shared or ends != first * groups:   # an EOT inside the prefix; groups differ
            return None
        return [e - shared + 1 for e in first]

    def _shared_pass(self, prompts, lengths: list[int], deep, shared: int, groups: int) -> torch.Tensor:
        """Prefix once per group; every row's own tokens packed without padding (``Packing``)."""
        n, length, d = prompts.shape
        rows = prompts.view(groups, n // groups, length, d)
        packing = Packing(lengths, groups, shared, prompts.device)
        pos = self.positional_embedding.to(self.dtype)
        end = shared + max(lengths)
        prefix = rows[:, 0, :shared].to(self.dtype) + pos[:shared]                       # [G, P, D]
        rest = packing.pack(rows[:, :, shared:end].to(self.dtype) + pos[shared:end])     # [T, D]
        x = torch.cat([prefix.reshape(-1, d), rest])
        for i, block in enumerate(self.transformer.resblocks):
            if deep is not None and 0 < i < len(deep) and deep[i] is not None:
                prefix = _replace_front(x[: groups * shared].view(groups, shared, d), deep[i])
                x = torch.cat([prefix.reshape(-1, d), x[groups * shared:]])
            x = shared_block(block, x, packing)
        return self._project(self.ln_final(packing.last_tokens(x[groups * shared:])))

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

