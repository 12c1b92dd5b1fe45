"""PromptSRC (cpbench/methods/promptsrc.py): the official 60 templates, the self-regulating loss
terms by hand, the teacher, and the Gaussian prompt aggregation (GPA) as a weighted sum of the
epochs' prompts, also in fp16 (the official numbers: test_golden_promptsrc.py)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cpbench.methods.promptsrc import TEMPLATES, PromptSRC, PromptSRCOptions, gpa_weights, src_losses
from methodutils import NAMES, images, perturb


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
    x, y = images(3), torch.tensor([0, 2, 4])
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


def test_fp16_gpa_over_frozen_weights_does_not_sum_back():
    """The corrected docstring claim: Σ_e w_e·θ in fp16 (the official whole-state_dict GPA) is not θ."""
    from cpbench.methods.promptsrc import gpa_weights

    theta = (0.02 * torch.randn(200_000, generator=torch.Generator().manual_seed(0))).half()
    acc = None
    for w in gpa_weights(20, 15.0, 1.0).tolist():
        t = theta * w
        acc = t if acc is None else acc + t
    changed = float((acc != theta).float().mean())
    assert 0.2 < changed < 0.7
    assert torch.equal(sum(theta.double() * w for w in gpa_weights(20, 15.0, 1.0).tolist()).half(), theta)
