"""PRE == official PRE (minhanh151/PRE 08be701, trainers/pre.py) on the golden random CLIP (case A).

Official cfg: TRAINER.PRE.N_CTX=4, CTX_INIT="a photo of a", ENCODER=LSTM1, RESIDUAL=True,
SEPARATE=False (scripts/base2new_train.sh), PREC=amp (autocast/GradScaler are disabled on CPU, so
the reference is fp32). ``tests/golden/pre_L2.json`` was produced in this project by running the
official code with runtime patches only (README §5). Learnables: ctx and the 8 BiLSTM tensors,
all by the seeded rule; ctx' = BiLSTM(ctx) + ctx over the unbatched 4-token sequence."""

from __future__ import annotations

from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, assert_close, compare_grads, compare_logits,
                          compare_losses, constructor_init_gaps, eval_logits, golden_backbone, golden_inputs,
                          load_case, official_losses, set_learnables, train_step)

from cpbench.methods.pre import PRE, PREOptions

LSTM = [f"{w}_l0{s}" for s in ("", "_reverse") for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
NAME_MAP = {"prompt_learner.ctx": "ctx",
            **{f"prompt_learner.encoder_network.lstm_head.{k}": f"encoder_network.lstm_head.{k}" for k in LSTM}}


def test_pre_L2():
    case = load_case("pre_L2")
    images, labels, classnames = golden_inputs(case)
    method = PRE(golden_backbone(case), classnames,
                 PREOptions(n_ctx=4, ctx_init="a photo of a", encoder="LSTM1", residual=True, separate=False))
    assert_close(constructor_init_gaps(method, case, NAME_MAP), 1e-6, "constructor init")
    set_learnables(method, case, NAME_MAP)
    assert_close(compare_logits(eval_logits(method, images, case), case), LOGIT_ATOL, "eval logits")
    terms = train_step(method, images, labels, case)
    assert_close(compare_losses(terms, {"ce": official_losses(case)["ce"]}, case), LOSS_RTOL, "loss terms")
    assert_close(compare_grads(method, case, NAME_MAP), GRAD_RTOL, "gradients")
