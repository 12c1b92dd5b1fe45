"""The steps every protocol's jobs share, so that no protocol imports another: build the method
on its classes, give it its learned state (the final checkpoint, a closed-form fit, imported state,
or training with per-epoch checkpoints and history), and the columns every result row of a job
shares. The shared runner (``execute.learn_and_evaluate``) and the protocols with their own
(``continual.py``, ``retrieval.py``) are made of these.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cpbench.config import ResolvedConfig
from cpbench.data import prepare as prep
from cpbench.engine import checkpoint
from cpbench.engine.cache import FeatureCache
from cpbench.engine.precision import Precision, resolve_precision, seed_everything
from cpbench.engine.train import epoch_seed, planned_epochs, train, uses_view_store
from cpbench.engine.views import ViewStore
from cpbench.errors import UserError
from cpbench.methods.base import Method, TrainingData
from cpbench.methods.registry import get_method_class
from cpbench.models.backbone import Backbone
from cpbench.paths import cache_root
from cpbench.protocols.jobs import Job, Reporter, RunSettings, default_config
from cpbench.protocols.keys import training_key
from cpbench.results import curves
from cpbench.results.schema import device_name, now


def evaluation_seed(seed: int, target_index: int) -> int:
    """The torch seed set before evaluating a job's target ``target_index`` (0-based, in job order):
    the same RNG state whether training ran now, resumed or was loaded from the final checkpoint, for
    methods that sample at test time (Bayesian prompts). Exports record it per target."""
    return epoch_seed(seed, 200_000 + target_index)


def checkpoint_dir(job: Job, cfg: ResolvedConfig, s: RunSettings) -> Path:
    """Where a training keeps its checkpoints and its per-epoch history (``history.parquet``)."""
    return s.results_root / "checkpoints" / training_key(job, cfg, s)


def start_own_runner(job: Job, cfg: ResolvedConfig, s: RunSettings) -> tuple[type, Precision, str]:
    """The start of a protocol with its own executor (continual, retrieval): no imported state
    (they train their own), a method that can run it; (method class, precision, started_at)."""
    if s.state_from:
        raise UserError(f"--protocol {job.protocol} trains its own state; it cannot start from imported state")
    cls = get_method_class(job.method)
    why = cls.unsupported(job.protocol, cfg.options)
    if why:
        raise UserError(why)
    return cls, resolve_precision(cfg.train.precision, s.device), now()


@dataclass
class Learned:
    """A method with its learned state in place, and how it got there."""
    method: Method
    dataset: prep.PreparedDataset      # the training dataset
    names: list[str]                   # the training class names, in label order
    precision: Precision
    epochs: int
    train_seconds: float
    cache: FeatureCache | None


def learn(job: Job, cfg: ResolvedConfig, backbone: Backbone, s: RunSettings, reporter: Reporter) -> Learned:
    """Build the method on the training classes and give it its learned state: from the final
    checkpoint if one exists, else by a closed-form fit or by training (resuming from the last
    epoch checkpoint)."""
    precision = resolve_precision(cfg.train.precision, s.device)
    cls = get_method_class(job.method)
    if cfg.train.feature_views and (cls.image_prompted or not cls.feature_training):
        raise UserError(f"feature_views (cached augmented train features) is not available for {job.method}: "
                        "its image path is prompted or it needs the images; remove --set feature_views")
    ds = prep.load(job.train_dataset, s.data_root)
    # imported state trains nothing here: the class names come from the full split, no few-shot draw is needed
    train_items, names, (tr, va) = prep.subset_items(ds, job.train_subset, 0 if s.state_from else job.shots, job.seed, "train")
    if cls.trainable and not train_items:
        raise UserError(f"{ds.name}: no training images for the {job.train_subset} classes; check the split file "
                        f"in {ds.dir} or {prep.repair_hint(ds.spec, s.data_root)}")
    seed_everything(job.seed)
    method = build_method(cls, backbone, names, cfg.options, ds.spec.template, s, precision)
    ckpt_dir = checkpoint_dir(job, cfg, s)
    if s.force and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    final = checkpoint.load(ckpt_dir, "final")
    train_seconds = 0.0
    epochs = planned_epochs(cfg.train, len(train_items)) if cls.trainable else 0
    cache = FeatureCache(cache_root() / "features") if s.feature_cache else None
    if s.state_from:  # imported, not trained here (cpbench/state/imports.py)
        from cpbench.state import imports

        method.load_learned_state(imports.load_state(s.state_from, job, method, ds))
        method.to(device=s.device, dtype=precision.param_dtype)
        epochs = 0
    elif final is None and cls.closed_form:
        t0 = time.time()
        reporter.phase(f"fitting {job.method} on {len(tr)} images")
        method.fit(TrainingData(tr, va, ds.image_root, s.device, precision, cfg.train, job.seed, cache, ds.cache_tag))
        train_seconds = time.time() - t0
        checkpoint.save(ckpt_dir, "final", method.learned_state(), {"epoch": 0, "train_seconds": train_seconds})
    else:
        train_seconds = train_or_load(method, cfg, s, precision, job.seed, train_items, ds.image_root, ckpt_dir,
                                      reporter, f"{job.method} on {ds.name}", history_ident(job, cfg, s), final=final,
                                      val_items=va, cache=cache, dataset=ds.cache_tag)
    return Learned(method, ds, list(names), precision, epochs, train_seconds, cache)


def build_method(cls, backbone: Backbone, names: list[str], options, template: str, s: RunSettings,
                 precision: Precision) -> Method:
    """``cls`` on ``names``, with the backbone and the method on the run's device and dtype."""
    backbone.to(device=s.device, dtype=precision.param_dtype)
    return cls(backbone, list(names), options, template=template).to(device=s.device, dtype=precision.param_dtype)


def history_ident(job: Job, cfg: ResolvedConfig, s: RunSettings, **extra) -> dict:
    """The identifying columns of a training's ``history.parquet`` (``cpbench/results/curves.py``)."""
    return {"method": job.method, "train_dataset": job.train_dataset, "train_subset": job.train_subset,
            "shots": job.shots, "seed": job.seed, "backbone": s.backbone, "pretrained": s.pretrained,
            "config_hash": cfg.hash, "weights": s.weights or "", **extra}


def train_or_load(method: Method, cfg: ResolvedConfig, s: RunSettings, precision: Precision, seed: int,
                  train_items, image_root: Path, ckpt_dir: Path, reporter: Reporter, what: str, ident: dict,
                  final: tuple | None = None, val_items=(), cache: FeatureCache | None = None,
                  dataset: str = "") -> float:
    """Give ``method`` its learned state from ``ckpt_dir``'s final checkpoint, or train it there
    (resuming from the last epoch checkpoint; the per-epoch history goes to ``ckpt_dir/history.parquet``
    with the columns ``ident``) and save the final one; returns the training seconds (including time
    trained before an interruption). ``final``: the final checkpoint, when the caller already loaded
    it. Nothing is trained for a non-trainable method or 0 epochs. ``val_items``, ``cache`` and
    ``dataset`` reach the method's ``prepare_training`` (Tip-Adapter-F searches its α/β there).
    Unless the run says ``--no-cache``, a method whose image encoder is frozen and unprompted trains
    from the training-view store (``engine/views.py``), filling it where it is empty."""
    final = final if final is not None else checkpoint.load(ckpt_dir, "final")
    if final is not None:
        reporter.say(f"  {what} finished training in an earlier run: its final checkpoint is loaded, not trained again")
        method.load_learned_state(final[0])
        return float(final[1].get("train_seconds", 0.0))
    epochs = planned_epochs(cfg.train, len(train_items))
    if not (method.trainable and epochs > 0):
        return 0.0
    length = f"{cfg.train.iterations} iterations" if cfg.train.iterations else f"{epochs} epochs"
    done = checkpoint.read_meta(ckpt_dir, "epoch")
    if done is not None:
        n = int(done["epoch"]) + 1
        kept = "epoch 1 was" if n == 1 else f"epochs 1-{n} were"
        reporter.say(f"  resuming {what} from epoch {n + 1}/{epochs}: {kept} checkpointed by an earlier run ({ckpt_dir})")
    reporter.phase(f"training {what} ({len(train_items)} images, {length})", epochs)
    method.prepare_training(TrainingData(train_items, tuple(val_items), image_root, s.device, precision, cfg.train,
                                         seed, cache, dataset))

    board = None
    if s.tensorboard is not None:  # one run per training (continual: per task), named like its checkpoints
        from cpbench.results.tensorboard import EpochWriter

        board = EpochWriter(s.tensorboard, ckpt_dir.relative_to(s.results_root / "checkpoints").as_posix())

    def on_epoch(stats, history):
        curves.write_history(ckpt_dir, history, ident)
        if board is not None:
            board(history[-1])
        reporter.epoch(stats)

    store = ViewStore(cache_root() / "views") if s.feature_cache and s.view_store else None
    try:
        result = train(method, train_items, image_root, cfg.train, s.device, precision, seed, ckpt_dir,
                       on_epoch=on_epoch, on_batch=reporter.batch, store=store, dataset_tag=dataset)
    finally:
        if board is not None:
            board.close()
    if result.history:  # also when the run resumed after its last epoch
        curves.write_history(ckpt_dir, result.history, ident)
    checkpoint.save(ckpt_dir, "final", method.learned_state(), {"epoch": epochs, "train_seconds": result.seconds})
    return result.seconds


def run_fields(job: Job, key: str, cfg: ResolvedConfig, s: RunSettings, run_id: str, method: Method,
               precision: Precision, epochs: int, train_seconds: float, cache: bool, started_at: str, env: dict,
               imported: str = "") -> dict:
    """The columns every result row of one job shares (everything but the evaluation itself)."""
    return {
        "run_id": run_id, "job_key": key, "method": job.method, "protocol": job.protocol,
        "train_dataset": job.train_dataset, "shots": job.shots, "seed": job.seed, "backbone": s.backbone,
        "pretrained": s.pretrained, "weights": s.weights or "", "config_hash": cfg.hash,
        "config_json": json.dumps(cfg.as_dict(), sort_keys=True),
        "defaults_json": json.dumps(default_config(job).as_dict(), sort_keys=True), "epochs": epochs,
        "precision": precision.effective, "precision_requested": precision.requested,
        "n_learnable": method.n_learnable(),
        # "+train-views": the training read (and filled) the training-view store: exact, same rows
        "feature_cache": ("off" if not cache or method.image_prompted else
                          "test+train-views" if epochs and s.view_store and uses_view_store(method, cfg.train) else "test"),
        "train_features": (f"cached-aug:{cfg.train.feature_views}" if cfg.train.feature_views else "images"),
        "train_seconds": train_seconds, "device": str(s.device), "imported": imported,
        # the training images' origin (cpbench's draw or CoOp's split_fewshot pkl; "" = none drawn)
        "fewshot_source": "" if imported else prep.fewshot_source(job.train_dataset, s.data_root, job.shots, job.seed),
        "device_name": device_name(s.device),  # the GPU model for the cost view (issue 26)
        "started_at": started_at, **env,
    }
