"""CPL's base model == official CoCoOp (KaiyangZhou/CoOp ff61507) on the golden random CLIP (case A).

There is no official CPL golden (its mask targets come from a Google-Drive download and a missing
``trained_solver``). What can be checked against official numbers is the part CPL inherits:
inference is CoCoOp, and CPL's ``ce`` term with its gradient is CoCoOp's CE. The CPL-only mask
``u`` is frozen for the comparison (the harness wants every trainable parameter mapped), and the
counterfactual terms are weighted 0 so the gradients are CoCoOp's."""

from __future__ import annotations

import torch
from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, assert_close, compare_grads, compare_logits,
                          compare_losses, eval_logits, golden_backbone, golden_inputs, load_case, official_losses,
                          set_learnables, train_step)

from cpbench.methods.cpl import CPL, CPLOptions

NAME_MAP = {"prompt_learner.ctx": "ctx",
            **{f"prompt_learner.meta_net.{l}.{p}": f"meta_net.{l}.{p}" for l in ("linear1", "linear2")
               for p in ("weight", "bias")}}


def test_cpl_base_is_official_cocoop_L2():
    case = load_case("cocoop_L2")
    images, labels, classnames = golden_inputs(case)
    bb = golden_backbone(case)
    method = CPL(bb, classnames, CPLOptions(n_ctx=4, ctx_init="a photo of a", cl_weight=0.0, mask_weight=0.0))
    method.u.requires_grad_(False)
    set_learnables(method, case, NAME_MAP)
    assert_close(compare_logits(eval_logits(method, images, case), case), LOGIT_ATOL, "eval logits")
    method.set_negative_features(torch.randn(len(classnames), bb.embed_dim, generator=torch.Generator().manual_seed(0)))
    terms = train_step(method, images, labels, case)
    L = official_losses(case)
    assert_close(compare_losses(terms, {"ce": L["ce"], "cl": 0.0, "mask": 0.0}, case), LOSS_RTOL, "loss terms")
    assert_close(compare_grads(method, case, NAME_MAP), GRAD_RTOL, "gradients")
