"""CoCoOp (cpbench/methods/cocoop.py): a zeroed meta-net is CoOp, prompts are per image, and the
meta-net has the official shapes (its numbers against the official code: test_golden_cocoop.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cpbench.methods.cocoop import CoCoOp, CoCoOpOptions
from cpbench.methods.coop import CoOp, CoOpOptions
from methodutils import NAMES, images, perturb


def test_cocoop_with_zeroed_meta_net_equals_coop(tiny_backbone):
    co = CoCoOp(tiny_backbone, NAMES, CoCoOpOptions(eval_chunk=2))
    coop = CoOp(tiny_backbone, NAMES, CoOpOptions(ctx_init="a photo of a"))
    perturb(coop.ctx, 1)
    with torch.no_grad():
        co.ctx.copy_(coop.ctx)
        co.meta_net.linear2.weight.zero_()
        co.meta_net.linear2.bias.zero_()
    x, y = images(3), torch.tensor([0, 3, 4])
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
