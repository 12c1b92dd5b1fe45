"""What a job is, shared by every protocol: the data model only (and no torch import, so planning
stays cheap).

A job trains one method on one (dataset, class subset, shots, seed) and evaluates the result on
a list of (dataset, subset) targets. The protocols are listed in ``registry.py``; planning lives in
the protocol modules (``base2new.py``, …), the keys that name a job's results and checkpoints in
``keys.py``, the ImageNet -> A/R column gather in ``gather.py``, the steps every job shares
(build the method, learn its state, the row columns) in ``steps.py``, and running a job (lock,
learn, evaluate, write rows) in ``execute.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cpbench.config import ResolvedConfig, resolve
from cpbench.methods.registry import get_method_class
from cpbench.protocols import registry

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Target:
    dataset: str
    subset: str = "all"     # all | base | new
    # evaluate with the training class names (the source text bank, class-specific parameters
    # included) and keep the logit columns of this target's classes (DG: ImageNet -> A/R)
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
    # continual learning only (protocols/continual.py): the number of tasks and the class order
    # ("labels" = label order, "seed:N" = shuffled by N); 0 / "" for every other protocol
    tasks: int = 0
    class_order: str = ""

    def describe(self) -> str:
        t = ", ".join(f"{x.dataset}/{x.subset}" for x in self.targets)
        tasks = f" {self.tasks} tasks ({self.class_order})" if self.tasks else ""
        return f"{self.method} {self.protocol}{tasks} {self.train_dataset}/{self.train_subset} {self.shots}-shot seed {self.seed} -> {t}"


@dataclass(frozen=True)
class PlanRequest:
    """What a protocol plans the jobs of one ``cpbench run`` from (``protocols.registry``)."""
    method: str
    protocol: str
    seeds: tuple[int, ...]
    shots: tuple[int, ...]          # one value unless the protocol takes several (registry ``one_shots``)
    source: str = "imagenet"        # the training dataset of protocols that train on --source
    tasks: int = 2                  # continual: the number of tasks
    class_order: str = "labels"     # continual: "labels" or an integer seed


def _cpu():
    import torch

    return torch.device("cpu")


@dataclass
class RunSettings:
    data_root: Path
    results_root: Path
    backbone: str = "ViT-B-16"
    pretrained: str = "openai"
    weights: str | None = None
    config_file: str | None = None
    sets: list[str] = field(default_factory=list)
    device: "torch.device" = field(default_factory=_cpu)
    force: bool = False
    feature_cache: bool = True   # False (--no-cache): no test-feature cache and no training-view store
    view_store: bool = True      # False: the test-feature cache only (benchmarks/speed/views.py's baseline)
    # learned state imported instead of trained (``official:DIR`` | ``export:FILE``; see cpbench/state/imports.py)
    state_from: str | None = None
    # --tensorboard DIR: each training's epochs and final accuracies as a TensorBoard run (results/tensorboard.py)
    tensorboard: Path | None = None


class Reporter(Protocol):
    """What a running job tells the display (``cpbench/ui/progress.py``)."""
    def job_started(self, job: Job, index: int, total: int) -> None: ...
    def job_skipped(self, job: Job) -> None: ...
    def job_failed(self, job: Job, exc: BaseException) -> None: ...
    def say(self, text: str) -> None: ...   # one line about a step (resuming, waiting for a lock)
    def phase(self, text: str, total: int | None = None) -> None: ...
    def advance(self, done: int, total: int) -> None: ...
    def batch(self, epoch: int, done: int, total: int, loss: float, lr: float) -> None: ...
    def epoch(self, stats) -> None: ...     # engine.train.EpochStats of a finished epoch
    def row(self, row: dict) -> None: ...


class SilentReporter:
    def job_started(self, job, index, total): pass
    def job_skipped(self, job): pass
    def job_failed(self, job, exc): pass
    def say(self, text): pass
    def phase(self, text, total=None): pass
    def advance(self, done, total): pass
    def batch(self, epoch, done, total, loss, lr): pass
    def epoch(self, stats): pass
    def row(self, row): pass


def job_config(job: Job, s: RunSettings) -> ResolvedConfig:
    cls = get_method_class(job.method)
    # the YAML block the protocol trains under (DG evaluates the cross-dataset checkpoint: cross_dataset)
    protocol = registry.config_protocol(job.protocol)
    imported = None
    if s.state_from:  # imported state: the settings it was learned with, where its source records them
        from cpbench.state import imports

        imported = imports.config(s.state_from)
    return resolve(job.method, cls.Options, protocol, dataset=job.train_dataset, shots=job.shots,
                   config_file=s.config_file, sets=s.sets, imported=imported)


def default_config(job: Job) -> ResolvedConfig:
    """The method's defaults for this job: its YAML alone (no ``--config``, ``--set`` or imported
    settings). Rows record it (``defaults_json``) so the report labels them against what was the
    default when they ran."""
    cls = get_method_class(job.method)
    return resolve(job.method, cls.Options, registry.config_protocol(job.protocol), dataset=job.train_dataset,
                   shots=job.shots)

