"""Frozen token pieces of "[SOS] <n context slots> <rest of prompt>. [EOS]" per class.

The learnable context replaces the embeddings of tokens ``s..s+n_ctx-1``, ``s`` = the backbone's
``text_start`` (1 after CLIP's start token; 0 for a tokenizer without one, as SigLIP's
SentencePiece); everything else (the start token, the class name, the full stop, EOT and
padding) stays a frozen buffer — CoOp's ``token_prefix`` / ``token_suffix``. The end of each
prompt (``eot``) is where the backbone's text tower pools (``Backbone.eot``). ``prefix_text`` is
the init phrase ("a photo of a") or "X X X X"; when ``n_ctx`` is smaller than its word count
(MaPLe's 2 of "a photo of a") the remaining words stay in the frozen suffix, as in the official
code. ``check_context_slots`` refuses a tokenizer that would put the context over other tokens.

``shared`` is the number of leading positions that every class's prompt has in common when the
context is one tensor broadcast to all classes: the start token, the context slots, and any
further identical frozen tokens (the rest of the init phrase, a common first word of the names).
Methods pass it to the text encoder (``shared=``), which then encodes that prefix once
(``cpbench.models.text``); a class-specific context must pass 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cpbench.errors import UserError
from cpbench.methods.base import clean
from cpbench.models.backbone import Backbone
from cpbench.models.text import common_prefix


@torch.no_grad()
def template_features(backbone: Backbone, template: str, classnames: list[str]) -> torch.Tensor:
    """Frozen (unnormalised, float) text features of the hand-crafted prompt ``template`` around
    each class name: the teacher of KgCoOp and ProGrad, CLIP-Adapter's classifier."""
    return backbone.encode_text([template.format(clean(c)) for c in classnames]).float()


class TemplateTeacher:
    """For a prompt method (a ``Method`` subclass that lists this first): ``teacher_features()``,
    the normalised frozen features of its hand-crafted prompt (``options.template``, else the
    dataset's template) for every class, computed once per class set on first use (the subclass
    registers a non-persistent ``teacher`` buffer; ``set_classnames`` clears it). KgCoOp's and
    ProGrad's teacher."""

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self.teacher = torch.zeros(0, device=self.teacher.device)

    @torch.no_grad()
    def teacher_features(self) -> torch.Tensor:
        if self.teacher.numel() == 0:
            t = self.options.template or self.template
            self.teacher = F.normalize(template_features(self.backbone, t, self.classnames), dim=-1)
        return self.teacher


def init_context(backbone: Backbone, ctx_init: str, n_ctx: int, width: int | None = None,
                 std: float = 0.02) -> torch.Tensor:
    """Context vectors from the init phrase's token embeddings, or N(0, std²) without one."""
    width = width or backbone.text_width
    if ctx_init:
        ids = backbone.tokenize([ctx_init])
        s = backbone.text_start
        with torch.no_grad():
            emb = backbone.token_embedding(ids)[0, s: s + n_ctx].float().clone()
        return emb
    return torch.randn(n_ctx, width) * std


def context_words(ctx_init: str, n_ctx: int) -> tuple[str, int]:
    """(prefix text, n learnable tokens) the CoOp way: n_ctx = number of words of the init phrase."""
    if ctx_init:
        words = ctx_init.replace("_", " ").strip()
        return words, len(words.split(" "))
    return " ".join(["X"] * n_ctx), n_ctx


def check_context_slots(backbone: Backbone, ids: torch.Tensor, prefix_text: str, n_ctx: int) -> None:
    """The context slots are the tokens of ``prefix_text``: its first ``n_ctx`` tokens sit at
    positions ``start..`` of every prompt (a tokenizer that splits a context word into pieces, or
    merges it with the class name, would put the learned context over other tokens)."""
    if not n_ctx:
        return
    own = backbone.tokenizer.encode(prefix_text)
    if set(prefix_text.split(" ")) == {"X"} and len(own) != n_ctx:   # CoOp's placeholders: one token each
        raise UserError(f"this backbone's tokenizer splits the context placeholder 'X' into several tokens, so "
                        f"{n_ctx} learned vectors would not replace {n_ctx} placeholders; set ctx_init to a phrase "
                        "(such as 'a photo of a')")
    own = own[:n_ctx]
    s = backbone.text_start
    if len(own) < n_ctx or any(row[s: s + n_ctx] != own for row in ids.tolist()):
        raise UserError(f"this backbone's tokenizer does not turn the context phrase {prefix_text!r} into {n_ctx} "
                        f"tokens in front of every class name; set ctx_init to a phrase of at least {n_ctx} words "
                        "(or n_ctx to the number of its tokens)")


class ClassPrompts(nn.Module):
    def __init__(self, backbone: Backbone, classnames: list[str], prefix_text: str, n_ctx: int):
        super().__init__()
        self.n_ctx = n_ctx
        self.prefix_text = prefix_text
        self.build(backbone, classnames)

    def build(self, backbone: Backbone, classnames: list[str]) -> None:
        texts = [f"{self.prefix_text} {clean(c)}." if self.prefix_text else f"{clean(c)}." for c in classnames]
        ids = backbone.tokenize(texts)
        s = backbone.text_start
        check_context_slots(backbone, ids, self.prefix_text, self.n_ctx)
        with torch.no_grad():
            emb = backbone.token_embedding(ids)
        eot = backbone.eot(ids)
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("token_prefix", emb[:, :s].clone(), persistent=False)
        self.register_buffer("token_suffix", emb[:, s + self.n_ctx:].clone(), persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self.shared = common_prefix(ids, eot)
        self.name_lens = [backbone.n_tokens(clean(c)) for c in classnames]

    @property
    def n_cls(self) -> int:
        return self.ids.shape[0]

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """ctx: [n, D] shared, or [C, n, D] class-specific -> prompts [C, L, D]."""
        c = self.n_cls
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(c, -1, -1)
        dtype = self.token_prefix.dtype
        return torch.cat([self.token_prefix, ctx.to(dtype), self.token_suffix], dim=1)
