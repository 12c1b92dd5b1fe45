"""Prompt-aware text encoder over an open_clip text transformer (every family's text tower but
the Hugging Face models; ``PromptTextEncoder`` says how each is driven).

Input: prompt *embeddings* ``[N, L, D]`` (token embeddings with learned context already put in
place) and the EOT position of each row. Optional deep prompts replace tokens ``start..start+n-1``
(``start`` = 1 after CLIP's start token) at the start of layer ``i >= 1`` (MaPLe / IVLP /
PromptSRC), never accumulating.

Two exact savings, both consequences of a causal mask (they switch themselves off where a tower
has none, or pools elsewhere than at the EOT):

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
prompts, deep prompts reaching past the prefix, CoCa's class token (its padding mask is per row)
and pooling at the last or first token fall back to the full pass.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _replace_front(x: torch.Tensor, prompt: torch.Tensor, start: int = 1) -> torch.Tensor:
    """Tokens ``start .. start + n - 1`` of ``x`` [N, L, D] replaced by ``prompt`` [n, D] or [N, n, D]."""
    n = prompt.shape[-2]
    p = prompt.to(x.dtype)
    if p.dim() == 2:
        p = p.unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :start], p, x[:, start + n:]], dim=1)


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


def text_tower(clip: nn.Module) -> nn.Module | None:
    """The module holding the text transformer: the CLIP itself (OpenAI-style, its text tower
    flattened into it) or its ``text`` (CustomTextCLIP, CoCa); None for a Hugging Face text model."""
    tower = clip if hasattr(clip, "token_embedding") else getattr(clip, "text", None)
    if tower is None or not hasattr(tower, "transformer") or not hasattr(tower, "token_embedding"):
        return None
    return tower


class PromptTextEncoder(nn.Module):
    """``encode_text`` of an open_clip text transformer, on prompt embeddings (module docstring).

    As the tower's own forward: positional embedding; causal mask or none (``no_causal_mask``);
    CoCa's class token appended after the sequence with its own position (the last) and its
    padding mask (open_clip's legacy layout, or ``correct_cls_mask``), pooled and then normed;
    otherwise the final norm and pooling at the EOT (``argmax`` / ``eos``), the last or the first
    token; then the projection (a matrix, a linear layer with bias, or none). Learned context and
    deep prompts replace tokens ``start ..`` (the first word's position: 1 after CLIP's start
    token, 0 for SigLIP's SentencePiece). Cutting sequences after the longest EOT needs a causal
    mask and pooling at the EOT or CoCa's class token (which also sees the token after each EOT);
    the shared prefix needs a causal mask, EOT pooling and open_clip's plain block. Elsewhere the
    encoder runs the full sequence: a bidirectional tower's prefix is not shared, its padding is
    read by every token."""

    def __init__(self, clip: nn.Module, start: int = 1):
        super().__init__()
        tower = text_tower(clip)
        if tower is None:
            raise ValueError("a Hugging Face text tower has no prompt-aware encoder")
        self.transformer = tower.transformer
        self.positional_embedding = tower.positional_embedding
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        self.cls_emb = getattr(tower, "cls_emb", None)
        mask = getattr(tower, "attn_mask", None)
        self.register_buffer("attn_mask", mask.clone() if mask is not None else None, persistent=False)
        self.pool = "cls" if self.cls_emb is not None else (getattr(tower, "text_pool_type", None)
                                                             or getattr(tower, "pool_type", "argmax"))
        if self.pool not in ("argmax", "eos", "last", "first", "cls"):
            raise ValueError(f"text pooling {self.pool!r} gives no single feature per text")
        self.eos_id = getattr(tower, "text_eos_id", None) if tower is clip else getattr(tower, "eos_id", None)
        self.heads = self.transformer.resblocks[0].attn.num_heads
        self.pad_mask = bool(getattr(tower, "use_pad_mask", False))
        self.correct_cls_mask = bool(getattr(tower, "correct_cls_mask", False))
        self.start = start
        causal = _is_causal(self.attn_mask)
        self.truncate = True       # cut sequences after the longest EOT (where exact)
        self.share_prefix = True   # encode a declared shared prefix once (where exact); False: full pass
        self.cuttable = causal and not self.pad_mask and self.pool in ("argmax", "eos", "cls")
        self.shareable = (causal and not self.pad_mask and self.pool in ("argmax", "eos")
                          and all(_plain_block(b) for b in self.transformer.resblocks))

    @property
    def dtype(self) -> torch.dtype:
        return self.ln_final.weight.dtype

    @property
    def causal(self) -> bool:
        return self.attn_mask is not None

    def forward(self, prompts: torch.Tensor, eot: torch.Tensor,
                deep: Sequence[torch.Tensor | None] | None = None, shared: int = 0,
                groups: int = 1) -> torch.Tensor:
        """prompts: [N, L, D]; eot: [N] int; deep[i]: [n, D] or [N, n, D] inserted before layer i.
        ``shared``: the first ``shared`` positions are one broadcast tensor within each of
        ``groups`` consecutive row groups (see the module docstring); 0 = nothing shared."""
        lengths = self._share_lengths(prompts, eot, deep, shared, groups) if shared > 0 else None
        if lengths is not None:
            return self._shared_pass(prompts, lengths, deep, shared, groups)
        full = prompts.shape[1]
        length = full
        if self.truncate and self.cuttable:
            # CoCa's class token also attends to the token after each EOT (open_clip's legacy mask)
            length = min(full, int(eot.max().item()) + (2 if self.pool == "cls" else 1))
        x = prompts[:, :length].to(self.dtype) + self.positional_embedding[:length].to(self.dtype)
        if self.cls_emb is not None:
            cls = (self.cls_emb.to(self.dtype) + self.positional_embedding[full].to(self.dtype))
            x = torch.cat([x, cls.view(1, 1, -1).expand(x.shape[0], -1, -1)], dim=1)
        mask = self._mask(eot, length, full, x.dtype)
        for i, block in enumerate(self.transformer.resblocks):
            if deep is not None and 0 < i < len(deep) and deep[i] is not None:
                x = _replace_front(x, deep[i], self.start)
            x = block(x, attn_mask=mask)
        if self.pool == "cls":
            return self._project(self.ln_final(x[:, -1]))
        x = self.ln_final(x)
        if self.pool == "first":
            return self._project(x[:, 0])
        if self.pool == "last":
            return self._project(x[:, -1])
        return self._project(x[torch.arange(x.shape[0], device=x.device), eot])

    def _mask(self, eot: torch.Tensor, length: int, full: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The attention mask of ``length`` tokens (+ CoCa's class token), as the tower builds it
        for the full ``full``-token sequence: causal, and for CoCa (or ``use_pad_mask``) the
        padding after each row's EOT masked as keys; [N * heads, T, T] when per row."""
        t = length + (1 if self.cls_emb is not None else 0)
        causal = self.attn_mask[:t, :t].to(dtype) if self.attn_mask is not None else None
        if self.cls_emb is None and not self.pad_mask:
            return causal
        pos = torch.arange(length, device=eot.device).unsqueeze(0)
        e = eot.view(-1, 1)
        if self.cls_emb is None:
            valid = pos <= e
        elif self.correct_cls_mask:   # the class token's own key is always valid
            valid = torch.cat([pos <= e, torch.ones_like(e, dtype=torch.bool)], dim=1)
        else:                          # legacy: the validity of token j-1 decides key j; key 0 always valid
            valid = torch.cat([(pos == 0) | (pos - 1 <= e), e >= full - 1], dim=1)
        add = torch.zeros(valid.shape, dtype=dtype, device=eot.device).masked_fill(~valid, float("-inf"))
        add = add.unsqueeze(1).expand(-1, t, -1)
        if causal is not None:
            add = causal.unsqueeze(0) + add
        return add.repeat_interleave(self.heads, 0)

    def _share_lengths(self, prompts, eot, deep, shared: int, groups: int) -> list[int] | None:
        """Per-class lengths of the tokens after the prefix (the same in every group), or None
        when the shared pass does not apply (then the full pass runs)."""
        if not (self.share_prefix and self.shareable) or groups < 1 or prompts.shape[0] % groups:
            return None
        if deep is not None and any(p is not None and (p.dim() != 2 or self.start + p.shape[0] > shared)
                                    for p in deep[1:]):
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
                prefix = _replace_front(x[: groups * shared].view(groups, shared, d), deep[i], self.start)
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


def common_prefix(ids: torch.Tensor, eot: torch.Tensor | None = None) -> int:
    """Leading token positions equal in every row of ``ids`` [N, L], capped so that every EOT
    (``eot``, default the row's argmax: CLIP's end token) stays after it: the ``shared`` a frozen
    prompt batch can declare."""
    if ids.shape[0] == 0:
        return 0
    same = (ids == ids[:1]).all(dim=0)
    n = int(same.long().cumprod(0).sum().item())
    ends = ids.argmax(dim=-1) if eot is None else eot
    return min(n, int(ends.min().item()))

