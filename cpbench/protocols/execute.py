"""Running one job: lock its training key, skip it if its rows exist (unless ``force``), and hand it
to its protocol's runner: the protocol module's own ``run`` (``registry.Protocol.own_runner``:
continual, retrieval) or ``learn_and_evaluate`` here: learn once (load the final checkpoint, fit,
load imported state, or train with per-epoch checkpoints), evaluate every target, write the
per-image predictions (``results/predictions.py``) and then the rows as one Parquet shard.

The learned state after training is kept as a ``final`` checkpoint, so evaluations never retrain,
and per-epoch checkpoints let an interrupted job resume.
"""

from __future__ import annotations

import uuid

import torch
from cpbench import faults, locks
from cpbench.config import ResolvedConfig
from cpbench.data import prepare as prep
from cpbench.engine import checkpoint
from cpbench.engine.evaluate import evaluate
from cpbench.engine.memory import peak_mb, reset_peak
from cpbench.methods.registry import get_method_class
from cpbench.models.backbone import Backbone
from cpbench.protocols import registry
from cpbench.protocols.gather import scorer_for
from cpbench.protocols.jobs import Job, Reporter, RunSettings, SilentReporter, job_config
from cpbench.protocols.keys import job_key, training_key
from cpbench.protocols.steps import checkpoint_dir, evaluation_seed, learn, run_fields
from cpbench.results import predictions
from cpbench.results.schema import environment, now
from cpbench.results.store import ResultStore


def job_lock(s: RunSettings, tkey: str, job: Job, reporter: Reporter):
    """One process at a time per training key (parallel workers, a second `cpbench run` on the same
    results): the second says whom it waits for, then finds the shard written and skips, or the
    final checkpoint and only evaluates. flock locks die with their process and the holder removes
    the file (``cpbench/locks.py``), so no run leaves a stale lock."""
    path = s.results_root / "locks" / f"{tkey}.lock"
    return locks.held(path, waiting=lambda who: reporter.say(
        f"  waiting for another run of {job.method} on {job.train_dataset} seed {job.seed} to finish "
        f"(it holds {path.name}: {who})"))


def saved_progress(finished: int, total: int, job: Job | None, s: RunSettings) -> str:
    """What an interrupted run keeps, in words: finished jobs, and how far the current job got."""
    said = f"{finished} of {total} job(s) finished and saved"
    if job is None:
        return said
    ckpt = checkpoint_dir(job, job_config(job, s), s)
    name = f"{job.method} on {job.train_dataset} seed {job.seed}"
    if checkpoint.read_meta(ckpt, "final") is not None:
        return f"{said}; {name} has finished training (kept), its evaluation will run again"
    meta = checkpoint.read_meta(ckpt, "epoch")
    if meta is not None:
        return f"{said}; {name} has epoch {int(meta['epoch']) + 1}/{meta.get('epochs', '?')} checkpointed"
    cls = get_method_class(job.method)
    if cls.trainable and not cls.closed_form:
        return f"{said}; {name} had not finished its first epoch"
    return said


def run_job(job: Job, backbone: Backbone, s: RunSettings, store: ResultStore,
            reporter: Reporter = SilentReporter()) -> list[dict] | None:
    """Run one job under its training key's lock; None when its rows exist (unless ``force``)."""
    cfg = job_config(job, s)
    key = job_key(job, cfg, s)
    if store.has(key) and not s.force:
        reporter.job_skipped(job)
        tensorboard_final(job, cfg, key, s, store, None)
        return None
    with job_lock(s, training_key(job, cfg, s), job, reporter):
        if store.has(key) and not s.force:
            reporter.job_skipped(job)
            tensorboard_final(job, cfg, key, s, store, None)
            return None
        rows = runner(job.protocol)(job, cfg, key, backbone, s, store, reporter)
        tensorboard_final(job, cfg, key, s, store, rows)
        return rows


def tensorboard_final(job: Job, cfg: ResolvedConfig, key: str, s: RunSettings, store: ResultStore,
                      rows: list[dict] | None) -> None:
    """``--tensorboard``: the job's final accuracies (its stored rows when it was skipped) into its
    training's run, with the history filled in from ``history.parquet`` where the run has none."""
    if s.tensorboard is None:
        return
    from cpbench.results import tensorboard

    if rows is None:
        import pandas as pd

        rows = pd.read_parquet(store.shard_path(key)).to_dict("records")
    tensorboard.write_final(s.tensorboard, training_key(job, cfg, s), key,
                            checkpoint_dir(job, cfg, s) / "history.parquet", rows)


def runner(protocol: str):
    """What runs a job of ``protocol``: its module's ``run`` when it has its own, else
    ``learn_and_evaluate``."""
    if registry.get(protocol).own_runner:
        return registry.module(protocol).run
    return learn_and_evaluate


def learn_and_evaluate(job: Job, cfg: ResolvedConfig, key: str, backbone: Backbone, s: RunSettings,
                       store: ResultStore, reporter: Reporter) -> list[dict]:
    """The shared runner: learn once (``steps.learn``), evaluate every target in order (each from a
    fixed RNG state), write the per-image predictions, then the rows as one shard."""
    started_at = now()
    reset_peak(s.device)
    lr = learn(job, cfg, backbone, s, reporter)
    method, ds, names, precision = lr.method, lr.dataset, lr.names, lr.precision
    env = environment()
    imported = ""
    if s.state_from:
        from cpbench.state import imports

        imported = imports.identity(s.state_from)
    run_id = uuid.uuid4().hex[:12]
    rows, evals = [], []
    for ti, target in enumerate(job.targets):
        torch.manual_seed(evaluation_seed(job.seed, ti))
        tds = ds if target.dataset == ds.name else prep.load(target.dataset, s.data_root)
        items, tnames, _ = prep.subset_items(tds, target.subset, job.shots if tds is ds else 0, job.seed, "test")
        scorer = scorer_for(method, target.gather, ds, tds, names, tnames)
        method.to(device=s.device, dtype=precision.param_dtype)
        reporter.phase(f"evaluating on {tds.name}/{target.subset} ({len(items)} images)")
        res = evaluate(scorer, items, tds.image_root, s.device, precision, cfg.train.test_batch_size,
                       cfg.train.num_workers, cache=lr.cache, dataset=tds.cache_tag,
                       on_batch=lambda b, n: (reporter.advance(b, n), faults.point("eval")))
        evals.append(predictions.Evaluation(run_id, tds.name, target.subset, predictions.Outcome(
            predictions.split_positions(tds.split.test, items), res.labels, res.preds, res.p_true, tuple(tnames))))
        row = {
            **run_fields(job, key, cfg, s, run_id, method, precision, lr.epochs, lr.train_seconds,
                         lr.cache is not None, started_at, env, imported),
            "eval_dataset": tds.name, "subset": target.subset,
            "accuracy": res.accuracy, "correct": res.correct, "n_test": res.n, "n_classes": len(tnames),
            "eval_seconds": res.seconds, "finished_at": now(),
        }
        rows.append(row)
        reporter.row(row)
    peak, source = peak_mb(s.device)
    for row in rows:  # the job's peak (training and every evaluation)
        row.update(peak_memory_mb=peak, peak_memory_source=source)
    predictions.write(s.results_root, key, evals)  # before the shard: a finished job has both
    store.write(key, rows)
    return rows
