"""Domain generalisation (CoCoOp): the ImageNet-trained model of the cross-dataset protocol,
evaluated on ImageNet-V2, -Sketch, -A and -R.

ImageNet-A and -R are 200-class problems (labels 0..199 over their sorted wnids, as CoOp). Their
targets are marked ``gather``: the method keeps the *source* class names (its 1000-class text
bank, including class-specific parameters such as CoOp-CSC contexts or LAMM label embeddings)
and the evaluation selects the logit columns of the target's classes, matched by wnid
(ImageNet -> A/R: ImageNet's names are not unique) or else by class name, in the target's label
order. Keeping columns equals CoOp's 200-way rebuild exactly when each class's logit does not
depend on the other classes (CoOp, CoCoOp, MaPLe, IVLP, PromptSRC, KgCoOp, PRE, CPL); for
class-specific methods it keeps the learned per-class parameters (a 200-way rebuild would lose
them). It is NOT equal for Bayesian prompt learning, whose output averages a softmax over
Monte-Carlo samples: the official code rebuilds the prompts on the 200 classes, so each sample's
softmax is 200-way before averaging. Such a method declares ``rebuild_on_target_classes`` and is
rebuilt on the target's class names instead (``gather.scorer_for``). For V2 and Sketch (same
1000 classes) the selection is the identity."""

from __future__ import annotations

from cpbench.data.specs import IMAGENET_VARIANTS
from cpbench.protocols.jobs import Job, PlanRequest, Target

SOURCE = "imagenet"
TARGETS = IMAGENET_VARIANTS   # ImageNet-V2, -Sketch, -A, -R


def plan(method: str, targets: list[str], seeds: list[int], shots: int = 16, source: str = SOURCE) -> list[Job]:
    """One job per seed: train on ``source`` (all classes; the cross-dataset training, the same
    training key), evaluate it and every target with the source class bank's columns gathered."""
    tg = [Target(source, "all")] + [Target(t, "all", gather=True) for t in targets if t != source]
    return [Job(method, "dg", source, "all", shots, seed, tuple(tg)) for seed in seeds]


def plan_jobs(req: PlanRequest, datasets: list[str]) -> list[Job]:
    return plan(req.method, datasets, list(req.seeds), req.shots[0], req.source)


def default_targets(prepared: list[str]) -> list[str]:
    return list(TARGETS)
