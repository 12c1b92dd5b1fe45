"""cpbench's prompt-aware encoders == the official IVLP code (multimodal-prompt-learning 69bce21)
on the golden random CLIP, at 2 and 9 layers (prompt depth 9).

This pins the shared foundation that MaPLe, IVLP and PromptSRC stand on: text context replacing
tokens 1..n, vision prompts appended after the positional embedding and before ``ln_pre``, deep
prompts replacing text tokens 1..n / the last n vision tokens at layers 1..depth-1. It uses a
minimal IVLP written here on ``Backbone.text`` / ``Backbone.encode_image`` (not cpbench's IVLP
method, which has its own golden test), so that a failing method test can be told apart from a
failing encoder. It also shows the harness's ``Slot`` for stacked per-layer prompts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, Slot, assert_close, compare_grads, compare_logits,
                          compare_losses, eval_logits, golden_backbone, golden_inputs, load_case, official_losses,
                          set_learnables, train_step)

from cpbench.methods.base import clean


class _MiniIVLP(nn.Module):
    def __init__(self, backbone, classnames, n_ctx=2, depth=9):
        super().__init__()
        self.backbone = backbone
        depth = min(depth, backbone.text_layers, backbone.vision_layers)
        self.ctx = nn.Parameter(torch.zeros(n_ctx, backbone.text_width))
        self.vpt = nn.Parameter(torch.zeros(n_ctx, backbone.vision_width))
        self.deep_text = nn.Parameter(torch.zeros(depth - 1, n_ctx, backbone.text_width))
        self.deep_vision = nn.Parameter(torch.zeros(depth - 1, n_ctx, backbone.vision_width))
        ids = backbone.tokenize([f"a photo of a {clean(c)}." for c in classnames])   # "of a" stays frozen
        with torch.no_grad():
            emb = backbone.token_embedding(ids)
        self.register_buffer("prefix", emb[:, :1].clone())
        self.register_buffer("suffix", emb[:, 1 + n_ctx:].clone())
        self.register_buffer("eot", ids.argmax(-1))

    def forward(self, images):
        c = self.prefix.shape[0]
        prompts = torch.cat([self.prefix, self.ctx.unsqueeze(0).expand(c, -1, -1), self.suffix], dim=1)
        text = self.backbone.text(prompts, self.eot, deep=[None, *self.deep_text])
        img = self.backbone.encode_image(images, prompts=self.vpt, deep=[None, *self.deep_vision])
        return self.backbone.logit_scale * F.normalize(img, dim=-1) @ F.normalize(text, dim=-1).t()

    def forward_train(self, images, labels):
        logits = self(images)
        return logits, {"ce": F.cross_entropy(logits, labels)}


def _name_map(depth):
    m = {"prompt_learner.ctx": "ctx", "image_encoder.VPT": "vpt"}
    for k in range(1, depth):
        m[f"text_encoder.transformer.resblocks.{k}.VPT_shallow"] = Slot("deep_text", k - 1)
        m[f"image_encoder.transformer.resblocks.{k}.VPT_shallow"] = Slot("deep_vision", k - 1)
    return m


@pytest.mark.parametrize("name", ["ivlp_L2", "ivlp_L9"])
def test_prompt_encoders_match_official_ivlp(name):
    case = load_case(name)
    images, labels, classnames = golden_inputs(case)
    model = _MiniIVLP(golden_backbone(case), classnames)
    name_map = _name_map(case.weights["text_layers"])
    set_learnables(model, case, name_map)
    assert_close(compare_logits(eval_logits(model, images, case), case), LOGIT_ATOL, "eval logits")
    terms = train_step(model, images, labels, case)
    assert_close(compare_losses(terms, {"ce": official_losses(case)["ce"]}, case), LOSS_RTOL, "loss terms")
    assert_close(compare_grads(model, case, name_map), GRAD_RTOL, "gradients")


def test_harness_detects_a_wrong_layer():
    """The comparison is sharp: moving one deep prompt to the wrong layer is caught."""
    case = load_case("ivlp_L9")
    images, _, classnames = golden_inputs(case)
    model = _MiniIVLP(golden_backbone(case), classnames)
    name_map = _name_map(9)
    name_map["text_encoder.transformer.resblocks.3.VPT_shallow"] = Slot("deep_text", 3)   # layer 4's slot
    name_map["text_encoder.transformer.resblocks.4.VPT_shallow"] = Slot("deep_text", 2)
    set_learnables(model, case, name_map)
    assert compare_logits(eval_logits(model, images, case), case)["logits"] > 10 * LOGIT_ATOL
