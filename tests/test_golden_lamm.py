"""CoOp+LAMM == official LAMM (gaojingsheng/LAMM d4e7d02, trainers/coop.py) on the golden random
CLIP (case A): COOP.N_CTX=16 with CTX_INIT="a photo of a" (n_ctx becomes 4), --triplet-loss,
shots=1 (the official scripts' K), learned label rows token_classes [5, min_len=2, 512]."""

from __future__ import annotations

from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, assert_close, compare_grads, compare_logits,
                          compare_losses, constructor_init_gaps, eval_logits, golden_backbone, golden_inputs,
                          load_case, official_losses, set_learnables, train_step)

from cpbench.methods.lamm import CoOpLAMM, CoOpLAMMOptions

NAME_MAP = {"prompt_learner.ctx": "ctx", "prompt_learner.token_classes": "token_classes"}


def test_lamm_L2():
    case = load_case("lamm_L2")
    images, labels, classnames = golden_inputs(case)
    method = CoOpLAMM(golden_backbone(case), classnames,
                      CoOpLAMMOptions(n_ctx=16, ctx_init="a photo of a", param_shots=1))
    assert method.n_ctx == 4 and tuple(method.token_classes.shape) == (5, 2, 512)
    if case["constructor_init"]:
        assert_close(constructor_init_gaps(method, case, NAME_MAP), 1e-5, "constructor init")
    set_learnables(method, case, NAME_MAP)
    # the official fix_token is the frozen copy of the constructor value, not of the seeded one
    assert_close(compare_logits(eval_logits(method, images), case), LOGIT_ATOL, "eval logits")

    terms = train_step(method, images, labels)
    L = official_losses(case)
    expected = {"ce": L["ce"], "param": L["param_mse_sum"],
                "feature": ((1 - L["feature_cos[0]"]) + (1 - L["feature_cos[1]"])) / 2,
                "logit": 0.05 * 4 * L["distill_ce_raw"]}
    assert_close(compare_losses(terms, expected, case), LOSS_RTOL, "loss terms")
    assert_close(compare_grads(method, case, NAME_MAP), GRAD_RTOL, "gradients")
