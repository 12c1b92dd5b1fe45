"""Methods II (issue 6): LAMM, PRE, Bayesian prompt learning, CPL — invariants and hand-computed
loss terms on the tiny random backbone (the golden comparisons with the official code live in
test_golden_lamm.py / test_golden_bpl.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cpbench.methods.coop import CoOp, CoOpOptions

NAMES = ["golden retriever", "tabby_cat", "airliner", "red fox", "sports car"]
NEW = ["tree frog", "golden retriever", "canoe"]


def images(n=4, seed=0, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def perturb(t: torch.Tensor, seed: int, scale: float = 0.05) -> None:
    with torch.no_grad():
        t.add_(scale * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed)).to(t.dtype))


# ============================================================================ LAMM
from cpbench.methods.lamm import LAMM, CoOpLAMM, CoOpLAMMOptions, LAMMOptions, distillation, feature_loss  # noqa: E402


def _coop_and_lamm(bb, names=NAMES, **kw):
    coop = CoOp(bb, names, CoOpOptions(ctx_init="a photo of a"))
    lamm = CoOpLAMM(bb, names, CoOpLAMMOptions(ctx_init="a photo of a", **kw))
    perturb(coop.ctx, 1)
    with torch.no_grad():
        lamm.ctx.copy_(coop.ctx)
    return coop, lamm


def test_lamm_untouched_labels_and_zeroed_extra_losses_equal_coop(tiny_backbone):
    coop, lamm = _coop_and_lamm(tiny_backbone, feature_weight=0.0, logit_weight=0.0)
    x, y = images(), torch.tensor([0, 1, 2, 2])
    assert torch.allclose(lamm(x), coop(x), atol=1e-5)
    _, terms = lamm.forward_train(x, y)
    _, cterms = coop.forward_train(x, y)
    assert sorted(terms) == ["ce", "feature", "logit", "param"]
    assert torch.allclose(terms["ce"], cterms["ce"], atol=1e-5)
    assert all(float(terms[k].detach()) == 0.0 for k in ("param", "feature", "logit"))
    off = CoOpLAMM(tiny_backbone, NAMES, CoOpLAMMOptions(ctx_init="a photo of a", hierarchical_loss=False))
    _, t2 = off.forward_train(x, y)
    assert list(t2) == ["ce"]


def test_lamm_label_len_is_min_name_tokens_and_rows_are_name_embeddings(tiny_backbone):
    bb = tiny_backbone
    lamm = CoOpLAMM(bb, NAMES, CoOpLAMMOptions(ctx_init="a photo of a"))
    lens = [bb.n_tokens(n.replace("_", " ")) for n in NAMES]
    assert lamm.label_len == min(lens)
    ids = bb.tokenize(["red fox"])
    assert torch.equal(lamm.token_classes[3], bb.token_embedding(ids)[0, 1: 1 + lamm.label_len])
    assert torch.equal(lamm.fix_token, lamm.token_classes.detach())
    assert "fix_token" in lamm.learned_state() and not lamm.fix_token.requires_grad
    with pytest.raises(Exception, match="label_len"):
        CoOpLAMM(bb, NAMES, CoOpLAMMOptions(label_len=max(lens) + 1))


def test_lamm_variant_freezes_context(tiny_backbone):
    m = LAMM(tiny_backbone, NAMES, LAMMOptions())
    assert not m.ctx.requires_grad and m.token_classes.requires_grad
    assert m.n_learnable() == m.token_classes.numel()


def test_lamm_loss_terms_equal_hand_computation(tiny_backbone):
    _, lamm = _coop_and_lamm(tiny_backbone, param_shots=4)
    perturb(lamm.token_classes, 2, 0.3)
    x, y = images(), torch.tensor([0, 1, 1, 3])
    _, terms = lamm.forward_train(x, y)
    with torch.no_grad():
        f = F.normalize(tiny_backbone.encode_image(x).float(), dim=-1)
        t = F.normalize(lamm.text_features().float(), dim=-1)
        tf = F.normalize(tiny_backbone.text(lamm.assemble(lamm.ctx), lamm.prompts.eot).float(), dim=-1)
        s = tiny_backbone.logit_scale.float()
        z, zf = s * f @ t.t(), s * f @ tf.t()
        ce = F.cross_entropy(z, y)
        param = ((lamm.token_classes - lamm.fix_token) ** 2).sum() / 4
        feat = sum(1 - float((t[c] * tf[c]).sum()) for c in [0, 1, 1, 3]) / 4
        T = 2.0
        pt = torch.softmax(z / T, 1)
        logit = 0.05 * T * T * float(-(pt * torch.log_softmax(zf / T, 1)).sum(1).mean())
    assert math.isclose(float(terms["ce"]), float(ce), rel_tol=1e-5)
    assert math.isclose(float(terms["param"]), float(param), rel_tol=1e-5)
    assert math.isclose(float(terms["feature"]), feat, rel_tol=1e-4, abs_tol=1e-6)
    assert math.isclose(float(terms["logit"]), logit, rel_tol=1e-5)


def test_lamm_helpers_on_fixed_tensors():
    t = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], requires_grad=True)
    s = torch.tensor([[0.0, 1.0, 1.0], [2.0, 0.0, -1.0]])
    p = torch.softmax(t / 2, 1)
    hand = 4 * float(-(p * torch.log_softmax(s / 2, 1)).sum(1).mean())
    d = distillation(t, s, 2.0)
    assert math.isclose(float(d), hand, rel_tol=1e-6)
    d.backward()
    assert t.grad is not None and t.grad.abs().sum() > 0  # the soft target is not detached
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    fix = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    # label 2 twice, label 0 once: every sample has a different label somewhere -> all 3 count
    assert math.isclose(float(feature_loss(text, fix, torch.tensor([0, 2, 2]))),
                        ((1 - 2 ** -0.5) + 2 * (1 - 2 ** -0.5)) / 3, rel_tol=1e-6)
    assert float(feature_loss(text, fix, torch.tensor([1, 1]))) == 0.0  # one-class batch: nothing counts


def test_lamm_new_classes_use_original_names_and_trained_names_keep_their_rows(tiny_backbone):
    coop, lamm = _coop_and_lamm(tiny_backbone)
    perturb(lamm.token_classes, 3, 0.5)
    x = images()
    base_before = lamm(x)
    lamm.set_classnames(NEW)  # "golden retriever" was trained; the other two were not
    coop.set_classnames(NEW)
    out, ref = lamm(x), coop(x)
    assert torch.allclose(out[:, [0, 2]], ref[:, [0, 2]], atol=1e-5)
    assert not torch.allclose(out[:, 1], ref[:, 1], atol=1e-3)
    lamm.set_classnames(NAMES)
    assert torch.allclose(lamm(x), base_before, atol=1e-5)
