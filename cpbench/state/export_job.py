"""``cpbench export``: select one trained job from the results and write its export file.

A job is found by its results rows (method, training dataset, seed; optionally shots, backbone,
protocol) or by its checkpoint folder (``RESULTS/checkpoints/<training key>``). The rows hold the
resolved config, so the training key, and with it the final checkpoint, follow exactly as
``cpbench run`` computed them. Imported rows (``--from-export``, official checkpoints) are never
exported again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cpbench.config import ResolvedConfig
from cpbench.errors import UserError
from cpbench.protocols import registry
from cpbench.protocols.jobs import Job, PlanRequest, RunSettings


def exportable() -> tuple[str, ...]:
    """The protocols whose jobs learn one state by the shared step (not their own runner), in the
    registry's order: where two share one training (cross_dataset, dg), the first names it."""
    return tuple(n for n in registry.protocol_names() if not registry.get(n).own_runner)


@dataclass
class Trained:
    job: Job
    cfg: ResolvedConfig
    settings: RunSettings
    training_key: str
    rows: list[dict]          # the rows of the chosen job, in target order

    @property
    def checkpoint_dir(self) -> Path:
        return self.settings.results_root / "checkpoints" / self.training_key


def _job(rows: list[dict]) -> Job:
    """The job the rows of one job key came from (its plan: training subset and targets)."""
    r = rows[0]
    p = r["protocol"]
    req = PlanRequest(r["method"], p, (int(r["seed"]),), (int(r["shots"]),), source=r["train_dataset"])
    if registry.get(p).trains_on_source:
        datasets = [x["eval_dataset"] for x in rows if x["eval_dataset"] != r["train_dataset"]]
    else:
        datasets = [r["train_dataset"]]
    return registry.module(p).plan_jobs(req, datasets)[0]


def _trained(rows: list[dict], data_root: Path, results_root: Path) -> Trained:
    from cpbench.methods.registry import get_method_class
    from cpbench.protocols.keys import training_key

    r = rows[0]
    job = _job(rows)
    cfg = ResolvedConfig.from_dict(json.loads(r["config_json"]), get_method_class(job.method).Options)
    if cfg.hash != r["config_hash"]:
        raise UserError(f"the rows of {r['job_key']} were written by a cpbench with other settings (config hash "
                        f"{r['config_hash']}, rebuilt {cfg.hash}); re-run that job with this version to export it")
    s = RunSettings(data_root=data_root, results_root=results_root, backbone=r["backbone"], pretrained=r["pretrained"],
                    weights=r.get("weights") or None)
    return Trained(job, cfg, s, training_key(job, cfg, s), rows)


def _describe(t: Trained) -> str:
    j, s = t.job, t.settings
    return f"{j.protocol} k{j.shots} {s.backbone} config {t.cfg.hash}"


def find(results_root: Path, data_root: Path, method: str | None, dataset: str | None, seed: int | None,
         shots: int | None = None, backbone: str | None = None, protocol: str | None = None,
         checkpoint: Path | None = None) -> Trained:
    """The one trained job that matches, or one line saying what to narrow or run."""
    from cpbench.results.store import ResultStore

    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_dir():
            raise UserError(f"--checkpoint {checkpoint}: no such folder; pass RESULTS/checkpoints/<job>")
        if checkpoint.parent.name == "checkpoints":
            results_root = checkpoint.parent.parent
    elif not (method and dataset and seed is not None):
        raise UserError("name the job: cpbench export METHOD --dataset D --seed S (or --checkpoint DIR)")
    if protocol is not None and protocol not in exportable():
        raise UserError(f"unknown protocol {protocol!r}; use one of {', '.join(exportable())}")
    frame = ResultStore(results_root).read().frame
    if frame.empty:
        raise UserError(f"no results under {results_root}; train first (`cpbench run METHOD ...`) or pass --results DIR")
    if "imported" not in frame:
        frame["imported"] = ""
    frame = frame[frame["imported"].fillna("") == ""]
    for col, value in (("method", method), ("train_dataset", dataset), ("seed", seed), ("shots", shots),
                       ("backbone", backbone), ("protocol", protocol)):
        if value is not None:
            frame = frame[frame[col] == value]
    order = exportable()
    frame = frame[frame["protocol"].isin(order)]
    jobs: dict[str, Trained] = {}
    for _, grp in frame.groupby("job_key", sort=True):
        t = _trained(grp.to_dict("records"), data_root, results_root)
        # cross_dataset and dg share one training: keep the protocol that comes first
        if t.training_key not in jobs or order.index(t.job.protocol) < order.index(jobs[t.training_key].job.protocol):
            jobs[t.training_key] = t
    if checkpoint is not None:
        jobs = {k: v for k, v in jobs.items() if k == checkpoint.name}
    what = f"{method or 'any method'} on {dataset or 'any dataset'} seed {seed if seed is not None else 'any'}"
    if not jobs:
        if checkpoint is not None:
            raise UserError(f"no results rows for checkpoint {checkpoint.name} in {results_root}; export needs the job's "
                            "rows: re-run its `cpbench run` to the end")
        raise UserError(f"no trained job {what} in {results_root}; check `cpbench report --results {results_root}` "
                        "(a job must have finished its evaluation)")
    if len(jobs) > 1:
        found = "; ".join(f"{_describe(t)} -> {t.checkpoint_dir}" for t in jobs.values())
        raise UserError(f"{len(jobs)} trained jobs {what} match ({found}); narrow with --shots/--backbone/--protocol "
                        "or pass --checkpoint DIR")
    return next(iter(jobs.values()))


def export(t: Trained, out: Path, device: str = "cpu") -> dict:
    """Build the method on its training classes, load its final checkpoint and write ``out``.
    Returns the metadata written."""
    import torch

    from cpbench.state import export as fmt
    from cpbench.data import prepare as prep
    from cpbench.engine import checkpoint
    from cpbench.engine.precision import resolve_device
    from cpbench.methods.registry import get_method_class
    from cpbench.models.backbone import load_backbone
    from cpbench.protocols.steps import evaluation_seed
    from cpbench.results.schema import environment, now

    job, s = t.job, t.settings
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; pass a file name such as prompts.safetensors")
    ds = prep.load(job.train_dataset, s.data_root)
    _, names, _ = prep.subset_items(ds, job.train_subset, job.shots, job.seed, "train")
    dev = resolve_device(device)
    cls = get_method_class(job.method)
    backbone = load_backbone(s.backbone, s.pretrained, s.weights)
    backbone.to(device=dev, dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        method = cls(backbone, names, t.cfg.options, template=ds.spec.template)
    method.to(device=dev, dtype=torch.float32)
    final = checkpoint.load(t.checkpoint_dir, "final")
    if final is None and method.learned_state():
        raise UserError(f"no final checkpoint in {t.checkpoint_dir} (deleted?); re-run the job with `cpbench run "
                        f"{job.method} ... --force` to train it again")
    state = final[0] if final is not None else {}
    method.load_learned_state(state)
    method.eval()
    text = scale = None
    if cls.text_classifier:
        with torch.no_grad():
            text, scale = method.eval_context().float().cpu(), backbone.logit_scale.float().cpu()
    env = environment()
    p = backbone.preprocess
    meta = {
        "method": job.method, "config": t.cfg.as_dict(), "config_hash": t.cfg.hash,
        "backbone": fmt.backbone_record(backbone),
        "preprocess": {"image_size": p.image_size, "mean": list(p.mean), "std": list(p.std),
                       "interpolation": p.interpolation, "resize_mode": p.resize_mode, "fill_color": p.fill_color},
        "classnames": list(names), "template": ds.spec.template,
        "job": {"protocol": job.protocol, "train_dataset": job.train_dataset, "train_subset": job.train_subset,
                "shots": job.shots, "seed": job.seed, "training_key": t.training_key,
                "targets": [{"dataset": tg.dataset, "subset": tg.subset, "rng_seed": evaluation_seed(job.seed, i)}
                            for i, tg in enumerate(job.targets)],
                "rows": [{k: _plain(r.get(k)) for k in ("eval_dataset", "subset", "accuracy", "n_test", "n_classes",
                                                         "precision", "epochs", "job_key", "run_id")} for r in t.rows]},
        "text_features": text is not None,
        "versions": {k: env[f"{k}_version"] for k in ("cpbench", "torch", "open_clip")},
        "created_at": now(),
    }
    fmt.write(out, meta, state, text, scale)
    return meta


def _plain(v):
    """numpy/pandas scalars -> JSON values."""
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def command(results_root: Path, data_root: Path, out: Path, method: str | None = None, dataset: str | None = None,
            seed: int | None = None, shots: int | None = None, backbone: str | None = None,
            protocol: str | None = None, checkpoint: Path | None = None, device: str = "cpu") -> str:
    """``cpbench export``: find the one trained job, write its file; returns the line saying what was
    written."""
    from cpbench.state.export import describe

    t = find(results_root, data_root, method, dataset, seed, shots, backbone, protocol, checkpoint)
    meta = export(t, out, device)
    extra = ", with text features" if meta["text_features"] else ""
    return (f"wrote {out} ({Path(out).stat().st_size / 1024:.1f} kB): {meta['method']} {describe(meta)}, "
            f"{len(meta['classnames'])} classes{extra}")

