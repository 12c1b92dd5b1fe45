"""Jobs and their execution, shared by every protocol.

A job trains one method on one (dataset, class subset, shots, seed) and evaluates the result on
a list of (dataset, subset) targets. Its rows land in one Parquet shard named by the job key, a
hash of everything that determines the result; an existing shard means the job is done (unless
``force``). The learned state after training is kept as a ``final`` checkpoint, so evaluations
never retrain, and per-epoch checkpoints let an interrupted job resume.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from filelock import FileLock

from cpbench import faults
from cpbench.config import ResolvedConfig, resolve
from cpbench.data import prepare as prep
from cpbench.data.splits import subsample_classes
from cpbench.engine import checkpoint
from cpbench.engine.cache import FeatureCache
from cpbench.engine.evaluate import evaluate
from cpbench.engine.precision import resolve_precision, seed_everything
from cpbench.engine.train import epoch_seed, train
from cpbench.errors import UserError
from cpbench.methods.registry import get_method_class
from cpbench.models.backbone import Backbone, toy_fingerprint
from cpbench.results.schema import environment, now
from cpbench.results.store import ResultStore


@dataclass(frozen=True)
class Target:
    dataset: str
    subset: str = "all"     # all | base | new
    # evaluate with the training class names (the source text bank, class-specific parameters
    # included) and keep the logit columns of this target's classes, matched by name (DG: A/R)
    gather: bool = False


@dataclass(frozen=True)
class Job:
    method: str
    protocol: str
    train_dataset: str
    train_subset: str       # all | base
    shots: int
    seed: int
    targets: tuple[Target, ...]

    def describe(self) -> str:
        t = ", ".join(f"{x.dataset}/{x.subset}" for x in self.targets)
        return f"{self.method} {self.protocol} {self.train_dataset}/{self.train_subset} {self.shots}-shot seed {self.seed} -> {t}"


@dataclass
class RunSettings:
    data_root: Path
    results_root: Path
    backbone: str = "ViT-B-16"
    pretrained: str = "openai"
    weights: str | None = None
    config_file: str | None = None
    sets: list[str] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    force: bool = False
    feature_cache: bool = True


class Reporter(Protocol):
    def job_started(self, job: Job, index: int, total: int) -> None: ...
    def job_skipped(self, job: Job) -> None: ...
    def phase(self, text: str, total: int | None = None) -> None: ...
    def advance(self, done: int, total: int) -> None: ...
    def row(self, row: dict) -> None: ...


class SilentReporter:
    def job_started(self, job, index, total): pass
    def job_skipped(self, job): pass
    def phase(self, text, total=None): pass
    def advance(self, done, total): pass
    def row(self, row): pass


CONFIG_PROTOCOL = {"dg": "cross_dataset"}


class _GatherColumns:
    """Evaluation view of a method over the source class bank that keeps only ``columns`` of
    its logits (in the target's label order); everything else is the method itself."""

    def __init__(self, method, columns: list[int]):
        self._method = method
        self._columns = torch.tensor(columns, dtype=torch.long)

    def __getattr__(self, name):
        return getattr(self._method, name)

    def logits_from_features(self, image_features, context):
        logits = self._method.logits_from_features(image_features, context)
        return logits[:, self._columns.to(logits.device)]

    def forward(self, images):
        logits = self._method(images)
        return logits[:, self._columns.to(logits.device)]

    __call__ = forward


def gather_columns(source_names: list[str], target_names: list[str], dataset: str) -> list[int]:
    """Source column of each target class, matched by class name (must be unambiguous)."""
    index: dict[str, int] = {}
    dup = set()
    for i, n in enumerate(source_names):
        if n in index:
            dup.add(n)
        index.setdefault(n, i)
    missing = [n for n in target_names if n not in index]
    if missing:
        raise UserError(f"{dataset}: classes {missing[:3]} are not among the training classes; "
                        "evaluate it with a protocol that rebuilds prompts (cross_dataset) instead of dg")
    ambiguous = [n for n in target_names if n in dup]
    if ambiguous:
        raise UserError(f"{dataset}: class names {ambiguous[:3]} occur twice among the training classes; "
                        "give the dataset a wnid map or evaluate it with --protocol cross_dataset")
    return [index[n] for n in target_names]


def target_columns(ds, tds, names: list[str], tnames: list[str]) -> list[int]:
    """ImageNet -> ImageNet-A/R: by wnid (the 200 sorted folders; ImageNet's names are not unique:
    two "missile", two "sunglasses"); anything else by class name."""
    if ds.name == "imagenet" and len(names) == 1000:
        try:
            from cpbench.data.readers import folder_wnids, imagenet_indices
            from cpbench.data.specs import WNID_SUBSETS
        except ImportError:  # the ImageNet family is not available in this build
            WNID_SUBSETS = ()
        if tds.name in WNID_SUBSETS:
            cols = imagenet_indices(folder_wnids(tds.dir, tds.spec.image_dir))
            if len(cols) != len(tnames):
                raise UserError(f"{tds.name}: {len(cols)} wnid folders but {len(tnames)} classes in its split; "
                                f"re-run `cpbench prepare {tds.name} --force`")
            return cols
    return gather_columns(names, tnames, tds.name)


def job_config(job: Job, s: RunSettings) -> ResolvedConfig:
    cls = get_method_class(job.method)
    # DG evaluates the cross-dataset checkpoint: both train under the YAML's cross_dataset block
    protocol = CONFIG_PROTOCOL.get(job.protocol, job.protocol)
    return resolve(job.method, cls.Options, protocol, dataset=job.train_dataset, shots=job.shots,
                   config_file=s.config_file, sets=s.sets)


def _backbone_identity(s: RunSettings) -> list[str]:
    """The backbone as keys see it. The embedded toy weights change with cpbench releases, so they
    are identified by their config (which records the pretraining run), not only by name."""
    ident = [s.backbone, s.pretrained, s.weights or ""]
    if s.backbone == "toy" and not s.weights:
        ident.append(toy_fingerprint())
    return ident


def job_key(job: Job, cfg: ResolvedConfig, s: RunSettings) -> str:
    blob = json.dumps({
        "method": job.method, "protocol": job.protocol, "train": [job.train_dataset, job.train_subset],
        "shots": job.shots, "seed": job.seed, "targets": [[t.dataset, t.subset] for t in job.targets],
        "config": cfg.hash, "backbone": _backbone_identity(s),
    }, sort_keys=True)
    return f"{job.method}-{job.train_dataset}-s{job.seed}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def training_key(job: Job, cfg: ResolvedConfig, s: RunSettings) -> str:
    """What determines the learned parameters (not the eval targets): shared across protocols."""
    blob = json.dumps({
        "method": job.method, "train": [job.train_dataset, job.train_subset], "shots": job.shots,
        "seed": job.seed, "config": cfg.hash, "backbone": _backbone_identity(s),
    }, sort_keys=True)
    return f"{job.method}-{job.train_dataset}-{job.train_subset}-k{job.shots}-s{job.seed}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _subset_items(ds: prep.PreparedDataset, subset: str, shots: int, seed: int, part: str):
    """Items of ``part`` (train|val|test) for a class subset, with the subset's class names."""
    fs = ds.fewshot(shots, seed) if shots > 0 else None
    train_items = fs.train if fs else ds.split.train
    val_items = fs.val if fs else ds.split.val
    (tr, va, te), names = subsample_classes(subset, train_items, val_items, ds.split.test)
    return {"train": tr, "val": va, "test": te}[part], names, (tr, va)


def run_job(job: Job, backbone: Backbone, s: RunSettings, store: ResultStore,
            reporter: Reporter = SilentReporter()) -> list[dict] | None:
    cfg = job_config(job, s)
    key = job_key(job, cfg, s)
    if store.has(key) and not s.force:
        reporter.job_skipped(job)
        return None
    # One process at a time per training key (parallel workers, a second `cpbench run` on the same
    # results): the second waits, then finds the shard written and skips, or the final checkpoint
    # and only evaluates. flock locks die with their process, so a killed run leaves no stale lock.
    lock_path = s.results_root / "locks" / f"{training_key(job, cfg, s)}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path)):
        if store.has(key) and not s.force:
            reporter.job_skipped(job)
            return None
        return _run_job_locked(job, cfg, key, backbone, s, store, reporter)


def _run_job_locked(job: Job, cfg: ResolvedConfig, key: str, backbone: Backbone, s: RunSettings,
                    store: ResultStore, reporter: Reporter) -> list[dict]:
    started_at = now()
    precision = resolve_precision(cfg.train.precision, s.device)
    cls = get_method_class(job.method)
    if cfg.train.feature_views and (cls.image_prompted or not cls.feature_training):
        raise UserError(f"feature_views (cached augmented train features) is not available for {job.method}: "
                        "its image path is prompted or it needs the images; remove --set feature_views")
    ds = prep.load(job.train_dataset, s.data_root)
    train_items, names, (tr, va) = _subset_items(ds, job.train_subset, job.shots, job.seed, "train")
    if cls.trainable and not train_items:
        raise UserError(f"{ds.name}: no training images for the {job.train_subset} classes; check the split file "
                        f"in {ds.dir} or re-run `cpbench prepare {ds.name} --force`")
    seed_everything(job.seed)
    backbone.to(device=s.device, dtype=precision.param_dtype)
    method = cls(backbone, names, cfg.options, template=ds.spec.template).to(device=s.device, dtype=precision.param_dtype)
    ckpt_dir = s.results_root / "checkpoints" / training_key(job, cfg, s)
    if s.force and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    final = checkpoint.load(ckpt_dir, "final")
    train_seconds = 0.0
    epochs = cfg.train.epochs if cls.trainable else 0
    cache = FeatureCache(s.data_root / ".cache" / "features") if s.feature_cache else None
    if final is not None:
        method.load_learned_state(final[0])
        train_seconds = float(final[1].get("train_seconds", 0.0))
    elif getattr(cls, "closed_form", False):
        t0 = time.time()
        reporter.phase(f"fitting {job.method} on {len(tr)} images")
        method.fit_items(tr, va, ds.image_root, s.device, precision, cfg.train, cache=cache, dataset=ds.cache_tag)
        train_seconds = time.time() - t0
        checkpoint.save(ckpt_dir, "final", method.learned_state(), {"epoch": 0, "train_seconds": train_seconds})
    elif cls.trainable and cfg.train.epochs > 0:
        reporter.phase(f"training {job.method} on {ds.name} ({len(train_items)} images, {cfg.train.epochs} epochs)",
                       cfg.train.epochs)
        if hasattr(method, "prepare_training"):  # a method that needs the training images themselves (CPL)
            method.prepare_training(train_items, ds.image_root, s.device)
        result = train(method, train_items, ds.image_root, cfg.train, s.device, precision, job.seed, ckpt_dir,
                       on_epoch=lambda e, E, loss: reporter.advance(e + 1, E))
        train_seconds = result.seconds  # includes the time trained before an interruption
        checkpoint.save(ckpt_dir, "final", method.learned_state(), {"epoch": cfg.train.epochs, "train_seconds": train_seconds})
    env = environment()
    run_id = uuid.uuid4().hex[:12]
    rows = []
    for ti, target in enumerate(job.targets):
        # the same RNG state for each evaluation whether training ran now, resumed or was loaded
        # from the final checkpoint (methods that sample at test time, e.g. Bayesian prompts)
        torch.manual_seed(epoch_seed(job.seed, 200_000 + ti))
        tds = ds if target.dataset == ds.name else prep.load(target.dataset, s.data_root)
        items, tnames, _ = _subset_items(tds, target.subset, job.shots if tds is ds else 0, job.seed, "test")
        scorer = method
        if target.gather and list(tnames) != list(names):
            scorer = _GatherColumns(method, target_columns(ds, tds, list(names), list(tnames)))
            method.set_classnames(names)
        else:
            method.set_classnames(tnames)
        method.to(device=s.device, dtype=precision.param_dtype)
        reporter.phase(f"evaluating on {tds.name}/{target.subset} ({len(items)} images)")
        res = evaluate(scorer, items, tds.image_root, s.device, precision, cfg.train.test_batch_size,
                       cfg.train.num_workers, cache=cache, dataset=tds.cache_tag,
                       on_batch=lambda b, n: (reporter.advance(b, n), faults.point("eval")))
        row = {
            "run_id": run_id, "job_key": key, "method": job.method, "protocol": job.protocol,
            "train_dataset": job.train_dataset, "eval_dataset": tds.name, "subset": target.subset,
            "shots": job.shots, "seed": job.seed, "backbone": s.backbone, "pretrained": s.pretrained,
            "weights": s.weights or "", "config_hash": cfg.hash, "config_json": json.dumps(cfg.as_dict(), sort_keys=True),
            "accuracy": res.accuracy, "correct": res.correct, "n_test": res.n, "n_classes": len(tnames),
            "epochs": epochs, "precision": precision.effective, "precision_requested": precision.requested,
            "n_learnable": method.n_learnable(),
            "feature_cache": ("test" if (cache is not None and not method.image_prompted) else "off"),
            "train_features": (f"cached-aug:{cfg.train.feature_views}" if cfg.train.feature_views else "images"),
            "train_seconds": train_seconds, "eval_seconds": res.seconds, "device": str(s.device),
            "started_at": started_at, "finished_at": now(), **env,
        }
        rows.append(row)
        reporter.row(row)
    store.write(key, rows)
    return rows
