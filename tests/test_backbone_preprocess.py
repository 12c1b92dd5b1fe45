"""Each backbone's test-time preprocessing is open_clip's own (``image_transform_v2`` of the model's
``preprocess_cfg``): every distinct configuration among open_clip's pretrained tags (SigLIP's
squash resize and 0.5 mean/std, MobileCLIP's bilinear, ImageNet statistics ...) gives the same
tensor, pixel for pixel, on images of several shapes; so does the one mode no tag uses (longest
side, padded)."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from PIL import Image

from cpbench.data import images as im
from cpbench.models.backbone import Preprocess


def _tag_configs() -> list[tuple[str, str, dict]]:
    """One (model, tag, merged preprocess cfg) per distinct preprocessing among the pretrained tags,
    merged as open_clip's create_model merges it (defaults, the tag's, the model's image size)."""
    seen, out = set(), []
    for model, tag in open_clip.list_pretrained():
        cfg = merge_preprocess_dict(PreprocessCfg(), open_clip.get_pretrained_cfg(model, tag))
        size = open_clip.get_model_config(model)["vision_cfg"].get("image_size", 224)
        cfg["size"] = size
        key = (cfg["resize_mode"], cfg["interpolation"], tuple(cfg["mean"]), tuple(cfg["std"]))
        if key not in seen:
            seen.add(key)
            out.append((model, tag, cfg))
    return out


CONFIGS = _tag_configs()


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((300, 200), (180, 320), (64, 64))]


def test_the_tags_cover_the_resize_modes_that_matter():
    modes = {cfg["resize_mode"] for _, _, cfg in CONFIGS}
    assert {"shortest", "squash"} <= modes and len(CONFIGS) >= 6
    siglip = open_clip.get_pretrained_cfg("ViT-B-16-SigLIP", "webli")
    pre = Preprocess.from_open_clip(merge_preprocess_dict(PreprocessCfg(), siglip), 224)
    assert (pre.resize_mode, pre.mean, pre.std) == ("squash", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.mark.parametrize("model,tag,cfg", CONFIGS, ids=[f"{m}:{t}" for m, t, _ in CONFIGS])
def test_test_transform_is_open_clips(model, tag, cfg):
    pre = Preprocess.from_open_clip(cfg)
    ref = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    for img in _images():
        want = ref(img)
        assert torch.equal(im.test_transform(pre)(img), want), (model, tag, img.size)
        # the loaders' uint8 half + the batched finish on the device: the same tensor
        got = im.to_model_input(im.test_pixels(pre)(img).unsqueeze(0), pre, torch.device("cpu"))[0]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_longest_side_mode_pads_as_open_clip():
    cfg = {**PreprocessCfg().__dict__, "size": 96, "resize_mode": "longest", "fill_color": 7}
    pre = Preprocess.from_open_clip(cfg)
    ref = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    for img in _images():
        assert torch.equal(im.test_transform(pre)(img), ref(img))
