"""Cross-dataset transfer (CoCoOp/MaPLe): train on the source (ImageNet, all classes, 16 shots),
then evaluate the same last-epoch model on the source test split and on each target's full test
split, with prompts rebuilt from the target's class names.

The job trains once and evaluates every target; its ``training_key`` does not depend on the
targets or the protocol name, so the DG protocol reuses the same checkpoint."""

from __future__ import annotations

from cpbench.protocols.jobs import Job, Target

SOURCE = "imagenet"
TARGETS = ("caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
           "sun397", "dtd", "eurosat", "ucf101")


def plan(method: str, targets: list[str], seeds: list[int], shots: int = 16, source: str = SOURCE,
         protocol: str = "cross_dataset", gather: bool = False) -> list[Job]:
    tg = [Target(source, "all")] + [Target(t, "all", gather) for t in targets if t != source]
    return [Job(method, protocol, source, "all", shots, seed, tuple(tg)) for seed in seeds]
