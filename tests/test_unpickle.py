"""The one allow-list unpickler (cpbench/state/unpickle.py): plain pickles and torch files from other
code bases are read with only the globals a caller allows; anything else is refused by name before it
is imported, and no code of the file runs."""

from __future__ import annotations

import collections
import io
import pickle
import sys
import types

import pytest
import torch

from cpbench.errors import UserError
from cpbench.state import unpickle


def _dassl_module():
    """A stand-in for ``dassl.data.datasets.base_dataset`` as Dassl defines ``Datum`` (so pickle
    can write one here; the reader never imports it)."""
    mod = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__ = mod.__name__
    Datum.__qualname__ = "Datum"
    mod.Datum = Datum
    return mod


def test_a_dassl_fewshot_pickle_reads_as_records_without_importing_dassl(monkeypatch):
    mod = _dassl_module()
    parents = ["dassl", "dassl.data", "dassl.data.datasets"]
    for name in parents:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    blob = pickle.dumps({"train": [mod.Datum("a/1.jpg", 3, 0, "cat")], "val": []}, protocol=4)
    for name in [*parents, mod.__name__]:
        monkeypatch.delitem(sys.modules, name)
    got = unpickle.load(io.BytesIO(blob), {"dassl.data.datasets.base_dataset.Datum": unpickle.Record}, "few.pkl")
    (datum,) = got["train"]
    assert isinstance(datum, unpickle.Record) and got["val"] == []
    assert datum.state == {"_impath": "a/1.jpg", "_label": 3, "_domain": 0, "_classname": "cat"}
    assert mod.__name__ not in sys.modules   # never imported


def test_any_global_off_the_list_is_refused_by_name_and_nothing_runs():
    ran = []

    class Evil:
        def __reduce__(self):
            return (exec, ("ran.append(1)",))

    blob = pickle.dumps([Evil()])
    with pytest.raises(UserError, match=r"^x\.pkl: refusing global builtins\.exec"):
        unpickle.load(io.BytesIO(blob), {}, "x.pkl")
    assert ran == []
    with pytest.raises(unpickle.Refused, match=r"refusing global builtins.print.*never unpickles code\); hint"):
        unpickle.load(io.BytesIO(pickle.dumps(print)), {"builtins.len": len}, "y.pkl", "hint")


def test_module_patterns_and_inert_stand_ins():
    blob = pickle.dumps(collections.OrderedDict(a=1))
    assert unpickle.load(io.BytesIO(blob), {"collections.*": dict}, "z") == {"a": 1}
    inert = unpickle.load(io.BytesIO(pickle.dumps(collections.Counter("ab"))), {"collections.*": unpickle.Inert}, "z")
    assert isinstance(inert, unpickle.Inert) and not vars(inert)


def test_torch_files_get_torch_weights_only_plus_the_list(tmp_path):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    path = tmp_path / "ckpt.pth"
    torch.save({"w": torch.ones(2), "opt": opt, "n": 3}, path)
    with pytest.raises(unpickle.Refused, match="torch.optim.sgd.SGD"):
        unpickle.torch_load(path, {}, str(path))
    got = unpickle.torch_load(path, {"torch.optim.*": unpickle.Inert, "collections.defaultdict": unpickle.empty_dict,
                                     "builtins.dict": dict}, str(path))
    assert torch.equal(got["w"], torch.ones(2)) and got["n"] == 3 and isinstance(got["opt"], unpickle.Inert)
