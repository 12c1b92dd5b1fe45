"""ProGrad against the OFFICIAL code's numbers (BeierZhu/Prompt-align 1b76203; tests/golden/, see its
README section "Methods III"), case A (2+2 blocks): eval logits, every loss term, the gradient of
the context. The case does not project (cos(g_ce, g_kl) = +0.27); the projected branch is checked
by hand on a batch where the two gradients conflict."""

from __future__ import annotations

import torch
from golden_methods import PROGRAD_MAP, prograd_method
from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, assert_close, compare_grads, compare_logits,
                          compare_losses, constructor_init_gaps, eval_logits, forward_seed, golden_inputs, load_case,
                          official_losses, set_learnables, train_step)


def test_prograd_L2():
    case = load_case("prograd_L2")
    images, labels, _ = golden_inputs(case)
    method = prograd_method(case)
    assert_close(constructor_init_gaps(method, case, PROGRAD_MAP), 1e-6, "constructor init")
    set_learnables(method, case, PROGRAD_MAP)
    assert_close(compare_logits(eval_logits(method, images, case), case), LOGIT_ATOL, "eval logits")
    # the zero-shot teacher's logits (logit_scale * frozen image features @ template features)
    with torch.no_grad():
        zs = method.backbone.logit_scale * method.encode_images(images) @ method.teacher_features().t()
    ref = torch.tensor(case["prompt"]["zero_shot_logits_eval"])
    assert float((zs - ref).abs().max()) <= LOGIT_ATOL
    terms = train_step(method, images, labels, case)   # method.backward: the projection step
    L = official_losses(case)
    assert_close(compare_losses(terms, {"ce": L["xe"], "kl": L["kl"]}, case), LOSS_RTOL, "loss terms")
    assert_close(compare_grads(method, case, PROGRAD_MAP), GRAD_RTOL, "final gradient")
    # each component alone, against the official post-accumulate-grad captures
    comp = case["grads_components"]["prompt_learner.ctx"]
    for term, key in (("ce", "g_ce (xe only)"), ("kl", "g_kl (kl only)")):
        method.zero_grad(set_to_none=True)
        torch.manual_seed(forward_seed(case))
        _, t = method.forward_train(images, labels)
        t[term].backward()
        fake = {**case.data, "grads": {"prompt_learner.ctx": comp[key]}}
        assert_close(compare_grads(method, type(case)(case.name, fake), PROGRAD_MAP), GRAD_RTOL, f"g_{term}")
    assert case["train"]["projection"]["applied"] is False and case["train"]["projection"]["cos_ce_kl"] > 0


def test_prograd_projects_conflicting_gradients():
    """Labellings of the two images where g_ce and g_kl conflict ((1, 2), (2, 1): cos −0.60, −0.51)
    and where they do not ((0, 1), the golden one: +0.27), λ = 1 and 0.5: the step's gradient is
    g_ce − λ(g_ce·ĝ_kl)ĝ_kl where cos < 0 and g_ce elsewhere, computed here by hand from the two
    autograd gradients; with λ = 1 the projected gradient is orthogonal to g_kl."""
    case = load_case("prograd_L2")
    images, _, _ = golden_inputs(case)
    method = prograd_method(case)
    set_learnables(method, case, PROGRAD_MAP)
    method.train()
    seen = []
    for labels in ((1, 2), (2, 1), (0, 1)):
        labels = torch.tensor(labels)
        _, t = method.forward_train(images, labels)
        a, b = (torch.autograd.grad(t[k], method.ctx, retain_graph=True)[0].double() for k in ("ce", "kl"))
        b_hat = b / b.norm()
        conflict = float((a * b).sum() / (a.norm() * b.norm())) < 0
        seen.append(conflict)
        for lam in (1.0, 0.5):
            method.options.prograd_lambda = lam
            want = a - lam * (a * b_hat).sum() * b_hat if conflict else a
            method.zero_grad(set_to_none=True)
            _, t = method.forward_train(images, labels)
            method.backward(t, lambda x: x)
            got = method.ctx.grad.double()
            assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max()), (labels, lam)
            if conflict and lam == 1.0:
                assert float((got - a).abs().max()) > 1e-2 * float(a.abs().max())   # it did project
                assert abs(float((got * b_hat).sum())) <= 1e-4 * float(got.norm())
    assert seen == [True, True, False]
