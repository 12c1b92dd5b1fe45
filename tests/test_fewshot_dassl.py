"""CoOp's own few-shot files (``split_fewshot/shot_{k}-seed_{s}.pkl``, lists of Dassl ``Datum``)
in an adopted data folder: ``run`` trains on exactly the images they list, in their order, says so
once and records it in the rows; without them nothing changes. The files are written here in
Dassl's format (a class ``Datum`` of module ``dassl.data.datasets.base_dataset``, pickled with the
highest protocol as CoOp's dataset classes do), and read back without importing Dassl."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from cpbench.data import prepare as prep
from cpbench.data import splits
from cpbench.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
from minidata import make_caltech  # noqa: E402

FOREIGN_ROOT = "/home/someone/DATA/caltech-101/101_ObjectCategories"   # where CoOp ran: absolute paths


def write_dassl_pkl(path: Path, train: list[tuple[str, int, str]], val: list[tuple[str, int, str]] | None):
    """A few-shot file as CoOp writes it: ``{"train": [Datum…], "val": [Datum…]}`` (ImageNet: no val)."""
    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    mods = {n: types.ModuleType(n) for n in names}

    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__, Datum.__qualname__ = names[-1], "Datum"
    mods[names[-1]].Datum = Datum
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(mods)
    try:
        data = {"train": [Datum(f"{FOREIGN_ROOT}/{p}", lab, 0, c) for p, lab, c in train]}
        if val is not None:
            data["val"] = [Datum(f"{FOREIGN_ROOT}/{p}", lab, 0, c) for p, lab, c in val]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def _other_draw(split: splits.Split, k: int) -> tuple[list, list]:
    """k train images per class that cpbench's draw would not give in this order: the last k, reversed."""
    by: dict[int, list] = {}
    for it in split.train:
        by.setdefault(it.label, []).append(it)
    train = [it.as_list() for lab in sorted(by, reverse=True) for it in reversed(by[lab][-k:])]
    val = [it.as_list() for it in split.val]
    return train, val


@pytest.fixture
def root(tmp_path):
    make_caltech(tmp_path / "data", n_train=5, n_val=1, n_test=2)
    return tmp_path / "data"


def test_a_coop_pkl_gives_its_images_in_its_order(root):
    ds = prep.load("caltech101", root)
    train, val = _other_draw(ds.split, 2)
    write_dassl_pkl(splits.dassl_fewshot_path(ds.dir, 2, 1), train, val)
    fs = prep.load("caltech101", root).fewshot(2, 1)
    assert [i.as_list() for i in fs.train] == train and [i.as_list() for i in fs.val] == val
    assert fs.source.startswith("dassl-pkl:") and fs.source != splits.DASSL_SAME
    assert "dassl.data.datasets.base_dataset" not in sys.modules   # read without importing Dassl
    # another seed has no file: cpbench draws, as before
    assert prep.fewshot_source("caltech101", root, 2, 2) == "cpbench"


def test_a_coop_pkl_with_cpbenchs_own_draw_is_the_same_setting(root):
    ds = prep.load("caltech101", root)
    drawn = splits.make_fewshot(ds.split, 2, 1)
    write_dassl_pkl(splits.dassl_fewshot_path(ds.dir, 2, 1), [i.as_list() for i in drawn.train],
                    [i.as_list() for i in drawn.val])
    fs = prep.load("caltech101", root).fewshot(2, 1)
    assert (fs.train, fs.val) == (drawn.train, drawn.val) and fs.source == splits.DASSL_SAME


def test_an_imagenet_style_pkl_without_val_reads_train_only(root):
    ds = prep.load("caltech101", root)
    train, _ = _other_draw(ds.split, 1)
    path = splits.dassl_fewshot_path(ds.dir, 1, 3)
    write_dassl_pkl(path, train, None)
    fs = splits.read_dassl_fewshot(path, ds.split, 1, 3, val_is_test=True)
    assert [i.as_list() for i in fs.train] == train and fs.val == ()


def test_a_pkl_naming_an_image_outside_the_split_is_one_line(root):
    ds = prep.load("caltech101", root)
    write_dassl_pkl(splits.dassl_fewshot_path(ds.dir, 2, 1), [("ant/nope.jpg", 3, "ant")], [])
    with pytest.raises(UserError, match="nope.jpg.*not an image of this dataset"):
        prep.load("caltech101", root).fewshot(2, 1)


def test_a_pkl_with_another_label_is_refused(root):
    ds = prep.load("caltech101", root)
    it = ds.split.train[0]
    write_dassl_pkl(splits.dassl_fewshot_path(ds.dir, 2, 1), [(it.path, it.label + 1, it.classname)], [])
    with pytest.raises(UserError, match="belongs to another split"):
        prep.load("caltech101", root).fewshot(2, 1)


def test_a_pkl_with_code_in_it_is_refused_by_name(root):
    ds = prep.load("caltech101", root)
    path = splits.dassl_fewshot_path(ds.dir, 2, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"train": [print]}))
    with pytest.raises(UserError, match="refusing global builtins.print"):
        prep.load("caltech101", root).fewshot(2, 1)


RUN = ["run", "coop", "--protocol", "few_shot", "--backbone", "tiny", "--pretrained", "none", "--device", "cpu", "--shots", "2",
       "--seeds", "1", "--set", "epochs=1", "batch_size=2", "test_batch_size=4"]


def test_run_trains_on_the_pkl_images_says_so_and_records_it(root, tmp_path, cli_here, monkeypatch):
    from cpbench.protocols import steps
    from cpbench.results.store import ResultStore

    seen = []
    real = steps.train_or_load

    def spy(method, cfg, s, precision, seed, train_items, *a, **kw):
        seen.append([i.as_list() for i in train_items])
        return real(method, cfg, s, precision, seed, train_items, *a, **kw)

    monkeypatch.setattr(steps, "train_or_load", spy)
    args = [*RUN, "--dataset", "caltech101", "--root", str(root), "--results", str(tmp_path / "res")]
    code, out, err = cli_here(*args)
    assert code == 0, err
    assert "CoOp's few-shot files" not in out + err          # no pkl: nothing said, cpbench's draw
    plain = ResultStore(tmp_path / "res").read().frame
    assert set(plain["fewshot_source"]) == {"cpbench"}
    drawn = [i.as_list() for i in prep.load("caltech101", root).fewshot(2, 1).train]
    assert seen == [drawn]

    ds = prep.load("caltech101", root)
    train, val = _other_draw(ds.split, 2)
    write_dassl_pkl(splits.dassl_fewshot_path(ds.dir, 2, 1), train, val)
    code, out, err = cli_here(*args)
    assert code == 0, err
    assert (out + err).count("CoOp's few-shot files") == 1 and "shot_2-seed_1.pkl" in out + err
    assert seen[-1] == train                                  # exactly its images, in its order
    df = ResultStore(tmp_path / "res").read().frame
    assert len(df) == 2 * len(plain)                          # other images: another job, not a skip
    new = df[df["fewshot_source"] != "cpbench"]
    assert set(new["fewshot_source"]) == {prep.fewshot_source("caltech101", root, 2, 1)}
    assert new["fewshot_source"].iloc[0].startswith("dassl-pkl:")

    code, out, err = cli_here("report", "--results", str(tmp_path / "res"))
    assert code == 0, err
    assert "coop (dassl shots)" in out                         # its own entry, never averaged with the draw

    # the same images as cpbench's draw: the same job (skipped), the same entry
    write_dassl_pkl(splits.dassl_fewshot_path(ds.dir, 2, 1), drawn,
                    [i.as_list() for i in splits.make_fewshot(ds.split, 2, 1).val])
    code, out, err = cli_here(*args)
    assert code == 0, err
    assert "the same images cpbench draws" in out + err
    assert len(ResultStore(tmp_path / "res").read().frame) == len(df)


def test_prepare_with_shots_reports_the_pkl_draws_once(root):
    ds = prep.load("caltech101", root)
    train, val = _other_draw(ds.split, 2)
    write_dassl_pkl(splits.dassl_fewshot_path(ds.dir, 2, 1), train, val)
    import dataclasses

    from cpbench.data.catalog import all_specs
    from cpbench.data.specs import Expected

    said = []
    spec = dataclasses.replace(all_specs()["caltech101"], expected=Expected())   # the miniature's counts
    _, info = prep.prepare("caltech101", root, shots=[2], seeds=[1, 2], say=said.append, spec=spec)
    notes = [m for m in said if "CoOp's few-shot files" in m]
    assert len(notes) == 1 and "caltech101 shot_2-seed_1.pkl" in notes[0] and "seed_2" not in notes[0]
    assert info["fewshot"]["2-shot seed 1"] == (len(train), len(val))
