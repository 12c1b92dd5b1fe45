"""Protocol names -> what each protocol is and where it lives. A plain table of import paths,
resolved on use, so nothing registers itself by being imported; it imports nothing, so a mistyped
``--protocol`` (or a --shots count the protocol does not take) is answered before torch loads.

A protocol is one module in this folder plus one line here. The line holds what cpbench must know
before anything is loaded (``Protocol`` below); the module exposes

- ``plan_jobs(request: PlanRequest, datasets) -> list[Job]``: the jobs of one ``cpbench run``
  (``protocols/jobs.py``: a job trains once and evaluates a list of targets); ``datasets`` are the
  ``--dataset`` values, or else ``default_targets``;
- ``default_targets(prepared: list[str]) -> list[str]``: what it runs on without ``--dataset``
  (``prepared``: every prepared dataset of its task);
- ``run(job, cfg, key, backbone, settings, store, reporter) -> rows`` when it learns or evaluates
  in its own way (``own_runner``); every other protocol's jobs run the shared step,
  ``execute.learn_and_evaluate``: learn once (train, fit, load the final checkpoint or imported
  state), evaluate every target, write the rows.

A protocol module imports ``jobs.py`` and, for a runner, ``steps.py`` (the shared train-or-load,
build and row helpers); never another protocol.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from cpbench.errors import UserError


@dataclass(frozen=True)
class Protocol:
    title: str                      # the report's name for its tables
    module: str                     # import path of the protocol module
    # the YAML block its jobs resolve under (``protocols.<config>`` in cpbench/configs/methods/):
    # "" = its own name; dg evaluates the cross-dataset training, so it resolves as cross_dataset
    config: str = ""
    one_shots: bool = True          # takes one --shots value (16 in the papers); False: one job per value
    task: str = "classification"    # the datasets it runs on: classification | retrieval (image-caption)
    trains_on_source: bool = False  # trains on --source; the --dataset values are evaluation targets
    train_subset: str = "all"       # the classes it trains on (all | base), checked against --shots up front
    tasks: bool = False             # takes --tasks and --class-order (the classes are learned task by task)
    # the module has its own ``run``: it learns its own way, so its jobs neither start from imported
    # state (--from-official/--from-export) nor export one
    own_runner: bool = False


DEFAULT = "base2new"   # what ``cpbench run`` and a suite without ``protocol:`` run

PROTOCOLS: dict[str, Protocol] = {
    "base2new": Protocol("Base-to-new generalisation", "cpbench.protocols.base2new", train_subset="base"),
    "cross_dataset": Protocol("Cross-dataset transfer", "cpbench.protocols.cross_dataset", trains_on_source=True),
    "dg": Protocol("Domain generalisation", "cpbench.protocols.domain_generalization", config="cross_dataset",
                   trains_on_source=True),
    "few_shot": Protocol("Few-shot classification", "cpbench.protocols.few_shot", one_shots=False),
    "continual": Protocol("Continual (class-incremental) learning", "cpbench.protocols.continual", tasks=True,
                          own_runner=True),
    "retrieval": Protocol("Few-shot image-text retrieval", "cpbench.protocols.retrieval", one_shots=False,
                          task="retrieval", own_runner=True),
}


def protocol_names() -> tuple[str, ...]:
    """Every protocol, in the order reports list them."""
    return tuple(PROTOCOLS)


def check_protocol_name(name: str, where: str = "") -> None:
    """A known protocol, or one line naming the known ones (imports nothing)."""
    if not isinstance(name, str) or name not in PROTOCOLS:
        raise UserError(f"{where}unknown protocol {name!r}; use one of {', '.join(PROTOCOLS)}")


def get(name: str) -> Protocol:
    check_protocol_name(name)
    return PROTOCOLS[name]


def config_protocol(name: str) -> str:
    """The ``protocols.<p>`` block a job of protocol ``name`` resolves under."""
    p = PROTOCOLS.get(name)
    return (p.config or name) if p is not None else name


def titles() -> dict[str, str]:
    return {name: p.title for name, p in PROTOCOLS.items()}


def module(name: str):
    """The protocol's module (imported on first use)."""
    return importlib.import_module(get(name).module)
