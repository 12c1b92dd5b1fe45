"""Every open_clip family, driven exactly: cpbench's prompt-aware encoders on tiny random models of
each family (tests/backbone_zoo.py) equal the model's own ``encode_text`` / ``encode_image``; CoOp
with its context set to a hard prompt's embeddings is zero-shot with that prompt; the exact speed
tricks switch themselves off where they would not be exact; deep and visual prompts go where the
module docstrings say; what the config says a family allows is what the built model allows."""

from __future__ import annotations

import functools

import pytest
import torch

import backbone_zoo as zoo
from cpbench.models import families
from cpbench.models.text import common_prefix

FAMILIES = list(zoo.FAMILIES)
TEXT_FAMILIES = [f for f in FAMILIES if f != "Hugging Face text tower"]
TEXTS = ["a photo of a dog.", "a much longer sentence about a small red striped triangle on grey.", "x",
         "This is an IMAGE of a bird!"]
NAMES = ["golden retriever", "tabby cat", "airliner", "red fox", "sports car"]
# (cut sequences after the longest EOT, encode a shared prefix once): exact only with a causal mask
# and pooling at the EOT (CoCa's class token: cut, not shared)
TRICKS = {"CLIP ViT": (True, True), "ResNet": (True, True), "ConvNeXt": (True, True), "EVA": (True, True),
          "PE-Core": (True, True), "MetaCLIP 2": (True, True), "CoCa": (True, False), "SigLIP": (False, False),
          "SigLIP 2": (False, False), "CLIPA": (False, False), "MobileCLIP": (False, False)}
START = {"SigLIP": 0}   # SigLIP's T5 SentencePiece has no start token; every other tokenizer has one


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return zoo.tokenizer_folders(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def built(folders):
    return functools.lru_cache(maxsize=None)(lambda family: zoo.build(family, folders))


def images(n=3, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_text_and_image_features_equal_the_models_own(built, family):
    bb, model = built(family)
    ids = bb.tokenize(TEXTS)
    with torch.no_grad():
        ref = model.encode_text(ids, normalize=False)
        torch.testing.assert_close(bb.encode_text(TEXTS), ref, rtol=0, atol=1e-5)
        if bb.text is not None:   # without the speed tricks too
            bb.text.truncate = bb.text.share_prefix = False
            try:
                torch.testing.assert_close(bb.encode_text(TEXTS), ref, rtol=0, atol=1e-5)
            finally:
                bb.text.truncate = bb.text.share_prefix = True
        x = images()
        ref_img = model.encode_image(x, normalize=False)
        ref_img = ref_img[0] if isinstance(ref_img, tuple) else ref_img
        torch.testing.assert_close(bb.encode_image(x), ref_img, rtol=0, atol=1e-6)
        if bb.image.supports_prompts:   # the explicit (prompt) path with no prompt tokens is the tower itself
            torch.testing.assert_close(bb.encode_image(x, prompts=torch.zeros(0, bb.vision_width)), ref_img,
                                       rtol=0, atol=1e-5)
    assert bb.text_start == START.get(family, 1)


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_coop_with_a_hard_prompts_embeddings_is_zero_shot(built, family):
    from cpbench.methods.coop import CoOp, CoOpOptions
    from cpbench.methods.zeroshot import ZeroShotCLIP, ZeroShotOptions

    bb, _ = built(family)
    zs = ZeroShotCLIP(bb, NAMES, ZeroShotOptions(template="a photo of a {}."))
    from_init = CoOp(bb, NAMES, CoOpOptions(ctx_init="a photo of a"))
    placeholder = CoOp(bb, NAMES, CoOpOptions(ctx_init="", n_ctx=4))   # "X X X X {name}.", random context
    s = bb.text_start
    with torch.no_grad():
        placeholder.ctx.copy_(bb.token_embedding(bb.tokenize(["a photo of a"]))[0, s: s + 4])
        x = images(4, seed=2)
        z = zs(x)
        torch.testing.assert_close(from_init(x), z, rtol=0, atol=1e-5)
        torch.testing.assert_close(placeholder(x), z, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", list(TRICKS))
def test_speed_tricks_apply_only_where_exact(built, family):
    bb, _ = built(family)
    assert (bb.text.cuttable, bb.text.shareable) == TRICKS[family]
    ids = bb.tokenize([f"a photo of a {n}." for n in NAMES])
    emb, eot = bb.token_embedding(ids), bb.eot(ids)
    shared = common_prefix(ids, eot)
    assert shared == START.get(family, 1) + 4   # the start token and "a photo of a"
    with torch.no_grad():
        bb.text.truncate = bb.text.share_prefix = False
        try:
            full = bb.text(emb, eot)
        finally:
            bb.text.truncate = bb.text.share_prefix = True
        torch.testing.assert_close(bb.text(emb, eot, shared=shared), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_deep_text_prompts_replace_the_context_positions_of_every_tower(built, family):
    bb, _ = built(family)
    ids = bb.tokenize(["a photo of a cat."])
    deep = torch.randn(2, bb.text_width)
    seen = []
    blocks = bb.text.transformer.resblocks
    hooks = [b.register_forward_pre_hook(lambda m, a, kw=None: seen.append(a[0].clone())) for b in blocks]
    try:
        with torch.no_grad():
            out = bb.text(bb.token_embedding(ids), bb.eot(ids), deep=[None, deep])
            plain = bb.text(bb.token_embedding(ids), bb.eot(ids))
    finally:
        for h in hooks:
            h.remove()
    s = bb.text_start
    assert seen[0].shape == seen[1].shape
    assert torch.equal(seen[1][0, s: s + 2], deep)
    assert not torch.equal(seen[0][0, s: s + 2], deep)
    assert not torch.allclose(out, plain)


PROMPTABLE = [f for f in FAMILIES if f not in ("ResNet", "ConvNeXt", "MobileCLIP")]


@pytest.mark.parametrize("family", PROMPTABLE)
def test_visual_prompts_enter_every_layer_and_leave_before_pooling(built, family):
    bb, _ = built(family)
    blocks = bb.clip.visual.transformer.resblocks if bb.image.kind == "clip-vit" else bb.clip.visual.trunk.blocks
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone())) for b in blocks]
    x = images(2, seed=1)
    p0, p1 = torch.randn(3, bb.vision_width), torch.randn(3, bb.vision_width)
    try:
        with torch.no_grad():
            prompted = bb.encode_image(x, prompts=p0, deep=[None, p1])
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        plain = bb.encode_image(x)
    assert seen[0].shape[1] == seen[1].shape[1] and seen[0].shape[1] >= 3 + 4   # tokens + 3 prompts
    assert torch.equal(seen[1][:, -3:], p1.unsqueeze(0).expand(2, -1, -1))
    assert prompted.shape == plain.shape and not torch.allclose(prompted, plain)


def test_rotary_table_gives_prompt_tokens_the_identity_rotation():
    from timm.layers.pos_embed_sincos import apply_rot_embed_cat

    from cpbench.models.vision import _extend_rope

    rope = torch.randn(5, 8)   # 5 patches, [sin | cos] of 4 dims
    q = torch.randn(2, 2, 7, 4)   # batch, heads, 5 patches + 2 prompts, head dim
    out = apply_rot_embed_cat(q, _extend_rope(rope, 2))
    torch.testing.assert_close(out[:, :, :5], apply_rot_embed_cat(q[:, :, :5], rope))
    assert torch.equal(out[:, :, 5:], q[:, :, 5:])


@pytest.mark.parametrize("family", FAMILIES)
def test_what_the_config_allows_is_what_the_built_model_allows(built, folders, family):
    bb, _ = built(family)
    f = families.facts_from_config(family, zoo.config(family, folders))
    assert (f.text, f.causal, f.pool, f.image_prompts) == (bb.facts.text, bb.facts.causal, bb.facts.pool,
                                                           bb.facts.image_prompts)


def test_timm_trunk_table_matches_the_classes_timm_builds():
    """Every timm image model an open_clip config names falls under a TIMM_TRUNKS prefix, and for
    one model per prefix the class timm builds (on the meta device: no memory, no weights) takes
    prompts exactly when the table says so (every model of the lot: 40 s; one per prefix: ~5 s)."""
    import open_clip
    import timm

    from cpbench.models.vision import image_tower_kind

    names = sorted({families.model_config(n)["vision_cfg"].get("timm_model_name") for n in families.builtin_names()}
                   - {None})
    by_prefix: dict[str, str] = {}
    for name in names:
        prefix = next((p for p, _, _ in families.TIMM_TRUNKS if name.startswith(p)), None)
        assert prefix is not None, name
        by_prefix.setdefault(prefix, name)
    by_prefix["vit_"] = "vit_base_mci_224"   # MobileCLIP-B's hybrid: a conv stem before plain ViT blocks
    assert len(by_prefix) == len(families.TIMM_TRUNKS)
    for name in by_prefix.values():
        with torch.device("meta"):
            trunk = timm.create_model(name, pretrained=False)
        wrapper = open_clip.timm_model.TimmModel.__new__(open_clip.timm_model.TimmModel)   # the tower around it
        torch.nn.Module.__init__(wrapper)
        wrapper.trunk = trunk
        assert (image_tower_kind(wrapper) is not None) == families.timm_trunk(name)[1], name


def test_backbone_table_groups_every_open_clip_model_and_names_what_runs():
    from cpbench.methods.registry import get_method_class, method_names

    rows = families.table({m: get_method_class(m) for m in method_names()})
    listed = [n for r in rows for n in r["models"]]
    assert sorted(listed) == families.builtin_names() and len(listed) == len(set(listed)) >= 140
    by_model = {n: r for r in rows for n in r["models"]}
    for name in ("RN50", "convnext_tiny", "MobileCLIP-S1"):
        assert "maple" in by_model[name]["methods"] and by_model[name]["methods"].startswith("all but")
    for name in ("ViT-B-16", "ViT-H-14-worldwide"):   # CLIP's own towers: every method, CLIP-LoRA included
        assert by_model[name]["methods"] == "all", name
    for name in ("EVA02-B-16", "ViT-B-16-SigLIP", "coca_ViT-B-32", "ViT-L-14-CLIPA"):
        assert by_model[name]["methods"] == "all but clip_lora", name
    assert by_model["xlm-roberta-base-ViT-B-32"]["methods"] == \
        "only clip_adapter, linear_probe, tip_adapter, tip_adapter_f, zeroshot"
    fams = {r["family"] for r in rows}
    assert {"EVA", "SigLIP", "SigLIP 2", "MobileCLIP", "CoCa", "CLIPA", "MetaCLIP 2", "ConvNeXt", "ResNet"} <= fams
    # the families a refusal names as taking visual prompts are those whose rows run maple
    named = {f.split("-B/L")[0] for f in families.PROMPTABLE_IMAGE_FAMILIES.split(", ")}
    assert named == {r["family"] for r in rows if "maple" not in r["methods"] or r["methods"] == "all"} - {
        "Hugging Face text tower"}


def test_list_backbones_prints_the_table(cli_here):
    code, out, _ = cli_here("list", "--backbones")
    assert code == 0
    for word in ("EVA02-B-16", "SigLIP", "ConvNeXt", "FastViT", "RN50", "maple"):   # short words: rich wraps cells
        assert word in out
