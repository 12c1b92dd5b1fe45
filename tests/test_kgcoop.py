"""KgCoOp (cpbench/methods/kgcoop.py): its knowledge-guided term by hand, and CoOp's cross-entropy
(the official numbers: test_golden_kgcoop.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cpbench.methods.coop import CoOp, CoOpOptions
from cpbench.methods.kgcoop import KgCoOp, KgCoOpOptions
from methodutils import NAMES, images, perturb


def test_kgcoop_term_equals_hand_computation_and_ce_is_coop(tiny_backbone):
    bb = tiny_backbone
    kg = KgCoOp(bb, NAMES, KgCoOpOptions(), template="a photo of a {}, a type of pet.")
    coop = CoOp(bb, NAMES, CoOpOptions(ctx_init="a photo of a"))
    perturb(kg.ctx, 4, 0.3)
    with torch.no_grad():
        coop.ctx.copy_(kg.ctx)
    x, y = images(3), torch.tensor([1, 1, 3])
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
