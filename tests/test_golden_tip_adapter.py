"""Tip-Adapter and Tip-Adapter-F against the OFFICIAL code's numbers (gaopengcuhk/Tip-Adapter d0e2d6f;
tests/golden/, see its README section "Methods III"), case A (2+2 blocks): the cache, the searched
β/α, eval logits, every loss term, the gradient of the learned keys. Every input (weights, images,
labels, class names, the training set, cfg values) is read from the case file."""

from __future__ import annotations

import pytest
import torch
from golden_utils import (GRAD_RTOL, LOGIT_ATOL, LOSS_RTOL, assert_close, compare_grads, compare_logits,
                          compare_losses, constructor_init_gaps, eval_logits, forward_seed, golden_backbone,
                          golden_inputs, load_case, official_grad, official_losses)


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
