"""CoOp+LAMM == official LAMM (gaojingsheng/LAMM d4e7d02, trainers/coop.py) on the golden random
CLIP (case A): COOP.N_CTX=16 with CTX_INIT="a photo of a" (n_ctx becomes 4), --triplet-loss,
shots=1 (the official scripts' K), learned label rows token_classes [5, min_len=2, 512]."""

from __future__ import annotations

from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, assert_close, compare_grads, compare_logits,
                          compare_losses, constructor_init_gaps, eval_logits, golden_backbone, golden_inputs,
                          load_case, official_losses, set_learnables, train_step)

from cpbench.methods.lamm import CoOpLAMM, CoOpLAMMOptions

NAME_MAP = {"prompt_learner.ctx": "ctx", "prompt_learner.token_classes": "token_classes"}


def _trainable_shape(case, name):
    return tuple(next(t["shape"] for t in case.trainable if t["name"] == name))


def test_lamm_L2():
    case = load_case("lamm_L2")
    images, labels, classnames = golden_inputs(case)
    cfg = case["cfg_set"]
    method = CoOpLAMM(golden_backbone(case), classnames,
                      CoOpLAMMOptions(n_ctx=cfg["TRAINER.COOP.N_CTX"], ctx_init=cfg["TRAINER.COOP.CTX_INIT"],
                                      param_shots=case["train_args"]["shots"]))
    assert method.ctx.shape == _trainable_shape(case, "prompt_learner.ctx")
    assert tuple(method.token_classes.shape) == _trainable_shape(case, "prompt_learner.token_classes")
    if case["constructor_init"]:
        assert_close(constructor_init_gaps(method, case, NAME_MAP), 1e-5, "constructor init")
    set_learnables(method, case, NAME_MAP)
    # the official fix_token is the frozen copy of the constructor value, not of the seeded one
    assert_close(compare_logits(eval_logits(method, images, case), case), LOGIT_ATOL, "eval logits")

    terms = train_step(method, images, labels, case)
    L = official_losses(case)
    cos = [v for k, v in L.items() if k.startswith("feature_cos[")]   # one per qualifying sample
    expected = {"ce": L["ce"], "param": L["param_mse_sum"] / case["train_args"]["shots"],
                "feature": sum(1 - c for c in cos) / len(cos) if cos else 0.0,
                "logit": 0.05 * 4 * L["distill_ce_raw"]}
    assert_close(compare_losses(terms, expected, case), LOSS_RTOL, "loss terms")
    assert_close(compare_grads(method, case, NAME_MAP), GRAD_RTOL, "gradients")
