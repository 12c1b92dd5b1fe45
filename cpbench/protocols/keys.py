"""The names of a job's results and checkpoints.

``job_key`` names the Parquet shard (everything that determines the rows: targets included);
``training_key`` names the checkpoint folder and the lock (only what determines the learned
parameters, so cross_dataset and dg share one training)."""

from __future__ import annotations

import hashlib
import json

from cpbench.config import ResolvedConfig
from cpbench.models.backbone import toy_fingerprint
from cpbench.protocols.jobs import Job, RunSettings


def backbone_identity(s: RunSettings) -> list[str]:
    """The backbone as keys see it. The embedded toy weights change with cpbench releases, so they
    are identified by their config (which records the pretraining run), not only by name."""
    ident = [s.backbone, s.pretrained, s.weights or ""]
    if s.backbone == "toy" and not s.weights:
        ident.append(toy_fingerprint())
    return ident


def _imported(s: RunSettings) -> dict:
    """Imported state is part of what determines the rows (absent for trained jobs, so their keys
    are unchanged)."""
    if not s.state_from:
        return {}
    from cpbench.state import imports

    return {"imported": imports.identity(s.state_from)}


def _continual(job: Job) -> dict:
    """A continual job's task count and class order (absent for other jobs, so their keys are
    unchanged): they determine both what is trained and what is evaluated."""
    return {"continual": [job.tasks, job.class_order]} if job.tasks else {}


def _fewshot(job: Job, s: RunSettings) -> dict:
    """Training images read from CoOp's few-shot file that differ from cpbench's own draw (absent
    otherwise, so keys are unchanged where the images are): a checkpoint trained on other images is
    never reused."""
    if s.state_from or job.shots < 1:
        return {}
    from cpbench.data.prepare import fewshot_source

    source = fewshot_source(job.train_dataset, s.data_root, job.shots, job.seed)
    return {"fewshot": source} if source.startswith("dassl-pkl:") else {}


def job_key(job: Job, cfg: ResolvedConfig, s: RunSettings) -> str:
    blob = json.dumps({
        "method": job.method, "protocol": job.protocol, "train": [job.train_dataset, job.train_subset],
        "shots": job.shots, "seed": job.seed, "targets": [[t.dataset, t.subset] for t in job.targets],
        "config": cfg.hash, "backbone": backbone_identity(s), **_imported(s), **_continual(job),
        **_fewshot(job, s),
    }, sort_keys=True)
    return f"{job.method}-{job.train_dataset}-s{job.seed}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def training_key(job: Job, cfg: ResolvedConfig, s: RunSettings) -> str:
    """What determines the learned parameters (not the eval targets): shared across protocols."""
    blob = json.dumps({
        "method": job.method, "train": [job.train_dataset, job.train_subset], "shots": job.shots,
        "seed": job.seed, "config": cfg.hash, "backbone": backbone_identity(s), **_imported(s), **_continual(job),
        **_fewshot(job, s),
    }, sort_keys=True)
    return f"{job.method}-{job.train_dataset}-{job.train_subset}-k{job.shots}-s{job.seed}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


