"""Independent vision-language prompting (IVLP; PromptSRC's baseline; official
multimodal-prompt-learning trainers/independentVL.py + clip/model.py ``ResidualAttentionBlock_IVLP``).

Learned, no coupling between the branches:
- ``ctx`` [n_t, D_t]: text context at layer 0 (MaPLe/IVLP init rule, see ``deep_prompts``);
- ``VPT`` [n_v, D_v]: vision prompts appended after [CLS, patches] + positional embedding,
  before ``ln_pre`` (official ``image_encoder.VPT``);
- ``deep_text`` [depth_text-1, n_t, D_t] and ``deep_vision`` [depth_vision-1, n_v, D_v]: the
  per-layer prompts of layers 1..depth-1 (official
  ``{text,image}_encoder.transformer.resblocks.k.VPT_shallow`` = row k-1), replacing text tokens
  1..n_t / the last n_v vision tokens. All N(0, 0.02²) except an initialised ``ctx``.
``depth_vision = 0`` (or ``n_ctx_vision = 0``) means no vision prompts at all, as the official code.
Under fp16 ``ctx`` is half and the vision/deep prompts stay fp32, as the official code. One CE. At ViT-B/16 with 4+4 tokens and depth 9/9: 9·4·512 + 9·4·768 = 46,080 parameters.
Config (PromptSRC repo ``IVLP/vit_b16_c2_ep20_batch4_4+4ctx``): 20 epochs, batch 4, lr 0.0025.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cpbench.errors import UserError
from cpbench.methods.base import Method, Options
from cpbench.methods.deep_prompts import OfficialFloat32, capped_depth, deep_list, deep_stack, vl_context
from cpbench.methods.prompts import ClassPrompts


@dataclass
class IVLPOptions(Options):
    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    ctx_init: str = "a photo of a"
    depth_text: int = 9
    depth_vision: int = 9


class IVLP(OfficialFloat32, Method):
    name = "ivlp"
    Options = IVLPOptions
    image_prompted = True
    text_prompts = True
    deep_text_prompts = True
    vision_prompts = True
    fp32_prefixes = ("VPT", "deep_text", "deep_vision")   # official VPT / VPT_shallow: fp32 under fp16

    def __init__(self, backbone, classnames, options: IVLPOptions, template="a photo of a {}."):
        super().__init__(backbone, classnames, options, template)
        o = options
        if o.depth_text < 1:
            raise UserError("depth_text must be >= 1 (independent V-L prompting always prompts the text branch)")
        if o.n_ctx_text < 0 or o.n_ctx_vision < 0 or o.depth_vision < 0:
            raise UserError("n_ctx_text, n_ctx_vision and depth_vision must be >= 0")
        prefix, ctx = vl_context(backbone, o.ctx_init, o.n_ctx_text)
        self.ctx = nn.Parameter(ctx.to(backbone.dtype))
        self.depth_text = capped_depth(o.depth_text, backbone.text_layers)
        self.depth_vision = capped_depth(o.depth_vision, backbone.vision_layers) if o.n_ctx_vision else 0
        self.deep_text = deep_stack(self.depth_text, o.n_ctx_text, backbone.text_width)
        if self.depth_vision >= 1:
            self.VPT = nn.Parameter(torch.randn(o.n_ctx_vision, backbone.vision_width) * 0.02)
        else:
            self.register_parameter("VPT", None)
        self.deep_vision = deep_stack(self.depth_vision, o.n_ctx_vision, backbone.vision_width)
        self.prompts = ClassPrompts(backbone, classnames, prefix, o.n_ctx_text)

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self.prompts.build(self.backbone, classnames)

    def text_features(self) -> torch.Tensor:
        return self.backbone.text(self.prompts.assemble(self.ctx), self.prompts.eot, deep=deep_list(self.deep_text),
                                  shared=self.prompts.shared)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Prompted, unnormalised image features."""
        return self.backbone.encode_image(images, prompts=self.VPT, deep=deep_list(self.deep_vision))

    def encode_images(self, images):
        return F.normalize(self.image_features(images).float(), dim=-1)
