"""CoCoOp (Zhou et al., CVPR'22; official KaiyangZhou/CoOp trainers/cocoop.py).

Learned: ``ctx`` [M, D] initialised from "a photo of a" (M = the number of words of the init
phrase; ``n_ctx`` is only used without an init phrase: N(0, 0.02²)), and the meta-net
``meta_net.linear1`` Linear(E → E//16) – ReLU – ``meta_net.linear2`` Linear(E//16 → D) (E = the
image feature width, ``visual.output_dim``; D = the text width; 512→32→512 at ViT-B/16). The
meta-net maps the L2-normalised image feature to a bias added to EVERY context token, so every
image gets its own C class prompts and the text encoder runs on B×C prompts. One CE.

The image encoder is unprompted, so image features stay cacheable (``encode_images`` is the
frozen CLIP one); the per-image class features are computed in ``logits_from_features``, in
chunks of ``eval_chunk`` images to bound memory. Base-to-new config
``vit_b16_c4_ep10_batch1_ctxv1``: 10 epochs, batch 1, lr 0.002.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cpbench.errors import UserError
from cpbench.methods.base import Method, Options
from cpbench.methods.prompts import ClassPrompts, context_words, init_context


@dataclass
class CoCoOpOptions(Options):
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    eval_chunk: int = 8   # images per text-encoder call at evaluation (memory ~ eval_chunk x classes prompts)


class CoCoOp(Method):
    name = "cocoop"
    Options = CoCoOpOptions
    retrieval = True  # captions as class names, instance-conditioned context prepended (CPL's ITR baseline)
    text_prompts = True
    view_store = True

    def __init__(self, backbone, classnames, options: CoCoOpOptions, template="a photo of a {}."):
        super().__init__(backbone, classnames, options, template)
        if options.eval_chunk < 1:
            raise UserError("eval_chunk must be >= 1")
        prefix, n_ctx = context_words(options.ctx_init, options.n_ctx)
        self.n_ctx = n_ctx
        vis_dim, ctx_dim = backbone.embed_dim, backbone.text_width
        hidden = max(1, vis_dim // 16)
        self.ctx = nn.Parameter(init_context(backbone, options.ctx_init, n_ctx).to(backbone.dtype))
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, hidden)),
            ("relu", nn.ReLU()),
            ("linear2", nn.Linear(hidden, ctx_dim)),
        ])).to(backbone.dtype)
        self.prompts = ClassPrompts(backbone, classnames, prefix, n_ctx)

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self.prompts.build(self.backbone, classnames)

    def instance_text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """[B, E] L2-normalised image features -> [B, C, D] L2-normalised per-image class features."""
        p = self.prompts
        bias = self.meta_net(image_features.to(self.ctx.dtype))                  # [B, D]
        ctx = self.ctx.unsqueeze(0) + bias.unsqueeze(1)                           # [B, M, D]
        b, c = ctx.shape[0], p.n_cls
        dtype = p.token_prefix.dtype
        prompts = torch.cat([p.token_prefix.unsqueeze(0).expand(b, -1, -1, -1),
                             ctx.to(dtype).unsqueeze(1).expand(-1, c, -1, -1),
                             p.token_suffix.unsqueeze(0).expand(b, -1, -1, -1)], dim=2)
        feats = self.backbone.text(prompts.reshape(b * c, *prompts.shape[2:]), p.eot.repeat(b), shared=p.shared, groups=b)
        return F.normalize(feats.float(), dim=-1).view(b, c, -1)

    def _logits(self, image_features: torch.Tensor) -> torch.Tensor:
        f = image_features.float()
        return self.backbone.logit_scale.float() * torch.einsum("bd,bcd->bc", f, self.instance_text_features(f))

    def eval_context(self) -> Any:
        return None  # frozen prefix/suffix are buffers; text features depend on each image

    def logits_from_features(self, image_features, context):
        n = self.options.eval_chunk
        return torch.cat([self._logits(image_features[i: i + n]) for i in range(0, image_features.shape[0], n)], dim=0)

    def forward_train(self, images, labels):
        return self.forward_train_features(self.encode_images(images), labels)

    def forward_train_features(self, features, labels):
        logits = self._logits(features)
        return logits, {"ce": F.cross_entropy(logits, labels)}
