"""Deep-prompt machinery shared by MaPLe, IVLP and PromptSRC (multimodal-prompt-learning / PromptSRC).

Official rules reproduced here (golden README "MaPLe and IVLP"):
- text context: ``ctx_init and n_ctx <= 4`` -> the first ``n_ctx`` token embeddings of the init
  phrase, while the tokenised prompt keeps the WHOLE phrase ("a photo of a {name}."), so with
  n_ctx=2 "of a {name}." stays in the frozen suffix; otherwise N(0, 0.02²) and "X X … X";
- deep prompts (N(0, 0.02²)) exist for layers 1..depth-1 only and REPLACE the running tokens
  (text: positions 1..n; vision: the last n) at the start of their layer; a prompt depth larger
  than the tower is capped by its number of layers (the official code creates IVLP prompts only
  for existing blocks; extra MaPLe prompts would get no gradient).
The insertion itself lives in the backbone encoders (``deep[i]`` applies before layer i >= 1).
"""

from __future__ import annotations

import torch
from torch import nn

from cpbench.methods.prompts import init_context
from cpbench.models.backbone import Backbone


def vl_context(backbone: Backbone, ctx_init: str, n_ctx: int) -> tuple[str, torch.Tensor]:
    """(prompt prefix text, initial context [n_ctx, D]) by the MaPLe/IVLP/PromptSRC rule."""
    if n_ctx < 0:
        raise ValueError("n_ctx must be >= 0")
    if ctx_init and n_ctx <= 4:
        words = ctx_init.replace("_", " ").strip()
        return words, init_context(backbone, words, n_ctx)
    return " ".join(["X"] * n_ctx), torch.randn(n_ctx, backbone.text_width) * 0.02


def capped_depth(depth: int, layers: int) -> int:
    """Prompt depth actually used: layers 0..depth-1 of a tower with ``layers`` blocks."""
    return max(0, min(int(depth), int(layers)))


def deep_stack(depth: int, n_ctx: int, width: int) -> nn.Parameter | None:
    """Stacked deep prompts for layers 1..depth-1: [depth-1, n_ctx, width] ~ N(0, 0.02²), or None."""
    if depth <= 1 or n_ctx == 0:
        return None
    return nn.Parameter(torch.randn(depth - 1, n_ctx, width) * 0.02)


def deep_list(stack: torch.Tensor | None) -> list | None:
    """Encoder ``deep`` argument: [None (layer 0), prompt of layer 1, …]."""
    if stack is None:
        return None
    return [None, *stack.unbind(0)]


class OfficialFloat32:
    """Mixin: parameters (and their buffers) that the official code keeps in fp32 even under
    ``PREC=fp16``, where cpbench casts the whole method to half. In multimodal-prompt-learning /
    PromptSRC, ``convert_weights`` halves only Linear/Conv/attention weights and ``proj`` /
    ``text_projection``, and the prompt learner halves ``ctx`` (token-embedding dtype) and
    MaPLe's ``proj``; IVLP's ``VPT`` / ``VPT_shallow`` and MaPLe's ``compound_prompts_text`` /
    ``compound_prompt_projections`` are created in fp32 and stay so (their SGD updates are
    fp32; the encoders cast them to the activation dtype, as the official ``.half()`` calls)."""

    fp32_prefixes: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.fp32_prefixes:
            for n, t in [*self.named_parameters(), *self.named_buffers()]:
                if n.startswith(self.fp32_prefixes) and t.is_floating_point() and t.dtype != torch.float32:
                    t.data = t.data.float()
        return out
