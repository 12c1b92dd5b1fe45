"""Methods III against the OFFICIAL code's numbers (tests/golden/, see its README section "Methods
III"), case A (2+2 blocks): ProGrad (BeierZhu/Prompt-align 1b76203), CLIP-Adapter
(gaopengcuhk/CLIP-Adapter 08d07f8 inside CoOp ff61507), Tip-Adapter and Tip-Adapter-F
(gaopengcuhk/Tip-Adapter d0e2d6f), CLIP-LoRA (MaxZanella/CLIP-LoRA 358f0d7): eval logits, every
loss term, the gradient of every trainable tensor. Every input (weights, images, labels, class
names, learnable seeds, the Tip-Adapter training set, cfg values) is read from the case file, so
another seed's case runs unedited.

ProGrad's case does not project (cos(g_ce, g_kl) = +0.27); the projected branch is checked by hand
on a batch where the two gradients conflict (``test_prograd_projects_conflicting_gradients``)."""

from __future__ import annotations

import pytest
import torch
from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, assert_close, compare_grads, compare_logits,
                          compare_losses, constructor_init_gaps, eval_logits, forward_seed, golden_backbone,
                          golden_inputs, load_case, official_grad, official_losses, set_learnables, train_step)

PROGRAD_MAP = {"prompt_learner.ctx": "ctx"}
ADAPTER_MAP = {"adapter.fc.0.weight": "adapter.fc.0.weight", "adapter.fc.2.weight": "adapter.fc.2.weight"}


def _template(case) -> str:
    # the cfg's DATASET.NAME is ImageNet in these cases; its CUSTOM_TEMPLATES entry is the CoOp one
    assert case["cfg_set"]["DATASET.NAME"] == "ImageNet"
    return "a photo of a {}."


# ----------------------------------------------------------------------------- ProGrad
def _prograd(case):
    from cpbench.methods.prograd import ProGrad, ProGradOptions

    c = case["cfg_set"]
    _, _, names = golden_inputs(case)
    return ProGrad(golden_backbone(case), names, ProGradOptions(
        n_ctx=c["TRAINER.COOP.N_CTX"], init_from_template=bool(c["TRAINER.COOP.CTX_INIT"]), csc=c["TRAINER.COOP.CSC"],
        class_token_position=c["TRAINER.COOP.CLASS_TOKEN_POSITION"], template=_template(case),
        prograd_lambda=c["LOSS.LAMBDA"], temperature=c["LOSS.T"]))


def test_prograd_L2():
    case = load_case("prograd_L2")
    images, labels, _ = golden_inputs(case)
    method = _prograd(case)
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
    method = _prograd(case)
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


# ----------------------------------------------------------------------------- CLIP-Adapter
def test_clip_adapter_L2():
    from cpbench.methods.clip_adapter import CLIPAdapter, CLIPAdapterOptions

    case = load_case("clip_adapter_L2")
    images, labels, names = golden_inputs(case)
    a = case["adapter"]
    bb = golden_backbone(case)
    reduction = bb.embed_dim // case.trainable[0]["shape"][0]
    method = CLIPAdapter(bb, names, CLIPAdapterOptions(reduction=reduction, ratio=a["ratio"], template=_template(case)))
    set_learnables(method, case, ADAPTER_MAP)
    assert_close(compare_logits(eval_logits(method, images, case), case), LOGIT_ATOL, "eval logits")
    terms = train_step(method, images, labels, case)
    assert_close(compare_losses(terms, {"ce": official_losses(case)["ce"]}, case), LOSS_RTOL, "loss terms")
    assert_close(compare_grads(method, case, ADAPTER_MAP), GRAD_RTOL, "gradients")


# ----------------------------------------------------------------------------- Tip-Adapter (-F)
def _tip(case, cls, opts_cls):
    """The method with the case's cfg and its cache built from the case's training set, fed as-is
    through ``augment_epoch`` identical passes (as the official run)."""
    c = case["cfg_set"]
    _, _, names = golden_inputs(case)
    bb = golden_backbone(case)
    ts = case["inputs"]["train_set"]
    size = case.weights["image_size"]
    train_images = torch.randn(len(ts["labels"]), 3, size, size, generator=torch.Generator().manual_seed(ts["image_seed"]))
    train_labels = torch.tensor(ts["labels"])
    templates = "imagenet7" if case["inputs"]["templates"] and len(case["inputs"]["templates"]) == 7 else ""
    method = cls(bb, names, opts_cls(init_alpha=c["init_alpha"], init_beta=c["init_beta"], search=c["search_hp"],
                                     search_scale_beta=c["search_scale"][0], search_scale_alpha=c["search_scale"][1],
                                     search_step_beta=c["search_step"][0], search_step_alpha=c["search_step"][1],
                                     augment_epoch=c["augment_epoch"], templates=templates))
    from cpbench.methods.tip_adapter import IMAGENET7

    assert tuple(case["inputs"]["templates"]) == IMAGENET7
    with torch.no_grad():
        passes = [bb.encode_image(train_images).float() for _ in range(c["augment_epoch"])]
    method.set_cache(torch.stack(passes).mean(dim=0), train_labels)
    return method, train_images, train_labels


def _stats_gap(t: torch.Tensor, rec: dict) -> float:
    t = t.double()
    first = torch.tensor(rec["first"], dtype=torch.float64)
    return max(abs(float(t.sum()) - rec["sum"]), abs(float(t.norm()) - rec["l2"]),
               float((t.flatten()[: len(first)] - first).abs().max()))


def test_tip_adapter_L2():
    from cpbench.methods.tip_adapter import CLIP_SCALE, TipAdapter, TipAdapterOptions, cache_logits, search_hp

    case = load_case("tip_adapter_L2")
    images, labels, _ = golden_inputs(case)
    method, _, _ = _tip(case, TipAdapter, TipAdapterOptions)
    e = case["eval"]
    weights = method.classifier()                       # [C, E]; official clip_weights [E, C]
    assert float((weights.t() - torch.tensor(e["clip_weights"]["full"])).abs().max()) <= 1e-6
    assert _stats_gap(method.cache_keys.t(), e["cache_keys"]) <= 1e-5
    assert torch.equal(method.cache_values, torch.tensor(e["cache_values"]["full"]))
    f = method.encode_images(images)
    assert _stats_gap(f, e["test_features"]) <= 1e-5
    aff = method.affinity(f)
    assert float((aff - torch.tensor(e["affinity"])).abs().max()) <= 1e-5
    clip = CLIP_SCALE * f @ weights.t()
    assert float((clip - torch.tensor(e["clip_logits"])).abs().max()) <= LOGIT_ATOL
    cache = cache_logits(aff, method.cache_values, e["beta"])
    assert float((cache - torch.tensor(e["cache_logits"])).abs().max()) <= LOGIT_ATOL
    assert (float(method.beta), float(method.alpha)) == pytest.approx((e["beta"], e["alpha"]))  # the initial values
    assert_close(compare_logits(eval_logits(method, images, case), case), LOGIT_ATOL, "tip logits")
    # the official search on this split (strict improvement over accuracy 0 never happens: (0, 0))
    beta, alpha, _ = search_hp(aff, clip, method.cache_values, labels, method.options)
    assert (beta, alpha) == (e["search_hp"]["best_beta"], e["search_hp"]["best_alpha"])
    assert case.trainable == [] and case["grads"] == {} and method.n_learnable() == 0


def test_tip_adapter_f_L2():
    from cpbench.methods.tip_adapter_f import TipAdapterF, TipAdapterFOptions

    case = load_case("tip_adapter_f_L2")
    images, _, _ = golden_inputs(case)
    method, train_images, train_labels = _tip(case, TipAdapterF, TipAdapterFOptions)
    (t,) = case.trainable
    assert t["name"] == "adapter.weight" and "cache_keys.t()" in t["init"]
    # the official initial adapter weight is the keys (not the seeded rule)
    method.adapter.weight = torch.nn.Parameter(method.cache_keys.clone())
    name_map = {"adapter.weight": "adapter.weight"}
    assert_close(constructor_init_gaps(method, case, name_map), 1e-5, "adapter init = cache keys")
    method.train()
    torch.manual_seed(forward_seed(case))
    logits, terms = method.forward_train(train_images, train_labels)    # one step on the whole training set
    assert float((logits.detach() - torch.tensor(case["train"]["tip_logits_train"])).abs().max()) <= LOGIT_ATOL
    method.backward(terms, lambda x: x)
    L = official_losses(case)
    assert_close(compare_losses({k: v.detach() for k, v in terms.items()}, {"ce": L["ce(tip_logits,"]}, case),
                 LOSS_RTOL, "loss terms")
    assert_close(compare_grads(method, case, name_map), GRAD_RTOL, "gradients")
    assert official_grad(case, "adapter.weight")["shape"] == list(method.adapter.weight.shape)
    # eval after the (step-disabled) epoch: the initial β/α, the unchanged adapter
    assert_close(compare_logits(eval_logits(method, images, case), case), LOGIT_ATOL, "eval logits")


# ----------------------------------------------------------------------------- CLIP-LoRA
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
