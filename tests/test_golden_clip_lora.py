"""CLIP-LoRA against the OFFICIAL code's numbers (MaxZanella/CLIP-LoRA 358f0d7; tests/golden/, see its
README section "Methods III"), case A (2+2 blocks): eval logits, every loss term, the gradient of
every LoRA matrix."""

from __future__ import annotations

import torch
from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, assert_close, compare_grads, compare_logits,
                          compare_losses, eval_logits, golden_backbone, golden_inputs, load_case, official_losses,
                          set_learnables, train_step)


def _lora_map(case) -> dict:
    """official ``{visual.,}transformer.resblocks.<i>.attn.<proj>.w_lora_<A|B>`` -> cpbench
    ``lora_{visual,text}.<i>.<proj>.w_lora_<A|B>``"""
    out = {}
    for t in case.trainable:
        parts = t["name"].split(".")
        tower = "lora_visual" if parts[0] == "visual" else "lora_text"
        out[t["name"]] = f"{tower}.{parts[-4]}.{parts[-2]}.{parts[-1]}"
    return out


def test_clip_lora_L2():
    from cpbench.methods.clip_lora import LOGIT_SCALE, CLIPLoRA, CLIPLoRAOptions

    case = load_case("clip_lora_L2")
    images, labels, names = golden_inputs(case)
    a = case["train_args"]
    (template,) = case["inputs"]["templates"]
    # the golden step ran with the LoRA input dropout disabled (p = 0) for determinism
    method = CLIPLoRA(golden_backbone(case), names, CLIPLoRAOptions(
        r=a["r"], alpha=a["alpha"], dropout_rate=0.0, encoder=a["encoder"], params="".join(a["params"]),
        position=a["position"], template=template))
    name_map = _lora_map(case)
    assert len([p for p in method.parameters() if p.requires_grad]) == len(case.trainable)
    set_learnables(method, case, name_map)
    logits = eval_logits(method, images, case)
    # the official eval output is plain cosines; cpbench returns 100 x cos (the same argmax)
    assert case["eval"]["output"].startswith("cosine")
    assert_close(compare_logits(logits / LOGIT_SCALE, case), LOGIT_ATOL / LOGIT_SCALE, "eval cosines")
    assert_close(compare_logits(logits, case, "logits_times_100"), LOGIT_ATOL, "eval logits x 100")
    terms = train_step(method, images, labels, case)
    assert_close(compare_losses(terms, {"ce": official_losses(case)["ce"]}, case), LOSS_RTOL, "loss terms")
    assert_close(compare_grads(method, case, name_map), GRAD_RTOL, "gradients")
    # the zero-shot logits the official run printed before LoRA: B = 0 makes LoRA the identity
    fresh = CLIPLoRA(golden_backbone(case), names, CLIPLoRAOptions(template=template))
    zs = eval_logits(fresh, images, case)
    assert float((zs - torch.tensor(case["eval"]["zero_shot_logits"])).abs().max()) <= LOGIT_ATOL
