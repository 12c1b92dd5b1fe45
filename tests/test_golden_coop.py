"""CoOp == official CoOp (KaiyangZhou/CoOp ff61507) on the golden random CLIP (case A).

Official cfg: N_CTX=4, CTX_INIT="" ("X X X X {name}."), CSC=False, class token at the end; the
learnable ctx takes the seeded golden values (not the constructor's random init)."""

from __future__ import annotations

from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, assert_close, compare_grads, compare_logits,
                          compare_losses, eval_logits, golden_backbone, golden_inputs, load_case,
                          official_losses, set_learnables, train_step)

from cpbench.methods.coop import CoOp, CoOpOptions

NAME_MAP = {"prompt_learner.ctx": "ctx"}


def test_coop_L2():
    case = load_case("coop_L2")
    images, labels, classnames = golden_inputs(case)
    method = CoOp(golden_backbone(case), classnames,
                  CoOpOptions(n_ctx=4, ctx_init="", csc=False, class_token_position="end"))
    set_learnables(method, case, NAME_MAP)

    assert_close(compare_logits(eval_logits(method, images, case), case), LOGIT_ATOL, "eval logits")

    terms = train_step(method, images, labels, case)
    L = official_losses(case)
    assert_close(compare_losses(terms, {"ce": L["ce"]}, case), LOSS_RTOL, "loss terms")
    assert_close(compare_grads(method, case, NAME_MAP), GRAD_RTOL, "gradients")
