"""Evaluating a subset of the training classes (DG: ImageNet -> A/R; cpbench/protocols/gather.py):
methods whose class logits are independent keep the source bank's columns; Bayesian PL, whose
output averages a softmax over samples, is rebuilt on the target's classes as the official code does."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from methodutils import NAMES, images, perturb


class _DS:
    def __init__(self, name):
        self.name = name


def test_bpl_subset_evaluation_equals_an_explicit_rebuild_on_the_target_classes(tiny_backbone):
    """DG ImageNet -> A/R: BPL's output is a softmax average over MC samples, so the gather of the
    target's columns from the 1000-way output is not the official 200-way evaluation; the scorer
    must be the method rebuilt on the target's classes (equal to a method built on them)."""
    from cpbench.methods.bpl import BPLOptions, CoOpVPT
    from cpbench.protocols.gather import GatherColumns, gather_columns, scorer_for

    source = NAMES + ["tree frog", "canoe", "bagel"]
    target = ["red fox", "golden retriever", "canoe"]
    opts = BPLOptions(mc_samples=4)
    m = CoOpVPT(tiny_backbone, source, opts)
    perturb(m.ctx, 1, 0.3)
    with torch.no_grad():
        m.mean_posterior.fill_(0.2)
        m.std_posterior.fill_(math.log(0.5))
    m.eval()
    f = F.normalize(tiny_backbone.encode_image(images(6)).float(), dim=-1)

    def scores(scorer):
        torch.manual_seed(7)
        with torch.no_grad():
            return scorer.logits_from_features(f, scorer.eval_context())

    scorer = scorer_for(m, True, _DS("src"), _DS("tgt"), source, target)
    got = scores(scorer)
    explicit = CoOpVPT(tiny_backbone, target, opts)
    explicit.load_learned_state(m.learned_state())
    explicit.eval()
    ref = scores(explicit)
    assert got.shape == (6, 3)
    assert torch.allclose(got, ref, atol=1e-6)
    assert torch.allclose(got.exp().sum(-1), torch.ones(6), atol=1e-5)      # a 3-way distribution
    # the column gather (what every target used before) is a different number for L > 1
    m.set_classnames(source)
    gathered = scores(GatherColumns(m, gather_columns(source, target, "tgt")))
    assert (gathered - ref).abs().max() > 1e-3


def test_methods_with_per_class_independent_logits_still_gather(tiny_backbone):
    from cpbench.methods.coop import CoOp, CoOpOptions
    from cpbench.protocols.gather import GatherColumns, scorer_for

    m = CoOp(tiny_backbone, NAMES, CoOpOptions(ctx_init="a photo of a"))
    s = scorer_for(m, True, _DS("src"), _DS("tgt"), NAMES, ["airliner", "tabby_cat"])
    assert isinstance(s, GatherColumns) and m.classnames == NAMES
    assert scorer_for(m, True, _DS("src"), _DS("tgt"), NAMES, NAMES) is m
