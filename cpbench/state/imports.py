"""Learned state that comes from elsewhere instead of training.

``RunSettings.state_from`` is ``KIND:PATH``:

- ``official:DIR`` — the authors' released checkpoints (``model.pth.tar-E`` per dataset/seed, as the
  official ``save_model`` writes them), mapped onto cpbench's parameter names
  (``cpbench.state.official``);
- ``export:FILE`` — a file written by ``cpbench export`` (``cpbench.state.export``).

A job with ``state_from`` does not train: its method is built on the training classes as usual, the
state is loaded into it, and every target is evaluated. Its rows carry ``imported = KIND:IDENTITY``
and its keys include that identity, so imported rows never mix with trained ones.

Each backend module offers, all four declared:

- ``identity(path) -> str``: stable across machines (a content hash where cheap, not the path);
- ``load_state(path, job, method, dataset) -> dict[str, Tensor]``: exactly the keys of
  ``method.learned_state()``; a file that does not fit fails with one line naming the keys;
- ``config(path) -> {"train": …, "method": …} | None``: the settings the state was learned with,
  layered over the method's YAML defaults, under ``--config``/``--set`` (None: not recorded);
- ``check(path, request, jobs, data_root)``: the source validated against the run before the
  backbone is loaded (one line per problem).
"""

from __future__ import annotations

import importlib

from cpbench.errors import UserError

BACKENDS = {"official": "cpbench.state.official", "export": "cpbench.state.export"}


def parse(source: str) -> tuple[str, str]:
    kind, sep, path = source.partition(":")
    if not sep or kind not in BACKENDS or not path:
        raise UserError(f"state source {source!r} must be KIND:PATH with KIND one of {', '.join(BACKENDS)}")
    return kind, path


def _backend(kind: str):
    try:
        return importlib.import_module(BACKENDS[kind])
    except ModuleNotFoundError as exc:
        if exc.name != BACKENDS[kind]:
            raise
        raise UserError(f"importing {kind} state is not available in this cpbench build") from None


def identity(source: str) -> str:
    kind, path = parse(source)
    return f"{kind}:{_backend(kind).identity(path)}"


def load_state(source: str, job, method, dataset) -> dict:
    kind, path = parse(source)
    return _backend(kind).load_state(path, job, method, dataset)


def config(source: str) -> dict | None:
    kind, path = parse(source)
    return _backend(kind).config(path)


def check(source: str, request, jobs, data_root) -> None:
    kind, path = parse(source)
    _backend(kind).check(path, request, jobs, data_root)
