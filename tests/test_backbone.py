"""Prompt-aware encoders agree with open_clip, truncation is exact, deep prompts replace."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from cpbench.methods.coop import CoOp, CoOpOptions
from cpbench.methods.zeroshot import ZeroShotCLIP, ZeroShotOptions

NAMES = ["golden retriever", "tabby_cat", "airliner", "red fox", "sports car"]


def test_text_encoder_matches_open_clip_and_truncation_is_exact(tiny_backbone):
    b = tiny_backbone
    texts = ["a photo of a dog.", "a much longer sentence about a small red striped triangle on grey.", "x"]
    ids = b.tokenize(texts)
    with torch.no_grad():
        ref = b.clip.encode_text(ids)
        b.text.truncate = False
        full = b.text(b.token_embedding(ids), ids.argmax(-1))
        b.text.truncate = True
        cut = b.text(b.token_embedding(ids), ids.argmax(-1))
    torch.testing.assert_close(full, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(cut, ref, rtol=0, atol=1e-5)


def test_image_encoder_matches_open_clip(tiny_backbone):
    b = tiny_backbone
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(b.encode_image(x), b.clip.encode_image(x), rtol=0, atol=1e-5)
        # an empty prompt set takes the explicit path and must agree too
        torch.testing.assert_close(b.encode_image(x, prompts=torch.zeros(0, b.vision_width)),
                                   b.clip.encode_image(x), rtol=0, atol=1e-5)


def test_deep_prompts_replace_not_accumulate(tiny_backbone):
    b = tiny_backbone
    v = b.clip.visual
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    p0 = torch.randn(3, b.vision_width)
    p1 = torch.randn(3, b.vision_width)
    seen = []
    hooks = [blk.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone())) for blk in v.transformer.resblocks]
    try:
        with torch.no_grad():
            b.encode_image(x, prompts=p0, deep=[None, p1])
    finally:
        for h in hooks:
            h.remove()
    n_tokens = 1 + (32 // 8) ** 2 + 3
    assert [t.shape[1] for t in seen] == [n_tokens, n_tokens]
    assert torch.equal(seen[1][:, -3:], p1.unsqueeze(0).expand(2, -1, -1))
    # text side: tokens 1..n replaced before layer 1
    ids = b.tokenize(["a photo of a cat."])
    tp = torch.randn(2, b.text_width)
    seen.clear()
    hooks = [blk.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone())) for blk in b.clip.transformer.resblocks]
    try:
        with torch.no_grad():
            b.text(b.token_embedding(ids), ids.argmax(-1), deep=[None, tp])
    finally:
        for h in hooks:
            h.remove()
    assert seen[0].shape == seen[1].shape
    assert torch.equal(seen[1][0, 1:3], tp)


def test_coop_from_a_photo_of_a_equals_zeroshot(tiny_backbone):
    coop = CoOp(tiny_backbone, NAMES, CoOpOptions(ctx_init="a photo of a"))
    zs = ZeroShotCLIP(tiny_backbone, NAMES, ZeroShotOptions(template="a photo of a {}."))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, z = coop(x), zs(x)
    assert torch.equal(a, z), (a - z).abs().max()
    assert coop.n_learnable() == 4 * tiny_backbone.text_width


def test_coop_csc_and_positions_keep_eot(tiny_backbone):
    for pos in ("end", "middle", "front"):
        m = CoOp(tiny_backbone, NAMES, CoOpOptions(ctx_init="", n_ctx=4, class_token_position=pos, csc=True))
        assert m.ctx.shape == (len(NAMES), 4, tiny_backbone.text_width)
        prompts = m.assemble(m.ctx)
        assert prompts.shape[:2] == (len(NAMES), tiny_backbone.clip.context_length)
        feats = m.text_features()
        assert feats.shape == (len(NAMES), tiny_backbone.embed_dim)


def test_train_crop_scale_is_the_backbones(tiny_backbone, tmp_path, monkeypatch):
    """Real backbones train prompts on Dassl's RandomResizedCrop(0.08-1); the 64-pixel toy backbone
    declares its own area range in toy_clip.json, and the train transform uses it."""
    import json
    import shutil

    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    import cpbench.models.backbone as bb
    from cpbench.data.images import test_transform, train_transform

    def crop(pre):
        tf = train_transform(pre).transforms
        assert any(isinstance(t, T.RandomHorizontalFlip) for t in tf)
        rrc = [tuple(t.scale) for t in tf if isinstance(t, T.RandomResizedCrop)]
        return rrc[0] if rrc else None

    assert crop(tiny_backbone.preprocess) == (0.08, 1.0)
    toy = bb.load_backbone("toy")
    cfg = json.loads((bb.TOY_DIR / "toy_clip.json").read_text())
    assert "train_crop_scale" in cfg["preprocess"] and cfg["preprocess"]["train_crop_scale"] is None
    assert toy.preprocess.train_crop_scale is None and crop(toy.preprocess) is None
    # whole image: the train transform of a 64-pixel toy image is the test transform plus a flip
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    flipped = torch.flip(test_transform(toy.preprocess)(img), dims=[-1])
    outs = [train_transform(toy.preprocess)(img) for _ in range(8)]
    assert all(torch.equal(o, test_transform(toy.preprocess)(img)) or torch.equal(o, flipped) for o in outs)
    cfg_half = {**cfg, "preprocess": {**cfg["preprocess"], "train_crop_scale": [0.5, 1.0]}}
    # the toy config identifies the embedded weights in result keys: new weights, new keys; and a
    # crop scale it declares is the one used
    copy = tmp_path / "toy"
    shutil.copytree(bb.TOY_DIR, copy)
    before = bb.toy_fingerprint()
    monkeypatch.setattr(bb, "TOY_DIR", copy)
    assert bb.toy_fingerprint() == before
    (copy / "toy_clip.json").write_text(json.dumps(cfg_half))
    assert bb.toy_fingerprint() != before
    assert crop(bb.load_backbone("toy").preprocess) == (0.5, 1.0)


def test_result_keys_follow_the_embedded_toy_weights(tmp_path, monkeypatch):
    import cpbench.protocols.jobs as jobs
    import cpbench.protocols.keys as keys
    from cpbench.protocols import base2new

    (job,) = base2new.plan("coop", ["toy_shapes"], [1], 16)
    s = jobs.RunSettings(data_root=tmp_path, results_root=tmp_path, backbone="toy", pretrained="openai")
    cfg = jobs.job_config(job, s)
    a = keys.job_key(job, cfg, s), keys.training_key(job, cfg, s)
    monkeypatch.setattr(keys, "toy_fingerprint", lambda: "other-weights")
    b = keys.job_key(job, cfg, s), keys.training_key(job, cfg, s)
    assert a[0] != b[0] and a[1] != b[1]
    # an explicit --weights file is identified by its path, as for every backbone
    s2 = jobs.RunSettings(data_root=tmp_path, results_root=tmp_path, backbone="toy", weights="/w.safetensors")
    with_file = keys.job_key(job, cfg, s2)
    monkeypatch.setattr(keys, "toy_fingerprint", lambda: "yet-other-weights")
    assert keys.job_key(job, cfg, s2) == with_file


def test_loading_line_names_the_weights_that_load():
    from cpbench.models.backbone import describe_weights

    assert describe_weights("toy", "openai", None) == "embedded toy weights"
    assert describe_weights("tiny", "openai", None) == "random weights"
    assert describe_weights("ViT-B-16", "none", None) == "random weights"
    assert describe_weights("ViT-B-16", "openai", None) == "openai weights"
    assert describe_weights("toy", "openai", "/w/x.safetensors") == "weights /w/x.safetensors"


def test_hub_plan_decides_without_open_clips_retries(monkeypatch):
    """Cached: load (offline if the host is unreachable); not cached and unreachable or
    HF_HUB_OFFLINE: 'unavailable' at once, naming why."""
    from huggingface_hub import constants

    from cpbench.models import hub

    cfg = {"hf_hub": "timm/vit_base_patch16_clip_224.openai/", "url": "https://example.invalid/ViT-B-16.pt"}
    cached = {"value": False}
    monkeypatch.setattr(hub, "_hub_cached", lambda repo, name: cached["value"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hub.plan(cfg, probe=lambda host: True) == "download"
    assert hub.plan(cfg, probe=lambda host: False).startswith("unavailable: huggingface.co cannot be reached")
    cached["value"] = True
    assert hub.plan(cfg, probe=lambda host: False) == "cache"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.plan(cfg, probe=lambda host: pytest.fail("no probe when offline")) == "cache"
    cached["value"] = False
    assert "HF_HUB_OFFLINE" in hub.plan(cfg, probe=lambda host: True)
    assert hub.plan({}, probe=lambda host: False) == "download"  # unknown tag: open_clip says so itself
    with hub.hub_offline():
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is True  # restored to what it was


def test_unreachable_host_is_found_within_the_probe_limit(monkeypatch):
    """``reachable`` gives up after its limit even when the connection (DNS included) never
    answers; how long that takes on a real network: benchmarks/latency/."""
    import threading

    from cpbench.models import hub

    assert hub.reachable("127.0.0.1", port=9, seconds=2) is False  # nothing listens on the discard port
    assert hub.reachable("host.invalid", seconds=2) is False
    never = threading.Event()
    monkeypatch.setattr(hub.socket, "create_connection", lambda *a, **k: never.wait())  # hangs for good
    assert hub.reachable("example.org", seconds=0.2) is False


def test_default_backbone_offline_fails_fast(tmp_path, cli):
    """No HF_HUB_OFFLINE, an empty cache and an unreachable hub: one line naming the fix in
    seconds, not after a minute of download retries (issue 17)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from minidata import make_caltech

    make_caltech(tmp_path / "data")
    rc, out, err = cli("run", "zeroshot", "--backbone", "ViT-B-16", "--pretrained", "openai", "--shots", "2",
                       "--seeds", "1", "--device", "cpu", "--root", str(tmp_path / "data"),
                       "--results", str(tmp_path / "res"),
                       env={"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "https://127.0.0.1:9",
                            "HF_HUB_OFFLINE": "0", "XDG_CACHE_HOME": str(tmp_path / "cache")}, timeout=300)
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("loading backbone")]
    # "cannot be reached": the probe answered, no download was tried (how long it takes: benchmarks/latency/)
    assert len(lines) == 1 and "cannot be reached" in lines[0] and "--weights" in lines[0], err
