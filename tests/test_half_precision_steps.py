"""ProGrad, CLIP-Adapter, Tip-Adapter-F and CLIP-LoRA each take one training step in the GPU's half
precision dtypes (fp16 parameters; fp32 parameters under fp16 autocast), here on the CPU."""

from __future__ import annotations

import pytest
import torch

from methodutils import NAMES, images


@pytest.mark.parametrize("mode", ["fp16", "amp"])
def test_each_method_steps_in_half_precision(mode):
    """The official runs are fp16 (ProGrad, Tip-Adapter-F) or fp16 autocast (CLIP-LoRA); on a CPU
    cpbench falls back to fp32, so this runs one step of each in the GPU's dtypes here: fp16
    parameters (fp16), fp32 parameters under fp16 autocast (amp). Finite terms and an updated,
    finite state."""
    from cpbench.methods.registry import get_method_class
    from cpbench.models.backbone import load_backbone

    bb = load_backbone("tiny", "none")
    x, y = images(4), torch.tensor([0, 1, 2, 3])
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
