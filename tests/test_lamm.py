"""LAMM (cpbench/methods/lamm.py: LAMM alone, on CoOp, on MaPLe): untouched label rows and zeroed
extra losses reduce it to its base method, the label length and rows are the official ones, the
loss terms by hand, other class lists keep the trained rows (the official numbers:
test_golden_lamm.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cpbench.methods.coop import CoOp, CoOpOptions
from cpbench.methods.lamm import (LAMM, CoOpLAMM, CoOpLAMMOptions, LAMMOptions, MaPLeLAMM, MaPLeLAMMOptions,
                                  distillation, feature_loss)
from cpbench.methods.maple import MaPLe, MaPLeOptions
from methodutils import NAMES, NEW, images, perturb


def _coop_and_lamm(bb, names=NAMES, **kw):
    coop = CoOp(bb, names, CoOpOptions(ctx_init="a photo of a"))
    lamm = CoOpLAMM(bb, names, CoOpLAMMOptions(ctx_init="a photo of a", **kw))
    perturb(coop.ctx, 1)
    with torch.no_grad():
        lamm.ctx.copy_(coop.ctx)
    return coop, lamm


def test_lamm_untouched_labels_and_zeroed_extra_losses_equal_coop(tiny_backbone):
    coop, lamm = _coop_and_lamm(tiny_backbone, feature_weight=0.0, logit_weight=0.0)
    x, y = images(4), torch.tensor([0, 1, 2, 2])
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
    x, y = images(4), torch.tensor([0, 1, 1, 3])
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
    terms = {k: v.detach() if torch.is_tensor(v) else v for k, v in terms.items()}
    assert math.isclose(float(terms["ce"]), float(ce), rel_tol=1e-5)
    assert math.isclose(float(terms["param"]), float(param), rel_tol=1e-5)
    assert math.isclose(float(terms["feature"]), feat, rel_tol=1e-4, abs_tol=1e-6)
    assert math.isclose(float(terms["logit"]), logit, rel_tol=1e-5)


def test_lamm_helpers_on_fixed_tensors():
    t = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], requires_grad=True)
    s = torch.tensor([[0.0, 1.0, 1.0], [2.0, 0.0, -1.0]])
    p = torch.softmax(t / 2, 1)
    hand = 4 * float(-(p * torch.log_softmax(s / 2, 1)).sum(1).mean().detach())
    d = distillation(t, s, 2.0)
    assert math.isclose(float(d.detach()), hand, rel_tol=1e-6)
    d.backward()
    assert t.grad is not None and t.grad.abs().sum() > 0  # the soft target is not detached
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    fix = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    # label 2 twice, label 0 once: every sample has a different label somewhere -> all 3 count
    assert math.isclose(float(feature_loss(text, fix, torch.tensor([0, 2, 2]))),
                        ((1 - 2 ** -0.5) + 2 * (1 - 2 ** -0.5)) / 3, rel_tol=1e-6)
    assert float(feature_loss(text, fix, torch.tensor([1, 1]))) == 0.0  # one-class batch: nothing counts


def test_lamm_other_class_lists_use_original_names_and_the_training_list_keeps_its_rows(tiny_backbone):
    """Rows go by class index in the training list (issue 18): another list (new classes) gets
    the plain prompt for every class, even for a name that also was a training class, as the
    official new-class path (no learned labels at all)."""
    coop, lamm = _coop_and_lamm(tiny_backbone)
    perturb(lamm.token_classes, 3, 0.5)
    x = images(4)
    base_before = lamm(x)
    lamm.set_classnames(NEW)  # "golden retriever" is also a training name: still the plain prompt
    coop.set_classnames(NEW)
    assert torch.allclose(lamm(x), coop(x), atol=1e-5)
    lamm.set_classnames(NAMES)
    assert torch.allclose(lamm(x), base_before, atol=1e-5)


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


def _maple_pair(bb, names=NAMES, **kw):
    torch.manual_seed(0)
    maple = MaPLe(bb, names, MaPLeOptions(depth=2))
    ml = MaPLeLAMM(bb, names, MaPLeLAMMOptions(depth=2, **kw))
    perturb(maple.ctx, 12)
    own = dict(ml.named_parameters())
    with torch.no_grad():
        for n, p in maple.named_parameters():
            if n in own:
                own[n].copy_(p)
    return maple, ml


def test_maple_lamm_untouched_labels_and_zeroed_extra_losses_equal_maple(tiny_backbone):
    maple, ml = _maple_pair(tiny_backbone, feature_weight=0.0, logit_weight=0.0)
    assert ml.label_len == 1 and tuple(ml.token_classes.shape) == (len(NAMES), 1, tiny_backbone.text_width)
    x, y = images(4), torch.tensor([0, 1, 2, 2])
    # not equal to MaPLe in general: the official row REPLACES "of" (position 1+n_ctx)
    ids = tiny_backbone.tokenize(["a photo of a red fox."])[0]
    emb = tiny_backbone.token_embedding(ids.unsqueeze(0))[0]
    name_first = tiny_backbone.token_embedding(tiny_backbone.tokenize(["red fox"]))[0, 1]
    p = ml.with_label_rows(ml.prompts.assemble(ml.ctx))[3]
    assert torch.equal(p[3], name_first)         # label row where "of" was
    assert torch.equal(p[4:], emb[4:])           # "a red fox ." and the rest untouched
    assert torch.equal(p[1:3], ml.ctx.detach())
    _, terms = ml.forward_train(x, y)
    assert all(float(terms[k].detach()) == 0.0 for k in ("param", "feature", "logit"))
    # with the label row set back to the embedding of "of" it is exactly MaPLe
    of = tiny_backbone.token_embedding(tiny_backbone.tokenize(["of"]))[0, 1]
    with torch.no_grad():
        ml.token_classes.copy_(of.expand_as(ml.token_classes))
    assert torch.allclose(ml(x), maple(x), atol=1e-5)
    _, terms = ml.forward_train(x, y)
    assert torch.allclose(terms["ce"].detach(), maple.forward_train(x, y)[1]["ce"].detach(), atol=1e-5)


def test_maple_lamm_new_classes_are_plain_maple(tiny_backbone):
    maple, ml = _maple_pair(tiny_backbone)
    perturb(ml.token_classes, 13, 0.5)
    for m in (maple, ml):
        m.set_classnames(["tree frog", "canoe"])
    x = images(4)
    assert torch.allclose(ml(x), maple(x), atol=1e-5)
