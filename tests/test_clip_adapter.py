"""CLIP-Adapter (cpbench/methods/clip_adapter.py): on normalised features it gives the logits and
gradients of raw features, which lets it use the exact test-feature cache (the official numbers:
test_golden_clip_adapter.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from methodutils import NAMES, images


def test_clip_adapter_is_scale_invariant_so_the_normalised_cache_is_exact(tiny_backbone):
    from cpbench.methods.clip_adapter import CLIPAdapter, CLIPAdapterOptions, blend

    torch.manual_seed(0)
    m = CLIPAdapter(tiny_backbone, NAMES, CLIPAdapterOptions())
    with torch.no_grad():
        raw = tiny_backbone.encode_image(images(4)).float()
    ctx = m.eval_context()
    for scale in (1.0, 37.0):   # raw features (the official input) at two scales vs normalised ones
        a = m.logits_from_features(raw * scale, ctx)
        b = m.logits_from_features(F.normalize(raw, dim=-1), ctx)
        assert torch.allclose(a, b, atol=1e-5)
    y = torch.tensor([0, 1, 2, 3])
    grads = []
    for feats in (raw, F.normalize(raw, dim=-1)):
        m.zero_grad(set_to_none=True)
        _, t = m.forward_train_features(feats, y)
        t["ce"].backward()
        grads.append([p.grad.clone() for p in m.adapter.parameters()])
    for g1, g2 in zip(*grads):
        assert torch.allclose(g1, g2, atol=1e-6 * float(g1.abs().max()) + 1e-9)
    # the final ReLU of the official adapter: its output is never negative
    assert float(m.adapter(raw).detach().min()) >= 0 and blend(m.adapter, raw, 0.2).shape == raw.shape
    assert m.n_learnable() == 2 * tiny_backbone.embed_dim * (tiny_backbone.embed_dim // 4)
