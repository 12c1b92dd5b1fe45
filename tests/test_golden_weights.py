"""The weight generator of tests/golden/README.md reproduces the golden weights bit for bit
(sha256 of the whole state dict) and key by key (shape, sum, first 4 values of the fingerprint
files, so that a mismatch is localised), for case A (2+2 layers) and case B (9+9 layers)."""

from __future__ import annotations

import math

import pytest
import torch

from golden_utils import GOLDEN_DIR, build_clip, golden_case_names, golden_clip, golden_weights, load_case, state_sha256, wgen


@pytest.mark.parametrize("layers", [2, 9])
def test_wgen_matches_fingerprint(layers):
    fp = load_case(f"weights_fingerprint_L{layers}")
    sd = golden_weights(fp["vision_layers"], fp["text_layers"], fp["image_size"], fp["base_seed"])
    assert len(sd) == fp["n_keys"] == len(fp["keys"])
    assert sorted(sd) == sorted(fp["keys"])
    for key, rec in fp["keys"].items():
        t = sd[key]
        assert list(t.shape) == rec["shape"], key
        assert t.dtype == torch.float32
        assert t.flatten()[:4].tolist() == rec["first4"][: t.numel()], key      # exact: fp16 values
        s = float(t.double().sum())
        assert abs(s - rec["sum"]) <= 1e-5 * (1 + float(t.double().abs().sum())), (key, s, rec["sum"])
        assert torch.equal(t, t.half().float()), key                              # fp16-representable
    assert math.isclose(float(sd["logit_scale"]), 4.60546875)
    assert state_sha256(sd) == fp["sha256"]


@pytest.mark.parametrize("name", golden_case_names())
def test_every_case_names_a_known_weight_set(name):
    w = load_case(name).weights
    fp = load_case(f"weights_fingerprint_L{w['vision_layers']}")
    assert (w["vision_layers"], w["text_layers"], w["image_size"], w["base_seed"]) == \
        (fp["vision_layers"], fp["text_layers"], fp["image_size"], fp["base_seed"])
    assert w["sha256"] == fp["sha256"]


def test_wgen_is_deterministic_and_order_free():
    shapes = {"b.bias": (3,), "a.weight": (4, 5), "ln_1.weight": (2,), "ln_1.bias": (2,)}
    shapes = {f"x.{k}": v for k, v in shapes.items()}
    a = wgen(shapes, 0)
    b = wgen(dict(reversed(list(shapes.items()))), 0)
    assert state_sha256(a) == state_sha256(b)
    assert state_sha256(wgen(shapes, 1)) != state_sha256(a)


def test_golden_clip_loads_the_weights_and_uses_quickgelu():
    sd = golden_weights(2, 2, 64)
    clip = golden_clip(2, 2, 64)
    assert state_sha256(clip.state_dict()) == load_case("coop_L2").weights["sha256"]
    act = clip.transformer.resblocks[0].mlp.gelu
    x = torch.linspace(-3, 3, 7)
    assert torch.allclose(act(x), x * torch.sigmoid(1.702 * x))
    assert not any(p.requires_grad for p in clip.parameters())


def test_golden_files_are_plain_and_small():
    for p in GOLDEN_DIR.glob("*.json"):
        assert p.stat().st_size < 150_000, p


def test_fixed_inputs_replay():
    """Images, seeded learnables and BPL's recorded eps are what the README's recipes give."""
    from golden_utils import golden_eps, golden_inputs, learnable_values

    case = load_case("bpl_L2")
    images, labels, classnames = golden_inputs(case)
    assert images.shape == (2, 3, 64, 64) and labels.tolist() == [0, 1] and len(classnames) == 5
    assert torch.equal(images, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7)))
    values = learnable_values(case)
    assert list(values) == [t["name"] for t in case.trainable]
    assert torch.equal(values["prompt_learner.ctx"], 0.02 * torch.randn(4, 512, generator=torch.Generator().manual_seed(123)))
    torch.manual_seed(1000)
    assert torch.equal(golden_eps(case), torch.randn((10, 1, 512)))
    eps = case["bpl"]["eps_stats"]
    assert math.isclose(float(golden_eps(case).double().sum()), eps["sum"], rel_tol=1e-9)
