"""Issue 18 (Faithfulness II): one test per audit item, each failing on the code before the fix
(the commit messages say how that was checked). Tiny random backbone, no data, no downloads."""

from __future__ import annotations

import json
import math
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cpbench.errors import UserError

NAMES = ["golden retriever", "tabby_cat", "airliner", "red fox", "sports car"]


def images(n=4, seed=0, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def perturb(t: torch.Tensor, seed: int, scale: float = 0.05) -> None:
    with torch.no_grad():
        t.add_(scale * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed)).to(t.dtype))


# ============================================================================ 2. BPL on class subsets
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


# ============================================================================ 3. LAMM rows by index
def test_lamm_duplicated_class_names_keep_one_learned_row_each(tiny_backbone):
    """ImageNet repeats names ("missile" 657/744): a name-keyed row map gave both classes one row
    and orphaned the other. Rows go by class index in the training list."""
    from cpbench.methods.lamm import CoOpLAMM, CoOpLAMMOptions

    names = ["missile", "tabby_cat", "missile", "red fox"]
    m = CoOpLAMM(tiny_backbone, names, CoOpLAMMOptions(ctx_init="a photo of a"))
    assert m.label_row.tolist() == [0, 1, 2, 3]
    s, e = 1 + m.n_ctx, 1 + m.n_ctx + m.label_len
    with torch.no_grad():
        before = m.learned_prompts(m.context()).clone()
        assert torch.equal(before[0], before[2])                  # same name, same initial rows
        m.token_classes[0].add_(0.5)                              # train class 0's row only
        m.token_classes[2].sub_(0.5)                              # and class 2's the other way
        after = m.learned_prompts(m.context())
    assert torch.equal(after[0, s:e], m.token_classes[0].detach())    # class 0 uses row 0
    assert torch.equal(after[2, s:e], m.token_classes[2].detach())    # class 2 uses row 2
    assert torch.equal(after[1], before[1]) and torch.equal(after[3], before[3])
    m.set_classnames(["missile", "red fox"])                      # another list: no learned rows
    assert m.label_row.tolist() == [-1, -1]


# ============================================================================ 8. BPL eval_resample
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


