"""Cross-dataset transfer (CoCoOp/MaPLe): train on the source (ImageNet, all classes, 16 shots),
then evaluate the same last-epoch model on the source test split and on each target's full test
split, with prompts rebuilt from the target's class names.

The job trains once and evaluates every target; its ``training_key`` does not depend on the
targets or the protocol name, so the DG protocol reuses the same checkpoint."""

from __future__ import annotations

from cpbench.data.specs import COOP_DATASETS
from cpbench.protocols.jobs import Job, PlanRequest, Target

SOURCE = "imagenet"
TARGETS = tuple(d for d in COOP_DATASETS if d != SOURCE)   # CoCoOp's ten targets, in its order


def plan(method: str, targets: list[str], seeds: list[int], shots: int = 16, source: str = SOURCE) -> list[Job]:
    """One job per seed: train on ``source`` (all classes), evaluate it and every target with
    prompts rebuilt from the target's class names."""
    tg = [Target(source, "all")] + [Target(t, "all") for t in targets if t != source]
    return [Job(method, "cross_dataset", source, "all", shots, seed, tuple(tg)) for seed in seeds]


def plan_jobs(req: PlanRequest, datasets: list[str]) -> list[Job]:
    return plan(req.method, datasets, list(req.seeds), req.shots[0], req.source)


def default_targets(prepared: list[str]) -> list[str]:
    return list(TARGETS)
