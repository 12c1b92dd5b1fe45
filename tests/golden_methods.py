"""Methods built as the official code builds them, on a golden case (tests/golden/, see its README),
with their official parameter names: CoCoOp (KaiyangZhou/CoOp ff61507), MaPLe and IVLP
(multimodal-prompt-learning 69bce21), PromptSRC (PromptSRC bb95c77), KgCoOp (htyao89/KgCoOp
c43ccc3), ProGrad (BeierZhu/Prompt-align 1b76203) and CLIP-Adapter's names; and
``check_against_official``: eval logits, every loss term and the gradients of every trainable
tensor, at 2 layers and (deep prompts, depth 9) 9 layers. Used by test_golden_<method>.py,
test_golden_deviations.py and test_official_checkpoints.py."""

from __future__ import annotations

from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, Slot, assert_close, compare_grads, compare_logits,
                          compare_losses, constructor_init_gaps, eval_logits, golden_backbone, golden_inputs,
                          load_case, official_losses, set_learnables, train_step)


def ivlp_map(layers: int) -> dict:
    m = {"prompt_learner.ctx": "ctx", "image_encoder.VPT": "VPT"}
    for k in range(1, min(9, layers)):
        m[f"text_encoder.transformer.resblocks.{k}.VPT_shallow"] = Slot("deep_text", k - 1)
        m[f"image_encoder.transformer.resblocks.{k}.VPT_shallow"] = Slot("deep_vision", k - 1)
    return m


def maple_map(layers: int) -> dict:
    m = {"prompt_learner.ctx": "ctx", "prompt_learner.proj.weight": "proj.weight",
         "prompt_learner.proj.bias": "proj.bias"}
    for j in range(8):
        used = j + 1 < layers
        m[f"prompt_learner.compound_prompts_text.{j}"] = f"compound_prompts_text.{j}" if used else None
        for p in ("weight", "bias"):
            m[f"prompt_learner.compound_prompt_projections.{j}.{p}"] = \
                f"compound_prompt_projections.{j}.{p}" if used else None
    return m


COCOOP_MAP = {"prompt_learner.ctx": "ctx",
              **{f"prompt_learner.meta_net.{l}.{p}": f"meta_net.{l}.{p}" for l in ("linear1", "linear2")
                 for p in ("weight", "bias")}}


def build_method(name: str, case):
    """(the cpbench method on the case's golden backbone with the official config, official name -> cpbench
    learnable)."""
    _, _, classnames = golden_inputs(case)
    bb = golden_backbone(case)
    layers = case.weights["text_layers"]
    if name == "cocoop":
        from cpbench.methods.cocoop import CoCoOp, CoCoOpOptions

        return CoCoOp(bb, classnames, CoCoOpOptions(n_ctx=4, ctx_init="a photo of a")), COCOOP_MAP
    if name == "ivlp":
        from cpbench.methods.ivlp import IVLP, IVLPOptions

        return IVLP(bb, classnames, IVLPOptions(n_ctx_text=2, n_ctx_vision=2)), ivlp_map(layers)
    if name == "maple":
        from cpbench.methods.maple import MaPLe, MaPLeOptions

        return MaPLe(bb, classnames, MaPLeOptions(n_ctx=2, depth=9)), maple_map(layers)
    if name == "promptsrc":
        from cpbench.methods.promptsrc import PromptSRC, PromptSRCOptions

        return PromptSRC(bb, classnames, PromptSRCOptions()), ivlp_map(layers)
    if name == "kgcoop":
        from cpbench.methods.kgcoop import KgCoOp, KgCoOpOptions

        return KgCoOp(bb, classnames, KgCoOpOptions(template="a photo of a {}.")), {"prompt_learner.ctx": "ctx"}
    raise KeyError(name)


def expected_losses(name: str, L: dict, case) -> dict:
    """The official loss terms as cpbench names and weights them."""
    if name == "promptsrc":
        numel = len(case["inputs"]["labels"]) * len(case["inputs"]["classnames"])
        return {"ce": L["ce"], "text": 25 * L["l1_text"], "image": 10 * L["l1_image"], "kl": L["kl_sum"] / numel}
    if name == "kgcoop":
        return {"ce": L["ce"], "kg": 8.0 * L["kg"]}
    return {"ce": L["ce"]}


def check_against_official(case_name: str) -> None:
    name = case_name.rsplit("_", 1)[0]
    case = load_case(case_name)
    images, labels, _ = golden_inputs(case)
    method, name_map = build_method(name, case)
    if case.data.get("constructor_init"):
        assert_close(constructor_init_gaps(method, case, name_map), 1e-6, "constructor init")
    set_learnables(method, case, name_map)
    assert_close(compare_logits(eval_logits(method, images, case), case), LOGIT_ATOL, "eval logits")
    terms = train_step(method, images, labels, case)
    assert_close(compare_losses(terms, expected_losses(name, official_losses(case), case), case), LOSS_RTOL,
                 "loss terms")
    assert_close(compare_grads(method, case, name_map), GRAD_RTOL, "gradients")


# ----------------------------------------------------------------------------- ProGrad, CLIP-Adapter
PROGRAD_MAP = {"prompt_learner.ctx": "ctx"}


ADAPTER_MAP = {"adapter.fc.0.weight": "adapter.fc.0.weight", "adapter.fc.2.weight": "adapter.fc.2.weight"}


def official_template(case) -> str:
    # the cfg's DATASET.NAME is ImageNet in these cases; its CUSTOM_TEMPLATES entry is the CoOp one
    assert case["cfg_set"]["DATASET.NAME"] == "ImageNet"
    return "a photo of a {}."


def prograd_method(case):
    from cpbench.methods.prograd import ProGrad, ProGradOptions

    c = case["cfg_set"]
    _, _, names = golden_inputs(case)
    return ProGrad(golden_backbone(case), names, ProGradOptions(
        n_ctx=c["TRAINER.COOP.N_CTX"], init_from_template=bool(c["TRAINER.COOP.CTX_INIT"]), csc=c["TRAINER.COOP.CSC"],
        class_token_position=c["TRAINER.COOP.CLASS_TOKEN_POSITION"], template=official_template(case),
        prograd_lambda=c["LOSS.LAMBDA"], temperature=c["LOSS.T"]))
