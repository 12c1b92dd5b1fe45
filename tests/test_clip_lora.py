"""CLIP-LoRA (cpbench/methods/clip_lora.py): with B = 0 it is zero-shot CLIP, its dropout acts in
training only, and it never modifies the backbone: after one of its jobs the backbone's state is
bit-identical and a following CoOp job's rows equal those of a run without it (the official
numbers: test_golden_clip_lora.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cpbench.errors import UserError
from methodutils import NAMES, images
from minidata import make_caltech


def test_clip_lora_with_b_zero_is_zero_shot_and_dropout_trains_only(tiny_backbone):
    from cpbench.methods.clip_lora import CLIPLoRA, CLIPLoRAOptions

    torch.manual_seed(0)
    m = CLIPLoRA(tiny_backbone, NAMES, CLIPLoRAOptions())
    assert len(m.lora_text) == len(m.lora_visual) == 2 and sorted(m.lora_text["0"]) == ["k_proj", "q_proj", "v_proj"]
    x = images(4)
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
