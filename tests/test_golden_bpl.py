"""Bayesian prompt learning (coopvpt) == official saic-fi/Bayesian-Prompt-Learning 8a73fff
(trainers/vpt.py) on the golden random CLIP (case A): VPT.N_CTX=4, CTX_INIT="a photo of a",
L=10. The forward noise is replayed by seeding (golden_utils seeds the case's forward seed, 1000,
before each forward, as the official run did) and, separately, injected from the recorded eps."""

from __future__ import annotations

from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, assert_close, compare_grads, compare_logits,
                          compare_losses, constructor_init_gaps, eval_logits, golden_backbone, golden_eps,
                          golden_inputs, load_case, official_losses, set_learnables, train_step)

from cpbench.methods.bpl import BPLOptions, CoOpVPT

NAME_MAP = {"prompt_learner.ctx": "ctx", "prompt_learner.mean_posterior": "mean_posterior",
            "prompt_learner.std_posterior": "std_posterior"}


def _method(case):
    cfg = case["cfg_set"]
    m = CoOpVPT(golden_backbone(case), golden_inputs(case)[2],
                BPLOptions(n_ctx=cfg["TRAINER.VPT.N_CTX"], ctx_init=cfg["TRAINER.VPT.CTX_INIT"], mc_samples=cfg["TRAINER.VPT.L"]))
    assert_close(constructor_init_gaps(m, case, {"prompt_learner.ctx": "ctx"}), 1e-5, "constructor init")
    set_learnables(m, case, NAME_MAP)
    return m


def _check(method, case):
    images, labels, _ = golden_inputs(case)
    assert case["eval"]["output"] == "log_mean_prob"
    assert_close(compare_logits(eval_logits(method, images, case), case), LOGIT_ATOL, "eval log-mean-probabilities")
    terms = train_step(method, images, labels, case)
    L = official_losses(case)
    assert_close(compare_losses(terms, {"nll": L["task_loss"], "kl": 0.001 * L["kl"]}, case), LOSS_RTOL, "loss terms")
    assert_close(compare_grads(method, case, NAME_MAP), GRAD_RTOL, "gradients")


def test_bpl_L2_seeded_noise():
    case = load_case("bpl_L2")
    _check(_method(case), case)


def test_bpl_L2_injected_noise():
    case = load_case("bpl_L2")
    m = _method(case)
    m.fixed_eps = golden_eps(case)
    _check(m, case)
