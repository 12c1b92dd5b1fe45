"""The weight generator of tests/golden/README.md reproduces the golden weights bit for bit
(sha256 of the whole state dict) and key by key (shape, sum, first 4 values of the fingerprint
files, so that a mismatch is localised), for case A (2+2 layers) and case B (9+9 layers)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from golden_utils import GOLDEN_DIR, golden_case_names, golden_clip, golden_weights, load_case, state_sha256, wgen


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
def test_every_case_names_its_weight_set(name):
    """The case's weights (layers, image size, base_seed) regenerate to its recorded sha256; where a
    fingerprint file describes the same weights it agrees (another base_seed needs no such file)."""
    w = load_case(name).weights
    sd = golden_weights(w["vision_layers"], w["text_layers"], w["image_size"], w["base_seed"])
    assert state_sha256(sd) == w["sha256"]
    fp_path = GOLDEN_DIR / f"weights_fingerprint_L{w['vision_layers']}.json"
    if fp_path.exists():
        fp = load_case(fp_path.stem)
        same = (fp["vision_layers"], fp["text_layers"], fp["image_size"], fp["base_seed"]) == \
            (w["vision_layers"], w["text_layers"], w["image_size"], w["base_seed"])
        assert (fp["sha256"] == w["sha256"]) == same


def test_wgen_is_deterministic_and_order_free():
    shapes = {"b.bias": (3,), "a.weight": (4, 5), "ln_1.weight": (2,), "ln_1.bias": (2,)}
    shapes = {f"x.{k}": v for k, v in shapes.items()}
    a = wgen(shapes, 0)
    b = wgen(dict(reversed(list(shapes.items()))), 0)
    assert state_sha256(a) == state_sha256(b)
    assert state_sha256(wgen(shapes, 1)) != state_sha256(a)


@pytest.mark.parametrize("name", golden_case_names())
def test_golden_clip_loads_the_weights_and_uses_quickgelu(name):
    w = load_case(name).weights
    clip = golden_clip(w["vision_layers"], w["text_layers"], w["image_size"], w["base_seed"])
    assert state_sha256(clip.state_dict()) == w["sha256"]
    act = clip.transformer.resblocks[0].mlp.gelu
    x = torch.linspace(-3, 3, 7)
    assert torch.allclose(act(x), x * torch.sigmoid(1.702 * x))
    assert not any(p.requires_grad for p in clip.parameters())


def test_golden_files_are_plain_and_small():
    for p in GOLDEN_DIR.glob("*.json"):
        assert p.stat().st_size < 150_000, p


@pytest.mark.parametrize("name", golden_case_names())
def test_fixed_inputs_replay(name):
    """Images, seeded learnables and (BPL) the recorded eps are what the README's recipes give,
    with every seed, size, label and name read from the case file."""
    from golden_utils import forward_seed, golden_eps, golden_inputs, learnable_values

    case = load_case(name)
    inp, size = case["inputs"], case.weights["image_size"]
    images, labels, classnames = golden_inputs(case)
    assert images.shape == (len(inp["labels"]), 3, size, size)
    assert labels.tolist() == inp["labels"] and classnames == inp["classnames"]
    assert max(inp["labels"]) < len(classnames)
    assert torch.equal(images, torch.randn(len(inp["labels"]), 3, size, size,
                                           generator=torch.Generator().manual_seed(inp["image_seed"])))
    assert forward_seed(case) == inp["rng_seed_before_each_forward"]
    if inp["learnable_seed_base"] is None:  # Tip-Adapter(-F): nothing seeded; the official init is data-derived
        assert all(t["seed"] is None and t["init"] for t in case.trainable), name
        return
    values = learnable_values(case)
    assert list(values) == [t["name"] for t in case.trainable]
    first = case.trainable[0]
    assert torch.equal(values[first["name"]], 0.02 * torch.randn(
        tuple(first["shape"]), generator=torch.Generator().manual_seed(inp["learnable_seed_base"])))
    if "bpl" in case.data:
        eps = case["bpl"]["eps_stats"]
        torch.manual_seed(forward_seed(case))
        assert torch.equal(golden_eps(case), torch.randn(tuple(eps["shape"])))
        assert math.isclose(float(golden_eps(case).double().sum()), eps["sum"], rel_tol=1e-9)


def test_harness_reads_every_input_from_the_case():
    """A further case made by the README's recipe with another base_seed, other labels, class
    names and seeds is read as written: nothing of the shipped cases is assumed."""
    from golden_utils import Case, forward_seed, golden_backbone, golden_inputs, learnable_values

    data = json.loads(json.dumps(load_case("coop_L2").data))
    data["weights"]["base_seed"] = 1
    data["inputs"].update(image_seed=8, labels=[2, 2, 0], classnames=["a", "b", "c"], learnable_seed_base=50,
                          rng_seed_before_each_forward=77)
    for i, t in enumerate(data["trainable"]):
        t["seed"] = 50 + i
    case = Case("other", data)
    images, labels, names = golden_inputs(case)
    assert images.shape[0] == 3 and labels.tolist() == [2, 2, 0] and names == ["a", "b", "c"]
    assert torch.equal(images, torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(8)))
    assert forward_seed(case) == 77
    assert torch.equal(learnable_values(case)["prompt_learner.ctx"],
                       0.02 * torch.randn(4, 512, generator=torch.Generator().manual_seed(50)))
    bb = golden_backbone(case)
    assert state_sha256(bb.clip.state_dict()) == state_sha256(golden_weights(2, 2, 64, 1)) != data["weights"]["sha256"]
