"""CPL (cpbench/methods/cpl.py): the greedy counterfactual mask search, the negative classes (CLIP,
BERTScore, a JSON map or the official score.npy, read without unpickling code), the loss terms by
hand, inference as CoCoOp, the fp32 mask under fp16, and the official behaviours behind their
options (the base's official numbers: test_golden_cpl.py)."""

from __future__ import annotations

import json
import math
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cpbench.errors import UserError
from cpbench.methods.cpl import CPL, CPLOptions, contrastive_cf_loss, greedy_mask
from methodutils import NAMES, images, perturb


def _naive_greedy(v, vn, tp, tn):
    """Reference: recompute every candidate's full normalised logit; returns the pick order."""
    v, order = v.clone(), []
    for _ in range(len(v)):
        best, arg = -math.inf, -1
        for i in range(len(v)):
            if i in order:
                continue
            w = v.clone()
            w[i] = vn[i]
            s = float(F.normalize(w, dim=0) @ tn)
            if s > best:
                best, arg = s, i
        order.append(arg)
        v[arg] = vn[arg]
        f = F.normalize(v, dim=0)
        if float(f @ tn) > float(f @ tp):
            break
    return order


def test_cpl_mask_search_flips_with_the_greedy_minimal_set_on_a_fixture():
    # pos class = e0, neg class = e1. Step 1 swaps dim 1 (neg logit 2/√13.25 = 0.549, pos still
    # 3/√13.25 = 0.824); step 2 swaps dim 0 (neg 2/√4.25 = 0.970 > pos 0): flipped with {0, 1}.
    v = torch.tensor([[3.0, 0.0, 0.5, 0.0]])
    vn = torch.tensor([[0.0, 2.0, 0.0, 1.0]])
    tp, tn = torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    mask = greedy_mask(v, vn, tp, tn)
    assert mask.tolist() == [[True, True, False, False]]
    assert _naive_greedy(v[0], vn[0], tp[0], tn[0]) == [1, 0]
    swapped = torch.where(mask, vn, v)
    f = F.normalize(swapped, dim=-1)
    assert float(f @ tn[0]) > float(f @ tp[0])                   # the prediction flips
    only_first = F.normalize(torch.tensor([3.0, 2.0, 0.5, 0.0]), dim=0)
    assert float(only_first @ tn[0]) < float(only_first @ tp[0])  # one swap fewer does not


def test_cpl_mask_search_matches_naive_greedy_on_random_batches():
    g = torch.Generator().manual_seed(11)
    v, vn = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    tp, tn = F.normalize(torch.randn(6, 16, generator=g), dim=-1), F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    mask = greedy_mask(v, vn, tp, tn)
    for b in range(6):
        order = _naive_greedy(v[b], vn[b], tp[b], tn[b])
        assert sorted(order) == mask[b].nonzero().flatten().tolist()
        f = F.normalize(torch.where(mask[b], vn[b], v[b]), dim=0)
        assert float(f @ tn[b]) > float(f @ tp[b]) or len(order) == 16


def test_cpl_negative_class_is_most_similar_other_name(tiny_backbone):
    m = CPL(tiny_backbone, NAMES, CPLOptions())
    t = F.normalize(tiny_backbone.encode_text([n.replace("_", " ") for n in NAMES]).float(), dim=-1)
    sim = t @ t.t()
    for c in range(len(NAMES)):
        others = [j for j in range(len(NAMES)) if j != c]
        assert int(m.neg_class[c]) == max(others, key=lambda j: float(sim[c, j]))


def test_cpl_loss_terms_equal_hand_computation_and_inference_is_cocoop(tiny_backbone):
    bb = tiny_backbone
    m = CPL(bb, NAMES, CPLOptions())
    perturb(m.ctx, 7)
    perturb(m.u, 8, 0.5)
    g = torch.Generator().manual_seed(5)
    m.set_negative_features(torch.randn(len(NAMES), bb.embed_dim, generator=g))
    x, y = images(3, seed=2), torch.tensor([0, 3, 3])
    logits, terms = m.forward_train(x, y)
    with torch.no_grad():
        raw = bb.encode_image(x).float()
        f = F.normalize(raw, dim=-1)
        s = bb.logit_scale.float()
        ce_rows, cl, mask = [], 0.0, 0.0
        for b in range(3):
            yb, nb = int(y[b]), int(m.neg_class[y[b]])
            ctx = m.ctx + m.meta_net(f[b])                      # CoCoOp: π(x) on every token
            t = F.normalize(bb.text(m.prompts.assemble(ctx), m.prompts.eot).float(), dim=-1)
            ce_rows.append(s * f[b] @ t.t())
            tp, tn = F.normalize(m.name_text[yb], dim=0), F.normalize(m.name_text[nb], dim=0)
            order = _naive_greedy(raw[b], m.neg_raw[yb], tp, tn)
            ustar = -torch.ones(bb.embed_dim)
            ustar[order] = 1
            u = torch.clamp(0.999 * ustar + 0.001 * m.u[:, yb], 0, 1)
            vcf = F.normalize((1 - u) * f[b] + u * F.normalize(m.neg_raw[yb], dim=0), dim=0)
            pos = [float(t[c] @ f[b]) for c in range(len(NAMES))]
            neg = [float(t[c] @ vcf) for c in range(len(NAMES))]
            cl += sum(-math.log(math.exp(p) / (math.exp(p) + math.exp(q))) for p, q in zip(pos, neg)) / len(NAMES) / 3
            mask += 0.07 * float(u.norm()) / 3
        ref = torch.stack(ce_rows)
    assert torch.allclose(logits.detach(), ref, atol=1e-4)
    assert math.isclose(float(terms["ce"].detach()), float(F.cross_entropy(ref, y)), rel_tol=1e-5)
    assert math.isclose(float(terms["cl"].detach()), cl, rel_tol=1e-5)
    assert math.isclose(float(terms["mask"].detach()), mask, rel_tol=1e-5)
    m.eval()
    with torch.no_grad():
        assert torch.allclose(m(x), ref, atol=1e-4)              # inference = CoCoOp
    # the contrastive term by itself on fixed vectors
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v, vc = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    hand = (-math.log(math.e / (math.e + 1)) - math.log(1 / (1 + math.e))) / 2
    assert math.isclose(float(contrastive_cf_loss(text, v, vc)), hand, rel_tol=1e-6)


def test_cpl_without_negatives_says_what_to_call(tiny_backbone):
    m = CPL(tiny_backbone, NAMES, CPLOptions())
    with pytest.raises(RuntimeError, match="prepare_training"):
        m.forward_train(images(1), torch.tensor([0]))


def test_cpl_inference_equals_cocoop(tiny_backbone):
    from cpbench.methods.cocoop import CoCoOp, CoCoOpOptions

    torch.manual_seed(3)
    ref = CoCoOp(tiny_backbone, NAMES, CoCoOpOptions())
    m = CPL(tiny_backbone, NAMES, CPLOptions())
    perturb(ref.ctx, 14)
    own = dict(m.named_parameters())
    with torch.no_grad():
        for n, p in ref.named_parameters():
            own[n].copy_(p)
    x = images(4)
    assert torch.equal(m(x), ref(x))


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
    # with a positive best logit both rules agree (the fixture of the greedy minimal-set test above)
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
