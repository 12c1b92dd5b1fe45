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

from test_methods_ii import NAMES, images, perturb  # noqa: E402  (the shared tiny-backbone helpers)


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


# ============================================================================ 4. CPL's mask u
def test_cpl_mask_stays_fp32_under_fp16_and_moves(tiny_backbone):
    """The official u is an fp32 parameter; cast to fp16 its ~1e-5-scale updates round away and it
    stays exactly 1. It also needs the clamp subgradient 1 at the bound (the official PyTorch's):
    u starts at 1, where 0.999·1 + 0.001·1 = 1."""
    import copy

    from cpbench.methods.cpl import CPL, CPLOptions, mupdate

    bb = copy.deepcopy(tiny_backbone).half()
    m = CPL(bb, NAMES, CPLOptions()).to(torch.float16)
    assert m.u.dtype == torch.float32 and m.ctx.dtype == torch.float16
    m.set_negative_features(torch.randn(len(NAMES), bb.embed_dim, generator=torch.Generator().manual_seed(1)))
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.002, momentum=0.9)
    x, y = images(2, seed=3).half(), torch.tensor([0, 3])
    u0 = m.u.detach().clone()
    for _ in range(3):
        _, terms = m.forward_train(x, y)
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
    moved = (m.u.detach() != u0)
    assert bool(moved.any())
    assert float((m.u.detach() - u0).abs().max()) < 1e-4                 # tiny steps ...
    assert torch.equal((u0.half() - (m.u.detach() - u0).abs().max().half()), u0.half())  # ... below fp16's ulp at 1
    # the subgradient at the bound: gradient 1 on [0, 1] (old PyTorch's clamp), 0 outside
    u = torch.ones(3, requires_grad=True)
    mupdate(torch.tensor([1.0, -1.0, 1.0]), u, 0.999).sum().backward()
    assert u.grad.tolist() == pytest.approx([0.001, 0.0, 0.001])


# ============================================================================ 5. PRE separate
def test_pre_separate_encoders_are_frozen_seeded_and_not_learned_state(tiny_backbone):
    from cpbench.methods.pre import PRE, PREOptions

    a = PRE(tiny_backbone, NAMES, PREOptions(separate=True))
    torch.manual_seed(123)   # the global RNG does not matter: the encoders have their own seed
    b = PRE(tiny_backbone, NAMES, PREOptions(separate=True))
    c = PRE(tiny_backbone, NAMES, PREOptions(separate=True, separate_seed=1))
    assert len(a.encoder_network) == a.ctx.shape[0]
    assert not any(p.requires_grad for p in a.encoder_network.parameters())
    assert a.n_learnable() == a.ctx.numel()                      # only ctx learns, as the official code
    assert set(a.learned_state()) == {"ctx"}
    for (n, p), q in zip(a.encoder_network.named_parameters(), b.encoder_network.parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(next(a.encoder_network.parameters()), next(c.encoder_network.parameters()))
    perturb(a.ctx, 2)
    b.load_learned_state(a.learned_state())                     # resume / evaluation: same encoders
    assert torch.equal(a.context(), b.context())


# ============================================================================ 6. CPL's counterfactual choices
def _official_cfgen(x, nx, u, y):
    """The official cfgen + the loss loop's zip (row 0), for batch 1 (shapes as the code)."""
    xp = (1 - u[:, y]) * x + u[:, y] * nx     # [E, 1] * [1, E] -> [E, E]
    xp = xp / xp.norm(dim=-1, keepdim=True)
    return xp[0]


def test_cpl_official_mixing_is_the_batch1_broadcast_row_zero():
    from cpbench.methods.cpl import counterfactual

    g = torch.Generator().manual_seed(4)
    e, c = 8, 3
    x = F.normalize(torch.randn(1, e, generator=g), dim=-1)
    nx = F.normalize(torch.randn(1, e, generator=g), dim=-1)
    for first in (1.0, 0.0):
        ub = torch.rand(e, generator=g)
        ub[0] = first
        u = torch.rand(e, c, generator=g)
        y = torch.tensor([1])
        u[:, 1] = ub
        off = counterfactual(x, nx, ub.unsqueeze(0), "official")[0]
        assert torch.allclose(off, _official_cfgen(x, nx, u, y), atol=1e-6)
        paper = counterfactual(x, nx, ub.unsqueeze(0), "paper")[0]
        assert torch.allclose(paper, F.normalize((1 - ub) * x[0] + ub * nx[0], dim=0), atol=1e-6)
    assert torch.allclose(counterfactual(x, nx, torch.zeros(1, e), "official"), x)   # u[0] = 0: v' = v


def test_cpl_official_edit_rule_takes_the_last_dimension_without_a_positive_logit():
    from cpbench.methods.cpl import greedy_mask

    # every candidate negative logit is <= 0 at the first step: the official get_next_edit returns
    # -1 and the LAST dimension is swapped (and stays a candidate); argmax takes dimension 1
    v = torch.tensor([[3.0, -1.0, 0.0, 0.0]])
    vn = torch.tensor([[0.0, -0.5, 0.0, 2.0]])
    tp, tn = torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    # (hand-computed: every step's best negative logit stays < 0, so the official rule swaps dim 3
    # at every one of the E steps; argmax takes 1, 3, 2, 0 and never flips either)
    assert greedy_mask(v, vn, tp, tn, edit_rule="official").tolist() == [[False, False, False, True]]
    assert greedy_mask(v, vn, tp, tn).tolist() == [[True, True, True, True]]
    # with a positive best logit both rules agree (the fixture of test_methods_ii)
    v2, vn2 = torch.tensor([[3.0, 0.0, 0.5, 0.0]]), torch.tensor([[0.0, 2.0, 0.0, 1.0]])
    assert torch.equal(greedy_mask(v2, vn2, tp, tn, edit_rule="official"), greedy_mask(v2, vn2, tp, tn))


def test_cpl_class_target_mask_is_fixed_per_class(tiny_backbone):
    from cpbench.methods.cpl import CPL, CPLOptions

    m = CPL(tiny_backbone, NAMES, CPLOptions(target_mask="class"))
    g = torch.Generator().manual_seed(6)
    m.set_negative_features(torch.randn(5, tiny_backbone.embed_dim, generator=g),
                            torch.randn(5, tiny_backbone.embed_dim, generator=g))
    y = torch.tensor([2, 2])
    views = torch.randn(2, tiny_backbone.embed_dim, generator=g)
    fixed = m.target_mask(views, y)
    assert torch.equal(fixed[0], fixed[1]) and torch.equal(fixed[0], m.class_ustar[2])
    per_view = CPL(tiny_backbone, NAMES, CPLOptions())
    per_view.set_negative_features(m.neg_raw)
    assert not torch.equal(per_view.target_mask(views, y)[0], per_view.target_mask(views, y)[1])
    with pytest.raises(UserError, match="cf_mix"):
        CPL(tiny_backbone, NAMES, CPLOptions(cf_mix="outer"))


# ============================================================================ 7. CPL negatives
def test_cpl_negatives_from_a_json_map_and_the_official_score_npy(tiny_backbone, tmp_path):
    from cpbench.methods.cpl import CPL, CPLOptions

    wanted = {"golden retriever": "red fox", "tabby_cat": "golden retriever", "airliner": "sports car",
              "red fox": "tabby_cat", "sports car": "airliner"}
    expect = [3, 0, 4, 1, 2]
    (tmp_path / "neg.json").write_text(json.dumps(wanted))
    np.save(tmp_path / "score.npy", wanted)                       # how the official init_score_dict saves it
    # the same dict as numpy 1 pickled it (numpy.core.multiarray), as released files would be
    arr = np.empty((), dtype=object)
    arr[()] = wanted
    body = pickle.dumps(arr, protocol=3).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    with open(tmp_path / "score_np1.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        fh.write(body)
    scores = torch.eye(5) + 0.5 * torch.tensor(expect).unsqueeze(1).eq(torch.arange(5)).float()
    np.save(tmp_path / "matrix.npy", scores.numpy())              # a C x C score matrix: 2nd best per row
    for f in ("neg.json", "score.npy", "score_np1.npy", "matrix.npy"):
        m = CPL(tiny_backbone, NAMES, CPLOptions(negatives=str(tmp_path / f)))
        assert m.neg_class.tolist() == expect, f


def test_cpl_score_npy_never_unpickles_code(tiny_backbone, tmp_path):
    from cpbench.methods.cpl import CPL, CPLOptions

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(Evil(), fh, protocol=2)
    m = CPL(tiny_backbone, NAMES, CPLOptions(negatives=str(tmp_path / "evil.npy")))
    with pytest.raises(UserError, match="refusing global .*print"):
        m.neg_class


def test_cpl_bertscore_negatives_are_the_official_second_best(tiny_backbone, monkeypatch):
    """negatives: bertscore calls bert_score.score like the official init_score_dict (every name as
    candidate against every name as reference, lang en) and keeps each row's second best."""
    from cpbench.methods.cpl import CPL, CPLOptions

    calls = []

    def fake_score(cands, refs, lang=None, verbose=False):
        calls.append((list(cands), list(refs), lang))
        f1 = torch.tensor([1.0 if c == r else 0.1 + 0.01 * (len(c) + len(r)) for c, r in zip(cands, refs)])
        return f1, f1, f1

    monkeypatch.setitem(sys.modules, "bert_score", types.SimpleNamespace(score=fake_score))
    m = CPL(tiny_backbone, NAMES, CPLOptions(negatives="bertscore"))
    neg = m.neg_class.tolist()
    (cands, refs, lang), = calls
    assert lang == "en" and len(cands) == 25 and cands[:5] == [NAMES[0]] * 5 and refs[:5] == NAMES
    longest_other = [max((j for j in range(5) if j != i), key=lambda j: (len(NAMES[j]), -j)) for i in range(5)]
    assert neg == longest_other
    monkeypatch.setitem(sys.modules, "bert_score", None)          # not installed: one clear line
    with pytest.raises(UserError, match="cpbench\\[bertscore\\]"):
        CPL(tiny_backbone, NAMES, CPLOptions(negatives="bertscore")).neg_class


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


# ============================================================================ 9. PromptSRC GPA in fp16
def test_fp16_gpa_over_frozen_weights_does_not_sum_back():
    """The corrected docstring claim: Σ_e w_e·θ in fp16 (the official whole-state_dict GPA) is not θ."""
    from cpbench.methods.promptsrc import gpa_weights

    theta = (0.02 * torch.randn(200_000, generator=torch.Generator().manual_seed(0))).half()
    acc = None
    for w in gpa_weights(20, 15.0, 1.0).tolist():
        t = theta * w
        acc = t if acc is None else acc + t
    changed = float((acc != theta).float().mean())
    assert 0.2 < changed < 0.7
    assert torch.equal(sum(theta.double() * w for w in gpa_weights(20, 15.0, 1.0).tolist()).half(), theta)


# ============================================================================ 10. dg config blocks
def test_no_dead_dg_blocks_and_a_user_dg_block_is_refused(tmp_path):
    import yaml

    from cpbench.config import resolve
    from cpbench.methods.coop import CoOpOptions

    configs = Path(__file__).resolve().parents[1] / "cpbench" / "configs" / "methods"
    for p in sorted(configs.glob("*.yaml")):
        data = yaml.safe_load(p.read_text()) or {}
        assert "dg" not in (data.get("protocols") or {}), f"{p.name}: protocols.dg is never read"
        for name, blk in (data.get("datasets") or {}).items():
            assert "dg" not in ((blk or {}).get("protocols") or {}), f"{p.name}: datasets.{name}.protocols.dg"
    user = tmp_path / "c.yaml"
    user.write_text("protocols:\n  dg:\n    train: {epochs: 3}\n")
    with pytest.raises(UserError, match="protocols.cross_dataset"):
        resolve("coop", CoOpOptions, "cross_dataset", config_file=user)


# ============================================================================ 1. published numbers
def test_report_compare_shows_the_bayesian_pl_and_lamm_published_numbers(tmp_path, monkeypatch, capsys):
    """Bayesian PL's numbers were stored under ``bpl``, which no method is called, so the report
    never showed them (every published row naming a registered method is checked in
    test_report_settings.py); LAMM's per-dataset numbers are new."""
    from conftest import run_main
    from reporting import row
    from cpbench.protocols.cross_dataset import SOURCE, TARGETS
    from cpbench.results import published
    from cpbench.results.store import ResultStore

    rows = []
    for d in (SOURCE,) + TARGETS:
        for seed in (1, 2, 3):
            rows += [row("base2new", "coopvpt", d, d, "base", 16, seed, 80.0),
                     row("base2new", "coopvpt", d, d, "new", 16, seed, 75.0)]
            for m in ("lamm", "coop_lamm", "maple_lamm"):
                rows.append(row("few_shot", m, d, d, "all", 16, seed, 80.0))
    ResultStore(tmp_path / "res").write("hand", rows)
    capsys.readouterr()
    assert run_main(monkeypatch, "report", "--results", tmp_path / "res", "--compare", "paper") == 0
    out_md = capsys.readouterr().out
    bpl = published.lookup("base2new", "coopvpt", "Average", "hm")
    assert bpl is not None and f"{bpl.value:.2f}" in out_md
    for m in ("lamm", "coop_lamm", "maple_lamm"):
        for d in ("dtd", "Average"):
            p = published.lookup("few_shot", m, d, "all", 16)
            assert p is not None and f"{p.value:.2f}" in out_md, (m, d)
