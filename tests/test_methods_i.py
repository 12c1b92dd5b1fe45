"""Methods I (issue 5): CoCoOp, IVLP, MaPLe, PromptSRC, KgCoOp, linear probe — invariants,
hand-computed loss terms, GPA, parameter counts at ViT-B/16 and base-to-new end to end (the
comparisons with the official code's numbers live in test_golden_methods_i.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cpbench.errors import UserError
from cpbench.methods.cocoop import CoCoOp, CoCoOpOptions
from cpbench.methods.coop import CoOp, CoOpOptions
from cpbench.methods.ivlp import IVLP, IVLPOptions
from cpbench.methods.kgcoop import KgCoOp, KgCoOpOptions
from cpbench.methods.maple import MaPLe, MaPLeOptions
from cpbench.methods.promptsrc import TEMPLATES, PromptSRC, PromptSRCOptions, gpa_weights, src_losses
from cpbench.methods.zeroshot import ZeroShotCLIP, ZeroShotOptions

NAMES = ["golden retriever", "tabby_cat", "airliner", "red fox", "sports car"]


def images(n=3, seed=0, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def perturb(t: torch.Tensor, seed: int, scale: float = 0.05) -> None:
    with torch.no_grad():
        t.add_(scale * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed)).to(t.dtype))


# ============================================================================ CoCoOp
def test_cocoop_with_zeroed_meta_net_equals_coop(tiny_backbone):
    co = CoCoOp(tiny_backbone, NAMES, CoCoOpOptions(eval_chunk=2))
    coop = CoOp(tiny_backbone, NAMES, CoOpOptions(ctx_init="a photo of a"))
    perturb(coop.ctx, 1)
    with torch.no_grad():
        co.ctx.copy_(coop.ctx)
        co.meta_net.linear2.weight.zero_()
        co.meta_net.linear2.bias.zero_()
    x, y = images(), torch.tensor([0, 3, 4])
    assert torch.allclose(co(x), coop(x), atol=1e-5)
    (_, t1), (_, t2) = co.forward_train(x, y), coop.forward_train(x, y)
    assert list(t1) == ["ce"] and torch.allclose(t1["ce"], t2["ce"], atol=1e-6)


def test_cocoop_prompts_are_per_image_and_meta_net_shapes(tiny_backbone):
    bb = tiny_backbone
    co = CoCoOp(bb, NAMES, CoCoOpOptions(eval_chunk=1))
    assert co.n_ctx == 4 and co.ctx.shape == (4, bb.text_width)
    assert co.meta_net.linear1.in_features == bb.embed_dim and co.meta_net.linear1.out_features == bb.embed_dim // 16
    assert co.meta_net.linear2.out_features == bb.text_width
    perturb(co.meta_net.linear2.weight, 2, 0.5)
    x = images(2)
    f = co.encode_images(x)
    logits = co(x)                     # chunk of 1 image per text-encoder call
    for b in range(2):                 # each image's logits use its own ctx + π(f_b)
        ctx_b = co.ctx + co.meta_net(f[b: b + 1])
        t = F.normalize(bb.text(co.prompts.assemble(ctx_b), co.prompts.eot).float(), dim=-1)
        assert torch.allclose(logits[b], bb.logit_scale * f[b] @ t.t(), atol=1e-4)
    assert not co.image_prompted       # unprompted image encoder: features stay cacheable


# ============================================================================ IVLP / MaPLe
def test_ivlp_depth1_without_prompts_equals_zero_shot_clip(tiny_backbone):
    zs = ZeroShotCLIP(tiny_backbone, NAMES, ZeroShotOptions(template="a photo of a {}."))
    x = images()
    for n_text in (4, 0):   # ctx initialised from "a photo of a" / no text context at all
        m = IVLP(tiny_backbone, NAMES, IVLPOptions(n_ctx_text=n_text, n_ctx_vision=0, depth_text=1, depth_vision=0))
        assert m.VPT is None and m.deep_text is None and m.deep_vision is None
        assert torch.allclose(m(x), zs(x), atol=1e-4)


def test_maple_depth1_text_side_is_clip_and_it_is_ivlp_with_coupled_vision_prompts(tiny_backbone):
    bb = tiny_backbone
    m = MaPLe(bb, NAMES, MaPLeOptions(depth=1))
    assert len(m.compound_prompts_text) == 0
    clip_text = bb.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    assert torch.allclose(m.text_features(), clip_text, atol=1e-5)   # "a photo" learnable, "of a {name}." frozen
    iv = IVLP(bb, NAMES, IVLPOptions(n_ctx_text=2, n_ctx_vision=2, depth_text=1, depth_vision=1))
    perturb(m.ctx, 3)
    with torch.no_grad():
        iv.ctx.copy_(m.ctx)
        iv.VPT.copy_(m.proj(m.ctx))
    x = images()
    assert torch.allclose(m(x), iv(x), atol=1e-5)


def test_maple_parameters_and_identical_projection_init(tiny_backbone):
    m = MaPLe(tiny_backbone, NAMES, MaPLeOptions(depth=9))
    assert m.depth == 2 and len(m.compound_prompts_text) == 1          # capped by the 2 layers
    bb = tiny_backbone
    m4 = MaPLe(bb, NAMES, MaPLeOptions(depth=9))
    names = {n for n, p in m4.named_parameters() if p.requires_grad}
    assert {"ctx", "proj.weight", "compound_prompts_text.0", "compound_prompt_projections.0.weight"} <= names


def _record_block_inputs(blocks):
    seen, handles = [], []
    for i, blk in enumerate(blocks):
        handles.append(blk.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: seen.append((i, args[0].detach().clone())), with_kwargs=True))
    return seen, handles


@pytest.mark.parametrize("kind", ["ivlp", "maple"])
def test_deep_prompts_replace_tokens_at_every_prompted_layer(deep_backbone, kind):
    bb = deep_backbone
    if kind == "ivlp":
        m = IVLP(bb, NAMES, IVLPOptions(n_ctx_text=2, n_ctx_vision=3, depth_text=9, depth_vision=9))
        n_t, n_v = 2, 3
        text_deep = list(m.deep_text)
        vis_shallow, vis_deep = m.VPT, list(m.deep_vision)
    else:
        m = MaPLe(bb, NAMES, MaPLeOptions(n_ctx=2, depth=9))
        for j, p in enumerate(m.compound_prompt_projections):
            perturb(p.weight, 10 + j, 0.3)
        n_t = n_v = 2
        text_deep = list(m.compound_prompts_text)
        vis_shallow, vd = m.vision_prompts()
        vis_deep = vd[1:]
    assert len(text_deep) == 3 and len(vis_deep) == 3        # depth 9 capped at 4 layers: layers 1..3
    x = images(2)
    seen_t, ht = _record_block_inputs(bb.clip.transformer.resblocks)
    seen_v, hv = _record_block_inputs(bb.clip.visual.transformer.resblocks)
    bb.text.share_prefix = False  # the full pass calls the blocks (the shared pass equals it: test_shared_prefix)
    try:
        with torch.no_grad():
            m(x)
    finally:
        bb.text.share_prefix = True
        for h in ht + hv:
            h.remove()
    n_tok_t = {t.shape[1] for _, t in seen_t}
    n_tok_v = {t.shape[1] for _, t in seen_v}
    grid = (32 // 8) ** 2
    assert n_tok_v == {1 + grid + n_v} and len(n_tok_t) == 1          # the token count never grows
    for i, t in seen_t:
        if i >= 1:   # text tokens 1..n are exactly the layer's prompt (no positional embedding, no sum)
            assert torch.equal(t[:, 1: 1 + n_t], text_deep[i - 1].detach().expand(t.shape[0], -1, -1))
    for i, v in seen_v:
        if i >= 1:   # the last n vision tokens are exactly the layer's prompt
            assert torch.allclose(v[:, -n_v:], vis_deep[i - 1].detach().expand(v.shape[0], -1, -1), atol=1e-6)
    # every deep prompt matters: changing the one of layer 3 (last prompted) changes the logits
    before = m(x).detach()
    perturb(text_deep[2], 5, 0.5)
    assert not torch.allclose(m(x), before, atol=1e-4)


# ============================================================================ PromptSRC
def test_promptsrc_templates_are_the_official_60():
    assert len(TEMPLATES) == 60 and len(set(TEMPLATES)) == 60
    assert TEMPLATES[0] == "a photo of a {}." and TEMPLATES[-1] == "itap of the {}."
    assert "a jpeg corrupted photo of the {}." not in TEMPLATES and "a tattoo of the {}." not in TEMPLATES
    assert all(t.count("{}") == 1 for t in TEMPLATES)


def test_src_losses_equal_hand_computation_on_fixed_tensors():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    teacher = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    image = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    frozen = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    logits = 7.0 * image @ text.t()
    t = src_losses(logits, text, teacher, image, frozen, 7.0, 25.0, 10.0)
    assert math.isclose(float(t["text"]), 25 * float((text - teacher).abs().sum()) / 40, rel_tol=1e-6)
    assert math.isclose(float(t["image"]), 10 * float((image - frozen).abs().sum()) / 24, rel_tol=1e-6)
    zs = 7.0 * frozen @ teacher.t()
    p_zs, p = zs.softmax(-1), logits.softmax(-1)
    kl = float((p_zs * (p_zs.log() - p.log())).sum()) / 15
    assert math.isclose(float(t["kl"]), kl, rel_tol=1e-5)


def test_promptsrc_forward_train_terms_and_teacher(tiny_backbone):
    bb = tiny_backbone
    m = PromptSRC(bb, NAMES, PromptSRCOptions())
    perturb(m.ctx, 1)
    perturb(m.VPT, 2, 0.5)
    x, y = images(), torch.tensor([0, 2, 4])
    with torch.no_grad():
        _, terms = m.forward_train(x, y)
    assert sorted(terms) == ["ce", "image", "kl", "text"]
    names = [n.replace("_", " ") for n in NAMES]
    with torch.no_grad():
        raw = torch.stack([bb.encode_text([tp.format(n) for n in names]) for tp in TEMPLATES]).mean(0)
        teacher = F.normalize(raw, dim=-1)
        text = F.normalize(m.text_features(), dim=-1)
        img = F.normalize(m.image_features(x), dim=-1)
        frozen = F.normalize(bb.encode_image(x), dim=-1)
    assert torch.allclose(m.fixed_embeddings, raw, atol=1e-5)                    # mean of UNNORMALISED features
    assert "fixed_embeddings" not in m.learned_state()
    logits = bb.logit_scale * img @ text.t()
    assert math.isclose(float(terms["ce"]), float(F.cross_entropy(logits, y)), rel_tol=1e-5)
    assert math.isclose(float(terms["text"]), 25 * float((text - teacher).abs().mean()), rel_tol=1e-5)
    assert math.isclose(float(terms["image"]), 10 * float((img - frozen).abs().mean()), rel_tol=1e-5)
    zs = bb.logit_scale * frozen @ teacher.t()
    kl = float((zs.softmax(-1) * (zs.log_softmax(-1) - logits.log_softmax(-1))).sum()) / logits.numel()
    assert math.isclose(float(terms["kl"]), kl, rel_tol=1e-4, abs_tol=1e-7)
    m.set_classnames(NAMES[:2])
    assert m.fixed_embeddings.numel() == 0                                       # rebuilt per class set


def test_gpa_weights_are_the_normalised_gaussian_pdf():
    w = gpa_weights(20, 15, 1)
    pdf = np.array([math.exp(-0.5 * ((e - 15) / 1) ** 2) / math.sqrt(2 * math.pi) for e in range(1, 21)])
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-12)
    assert np.allclose(w.numpy(), pdf / pdf.sum(), rtol=1e-10, atol=1e-300)
    assert int(w.argmax()) == 14
    assert math.isclose(float(gpa_weights(1, 45, 1).sum()), 1.0)    # far-off mean: no underflow to 0/0


def test_gpa_aggregated_prompt_is_the_weighted_sum_of_epoch_prompts(tiny_backbone):
    m = PromptSRC(tiny_backbone, NAMES, PromptSRCOptions(gpa_mean=2.0, gpa_std=1.5))
    epochs = 4
    w = gpa_weights(epochs, 2.0, 1.5)
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert sorted(names) == ["VPT", "ctx", "deep_text", "deep_vision"]
    expected = {n: torch.zeros_like(m.get_parameter(n), dtype=torch.float64) for n in names}
    for e in range(epochs):
        for k, n in enumerate(names):
            perturb(m.get_parameter(n), 100 * e + k, 1.0)       # "training" moves every prompt
            expected[n] += float(w[e]) * m.get_parameter(n).detach().double()
        m.on_epoch_end(e, epochs)
        if e == 1:   # a resume after epoch 2: the accumulator travels with the learned state
            state = {k: v.clone() for k, v in m.learned_state().items()}
            assert "gpa_ctx" in state
            fresh = PromptSRC(tiny_backbone, NAMES, PromptSRCOptions(gpa_mean=2.0, gpa_std=1.5))
            fresh.load_learned_state(state)
            m = fresh
    m.on_train_end()
    for n in names:
        assert torch.allclose(m.get_parameter(n).double(), expected[n], atol=1e-6)


# ============================================================================ KgCoOp
def test_kgcoop_term_equals_hand_computation_and_ce_is_coop(tiny_backbone):
    bb = tiny_backbone
    kg = KgCoOp(bb, NAMES, KgCoOpOptions(), template="a photo of a {}, a type of pet.")
    coop = CoOp(bb, NAMES, CoOpOptions(ctx_init="a photo of a"))
    perturb(kg.ctx, 4, 0.3)
    with torch.no_grad():
        coop.ctx.copy_(kg.ctx)
    x, y = images(), torch.tensor([1, 1, 3])
    _, terms = kg.forward_train(x, y)
    _, cterms = coop.forward_train(x, y)
    assert sorted(terms) == ["ce", "kg"] and torch.allclose(terms["ce"], cterms["ce"], atol=1e-6)
    with torch.no_grad():
        t = F.normalize(kg.text_features(), dim=-1)
        clip_t = F.normalize(bb.encode_text([f"a photo of a {n.replace('_', ' ')}, a type of pet." for n in NAMES]), dim=-1)
    hand = 8.0 * (1 - float((t * clip_t).sum(-1).mean()))
    assert math.isclose(float(terms["kg"].detach()), hand, rel_tol=1e-5)
    assert [n for n, p in kg.named_parameters() if p.requires_grad] == ["ctx"]
    _, fterms = kg.forward_train_features(kg.encode_images(x), y)      # cached-view path keeps the kg term
    assert torch.allclose(fterms["kg"], terms["kg"])


# ============================================================================ linear probe
def test_linear_probe_search_and_prediction_follow_sklearn(tiny_backbone):
    from sklearn.linear_model import LogisticRegression

    from cpbench.methods.linear_probe import LinearProbe, LinearProbeOptions, search_c

    g = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(3, tiny_backbone.embed_dim, generator=g)
    x = torch.cat([centers[c] + torch.randn(6, tiny_backbone.embed_dim, generator=g) for c in range(3)])
    y = torch.arange(3).repeat_interleave(6)
    xv = torch.cat([centers[c] + torch.randn(2, tiny_backbone.embed_dim, generator=g) for c in range(3)])
    yv = torch.arange(3).repeat_interleave(2)
    lp = LinearProbe(tiny_backbone, NAMES[:3], LinearProbeOptions(search_steps=2))
    lp.fit_features(x, y, xv, yv)
    _, c, log = search_c(x.double().numpy(), y.numpy(), xv.double().numpy(), yv.numpy(), steps=2)
    assert [round(v, 12) for v, _ in log[:7]] == [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6] and len(log) == 7 + 2 * 2
    assert math.isclose(float(lp.c_reg), c, rel_tol=1e-6) and float(lp.c_search) == 1.0
    ref = LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(x.double().numpy(), y.numpy())
    xt = torch.randn(20, tiny_backbone.embed_dim, generator=g) + centers[torch.arange(20) % 3]
    assert torch.equal(lp.logits_from_features(xt, None).argmax(-1), torch.from_numpy(ref.predict(xt.double().numpy())))
    assert lp.n_learnable() == 3 * (tiny_backbone.embed_dim + 1)
    with pytest.raises(UserError, match="new classes"):
        lp.set_classnames(["tree frog", "canoe", "red fox"])


def test_linear_probe_base2new_plans_base_only():
    from cpbench.protocols import base2new

    assert [t.subset for t in base2new.plan("linear_probe", ["caltech101"], [1])[0].targets] == ["base"]
    assert [t.subset for t in base2new.plan("cocoop", ["caltech101"], [1])[0].targets] == ["base", "new"]


# ============================================================================ configs
def test_official_defaults_per_protocol():
    from cpbench.config import resolve
    from cpbench.methods.registry import get_method_class

    def r(m, protocol="base2new", dataset=None):
        return resolve(m, get_method_class(m).Options, protocol, dataset=dataset, shots=16)

    c = r("cocoop")
    assert (c.train.epochs, c.train.batch_size, c.train.lr) == (10, 1, 0.002)
    c = r("maple")
    assert (c.train.epochs, c.train.batch_size, c.train.lr, c.options.depth, c.options.n_ctx) == (5, 4, 0.0035, 9, 2)
    for protocol in ("cross_dataset", "dg"):   # dg trains under the cross_dataset block
        from cpbench.protocols.registry import config_protocol

        c = r("maple", config_protocol(protocol))
        assert (c.train.epochs, c.train.lr, c.options.depth) == (2, 0.0026, 3)
    c = r("ivlp")
    assert (c.train.epochs, c.train.batch_size, c.train.lr, c.options.n_ctx_text, c.options.depth_vision) == (20, 4, 0.0025, 4, 9)
    c = r("promptsrc")
    assert (c.options.gpa_mean, c.options.gpa_std, c.options.text_loss_weight, c.options.image_loss_weight) == (15, 1, 25, 10)
    c = r("promptsrc", "cross_dataset")
    assert (c.options.depth_text, c.options.gpa_mean, c.options.gpa_std, c.train.epochs) == (3, 6, 10, 20)
    c = r("promptsrc", "few_shot", "caltech101")
    assert (c.train.epochs, c.options.gpa_mean, c.options.gpa_std) == (50, 30, 30)
    c = r("promptsrc", "few_shot", "eurosat")
    assert (c.train.epochs, c.options.gpa_mean, c.options.gpa_std) == (50, 45, 5)
    assert r("promptsrc", "base2new", "eurosat").options.gpa_mean == 15
    c = r("kgcoop")
    assert (c.train.epochs, c.train.batch_size, c.train.lr, c.options.kg_weight) == (100, 128, 0.002, 8.0)
    assert r("kgcoop", dataset="dtd").options.template == "a photo of a {}, a type of texture."


# ============================================================================ ViT-B/16 counts
def test_trainable_parameter_counts_at_vit_b16():
    from cpbench.models.backbone import load_backbone

    bb = load_backbone("ViT-B-16", "none")     # architecture only: random weights, no download
    names = NAMES[:2]
    counts = {
        "coop": CoOp(bb, names, CoOpOptions(ctx_init="a photo of a")).n_learnable(),
        "cocoop": CoCoOp(bb, names, CoCoOpOptions()).n_learnable(),
        "maple": MaPLe(bb, names, MaPLeOptions()).n_learnable(),
        "ivlp": IVLP(bb, names, IVLPOptions()).n_learnable(),
        "promptsrc": PromptSRC(bb, names, PromptSRCOptions()).n_learnable(),
        "kgcoop": KgCoOp(bb, names, KgCoOpOptions()).n_learnable(),
    }
    assert counts == {"coop": 2048, "cocoop": 2048 + 16416 + 16896, "maple": 3_555_072, "ivlp": 46_080,
                      "promptsrc": 46_080, "kgcoop": 2048}
    assert round(counts["cocoop"] / 1000, 1) == 35.4 and 3.55e6 <= counts["maple"] < 3.56e6   # ≈ 35.4K, ≈ 3.55M


# ============================================================================ end to end
@pytest.fixture(scope="module")
def mini_caltech(tmp_path_factory):
    """A miniature prepared caltech101 (4 classes: 2 base, 2 new; 8-px images)."""
    from minidata import make_caltech

    root = tmp_path_factory.mktemp("mini")
    make_caltech(root)
    return root


METHODS_I = ["cocoop", "ivlp", "maple", "promptsrc", "kgcoop", "linear_probe"]


def _cpbench(monkeypatch, *args: str) -> int:
    """``cpbench ARGS`` through the CLI entry point, in this process (no interpreter start per call)."""
    from cpbench.cli import main

    monkeypatch.setattr("sys.argv", ["cpbench", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_methods_i_run_base_to_new_end_to_end(mini_caltech, tmp_path, monkeypatch, capsys):
    res = tmp_path / "res"
    for method in METHODS_I:
        extra = ["--set", "epochs=2", "batch_size=2"] if method != "linear_probe" else []
        rc = _cpbench(monkeypatch, "run", method, "--dataset", "caltech101", "--backbone", "tiny", "--pretrained", "none",
                      "--shots", "2", "--seeds", "1", "--root", str(mini_caltech), "--results", str(res),
                      "--device", "cpu", *extra)
        assert rc == 0, (method, capsys.readouterr())
    from cpbench.results.store import ResultStore

    df = ResultStore(res).read().frame
    for method in METHODS_I:
        d = df[df["method"] == method]
        want = ["base"] if method == "linear_probe" else ["base", "new"]
        assert sorted(d["subset"]) == want, method
        assert (d["n_classes"] == 2).all() and d["accuracy"].between(0, 100).all()
        assert (d["n_learnable"] > 0).all()
    capsys.readouterr()
    assert _cpbench(monkeypatch, "report", "--results", str(res)) == 0
    out = capsys.readouterr().out
    for method in METHODS_I:
        assert method in out


# ============================================================================ fp16 like the official
def test_fp16_keeps_the_official_fp32_prompts():
    """Under PREC=fp16 the official code keeps IVLP's VPT/VPT_shallow and MaPLe's deep prompts and
    projections in fp32 (ctx, MaPLe's proj half); PromptSRC's teacher comes from an fp32 tower."""
    from cpbench.models.backbone import load_backbone

    bb = load_backbone("tiny", "none").half()
    src = PromptSRC(bb, NAMES[:2], PromptSRCOptions()).half()
    dt = {n: t.dtype for n, t in src.learned_state().items()}
    assert dt["ctx"] == dt["gpa_ctx"] == torch.float16
    assert {dt[k] for k in ("VPT", "deep_text", "deep_vision", "gpa_VPT", "gpa_deep_vision")} == {torch.float32}
    mp = MaPLe(bb, NAMES[:2], MaPLeOptions()).half()
    assert mp.ctx.dtype == mp.proj.weight.dtype == torch.float16
    assert mp.compound_prompts_text[0].dtype == mp.compound_prompt_projections[0].weight.dtype == torch.float32
    x = images(2).half()
    _, terms = src.forward_train(x, torch.tensor([0, 1]))
    sum(terms.values()).backward()
    assert src.VPT.grad.dtype == torch.float32 and src.ctx.grad.dtype == torch.float16
    assert src.fixed_embeddings.dtype == torch.float32 and all(torch.isfinite(v) for v in terms.values())
