"""Speed paths are exact (or flagged): cached evaluation features, one text pass per evaluation,
and the opt-in cached augmented train views are deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cpbench.config import TrainConfig
from cpbench.data.splits import Item
from cpbench.engine.cache import FeatureCache
from cpbench.engine.evaluate import evaluate
from cpbench.engine.precision import resolve_precision
from cpbench.engine.train import train
from cpbench.methods.coop import CoOp, CoOpOptions

NAMES = ["red circle", "blue square", "green triangle", "yellow star"]


@pytest.fixture(scope="module")
def image_list(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    items = []
    for label in range(len(NAMES)):
        for i in range(6):
            arr = (rng.random((40, 48, 3)) * 255).astype("uint8")
            arr[..., label % 3] = 200  # a class-dependent tint so the task is not pure noise
            path = f"c{label}/{i}.png"
            (root / f"c{label}").mkdir(exist_ok=True)
            Image.fromarray(arr).save(root / path)
            items.append(Item(path, label, NAMES[label]))
    return root, items


def test_cached_eval_equals_uncached(tiny_backbone, image_list, tmp_path):
    root, items = image_list
    torch.manual_seed(0)
    m = CoOp(tiny_backbone, NAMES, CoOpOptions(ctx_init="", n_ctx=4))
    prec = resolve_precision("fp32", torch.device("cpu"))
    cache = FeatureCache(tmp_path / "cache")
    plain = evaluate(m, items, root, torch.device("cpu"), prec, batch_size=5)
    naive = evaluate(m, items, root, torch.device("cpu"), prec, batch_size=5, context_per_batch=True)
    first = evaluate(m, items, root, torch.device("cpu"), prec, batch_size=5, cache=cache, dataset="d")
    second = evaluate(m, items, root, torch.device("cpu"), prec, batch_size=5, cache=cache, dataset="d")
    assert not first.cached_features and second.cached_features
    assert plain.correct == naive.correct == first.correct == second.correct
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    # a different image list gets a different entry
    evaluate(m, items[:7], root, torch.device("cpu"), prec, batch_size=5, cache=cache, dataset="d")
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def _trained_ctx(backbone, items, root, views, seed=3):
    torch.manual_seed(0)
    m = CoOp(backbone, NAMES, CoOpOptions(ctx_init="", n_ctx=4))
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, warmup_epochs=0, feature_views=views, precision="fp32")
    train(m, items, root, cfg, torch.device("cpu"), resolve_precision("fp32", torch.device("cpu")), seed)
    return m.ctx.detach().clone()


def test_feature_views_training_is_deterministic_and_moves_params(tiny_backbone, image_list):
    root, items = image_list
    a = _trained_ctx(tiny_backbone, items, root, views=2)
    b = _trained_ctx(tiny_backbone, items, root, views=2)
    c = _trained_ctx(tiny_backbone, items, root, views=0)
    torch.manual_seed(0)
    init = CoOp(tiny_backbone, NAMES, CoOpOptions(ctx_init="", n_ctx=4)).ctx.detach()
    assert torch.equal(a, b)
    assert not torch.equal(a, init) and not torch.equal(c, init)


def test_uint8_pixels_normalised_on_device_equal_the_full_transforms(image_list):
    """The loaders ship uint8 pixels and finish ToTensor + Normalize on the batch: bit-identical,
    for the test transform and for the train transform under the same random draws."""
    from cpbench.data.images import load_image, test_pixels, test_transform, to_model_input, train_pixels, train_transform
    from cpbench.models.backbone import OPENAI_MEAN, OPENAI_STD, Preprocess

    root, items = image_list
    pre = Preprocess(24, OPENAI_MEAN, OPENAI_STD)
    imgs = [load_image(root / it.path) for it in items[:6]]
    cpu = torch.device("cpu")
    full = torch.stack([test_transform(pre)(im) for im in imgs])
    pixels = torch.stack([test_pixels(pre)(im) for im in imgs])
    assert pixels.dtype == torch.uint8
    assert torch.equal(to_model_input(pixels, pre, cpu), full)
    torch.manual_seed(5)
    full = torch.stack([train_transform(pre)(im) for im in imgs])
    torch.manual_seed(5)
    pixels = torch.stack([train_pixels(pre)(im) for im in imgs])
    assert torch.equal(to_model_input(pixels, pre, cpu), full)
    assert to_model_input(pixels, pre, cpu, torch.float16).dtype == torch.float16
