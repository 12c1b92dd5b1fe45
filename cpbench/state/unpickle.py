"""Reading pickled files that other code wrote, without running any of their code.

A pickle is a small program: loading one may import and call any function it names. Files from
other code bases (the authors' torch checkpoints, CPL's ``score.npy``, Dassl's few-shot ``.pkl``
splits) are read here with an allow-list of globals, as ``torch.load(weights_only=True)`` does:

- a global on the list resolves to what the list gives: a harmless real type (``dict``, numpy's
  array reconstruction) or a stand-in that runs none of the original's code (``Inert``,
  ``Record``, ``empty_dict``);
- any other global is refused by name (``Refused``, a one-line user error), before it is imported;
- nothing else is imported or called.

``Allow`` maps a global's full name (``module.name``; ``module.*`` covers every name under that
module) to its replacement. ``load(fh, allow, where)`` reads a plain pickle stream (a ``.pkl``
file, the body of an object ``.npy``); ``torch_load(path, allow, where)`` reads a torch file with
torch's own weights-only unpickler (tensors, containers, numbers) widened by the same list.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from cpbench.errors import UserError

Allow = Mapping[str, Any]


class Refused(UserError):
    """A pickle names a global outside the allow-list."""

    def __init__(self, where: str, names: list[str], expected: str = ""):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        hint = f"; {expected}" if expected else ""
        super().__init__(f"{where}: refusing global {shown}, which cpbench does not load (it never unpickles "
                         f"code){hint}")
        self.names = list(names)


class Inert:
    """Stand-in for an object whose state is not wanted (a trainer's optimizer, an LR scheduler):
    built without running any of its class's code; its state is dropped."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class Record:
    """Stand-in for a plain data object (a Dassl ``Datum``): keeps the pickled state and runs none of
    its class's code. ``record.state`` is that state (for ordinary classes a dict of attributes)."""

    def __init__(self, *args, **kwargs):
        self.args, self.state = args, {}

    def __setstate__(self, state):
        self.state = state


def empty_dict(*args):
    """Stand-in for a container whose content is not wanted (``collections.defaultdict``)."""
    return {}


def _lookup(allow: Allow, name: str):
    """The replacement of global ``name``, or ``_MISSING``."""
    if name in allow:
        return allow[name]
    module = name
    while "." in module:
        module = module.rpartition(".")[0]
        if f"{module}.*" in allow:
            return allow[f"{module}.*"]
    return _MISSING


_MISSING = object()


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh: BinaryIO, allow: Allow, where: str, expected: str):
        super().__init__(fh)
        self._allow, self._where, self._expected = allow, where, expected

    def find_class(self, module: str, name: str):
        found = _lookup(self._allow, f"{module}.{name}")
        if found is _MISSING:
            raise Refused(self._where, [f"{module}.{name}"], self._expected)
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"persistent id {pid!r} in a plain pickle")


def load(fh: BinaryIO, allow: Allow, where: str, expected: str = "") -> Any:
    """The object of the pickle stream ``fh`` (plain data, ``allow``'s globals); ``Refused`` for any
    other global. Damaged streams raise ``pickle.UnpicklingError``/``EOFError``/``ValueError`` for the
    caller to word."""
    return _Unpickler(fh, allow, where, expected).load()


def torch_load(path: str | Path, allow: Allow, where: str, expected: str = "", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with ``allow``'s globals added to torch's own list;
    ``Refused`` for any other global (zip-format files: every refused name at once; legacy files:
    torch's own error)."""
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip archive (legacy format): weights_only decides alone
        names = []
    extra, refused = [], []
    for name in names:
        found = _lookup(allow, name)
        if found is _MISSING:
            refused.append(name)
        else:
            extra.append((found, name))
    if refused:
        raise Refused(where, refused, expected)
    with torch.serialization.safe_globals(extra):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def numpy_arrays() -> dict[str, Any]:
    """The globals a pickled numpy array needs (numpy 1 files name ``numpy.core``, numpy 2 files
    ``numpy._core``): numpy's own array reconstruction, nothing else."""
    import numpy as np

    reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]
    return {"numpy.core.multiarray._reconstruct": reconstruct, "numpy._core.multiarray._reconstruct": reconstruct,
            "numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
