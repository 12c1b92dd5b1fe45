"""Every method on every backbone family (tiny random models, tests/backbone_zoo.py): it trains one
step and evaluates, or it is refused in one line that names what would run, both from the model
config before anything loads (``families.check_methods``) and on the built model (``Method``)."""

from __future__ import annotations

import functools

import pytest
import torch

import backbone_zoo as zoo
from cpbench.errors import UserError
from cpbench.methods.registry import get_method_class, method_names
from cpbench.models import families

NAMES = ["red circle", "blue square", "green triangle"]
NO_VISUAL_PROMPTS = {"ResNet", "ConvNeXt", "MobileCLIP"}
VISUAL = {"maple", "ivlp", "promptsrc", "maple_lamm"}
# frozen towers through their own encode_text / encode_image: every family
FROZEN_TOWERS = {"zeroshot", "linear_probe", "clip_adapter", "tip_adapter", "tip_adapter_f"}
# CLIP-LoRA patches CLIP's towers: a causal text transformer pooled at its end token, open_clip's ViT
CLIP_TOWERS = {"CLIP ViT", "MetaCLIP 2"}
# the zoo's text context is 16 tokens: ProGrad's 16-slot context would not leave room for a name
OPTIONS = {"prograd": dict(n_ctx=4)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folders = zoo.tokenizer_folders(tmp_path_factory.mktemp("tokenizers"))
    return folders, functools.lru_cache(maxsize=None)(lambda family: zoo.build(family, folders))


def expected_refusal(family: str, method: str) -> bool:
    if method == "clip_lora":
        return family not in CLIP_TOWERS
    if family == "Hugging Face text tower":
        return method not in FROZEN_TOWERS
    return family in NO_VISUAL_PROMPTS and method in VISUAL


def one_step_and_evaluate(method) -> torch.Tensor:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    bb = method.backbone
    if method.name == "cpl":
        method.set_negative_features(torch.randn(3, bb.embed_dim, generator=torch.Generator().manual_seed(1)))
    if method.name == "linear_probe":
        method.fit_features(torch.randn(12, bb.embed_dim, generator=torch.Generator().manual_seed(2)),
                            torch.arange(12) % 3, None, None)
    if method.name in ("tip_adapter", "tip_adapter_f"):   # the cache from the training images' features
        with torch.no_grad():
            method.set_cache(bb.encode_image(x).float(), y)
        if method.name == "tip_adapter_f":
            method.adapter.weight = torch.nn.Parameter(method.cache_keys.clone())
    params = [p for p in method.parameters() if p.requires_grad]
    if params:
        before = [p.detach().clone() for p in params]
        method.train()
        opt = torch.optim.SGD(params, lr=0.1)
        _, terms = method.forward_train(x, y)
        sum(terms.values()).backward()
        opt.step()
        assert any(not torch.equal(b, p) for b, p in zip(before, params)), "no parameter moved"
    method.eval()
    with torch.no_grad():
        return method.logits_from_features(method.encode_images(x), method.eval_context())


@pytest.mark.parametrize("family", list(zoo.FAMILIES))
def test_every_method_trains_and_evaluates_or_is_refused_in_one_line(built, family):
    folders, build = built
    bb, _ = build(family)
    facts = families.facts_from_config(family, zoo.config(family, folders))
    for name in method_names():
        cls = get_method_class(name)
        why = families.unsupported(cls, facts, family)
        assert bool(why) == expected_refusal(family, name), (family, name, why)
        options = cls.Options(**OPTIONS.get(name, {}))
        if why:
            assert "\n" not in why and ("list --backbones" in why or families.PROMPTABLE_IMAGE_FAMILIES in why)
            with pytest.raises(UserError) as err:   # the built model says the same
                cls(bb, NAMES, options)
            assert str(err.value) == why
            continue
        logits = one_step_and_evaluate(cls(bb, NAMES, options))
        assert logits.shape == (4, 3) and torch.isfinite(logits).all(), (family, name)
