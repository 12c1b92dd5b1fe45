"""The training-loop settings the adapter and LoRA baselines need (issue 30), checked against
torch and against the loop they leave unchanged:

- every existing method's resolved configuration hashes as main computed it before these settings
  existed (the table below was computed by main at f544a46), so old rows and checkpoints match;
- ``iter_cosine`` is torch's CosineAnnealingLR stepped per iteration; ``iterations`` counts
  optimiser steps (the last epoch cut), ``iterations_per_shot`` multiplies the job's shots;
  ``drop_last=false`` keeps the last incomplete batch; AdamW is torch's with the given
  betas/eps/weight decay; ``crop_scale_min`` replaces the crop scale (a backbone without a random
  crop keeps none);
- a training with AdamW and an iteration count, interrupted after any epoch and resumed, ends
  bit-identical to an uninterrupted one, and would not without AdamW's checkpointed state;
- contradictory settings fail in one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from crashing import Crash, crash_after_epoch  # noqa: E402
from minidata import make_caltech  # noqa: E402

from cpbench.config import TrainConfig, resolve  # noqa: E402
from cpbench.errors import UserError  # noqa: E402
from cpbench.methods.registry import get_method_class  # noqa: E402

# config hashes of main at f544a46 (before these settings): "method|protocol|dataset|shots": hash;
# one entry per distinct hash of the 1575 method x protocol x dataset x shots combinations, plus
# every method's base2new / few_shot default
MAIN_HASHES = {
    "cocoopvpt|base2new|None|1": "59cfda7b1987",
    "cocoopvpt|base2new|None|16": "59cfda7b1987",
    "cocoopvpt|base2new|caltech101|1": "91b2b80cdb59",
    "cocoopvpt|base2new|dtd|1": "f477cbf89cae",
    "cocoopvpt|base2new|eurosat|1": "b21b857cdcd7",
    "cocoopvpt|base2new|imagenet|1": "8ad0c3d84050",
    "cocoopvpt|few_shot|None|16": "59cfda7b1987",
    "cocoop|base2new|None|1": "d24ba571b31d",
    "cocoop|base2new|None|16": "d24ba571b31d",
    "cocoop|few_shot|None|16": "d24ba571b31d",
    "coop_lamm|base2new|None|1": "2265f64d6d4f",
    "coop_lamm|base2new|None|16": "2265f64d6d4f",
    "coop_lamm|few_shot|None|16": "2265f64d6d4f",
    "coopvpt|base2new|None|1": "3834bdddd14d",
    "coopvpt|base2new|None|16": "3834bdddd14d",
    "coopvpt|base2new|caltech101|1": "482ad220fa8f",
    "coopvpt|base2new|dtd|1": "b803218f3a56",
    "coopvpt|base2new|eurosat|1": "9bc4e1c9fd49",
    "coopvpt|base2new|imagenet|1": "55187ad1366c",
    "coopvpt|few_shot|None|16": "3834bdddd14d",
    "coop|base2new|None|1": "f72ec54eb5bb",
    "coop|base2new|None|16": "f72ec54eb5bb",
    "coop|base2new|imagenet|1": "259ae2787054",
    "coop|few_shot|None|1": "e1d53653b61f",
    "coop|few_shot|None|16": "eb53b9c59d4e",
    "coop|few_shot|None|4": "9d1be66a3c6a",
    "cpl|base2new|None|1": "391c2c84c98d",
    "cpl|base2new|None|16": "391c2c84c98d",
    "cpl|few_shot|None|16": "391c2c84c98d",
    "ivlp|base2new|None|1": "90a09a7060b6",
    "ivlp|base2new|None|16": "90a09a7060b6",
    "ivlp|few_shot|None|16": "90a09a7060b6",
    "kgcoop|base2new|None|1": "bde919b5c8f1",
    "kgcoop|base2new|None|16": "bde919b5c8f1",
    "kgcoop|base2new|dtd|1": "45bf8e5358c9",
    "kgcoop|few_shot|None|16": "bde919b5c8f1",
    "lamm|base2new|None|1": "f4e7493ed7fc",
    "lamm|base2new|None|16": "f4e7493ed7fc",
    "lamm|continual|None|1": "cfb5701c69fa",
    "lamm|few_shot|None|16": "f4e7493ed7fc",
    "linear_probe|base2new|None|1": "366060a51eeb",
    "linear_probe|base2new|None|16": "366060a51eeb",
    "linear_probe|few_shot|None|16": "366060a51eeb",
    "maple_lamm|base2new|None|1": "766ad67d9541",
    "maple_lamm|base2new|None|16": "766ad67d9541",
    "maple_lamm|few_shot|None|16": "766ad67d9541",
    "maple|base2new|None|1": "d2441de23402",
    "maple|base2new|None|16": "d2441de23402",
    "maple|cross_dataset|None|1": "4829c3e2b7ec",
    "maple|few_shot|None|16": "d2441de23402",
    "pre|base2new|None|1": "6f02e5821e4d",
    "pre|base2new|None|16": "6f02e5821e4d",
    "pre|few_shot|None|16": "6f02e5821e4d",
    "promptsrc|base2new|None|1": "f0136a9d7d3b",
    "promptsrc|base2new|None|16": "f0136a9d7d3b",
    "promptsrc|cross_dataset|None|1": "62e0d73d35ac",
    "promptsrc|few_shot|None|1": "0bd810733c92",
    "promptsrc|few_shot|None|16": "0bd810733c92",
    "promptsrc|few_shot|dtd|1": "e0f8d83357af",
    "zeroshot|base2new|None|1": "40f0029d4346",
    "zeroshot|base2new|None|16": "40f0029d4346",
    "zeroshot|few_shot|None|16": "40f0029d4346",
}


def test_existing_methods_keep_main_config_hashes():
    for key, want in MAIN_HASHES.items():
        method, protocol, dataset, shots = key.split("|")
        cfg = resolve(method, get_method_class(method).Options, protocol,
                      dataset=None if dataset == "None" else dataset, shots=int(shots))
        assert cfg.hash == want, key
        assert "optimizer" not in cfg.as_dict()["train"]   # the new settings stay out at their defaults


def test_new_settings_enter_the_hash_when_used():
    cls = get_method_class("coop")
    base = resolve("coop", cls.Options, "base2new")
    adam = resolve("coop", cls.Options, "base2new", sets=["optimizer=adamw"])
    assert adam.hash != base.hash and adam.as_dict()["train"]["optimizer"] == "adamw"
    from cpbench.config import ResolvedConfig

    again = ResolvedConfig.from_dict(adam.as_dict(), cls.Options)
    assert again.hash == adam.hash and again.train.optimizer == "adamw"
    assert ResolvedConfig.from_dict(base.as_dict(), cls.Options).train == base.train


@pytest.mark.parametrize("sets, match", [
    (["iterations=10"], "set epochs or iterations, not both"),
    (["epochs=0", "iterations=10"], "iterations go with the per-iteration schedule"),
    (["schedule=iter_cosine"], "no warm-up"),
    (["optimizer=adam"], "optimizer must be one of sgd, adamw"),
    (["crop_scale_min=2"], "crop_scale_min must be between 0 and 1"),
])
def test_contradictory_settings_fail_in_one_line(sets, match):
    with pytest.raises(UserError, match=match):
        resolve("coop", get_method_class("coop").Options, "base2new", sets=sets)


def test_iterations_per_shot_and_epochs_conflict():
    cls = get_method_class("clip_lora")
    assert resolve("clip_lora", cls.Options, "few_shot", shots=4).train.iterations == 2000   # 500 x 4
    assert resolve("clip_lora", cls.Options, "few_shot", shots=3).train.iterations == 1500
    assert resolve("clip_lora", cls.Options, "few_shot", shots=4, sets=["iterations=7"]).train.iterations == 7
    with pytest.raises(UserError, match="set epochs or iterations, not both"):
        resolve("clip_lora", cls.Options, "few_shot", shots=4, sets=["epochs=1"])
    one = resolve("clip_lora", cls.Options, "few_shot", shots=4, sets=["epochs=1", "iterations_per_shot=0"])
    assert one.train.epochs == 1 and one.train.iterations == 0


def test_iter_cosine_is_torch_cosine_annealing_and_epochs_are_cut():
    from cpbench.engine.train import batches_per_epoch, lr_at_step, planned_epochs

    cfg = TrainConfig(epochs=0, iterations=11, lr=2e-4, min_lr=1e-6, schedule="iter_cosine", warmup_epochs=0,
                      batch_size=4, drop_last=False)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations, eta_min=cfg.min_lr)
    for step in range(cfg.iterations):
        assert lr_at_step(step, cfg.iterations, cfg) == pytest.approx(sched.get_last_lr()[0], rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()
    assert batches_per_epoch(10, cfg) == 3                                           # 4 + 4 + 2: kept
    assert batches_per_epoch(10, TrainConfig(batch_size=4)) == 2                     # Dassl: dropped
    assert batches_per_epoch(3, TrainConfig(batch_size=4)) == 1                      # fewer than a batch: kept
    assert planned_epochs(cfg, 10) == 4                                              # 3 + 3 + 3 + 2 steps


def test_train_counts_steps_and_uses_torch_adamw(tiny_backbone, tmp_path):
    """The loop makes exactly ``iterations`` AdamW steps with the scheduled lr of each (a copy of the
    parameter stepped by torch's AdamW with those lrs ends equal), keeping the last small batch."""
    from cpbench.engine.precision import resolve_precision
    from cpbench.engine.train import lr_at_step, train
    from cpbench.methods.coop import CoOp, CoOpOptions

    root = tmp_path / "d"
    make_caltech(root)
    from cpbench.data import prepare as prep

    ds = prep.load("caltech101", root)
    items = list(ds.split.train)[:10]
    torch.manual_seed(0)
    m = CoOp(tiny_backbone, ds.split.classnames, CoOpOptions(ctx_init="", n_ctx=2))
    cfg = TrainConfig(epochs=0, iterations=5, batch_size=4, lr=0.01, min_lr=1e-4, schedule="iter_cosine",
                      warmup_epochs=0, optimizer="adamw", adam_eps=1e-4, adam_beta1=0.8, weight_decay=0.05,
                      drop_last=False, precision="fp32", checkpoint=False)
    steps, lrs, grads = [], [], []
    real_backward = m.backward

    def backward(losses, scale):
        real_backward(losses, scale)
        grads.append(m.ctx.grad.detach().clone())

    m.backward = backward
    start = m.ctx.detach().clone()
    res = train(m, items, ds.image_root, cfg, torch.device("cpu"), resolve_precision("fp32", torch.device("cpu")), 1,
                on_batch=lambda e, b, n, loss, lr: (steps.append((e, b, n)), lrs.append(lr)))
    assert steps == [(0, 1, 3), (0, 2, 3), (0, 3, 3), (1, 1, 2), (1, 2, 2)] and res.epochs == 2
    assert lrs == [pytest.approx(lr_at_step(i, 5, cfg)) for i in range(5)]
    p = torch.nn.Parameter(start.clone())
    opt = torch.optim.AdamW([p], lr=cfg.lr, betas=(0.8, 0.999), eps=1e-4, weight_decay=0.05)
    for lr, g in zip(lrs, grads):
        opt.param_groups[0]["lr"] = lr
        p.grad = g
        opt.step()
    assert torch.allclose(p.detach(), m.ctx.detach(), atol=1e-7)


def test_crop_scale_min(tiny_backbone):
    from cpbench.engine.features import train_preprocess

    class M:
        backbone = tiny_backbone

    assert train_preprocess(M, TrainConfig()).train_crop_scale == (0.08, 1.0)
    assert train_preprocess(M, TrainConfig(crop_scale_min=0.5)).train_crop_scale == (0.5, 1.0)
    import dataclasses

    class Toy:
        backbone = type("B", (), {"preprocess": dataclasses.replace(tiny_backbone.preprocess, train_crop_scale=None)})

    assert train_preprocess(Toy, TrainConfig(crop_scale_min=0.5)).train_crop_scale is None


# --------------------------------------------------------------------------- resume with AdamW
from cpbench.engine import checkpoint  # noqa: E402
from cpbench.protocols import few_shot  # noqa: E402
from cpbench.protocols.execute import run_job  # noqa: E402
from cpbench.protocols.jobs import RunSettings, job_config  # noqa: E402
from cpbench.protocols.keys import training_key  # noqa: E402
from cpbench.results.store import ResultStore  # noqa: E402

# CLIP-LoRA: AdamW + iter_cosine + an iteration count (8 images, batch 3: 3 steps an epoch, the
# last small batch kept; 7 iterations = 3 + 3 + 1) + LoRA input dropout (in-forward randomness).
# Tip-Adapter-F: AdamW + iter_cosine over 3 epochs of 3 steps, its cache (augmented passes) built
# in prepare_training, its β/α searched on the validation images after training.
SETS = {"clip_lora": ["iterations=7", "batch_size=3", "test_batch_size=8", "lr=0.01"],
        "tip_adapter_f": ["epochs=3", "batch_size=3", "test_batch_size=8", "lr=0.01", "augment_epoch=2"]}
STEPS = {"clip_lora": 7.0, "tip_adapter_f": 9.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("adamw")
    make_caltech(root / "data", n_train=2)
    return root / "data"


def _s(data: Path, res: Path, method: str) -> RunSettings:
    return RunSettings(data_root=data, results_root=res, backbone="tiny", pretrained="none", sets=list(SETS[method]),
                       feature_cache=False)


def _job(method: str):
    return few_shot.plan(method, ["caltech101"], [1], [2])[0]


def _ckpt(s, method, tag):
    job = _job(method)
    return checkpoint.load(s.results_root / "checkpoints" / training_key(job, job_config(job, s), s), tag)


@pytest.fixture(scope="module", params=sorted(SETS))
def baseline(request, data, tiny_backbone, tmp_path_factory):
    method = request.param
    s = _s(data, tmp_path_factory.mktemp("base"), method)
    rows = run_job(_job(method), tiny_backbone, s, ResultStore(s.results_root))
    return method, rows, _ckpt(s, method, "final")[0], _ckpt(s, method, "epoch")


def test_adamw_training_checkpoints_its_state(baseline):
    method, rows, final, (epoch_state, meta) = baseline
    assert meta["epoch"] == 2 and meta["epochs"] == 3 and rows[0]["epochs"] == 3
    names = {k.split(".", 2)[2] for k in epoch_state if k.startswith("__optim__.")}
    assert names == {"step", "exp_avg", "exp_avg_sq"}
    assert float(epoch_state["__optim__.0.step"]) == STEPS[method]   # optimiser steps, the cut epoch's included
    if method == "tip_adapter_f":
        assert float(final["searched"]) == 1.0 and not torch.equal(final["adapter.weight"], final["cache_keys"])


@pytest.mark.parametrize("crash_epoch", [0, 1])
def test_adamw_resume_is_bitwise_identical(crash_epoch, data, tiny_backbone, baseline, tmp_path, monkeypatch):
    method, rows, final, _ = baseline
    s = _s(data, tmp_path / "res", method)
    with monkeypatch.context() as m:
        crash_after_epoch(m, crash_epoch)
        with pytest.raises(Crash):
            run_job(_job(method), tiny_backbone, s, ResultStore(s.results_root))
    again = run_job(_job(method), tiny_backbone, s, ResultStore(s.results_root))
    got = _ckpt(s, method, "final")[0]
    assert set(got) == set(final)
    for k, t in final.items():
        assert torch.equal(got[k], t), k
    assert [r["correct"] for r in again] == [r["correct"] for r in rows]


def test_a_resume_without_adamw_state_would_differ(data, tiny_backbone, baseline, tmp_path, monkeypatch):
    import cpbench.engine.train as tr

    method, _, final, _ = baseline
    s = _s(data, tmp_path / "res", method)
    with monkeypatch.context() as m:
        crash_after_epoch(m, 0)
        with pytest.raises(Crash):
            run_job(_job(method), tiny_backbone, s, ResultStore(s.results_root))
    monkeypatch.setattr(tr, "_load_optimizer_state", lambda *a: None)
    run_job(_job(method), tiny_backbone, s, ResultStore(s.results_root))
    got = _ckpt(s, method, "final")[0]
    assert any(not torch.equal(got[k], t) for k, t in final.items())
