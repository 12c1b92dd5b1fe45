"""Linear-probe CLIP (cpbench/methods/linear_probe.py): lpclip's C search and predictions as
scikit-learn gives them, and base-to-new plans the base classes only."""

from __future__ import annotations

import math

import pytest
import torch

from cpbench.errors import UserError
from methodutils import NAMES


def test_linear_probe_search_and_prediction_follow_sklearn(tiny_backbone):
    from sklearn.linear_model import LogisticRegression

    from cpbench.methods.linear_probe import LinearProbe, LinearProbeOptions, search_c

    g = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(3, tiny_backbone.embed_dim, generator=g)
    x = torch.cat([centers[c] + torch.randn(6, tiny_backbone.embed_dim, generator=g) for c in range(3)])
    y = torch.arange(3).repeat_interleave(6)
    xv = torch.cat([centers[c] + torch.randn(2, tiny_backbone.embed_dim, generator=g) for c in range(3)])
    yv = torch.arange(3).repeat_interleave(2)
    lp = LinearProbe(tiny_backbone, NAMES[:3], LinearProbeOptions(search_steps=2))
    lp.fit_features(x, y, xv, yv)
    _, c, log = search_c(x.double().numpy(), y.numpy(), xv.double().numpy(), yv.numpy(), steps=2)
    assert [round(v, 12) for v, _ in log[:7]] == [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6] and len(log) == 7 + 2 * 2
    assert math.isclose(float(lp.c_reg), c, rel_tol=1e-6) and float(lp.c_search) == 1.0
    ref = LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(x.double().numpy(), y.numpy())
    xt = torch.randn(20, tiny_backbone.embed_dim, generator=g) + centers[torch.arange(20) % 3]
    assert torch.equal(lp.logits_from_features(xt, None).argmax(-1), torch.from_numpy(ref.predict(xt.double().numpy())))
    assert lp.n_learnable() == 3 * (tiny_backbone.embed_dim + 1)
    with pytest.raises(UserError, match="new classes"):
        lp.set_classnames(["tree frog", "canoe", "red fox"])


def test_linear_probe_base2new_plans_base_only():
    from cpbench.protocols import base2new

    assert [t.subset for t in base2new.plan("linear_probe", ["caltech101"], [1])[0].targets] == ["base"]
    assert [t.subset for t in base2new.plan("cocoop", ["caltech101"], [1])[0].targets] == ["base", "new"]
