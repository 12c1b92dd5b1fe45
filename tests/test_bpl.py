"""Bayesian prompt learning (cpbench/methods/bpl.py: coopvpt, cocoopvpt): a zero mean with a
vanishing variance is CoOp / CoCoOp, the conditional posterior is per image, the loss terms by hand,
and test-time resampling (the official numbers: test_golden_bpl.py; class subsets: test_gather.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cpbench.methods.bpl import BPLOptions, CoCoOpVPT, CoOpVPT, kl_to_standard_normal, mc_log_mean_prob, mc_nll
from cpbench.methods.coop import CoOp, CoOpOptions
from methodutils import NAMES, images, perturb


def _deterministic(m):
    """μ = 0 (or μ(x) = 0 via the mean head's last layer) and σ → 0 (log-variance −200)."""
    with torch.no_grad():
        if m.conditional:
            last_mu = m.meta_net.weight_mean.module[-1]
            last_mu.weight.zero_(), last_mu.bias.zero_()
            last_lv = m.meta_net.weight_log_variance.module[-1]
            last_lv.weight.zero_(), last_lv.bias.fill_(-200.0)
        else:
            m.mean_posterior.zero_()
            m.std_posterior.fill_(-200.0)


def test_bpl_with_zero_mean_and_vanishing_variance_equals_coop(tiny_backbone):
    coop = CoOp(tiny_backbone, NAMES, CoOpOptions(ctx_init="a photo of a"))
    perturb(coop.ctx, 4)
    m = CoOpVPT(tiny_backbone, NAMES, BPLOptions(mc_samples=3))
    _deterministic(m)
    with torch.no_grad():
        m.ctx.copy_(coop.ctx)
    x, y = images(4), torch.tensor([0, 1, 2, 2])
    ref = coop(x)
    assert torch.allclose(m(x), torch.log_softmax(ref, -1), atol=1e-5)
    _, terms = m.forward_train(x, y)
    assert math.isclose(float(terms["nll"].detach()), float(F.cross_entropy(ref, y).detach()), rel_tol=1e-5)


def test_conditional_bpl_with_zero_mean_and_vanishing_variance_equals_cocoop_form(tiny_backbone):
    """μ(x) = 0, σ → 0: each image's prompts are ctx + 0 -> plain CoOp logits; with μ(x) = π(x)
    (the mean head) and σ → 0 it is CoCoOp's ctx + π(x) per image."""
    bb = tiny_backbone
    m = CoCoOpVPT(bb, NAMES, BPLOptions(mc_samples=2))
    perturb(m.ctx, 5)
    x, y = images(3), torch.tensor([0, 4, 1])
    with torch.no_grad():
        last_lv = m.meta_net.weight_log_variance.module[-1]
        last_lv.weight.zero_(), last_lv.bias.fill_(-200.0)
        f = F.normalize(bb.encode_image(x).float(), dim=-1)
        pi = m.meta_net.weight_mean(f)
        rows = []
        for b in range(3):  # CoCoOp: ctx + π(x_b) for every class, the image's own text features
            p = m.prompts.assemble(m.ctx + pi[b])
            t = F.normalize(bb.text(p, m.prompts.eot).float(), dim=-1)
            rows.append(bb.logit_scale.float() * f[b] @ t.t())
        ref = torch.stack(rows)
        assert torch.allclose(m(x), torch.log_softmax(ref, -1), atol=1e-4)
        _, terms = m.forward_train(x, y)
        assert math.isclose(float(terms["nll"]), float(F.cross_entropy(ref, y)), rel_tol=1e-4)
        _deterministic(m)
        coop = CoOp(bb, NAMES, CoOpOptions(ctx_init="a photo of a"))
        coop.ctx.copy_(m.ctx)
        assert torch.allclose(m(x), torch.log_softmax(coop(x), -1), atol=1e-5)


def test_conditional_bpl_batch_is_per_image(tiny_backbone):
    """Batch > 1 equals running each image alone with its own slice of the noise."""
    m = CoCoOpVPT(tiny_backbone, NAMES, BPLOptions(mc_samples=3))
    x, y = images(3, seed=9), torch.tensor([0, 1, 2])
    eps = torch.randn(3, 3, tiny_backbone.text_width, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        m.fixed_eps = eps
        batched, terms = m.forward_train(x, y)
        singles, nll, kl = [], 0.0, 0.0
        for b in range(3):
            m.fixed_eps = eps[:, b: b + 1]
            out, t = m.forward_train(x[b: b + 1], y[b: b + 1])
            singles.append(out)
            nll += float(t["nll"]) / 3
            kl += float(t["kl"]) / 3
    assert torch.allclose(batched, torch.cat(singles), atol=1e-5)
    assert math.isclose(float(terms["nll"]), nll, rel_tol=1e-5) and math.isclose(float(terms["kl"]), kl, rel_tol=1e-5)


def test_bpl_loss_terms_equal_hand_computation():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]],
                           [[1.0, 1.0, 1.0], [-1.0, 2.0, 0.0]]])  # [L=2, B=2, C=3]
    y = torch.tensor([0, 1])
    p = torch.softmax(logits, -1)
    hand = -sum(math.log(float(p[0, b, y[b]] + p[1, b, y[b]]) / 2) for b in range(2)) / 2
    assert math.isclose(float(mc_nll(logits, y)), hand, rel_tol=1e-6)
    assert torch.allclose(mc_log_mean_prob(logits), torch.log(p.mean(0)), atol=1e-6)
    mu, lv = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.5, -0.2]])
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, lv.exp().sqrt()),
                                            torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(kl_to_standard_normal(mu, lv), ref, atol=1e-6)
    hand_kl = sum(0.5 * (math.exp(l) + m * m - 1 - l) for m, l in [(0.3, 0.5), (-1.0, -0.2)]) / 2
    assert math.isclose(float(kl_to_standard_normal(mu, lv).mean()), hand_kl, rel_tol=1e-6)


def test_bpl_std_posterior_is_the_log_variance(tiny_backbone):
    m = CoOpVPT(tiny_backbone, NAMES, BPLOptions(mc_samples=4))
    with torch.no_grad():
        m.mean_posterior.fill_(0.1), m.std_posterior.fill_(math.log(0.25))  # variance 0.25 -> σ 0.5
    eps = torch.randn(4, 1, tiny_backbone.text_width)
    m.fixed_eps = eps
    r = m.sample(m.mean_posterior, m.std_posterior)
    assert torch.allclose(r, 0.1 + 0.5 * eps, atol=1e-6)
    assert 0.0 <= float(CoOpVPT(tiny_backbone, NAMES, BPLOptions()).std_posterior.min().detach())  # U[0,1) init


def test_bpl_eval_resample_draws_fresh_noise(tiny_backbone):
    m = CoOpVPT(tiny_backbone, NAMES, BPLOptions(mc_samples=2, eval_resample=True))
    m.eval()
    f = F.normalize(tiny_backbone.encode_image(images(2)).float(), dim=-1)
    with torch.no_grad():
        ctx = m.eval_context()
        assert ctx is None
        a, b = m.logits_from_features(f, ctx), m.logits_from_features(f, ctx)
        assert not torch.allclose(a, b)          # fresh noise per call
        m.options.eval_resample = False
        c = m.eval_context()
        assert torch.equal(m.logits_from_features(f, c), m.logits_from_features(f, c))


def test_bpl_eval_resample_draws_fresh_samples_per_image(tiny_backbone):
    """The official test batch size is 1: L fresh samples for every image. Two copies of one image
    in one batch get different noise, and the batch equals scoring the images one at a time."""
    from cpbench.methods.bpl import BPLOptions, CoOpVPT

    m = CoOpVPT(tiny_backbone, NAMES, BPLOptions(mc_samples=3, eval_resample=True))
    with torch.no_grad():
        m.std_posterior.fill_(0.0)
    m.eval()
    f = F.normalize(tiny_backbone.encode_image(images(1)).float(), dim=-1).repeat(2, 1)
    with torch.no_grad():
        torch.manual_seed(0)
        both = m.logits_from_features(f, m.eval_context())
        torch.manual_seed(0)
        one_by_one = torch.cat([m.logits_from_features(f[i: i + 1], None) for i in range(2)])
    assert not torch.allclose(both[0], both[1], atol=1e-4)
    assert torch.allclose(both, one_by_one, atol=1e-6)


def test_conditional_bpl_with_cocoop_mean_head_and_vanishing_variance_equals_cocoop(tiny_backbone):
    """μ(x) = CoCoOp's meta-net π(x) (module swapped in for the mean head), σ → 0: the
    conditional posterior's log-mean-prob output is log_softmax of CoCoOp's logits."""
    import copy

    from cpbench.methods.cocoop import CoCoOp, CoCoOpOptions

    torch.manual_seed(4)
    ref = CoCoOp(tiny_backbone, NAMES, CoCoOpOptions())
    perturb(ref.ctx, 15)
    perturb(ref.meta_net.linear2.weight, 16, 0.5)
    m = CoCoOpVPT(tiny_backbone, NAMES, BPLOptions(mc_samples=3))
    with torch.no_grad():
        m.ctx.copy_(ref.ctx)
        m.meta_net.weight_mean = copy.deepcopy(ref.meta_net)
        last_lv = m.meta_net.weight_log_variance.module[-1]
        last_lv.weight.zero_(), last_lv.bias.fill_(-200.0)
        x, y = images(3), torch.tensor([1, 0, 4])
        z = ref(x)
        assert torch.allclose(m(x), torch.log_softmax(z, -1), atol=1e-5)
        _, terms = m.forward_train(x, y)
        assert math.isclose(float(terms["nll"]), float(F.cross_entropy(z, y)), rel_tol=1e-5)
