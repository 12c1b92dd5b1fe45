"""CoOp (Zhou et al., IJCV'22): learnable context vectors in place of the prompt words.

Base-to-new default (CoCoOp paper's ``vit_b16_ctxv1``): 4 tokens initialised from
"a photo of a", class token at the end, shared context, cross-entropy only.
Options: ``n_ctx`` (used when ``ctx_init`` is empty: random N(0, 0.02²) init), ``csc``
(class-specific context) and ``class_token_position`` (end | middle | front), as the official code.

Deviation (deliberate): with ``csc`` the protocols that score other classes than the trained ones
(base2new, cross_dataset, continual, retrieval) are refused before training. The official code
would rebuild the prompt learner on the new names and load the checkpoint whenever the class
counts match (Caltech101's 50 base / 50 new), lending trained class i's context to new class i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cpbench.errors import UserError
from cpbench.methods.base import Method, Options
from cpbench.methods.prompts import ClassPrompts, context_words, init_context


@dataclass
class CoOpOptions(Options):
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    csc: bool = False
    class_token_position: str = "end"


class CoOp(Method):
    name = "coop"
    Options = CoOpOptions
    feature_training = True
    view_store = True
    text_prompts = True
    text_classifier = True
    retrieval = True  # captions as class names, learned context prepended

    @classmethod
    def takes_new_classes(cls, options) -> bool:
        return super().takes_new_classes(options) and not options.csc  # one context per trained class

    @classmethod
    def unsupported(cls, protocol, options):
        # base2new and cross_dataset rebuild prompts from other class names: a class-specific context
        # has no row for them (with equal class counts it would silently lend class i's context to
        # another class i). dg keeps the source's classes (gathered for ImageNet-A/R), so it can run.
        if protocol in ("continual", "retrieval", "base2new", "cross_dataset") and getattr(options, "csc", False):
            return (f"{cls.name} with a class-specific context (csc) cannot run --protocol {protocol}: each class "
                    "has its own context, so nothing learned carries over to new classes; use csc=false "
                    "(or --protocol few_shot / dg, which evaluate the trained classes)")
        return super().unsupported(protocol, options)

    def __init__(self, backbone, classnames, options: CoOpOptions, template="a photo of a {}."):
        super().__init__(backbone, classnames, options, template)
        if options.class_token_position not in ("end", "middle", "front"):
            raise UserError("class_token_position must be end, middle or front")
        prefix, n_ctx = context_words(options.ctx_init, options.n_ctx)
        self.n_ctx = n_ctx
        ctx = init_context(backbone, options.ctx_init, n_ctx)
        if options.csc:
            ctx = ctx.unsqueeze(0).repeat(len(classnames), 1, 1)
        self.ctx = nn.Parameter(ctx.to(backbone.dtype))
        self.prompts = ClassPrompts(backbone, classnames, prefix, n_ctx)

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        if self.options.csc and len(classnames) != self.ctx.shape[0]:
            raise UserError("a class-specific context (csc) cannot be moved to other classes; gather its rows instead")
        self.prompts.build(self.backbone, classnames)

    def context(self) -> torch.Tensor:
        return self.ctx

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        pos = self.options.class_token_position
        p = self.prompts
        if pos == "end":
            return p.assemble(ctx)
        c = p.n_cls
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(c, -1, -1)
        ctx = ctx.to(p.token_prefix.dtype)
        rows = []
        half = self.n_ctx // 2
        for i, n in enumerate(p.name_lens):
            pre, suf = p.token_prefix[i: i + 1], p.token_suffix[i: i + 1]
            name, rest = suf[:, :n], suf[:, n:]
            if pos == "middle":
                rows.append(torch.cat([pre, ctx[i: i + 1, :half], name, ctx[i: i + 1, half:], rest], dim=1))
            else:
                rows.append(torch.cat([pre, name, ctx[i: i + 1], rest], dim=1))
        return torch.cat(rows, dim=0)

    def eot(self) -> torch.Tensor:
        return self.prompts.eot

    def shared_prefix(self) -> int:
        """Leading prompt positions the text encoder may encode once for all classes: none for a
        class-specific context or a class token that is not at the end."""
        return self.prompts.shared if not self.options.csc and self.options.class_token_position == "end" else 0

    def text_features(self) -> torch.Tensor:
        return self.backbone.text(self.assemble(self.context()), self.prompts.eot, shared=self.shared_prefix())
