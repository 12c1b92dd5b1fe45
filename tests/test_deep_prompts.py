"""Deep prompts (IVLP, MaPLe; cpbench/methods/deep_prompts.py): depth 1 reduces to CLIP / to each
other, every prompted layer's tokens are exactly its prompt, and under fp16 the prompts the official
code keeps in fp32 stay fp32 (the official numbers: test_golden_ivlp.py, test_golden_maple.py)."""

from __future__ import annotations

import pytest
import torch

from cpbench.methods.ivlp import IVLP, IVLPOptions
from cpbench.methods.maple import MaPLe, MaPLeOptions
from cpbench.methods.promptsrc import PromptSRC, PromptSRCOptions
from cpbench.methods.zeroshot import ZeroShotCLIP, ZeroShotOptions
from methodutils import NAMES, images, perturb


def test_ivlp_depth1_without_prompts_equals_zero_shot_clip(tiny_backbone):
    zs = ZeroShotCLIP(tiny_backbone, NAMES, ZeroShotOptions(template="a photo of a {}."))
    x = images(3)
    for n_text in (4, 0):   # ctx initialised from "a photo of a" / no text context at all
        m = IVLP(tiny_backbone, NAMES, IVLPOptions(n_ctx_text=n_text, n_ctx_vision=0, depth_text=1, depth_vision=0))
        assert m.VPT is None and m.deep_text is None and m.deep_vision is None
        assert torch.allclose(m(x), zs(x), atol=1e-4)


def test_maple_depth1_text_side_is_clip_and_it_is_ivlp_with_coupled_vision_prompts(tiny_backbone):
    bb = tiny_backbone
    m = MaPLe(bb, NAMES, MaPLeOptions(depth=1))
    assert len(m.compound_prompts_text) == 0
    clip_text = bb.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    assert torch.allclose(m.text_features(), clip_text, atol=1e-5)   # "a photo" learnable, "of a {name}." frozen
    iv = IVLP(bb, NAMES, IVLPOptions(n_ctx_text=2, n_ctx_vision=2, depth_text=1, depth_vision=1))
    perturb(m.ctx, 3)
    with torch.no_grad():
        iv.ctx.copy_(m.ctx)
        iv.VPT.copy_(m.proj(m.ctx))
    x = images(3)
    assert torch.allclose(m(x), iv(x), atol=1e-5)


def test_maple_parameters_and_identical_projection_init(tiny_backbone):
    m = MaPLe(tiny_backbone, NAMES, MaPLeOptions(depth=9))
    assert m.depth == 2 and len(m.compound_prompts_text) == 1          # capped by the 2 layers
    bb = tiny_backbone
    m4 = MaPLe(bb, NAMES, MaPLeOptions(depth=9))
    names = {n for n, p in m4.named_parameters() if p.requires_grad}
    assert {"ctx", "proj.weight", "compound_prompts_text.0", "compound_prompt_projections.0.weight"} <= names


def _record_block_inputs(blocks):
    seen, handles = [], []
    for i, blk in enumerate(blocks):
        handles.append(blk.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: seen.append((i, args[0].detach().clone())), with_kwargs=True))
    return seen, handles


@pytest.mark.parametrize("kind", ["ivlp", "maple"])
def test_deep_prompts_replace_tokens_at_every_prompted_layer(deep_backbone, kind):
    bb = deep_backbone
    if kind == "ivlp":
        m = IVLP(bb, NAMES, IVLPOptions(n_ctx_text=2, n_ctx_vision=3, depth_text=9, depth_vision=9))
        n_t, n_v = 2, 3
        text_deep = list(m.deep_text)
        vis_shallow, vis_deep = m.VPT, list(m.deep_vision)
    else:
        m = MaPLe(bb, NAMES, MaPLeOptions(n_ctx=2, depth=9))
        for j, p in enumerate(m.compound_prompt_projections):
            perturb(p.weight, 10 + j, 0.3)
        n_t = n_v = 2
        text_deep = list(m.compound_prompts_text)
        vis_shallow, vd = m.image_prompts()
        vis_deep = vd[1:]
    assert len(text_deep) == 3 and len(vis_deep) == 3        # depth 9 capped at 4 layers: layers 1..3
    x = images(2)
    seen_t, ht = _record_block_inputs(bb.clip.transformer.resblocks)
    seen_v, hv = _record_block_inputs(bb.clip.visual.transformer.resblocks)
    bb.text.share_prefix = False  # the full pass calls the blocks (the shared pass equals it: test_shared_prefix)
    try:
        with torch.no_grad():
            m(x)
    finally:
        bb.text.share_prefix = True
        for h in ht + hv:
            h.remove()
    n_tok_t = {t.shape[1] for _, t in seen_t}
    n_tok_v = {t.shape[1] for _, t in seen_v}
    grid = (32 // 8) ** 2
    assert n_tok_v == {1 + grid + n_v} and len(n_tok_t) == 1          # the token count never grows
    for i, t in seen_t:
        if i >= 1:   # text tokens 1..n are exactly the layer's prompt (no positional embedding, no sum)
            assert torch.equal(t[:, 1: 1 + n_t], text_deep[i - 1].detach().expand(t.shape[0], -1, -1))
    for i, v in seen_v:
        if i >= 1:   # the last n vision tokens are exactly the layer's prompt
            assert torch.allclose(v[:, -n_v:], vis_deep[i - 1].detach().expand(v.shape[0], -1, -1), atol=1e-6)
    # every deep prompt matters: changing the one of layer 3 (last prompted) changes the logits
    before = m(x).detach()
    perturb(text_deep[2], 5, 0.5)
    assert not torch.allclose(m(x), before, atol=1e-4)


def test_fp16_keeps_the_official_fp32_prompts():
    """Under PREC=fp16 the official code keeps IVLP's VPT/VPT_shallow and MaPLe's deep prompts and
    projections in fp32 (ctx, MaPLe's proj half); PromptSRC's teacher comes from an fp32 tower."""
    from cpbench.models.backbone import load_backbone

    bb = load_backbone("tiny", "none").half()
    src = PromptSRC(bb, NAMES[:2], PromptSRCOptions()).half()
    dt = {n: t.dtype for n, t in src.learned_state().items()}
    assert dt["ctx"] == dt["gpa_ctx"] == torch.float16
    assert {dt[k] for k in ("VPT", "deep_text", "deep_vision", "gpa_VPT", "gpa_deep_vision")} == {torch.float32}
    mp = MaPLe(bb, NAMES[:2], MaPLeOptions()).half()
    assert mp.ctx.dtype == mp.proj.weight.dtype == torch.float16
    assert mp.compound_prompts_text[0].dtype == mp.compound_prompt_projections[0].weight.dtype == torch.float32
    x = images(2).half()
    _, terms = src.forward_train(x, torch.tensor([0, 1]))
    sum(terms.values()).backward()
    assert src.VPT.grad.dtype == torch.float32 and src.ctx.grad.dtype == torch.float16
    assert src.fixed_embeddings.dtype == torch.float32 and all(torch.isfinite(v) for v in terms.values())
