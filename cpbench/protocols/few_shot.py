"""Few-shot classification (CoOp): train on all classes with k shots per class, evaluate on the
full test split. Per-shot epochs come from the method YAML's ``shots.<k>`` blocks."""

from __future__ import annotations

from cpbench.protocols.jobs import Job, Target


def plan(method: str, datasets: list[str], seeds: list[int], shots: list[int]) -> list[Job]:
    return [Job(method, "few_shot", d, "all", k, seed, (Target(d, "all"),))
            for d in datasets for k in shots for seed in seeds]
