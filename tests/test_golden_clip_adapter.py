"""CLIP-Adapter against the OFFICIAL code's numbers (gaopengcuhk/CLIP-Adapter 08d07f8 inside CoOp
ff61507; tests/golden/, see its README section "Methods III"), case A (2+2 blocks): eval logits,
every loss term, the gradient of every trainable tensor."""

from __future__ import annotations

from golden_methods import ADAPTER_MAP, official_template
from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, assert_close, compare_grads, compare_logits,
                          compare_losses, eval_logits, golden_backbone, golden_inputs, load_case, official_losses,
                          set_learnables, train_step)


def test_clip_adapter_L2():
    from cpbench.methods.clip_adapter import CLIPAdapter, CLIPAdapterOptions

    case = load_case("clip_adapter_L2")
    images, labels, names = golden_inputs(case)
    a = case["adapter"]
    bb = golden_backbone(case)
    reduction = bb.embed_dim // case.trainable[0]["shape"][0]
    method = CLIPAdapter(bb, names, CLIPAdapterOptions(reduction=reduction, ratio=a["ratio"],
                                                       template=official_template(case)))
    set_learnables(method, case, ADAPTER_MAP)
    assert_close(compare_logits(eval_logits(method, images, case), case), LOGIT_ATOL, "eval logits")
    terms = train_step(method, images, labels, case)
    assert_close(compare_losses(terms, {"ce": official_losses(case)["ce"]}, case), LOSS_RTOL, "loss terms")
    assert_close(compare_grads(method, case, ADAPTER_MAP), GRAD_RTOL, "gradients")
