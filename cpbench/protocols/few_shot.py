"""Few-shot classification (CoOp): train on all classes with k shots per class, evaluate on the
full test split. Per-shot settings come from the method YAML's ``protocols.few_shot.shots.<k>``
blocks (CoOp's epochs per shot count)."""

from __future__ import annotations

from cpbench.protocols.jobs import Job, PlanRequest, Target


def plan(method: str, datasets: list[str], seeds: list[int], shots: list[int]) -> list[Job]:
    return [Job(method, "few_shot", d, "all", k, seed, (Target(d, "all"),))
            for d in datasets for k in shots for seed in seeds]


def plan_jobs(req: PlanRequest, datasets: list[str]) -> list[Job]:
    return plan(req.method, datasets, list(req.seeds), list(dict.fromkeys(req.shots)))


def default_targets(prepared: list[str]) -> list[str]:
    return list(prepared)
