"""Tip-Adapter (cpbench/methods/tip_adapter.py): its search is ``search_hp`` (its grid, β outer / α
inner, the first strict best); its cache state loads whatever the number of training images; it
refuses other classes (the official numbers: test_golden_tip_adapter.py)."""

from __future__ import annotations

import pytest
import torch

from cpbench.errors import UserError
from methodutils import NAMES, images


def test_search_hp_grid_order_and_first_strict_best():
    from cpbench.methods.tip_adapter import TipAdapterOptions, grid, search_hp

    assert grid(7, 200)[:2] == [0.1, 0.1 + 6.9 / 200] and len(grid(3, 20)) == 20 and grid(3, 20)[-1] < 3
    o = TipAdapterOptions(search_scale_beta=2, search_step_beta=4, search_scale_alpha=2, search_step_alpha=4)
    # 3 validation images, 2 classes; the CLIP logits get image 2 wrong, the cache gets it right
    clip = torch.tensor([[5.0, 0.0], [0.0, 5.0], [3.0, 2.9]])
    values = torch.eye(2)
    affinity = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    beta, alpha, acc = search_hp(affinity, clip, values, labels, o)
    # by hand: every (β, α) in β-outer / α-inner order; the first that gets all 3 right
    betas, alphas = grid(2, 4), grid(2, 4)
    first = next((b, a) for b in betas for a in alphas
                 if int(((clip + ((-1) * (b - b * affinity)).exp() @ values * a).argmax(1) == labels).sum()) == 3)
    assert (beta, alpha) == first and acc == 100.0 and first != (betas[0], alphas[0])
    # nothing beats accuracy 0 (cache and CLIP agree, both wrong): (0, 0), as the official search
    wrong = search_hp(torch.eye(2), torch.tensor([[5.0, 0.0], [0.0, 5.0]]), values, torch.tensor([1, 0]), o)
    assert wrong == (0.0, 0.0, 0.0)


def test_tip_adapter_state_fits_any_cache_size_and_refuses_other_classes(tiny_backbone):
    from cpbench.state import export
    from cpbench.methods.tip_adapter import TipAdapter, TipAdapterOptions
    from cpbench.methods.tip_adapter_f import TipAdapterF, TipAdapterFOptions

    m = TipAdapter(tiny_backbone, NAMES, TipAdapterOptions())
    with torch.no_grad():
        m.set_cache(tiny_backbone.encode_image(images(7)).float(), torch.tensor([0, 1, 2, 3, 4, 0, 1]))
    state = m.learned_state()
    assert state["cache_keys"].shape == (7, tiny_backbone.embed_dim) and state["cache_values"].shape == (7, 5)
    fresh = TipAdapter(tiny_backbone, NAMES, TipAdapterOptions())
    fresh.load_learned_state(export.fitting_state(state, fresh, "x"))
    x = images(3, seed=5)
    assert torch.equal(fresh(x), m(x))
    f = TipAdapterF(tiny_backbone, NAMES, TipAdapterFOptions())
    f.load_learned_state({**state, "adapter.weight": state["cache_keys"] * 2})
    assert f.adapter.weight.shape == (7, tiny_backbone.embed_dim) and f.adapter.weight.requires_grad
    assert f.n_learnable() == 7 * tiny_backbone.embed_dim and m.n_learnable() == 0
    with pytest.raises(UserError, match="only scores the classes its cache was built from"):
        m.set_classnames(["tree frog"])
    for protocol in ("base2new", "cross_dataset"):
        assert "few_shot" in TipAdapter.unsupported(protocol, m.options)
    assert not TipAdapter.unsupported("dg", m.options) and TipAdapter.unsupported("continual", m.options)
    with pytest.raises(UserError, match="no cache"):
        TipAdapter(tiny_backbone, NAMES, TipAdapterOptions())(x)
