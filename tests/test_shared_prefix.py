"""The shared-prefix text pass (``cpbench.models.text``) equals the full causal pass: forward
features, loss terms and the gradient of every learnable parameter, for every method family that
declares a shared prefix, to 1e-5 relative in fp32; and the shared pass is really taken."""

from __future__ import annotations

import contextlib

import pytest
import torch

import cpbench.models.text as text_mod
from cpbench.methods.bpl import BPLOptions, CoCoOpVPT, CoOpVPT
from cpbench.methods.cocoop import CoCoOp, CoCoOpOptions
from cpbench.methods.coop import CoOp, CoOpOptions
from cpbench.methods.cpl import CPL, CPLOptions
from cpbench.methods.ivlp import IVLP, IVLPOptions
from cpbench.methods.kgcoop import KgCoOp, KgCoOpOptions
from cpbench.methods.lamm import CoOpLAMM, CoOpLAMMOptions, LAMM, LAMMOptions, MaPLeLAMM, MaPLeLAMMOptions
from cpbench.methods.maple import MaPLe, MaPLeOptions
from cpbench.methods.pre import PRE, PREOptions
from cpbench.methods.promptsrc import PromptSRC, PromptSRCOptions
from cpbench.models.text import common_prefix

NAMES = ["golden retriever", "tabby_cat", "airliner", "red fox", "sports car", "great white shark"]
RTOL = 1e-5


@contextlib.contextmanager
def counting_shared_blocks():
    """Count shared_block calls (proof that the shared pass ran)."""
    calls = []
    original = text_mod.shared_block

    def counted(*args):
        calls.append(1)
        return original(*args)

    text_mod.shared_block = counted
    try:
        yield calls
    finally:
        text_mod.shared_block = original


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def run(method, images, labels, share: bool, seed: int = 7):
    """(text features or None, loss terms, grads) with the shared pass on or off."""
    bb = method.backbone
    bb.text.share_prefix = share
    try:
        method.zero_grad(set_to_none=True)
        torch.manual_seed(seed)          # BPL samples its noise in forward
        _, terms = method.forward_train(images, labels)
        sum(terms.values()).backward()
        grads = {n: p.grad.detach().clone() for n, p in method.named_parameters()
                 if p.requires_grad and p.grad is not None}
        with torch.no_grad():
            torch.manual_seed(seed)
            logits = method(images)
        return logits, {k: v.detach() for k, v in terms.items()}, grads
    finally:
        bb.text.share_prefix = True


def perturb_all(method, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))


def check_equal(method, n_images=3, size=32):
    x = torch.randn(n_images, 3, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([i % len(method.classnames) for i in range(n_images)])
    perturb_all(method)
    with counting_shared_blocks() as calls:
        l1, t1, g1 = run(method, x, y, share=True)
    assert calls, "the shared-prefix pass was not taken"
    with counting_shared_blocks() as none:
        l0, t0, g0 = run(method, x, y, share=False)
    assert not none
    assert rel(l1, l0) < RTOL, ("logits", rel(l1, l0))
    assert sorted(t1) == sorted(t0)
    for k in t0:
        assert rel(t1[k], t0[k]) < RTOL or float((t1[k] - t0[k]).abs()) < 1e-7, (k, float(t1[k]), float(t0[k]))
    assert sorted(g1) == sorted(g0) and g0
    for n in g0:
        assert rel(g1[n], g0[n]) < RTOL, (n, rel(g1[n], g0[n]))


FAMILIES = {
    "coop_16ctx": lambda bb: CoOp(bb, NAMES, CoOpOptions(ctx_init="", n_ctx=16)),
    "coop_a_photo_of_a": lambda bb: CoOp(bb, NAMES, CoOpOptions(ctx_init="a photo of a")),
    "kgcoop": lambda bb: KgCoOp(bb, NAMES, KgCoOpOptions()),
    "pre": lambda bb: PRE(bb, NAMES, PREOptions()),
    "coop_lamm": lambda bb: CoOpLAMM(bb, NAMES, CoOpLAMMOptions(ctx_init="a photo of a")),
    "lamm": lambda bb: LAMM(bb, NAMES, LAMMOptions()),
    "cocoop": lambda bb: CoCoOp(bb, NAMES, CoCoOpOptions()),
    "coopvpt": lambda bb: CoOpVPT(bb, NAMES, BPLOptions(mc_samples=3)),
    "cocoopvpt": lambda bb: CoCoOpVPT(bb, NAMES, BPLOptions(mc_samples=3)),
    "maple": lambda bb: MaPLe(bb, NAMES, MaPLeOptions(depth=9)),
    "maple_lamm": lambda bb: MaPLeLAMM(bb, NAMES, MaPLeLAMMOptions(depth=9)),
    "ivlp": lambda bb: IVLP(bb, NAMES, IVLPOptions(n_ctx_text=4, depth_text=9, depth_vision=9)),
    "promptsrc": lambda bb: PromptSRC(bb, NAMES, PromptSRCOptions()),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_shared_prefix_equals_full_pass(deep_backbone, family):
    torch.manual_seed(3)
    check_equal(FAMILIES[family](deep_backbone))


def test_cpl_shared_prefix_equals_full_pass(deep_backbone):
    torch.manual_seed(3)
    m = CPL(deep_backbone, NAMES, CPLOptions())
    m.set_negative_features(torch.randn(len(NAMES), deep_backbone.embed_dim, generator=torch.Generator().manual_seed(4)))
    check_equal(m)


def test_class_specific_or_moved_context_declares_no_shared_prefix(deep_backbone):
    assert CoOp(deep_backbone, NAMES, CoOpOptions(ctx_init="", n_ctx=4, csc=True)).shared_prefix() == 0
    for pos in ("middle", "front"):
        assert CoOp(deep_backbone, NAMES, CoOpOptions(ctx_init="", n_ctx=4, class_token_position=pos)).shared_prefix() == 0
    m = CoOpLAMM(deep_backbone, NAMES, CoOpLAMMOptions(ctx_init="a photo of a"))
    assert m.shared_prefix() == 1 + m.n_ctx          # the label rows start right after the context
    assert CoOp(deep_backbone, NAMES, CoOpOptions(ctx_init="a photo of a")).shared_prefix() == 5


def test_common_prefix_stops_before_every_eot(deep_backbone):
    ids = deep_backbone.tokenize(["a photo of a dog.", "a photo of a cat.", "a photo of a red fox."])
    assert common_prefix(ids) == 5
    one = deep_backbone.tokenize(["a photo of a dog."])
    assert common_prefix(one) == int(one.argmax(-1)[0])     # one row: everything up to its EOT
    assert common_prefix(ids[:0]) == 0


def test_encoder_groups_deep_prompts_and_fallbacks(deep_backbone):
    """Direct encoder check: two groups with their own broadcast prefix, deep prompts, truncation
    off and on; per-row deep prompts and a prefix reaching an EOT fall back to the full pass."""
    bb = deep_backbone
    enc = bb.text
    ids = bb.tokenize([f"X X X {n}." for n in NAMES])
    emb = bb.token_embedding(ids).detach()
    eot = ids.argmax(-1)
    ctx = torch.randn(2, 3, bb.text_width, requires_grad=True)   # one context per group
    deep = [None, torch.randn(3, bb.text_width, requires_grad=True), torch.randn(2, bb.text_width, requires_grad=True)]
    c = len(NAMES)

    def prompts():
        g = torch.cat([emb[:, :1].unsqueeze(0).expand(2, -1, -1, -1), ctx.unsqueeze(1).expand(-1, c, -1, -1),
                       emb[:, 4:].unsqueeze(0).expand(2, -1, -1, -1)], dim=2)
        return g.reshape(2 * c, *g.shape[2:])

    def features_and_grads(shared, truncate=True, layer_deep=deep):
        enc.truncate = truncate
        try:
            f = enc(prompts(), eot.repeat(2), deep=layer_deep, shared=shared, groups=2)
            params = [ctx] + [p for p in layer_deep[1:] if p is not None]
            grads = torch.autograd.grad(f.pow(2).sum() + f.sum(), params)
            return f.detach(), grads
        finally:
            enc.truncate = True

    full, gfull = features_and_grads(0)
    for truncate in (True, False):
        with counting_shared_blocks() as calls:
            f, g = features_and_grads(4, truncate)
        assert len(calls) == bb.text_layers
        assert rel(f, full) < RTOL
        assert all(rel(a, b) < RTOL for a, b in zip(g, gfull))
    # the two groups really differ (a per-group prefix, not one for all rows)
    assert rel(full[:c], full[c:]) > 1e-3
    # per-row deep prompts, deep prompts past the prefix, or a prefix reaching an EOT: full pass
    per_row = [None, torch.randn(2 * c, 3, bb.text_width), None]
    with counting_shared_blocks() as calls:
        enc(prompts(), eot.repeat(2), deep=per_row, shared=4, groups=2)
        enc(prompts(), eot.repeat(2), deep=[None, torch.randn(4, bb.text_width)], shared=4, groups=2)
        enc(prompts(), eot.repeat(2), shared=int(eot.min()) + 1, groups=2)
        enc(prompts(), torch.cat([eot, eot.flip(0)]), shared=4, groups=2)   # groups with other classes' lengths
    assert not calls


def test_zero_shot_text_equals_open_clip(deep_backbone):
    """encode_text declares the template's common prefix; features still equal open_clip's."""
    bb = deep_backbone
    texts = [f"a photo of a {n}." for n in NAMES]
    with torch.no_grad(), counting_shared_blocks() as calls:
        ours = bb.encode_text(texts)
        ref = bb.clip.encode_text(bb.tokenize(texts))
    assert calls
    assert rel(ours, ref) < RTOL
