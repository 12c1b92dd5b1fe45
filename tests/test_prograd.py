"""ProGrad (cpbench/methods/prograd.py): its context starts from the template's words, its loss
terms by hand, and it scores new classes (the official numbers: test_golden_prograd.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cpbench.errors import UserError
from methodutils import NAMES, images


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
    x, y = images(4), torch.tensor([0, 1, 2, 2])
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
