"""Methods III (issue 30): ProGrad, CLIP-Adapter, Tip-Adapter(-F), CLIP-LoRA — invariants on the
tiny random backbone (the golden comparisons with the official code are in
test_golden_methods_iii.py):

- ProGrad's context: 16 slots, the template's words in the last ones, "X" before them;
- CLIP-Adapter on normalised features gives the logits and gradients of raw features (what lets
  it use the exact test-feature cache);
- Tip-Adapter's search is ``search_hp`` (its grid, β outer / α inner, the first strict best);
  its cache state loads whatever the number of training images; it refuses other classes;
- CLIP-LoRA never modifies the backbone: after one of its jobs the backbone's state is
  bit-identical and a following CoOp job's rows equal those of a run without it; with B = 0 it is
  zero-shot CLIP; its dropout acts in training only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from minidata import make_caltech  # noqa: E402

from cpbench.errors import UserError  # noqa: E402

NAMES = ["golden retriever", "tabby_cat", "airliner", "red fox", "sports car"]


def images(n=4, seed=0, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ============================================================================ ProGrad
def test_prograd_context_starts_from_the_template_words(tiny_backbone):
    from cpbench.methods.prograd import ProGrad, ProGradOptions, init_phrase

    bb = tiny_backbone
    m = ProGrad(bb, NAMES, ProGradOptions(template="a type of pet, a photo of a {}."))
    words = "a type of pet, a photo of a".split(" ")          # 8 words, 9 tokens (the comma)
    assert m.ctx.shape == (16, bb.text_width) and m.n_ctx == 16
    assert torch.equal(m.ctx[:8], torch.zeros(8, bb.text_width))
    ids = bb.tokenize(["a type of pet, a photo of a"])
    assert torch.equal(m.ctx[8:], bb.token_embedding(ids)[0, 1:9])  # the phrase's first 8 TOKENS
    text = " ".join(["X"] * 8 + words) + " red fox."
    assert torch.equal(m.prompts.ids[3], bb.tokenize([text])[0])
    # the 9th phrase token ("a") stays frozen in the suffix, before the class name
    assert torch.equal(m.prompts.token_suffix[3, 0], bb.token_embedding(bb.tokenize([text]))[0, 17])
    # cpbench-style templates contribute the words before the class slot
    assert init_phrase(ProGradOptions(), "a photo of a {}, a type of pet.") == "a photo of a"
    assert init_phrase(ProGradOptions(init_from_template=False), "a photo of a {}.") == ""
    with pytest.raises(UserError, match="n_ctx"):
        ProGrad(bb, NAMES, ProGradOptions(n_ctx=4, template="a type of pet, a photo of a {}."))
    with pytest.raises(UserError, match="has none"):
        ProGrad(bb, NAMES, ProGradOptions(template="{} texture."))


def test_prograd_terms_by_hand_and_new_classes(tiny_backbone):
    from cpbench.methods.prograd import ProGrad, ProGradOptions

    m = ProGrad(tiny_backbone, NAMES, ProGradOptions(template="a photo of a {}.", temperature=2.0))
    x, y = images(), torch.tensor([0, 1, 2, 2])
    logits, terms = m.forward_train(x, y)
    with torch.no_grad():
        f = F.normalize(tiny_backbone.encode_image(x).float(), dim=-1)
        t = F.normalize(tiny_backbone.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]).float(),
                        dim=-1)
        zs = tiny_backbone.logit_scale * f @ t.t()
    p = F.softmax(zs / 2, dim=-1)
    kl = (-(p * F.log_softmax(logits.detach() / 2, dim=-1)).sum(1) * 4).mean()
    assert float(terms["kl"].detach()) == pytest.approx(float(kl), rel=1e-5)
    assert float(terms["ce"].detach()) == pytest.approx(float(F.cross_entropy(logits.detach(), y)), rel=1e-6)
    m.set_classnames(["tree frog", "canoe"])    # prompts rebuilt, the teacher recomputed on first use
    assert m(x).shape == (4, 2) and m.teacher.numel() == 0
    assert m.unsupported("retrieval", m.options) and not m.unsupported("base2new", m.options)


# ============================================================================ CLIP-Adapter
def test_clip_adapter_is_scale_invariant_so_the_normalised_cache_is_exact(tiny_backbone):
    from cpbench.methods.clip_adapter import CLIPAdapter, CLIPAdapterOptions, blend

    torch.manual_seed(0)
    m = CLIPAdapter(tiny_backbone, NAMES, CLIPAdapterOptions())
    with torch.no_grad():
        raw = tiny_backbone.encode_image(images()).float()
    ctx = m.eval_context()
    for scale in (1.0, 37.0):   # raw features (the official input) at two scales vs normalised ones
        a = m.logits_from_features(raw * scale, ctx)
        b = m.logits_from_features(F.normalize(raw, dim=-1), ctx)
        assert torch.allclose(a, b, atol=1e-5)
    y = torch.tensor([0, 1, 2, 3])
    grads = []
    for feats in (raw, F.normalize(raw, dim=-1)):
        m.zero_grad(set_to_none=True)
        _, t = m.forward_train_features(feats, y)
        t["ce"].backward()
        grads.append([p.grad.clone() for p in m.adapter.parameters()])
    for g1, g2 in zip(*grads):
        assert torch.allclose(g1, g2, atol=1e-6 * float(g1.abs().max()) + 1e-9)
    # the final ReLU of the official adapter: its output is never negative
    assert float(m.adapter(raw).detach().min()) >= 0 and blend(m.adapter, raw, 0.2).shape == raw.shape
    assert m.n_learnable() == 2 * tiny_backbone.embed_dim * (tiny_backbone.embed_dim // 4)


# ============================================================================ Tip-Adapter
def test_search_hp_grid_order_and_first_strict_best():
    from cpbench.methods.tip_adapter import TipAdapterOptions, grid, search_hp

    assert grid(7, 200)[:2] == [0.1, 0.1 + 6.9 / 200] and len(grid(3, 20)) == 20 and grid(3, 20)[-1] < 3
    o = TipAdapterOptions(search_scale_beta=2, search_step_beta=4, search_scale_alpha=2, search_step_alpha=4)
    # 3 validation images, 2 classes; the CLIP logits get image 2 wrong, the cache gets it right
    clip = torch.tensor([[5.0, 0.0], [0.0, 5.0], [3.0, 2.9]])
    values = torch.eye(2)
    affinity = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    beta, alpha, acc = search_hp(affinity, clip, values, labels, o)
    # by hand: every (β, α) in β-outer / α-inner order; the first that gets all 3 right
    betas, alphas = grid(2, 4), grid(2, 4)
    first = next((b, a) for b in betas for a in alphas
                 if int(((clip + ((-1) * (b - b * affinity)).exp() @ values * a).argmax(1) == labels).sum()) == 3)
    assert (beta, alpha) == first and acc == 100.0 and first != (betas[0], alphas[0])
    # nothing beats accuracy 0 (cache and CLIP agree, both wrong): (0, 0), as the official search
    wrong = search_hp(torch.eye(2), torch.tensor([[5.0, 0.0], [0.0, 5.0]]), values, torch.tensor([1, 0]), o)
    assert wrong == (0.0, 0.0, 0.0)


def test_tip_adapter_state_fits_any_cache_size_and_refuses_other_classes(tiny_backbone):
    from cpbench import export
    from cpbench.methods.tip_adapter import TipAdapter, TipAdapterOptions
    from cpbench.methods.tip_adapter_f import TipAdapterF, TipAdapterFOptions

    m = TipAdapter(tiny_backbone, NAMES, TipAdapterOptions())
    with torch.no_grad():
        m.set_cache(tiny_backbone.encode_image(images(7)).float(), torch.tensor([0, 1, 2, 3, 4, 0, 1]))
    state = m.learned_state()
    assert state["cache_keys"].shape == (7, tiny_backbone.embed_dim) and state["cache_values"].shape == (7, 5)
    fresh = TipAdapter(tiny_backbone, NAMES, TipAdapterOptions())
    fresh.load_learned_state(export.fitting_state(state, fresh, "x"))
    x = images(3, seed=5)
    assert torch.equal(fresh(x), m(x))
    f = TipAdapterF(tiny_backbone, NAMES, TipAdapterFOptions())
    f.load_learned_state({**state, "adapter.weight": state["cache_keys"] * 2})
    assert f.adapter.weight.shape == (7, tiny_backbone.embed_dim) and f.adapter.weight.requires_grad
    assert f.n_learnable() == 7 * tiny_backbone.embed_dim and m.n_learnable() == 0
    with pytest.raises(UserError, match="only scores the classes its cache was built from"):
        m.set_classnames(["tree frog"])
    for protocol in ("base2new", "cross_dataset"):
        assert "few_shot" in TipAdapter.unsupported(protocol, m.options)
    assert not TipAdapter.unsupported("dg", m.options) and TipAdapter.unsupported("continual", m.options)
    with pytest.raises(UserError, match="no cache"):
        TipAdapter(tiny_backbone, NAMES, TipAdapterOptions())(x)


# ============================================================================ CLIP-LoRA
def test_clip_lora_with_b_zero_is_zero_shot_and_dropout_trains_only(tiny_backbone):
    from cpbench.methods.clip_lora import CLIPLoRA, CLIPLoRAOptions

    torch.manual_seed(0)
    m = CLIPLoRA(tiny_backbone, NAMES, CLIPLoRAOptions())
    assert len(m.lora_text) == len(m.lora_visual) == 2 and sorted(m.lora_text["0"]) == ["k_proj", "q_proj", "v_proj"]
    x = images()
    with torch.no_grad():
        f = F.normalize(tiny_backbone.encode_image(x).float(), dim=-1)
        t = F.normalize(tiny_backbone.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]).float(), dim=-1)
        assert torch.allclose(m.eval()(x), 100 * f @ t.t(), atol=1e-4)
        for lora in list(m.lora_text.values()) + list(m.lora_visual.values()):
            for p in lora.values():
                p.w_lora_B.normal_(0, 0.5)
        ev1, ev2 = m.eval()(x), m(x)
        assert torch.equal(ev1, ev2) and not torch.allclose(ev1, 100 * f @ t.t(), atol=1e-3)
        m.train()
        torch.manual_seed(1)
        tr1 = m.encode_images(x)
        torch.manual_seed(2)
        tr2 = m.encode_images(x)
        assert not torch.allclose(tr1, tr2)          # dropout on the LoRA input, in training
    for bad, match in ((dict(encoder="audio"), "encoder"), (dict(params="qx"), "params"),
                       (dict(position="up"), "position 'up' is not defined for the 2-block")):
        with pytest.raises(UserError, match=match):
            CLIPLoRA(tiny_backbone, NAMES, CLIPLoRAOptions(**bad))
    only_v = CLIPLoRA(tiny_backbone, NAMES, CLIPLoRAOptions(encoder="vision", params="qkvo"))
    assert not len(only_v.lora_text) and sorted(only_v.lora_visual["1"]) == ["k_proj", "proj", "q_proj", "v_proj"]
    assert CLIPLoRA.unsupported("base2new", m.options) and not CLIPLoRA.unsupported("few_shot", m.options)


def test_clip_lora_never_modifies_the_shared_backbone(tiny_backbone, tmp_path):
    """One backbone serves every job of a run: after a clip_lora job its state is bit-identical
    and a CoOp job on it writes the rows a fresh backbone gives."""
    from cpbench.models.backbone import load_backbone
    from cpbench.protocols import base2new, few_shot
    from cpbench.protocols.execute import run_job
    from cpbench.protocols.jobs import RunSettings
    from cpbench.results.store import ResultStore

    make_caltech(tmp_path / "data", n_train=2)

    def settings(res, sets):
        return RunSettings(data_root=tmp_path / "data", results_root=tmp_path / res, backbone="tiny", pretrained="none",
                           sets=sets, feature_cache=False)

    def coop(bb, res):
        s = settings(res, ["epochs=2", "batch_size=2", "test_batch_size=8"])
        return run_job(base2new.plan("coop", ["caltech101"], [1], 2)[0], bb, s, ResultStore(s.results_root))

    shared = load_backbone("tiny", "none")
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    s = settings("lora", ["iterations=4", "batch_size=3", "test_batch_size=8", "lr=0.05"])
    lora_rows = run_job(few_shot.plan("clip_lora", ["caltech101"], [1], [2])[0], shared, s, ResultStore(s.results_root))
    assert lora_rows and lora_rows[0]["n_learnable"] > 0
    after = shared.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert all(not p.requires_grad for p in shared.parameters())
    keep = ["subset", "accuracy", "correct", "n_test"]
    got = [{k: r[k] for k in keep} for r in coop(shared, "coop_after")]
    want = [{k: r[k] for k in keep} for r in coop(load_backbone("tiny", "none"), "coop_fresh")]
    assert got == want


# ============================================================================ published numbers
def test_compare_paper_lines_up_each_backbone_with_its_own_numbers(tmp_path, monkeypatch, capsys):
    """Tip-Adapter's tables are RN50, CLIP-LoRA's figure ViT-B/16: rows of those backbones get
    those numbers (value and provenance label), rows of another backbone get none."""
    from reporting import row, run_cli

    from cpbench.results import published
    from cpbench.results.store import ResultStore

    rows = []
    for seed in (1, 2, 3):
        rows += [row("few_shot", "tip_adapter", "dtd", "dtd", "all", 16, seed, 60.0, backbone="RN50"),
                 row("few_shot", "tip_adapter_f", "dtd", "dtd", "all", 16, seed, 61.0, backbone="ViT-B-16"),
                 row("few_shot", "clip_lora", "dtd", "dtd", "all", 16, seed, 70.0),
                 row("base2new", "prograd", "dtd", "dtd", "base", 16, seed, 77.0),
                 row("base2new", "prograd", "dtd", "dtd", "new", 16, seed, 52.0)]
    ResultStore(tmp_path / "res").write("hand", rows)
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", tmp_path / "res", "--compare", "paper",
                             "--format", "csv")
    assert code == 0, err
    import io

    import pandas as pd

    df = pd.read_csv(io.StringIO(out))
    df = df[df["dataset"] == "dtd"]
    paper = {(r.method, r.backbone, r.field): (r.paper, r.provenance) for r in df.itertuples()}
    tip = published.lookup("few_shot", "tip_adapter", "dtd", "all", 16, backbone="RN50")
    lora = published.lookup("few_shot", "clip_lora", "dtd", "all", 16)
    pg = published.lookup("base2new", "prograd", "dtd", "new")
    assert tip.value == 60.93 and lora.value == 72.0 and pg.value == 52.35
    assert paper[("tip_adapter", "RN50", "accuracy")] == (tip.value, tip.label)
    assert paper[("clip_lora", "ViT-B-16", "accuracy")] == (lora.value, lora.label)
    assert paper[("prograd", "ViT-B-16", "New")][0] == pg.value
    assert pd.isna(paper[("tip_adapter_f", "ViT-B-16", "accuracy")][0])   # its published numbers are RN50
    assert published.lookup("few_shot", "tip_adapter_f", "dtd", "all", 16, backbone="RN50").value == 66.55


# ============================================================================ precisions
@pytest.mark.parametrize("mode", ["fp16", "amp"])
def test_each_method_steps_in_half_precision(mode):
    """The official runs are fp16 (ProGrad, Tip-Adapter-F) or fp16 autocast (CLIP-LoRA); on a CPU
    cpbench falls back to fp32, so this runs one step of each in the GPU's dtypes here: fp16
    parameters (fp16), fp32 parameters under fp16 autocast (amp). Finite terms and an updated,
    finite state."""
    from cpbench.methods.registry import get_method_class
    from cpbench.models.backbone import load_backbone

    bb = load_backbone("tiny", "none")
    x, y = images(), torch.tensor([0, 1, 2, 3])
    if mode == "fp16":
        bb, x = bb.half(), x.half()
    ctx = torch.autocast("cpu", dtype=torch.float16, enabled=mode == "amp")
    for name in ("prograd", "clip_adapter", "tip_adapter_f", "clip_lora"):
        cls = get_method_class(name)
        torch.manual_seed(0)
        m = cls(bb, NAMES[:4], cls.Options()).to(dtype=bb.dtype)
        if name == "tip_adapter_f":
            with torch.no_grad():
                m.set_cache(bb.encode_image(x).float(), y)
            m.adapter.weight = torch.nn.Parameter(m.cache_keys.clone().to(bb.dtype))
        params = [p for p in m.parameters() if p.requires_grad]
        assert params and all(p.dtype == bb.dtype for p in params), name
        before = [p.detach().clone() for p in params]
        opt = torch.optim.AdamW(params, lr=1e-2, eps=1e-4)
        m.train()
        with ctx:
            _, terms = m.forward_train(x, y)
        assert all(torch.isfinite(t.detach()).all() for t in terms.values()), name
        m.backward(terms, lambda t: t)
        opt.step()
        assert any(not torch.equal(p.detach(), b) for p, b in zip(params, before)), name
        assert all(torch.isfinite(p.detach()).all() for p in params), name
        with torch.no_grad(), ctx:
            assert torch.isfinite(m.eval()(x).float()).all(), name
