"""MaPLe — multi-modal prompt learning (Khattak et al., CVPR'23; official
multimodal-prompt-learning trainers/maple.py + clip/model.py ``ResidualAttentionBlock_MaPLe``).

Learned (official names):
- ``ctx`` [n, D_t]: text context at layer 0, the first n (=2) tokens of "a photo of a"; the
  tokenised prompt keeps the whole phrase, so "of a {name}." stays in the frozen suffix;
- ``proj`` Linear(D_t → D_v): the layer-0 vision prompts are ``proj(ctx)``, appended after
  [CLS, patches] + positional embedding, before ``ln_pre``;
- ``compound_prompts_text.j`` [n, D_t] ~ N(0, 0.02²): text prompt of layer j+1 (replaces tokens 1..n);
- ``compound_prompt_projections.j`` Linear(D_t → D_v): vision prompt of layer j+1 (replaces the
  last n tokens); deep copies of ONE initialised layer, so they start identical.
Vision prompts are never free parameters. Under fp16, ``ctx`` and ``proj`` are half and the deep
prompts and their projections stay fp32, as the official code. Depth 9, capped by the towers' layers. One CE.
About 3.55M parameters at ViT-B/16. Base-to-new config ``vit_b16_c2_ep5_batch4_2ctx``: 5 epochs,
batch 4, lr 0.0035; cross-dataset/DG ``…_cross_datasets``: depth 3, 2 epochs, lr 0.0026.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cpbench.errors import UserError
from cpbench.methods.base import Method, Options
from cpbench.methods.deep_prompts import OfficialFloat32, capped_depth, vl_context
from cpbench.methods.prompts import ClassPrompts


@dataclass
class MaPLeOptions(Options):
    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    depth: int = 9


class MaPLe(OfficialFloat32, Method):
    name = "maple"
    Options = MaPLeOptions
    image_prompted = True
    text_prompts = True
    deep_text_prompts = True
    vision_prompts = True
    fp32_prefixes = ("compound_prompts_text", "compound_prompt_projections")  # fp32 under fp16, as official

    def __init__(self, backbone, classnames, options: MaPLeOptions, template="a photo of a {}."):
        super().__init__(backbone, classnames, options, template)
        o = options
        if o.depth < 1:
            raise UserError("MaPLe's depth must be >= 1 (1 = shallow compound prompts)")
        if o.n_ctx < 1:
            raise UserError("MaPLe's n_ctx must be >= 1")
        dt, dv = backbone.text_width, backbone.vision_width
        prefix, ctx = vl_context(backbone, o.ctx_init, o.n_ctx)
        self.proj = nn.Linear(dt, dv)
        self.ctx = nn.Parameter(ctx.to(backbone.dtype))
        self.depth = capped_depth(o.depth, max(backbone.text_layers, backbone.vision_layers))
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.randn(o.n_ctx, dt) * 0.02) for _ in range(self.depth - 1)])
        single = nn.Linear(dt, dv)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single) for _ in range(self.depth - 1)])
        self.prompts = ClassPrompts(backbone, classnames, prefix, o.n_ctx)

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self.prompts.build(self.backbone, classnames)

    def deep_text(self) -> list | None:
        return [None, *self.compound_prompts_text] if len(self.compound_prompts_text) else None

    def image_prompts(self) -> tuple[torch.Tensor, list | None]:
        """(layer-0 vision prompts proj(ctx), [None, F_1(P_1), …] for layers 1..depth-1)."""
        shallow = self.proj(self.ctx.to(self.proj.weight.dtype))
        deep = [layer(p) for layer, p in zip(self.compound_prompt_projections, self.compound_prompts_text)]
        return shallow, ([None, *deep] if deep else None)

    def shared_prefix(self) -> int:
        return self.prompts.shared

    def text_features(self) -> torch.Tensor:
        return self.backbone.text(self.prompts.assemble(self.ctx), self.prompts.eot, deep=self.deep_text(),
                                  shared=self.shared_prefix())

    def encode_images(self, images):
        shallow, deep = self.image_prompts()
        return F.normalize(self.backbone.encode_image(images, prompts=shallow, deep=deep).float(), dim=-1)
