"""Base-to-new generalisation (CoCoOp): train on the base half of the classes (16 shots), then
evaluate the last-epoch model on the base test split and on the new test split, with prompts
rebuilt from the new class names and the learned context kept."""

from __future__ import annotations

from cpbench.protocols.jobs import Job, PlanRequest, Target


def plan(method: str, datasets: list[str], seeds: list[int], shots: int = 16) -> list[Job]:
    from cpbench.methods.registry import METHODS, get_method_class

    # a method that cannot score unseen classes (linear probe: new_classes = False) gets base only
    new = method not in METHODS or get_method_class(method).new_classes
    subsets = ("base", "new") if new else ("base",)
    return [
        Job(method, "base2new", d, "base", shots, seed, tuple(Target(d, s) for s in subsets))
        for d in datasets for seed in seeds
    ]


def plan_jobs(req: PlanRequest, datasets: list[str]) -> list[Job]:
    return plan(req.method, datasets, list(req.seeds), req.shots[0])


def default_targets(prepared: list[str]) -> list[str]:
    return list(prepared)
