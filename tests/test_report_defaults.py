"""A results row is labelled against the defaults it ran with (``defaults_json``, written with the
row), so editing a method's YAML later relabels nothing; rows run on other defaults than today's
are an entry of their own (never a cell shared with today's defaults); rows written before the
column existed are compared with today's defaults, as they always were."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

from cpbench import config
from cpbench.methods.coop import CoOpOptions
from cpbench.methods.zeroshot import ZeroShotOptions
from cpbench.results import entries, report
from cpbench.results.store import ResultStore
from reporting import b2n


@pytest.fixture(autouse=True)
def _fresh_defaults():
    entries._defaults.cache_clear()
    yield
    entries._defaults.cache_clear()


def _defaults_json() -> str:
    cfg = config.resolve("coop", CoOpOptions, "base2new", dataset="dtd", shots=16)
    return json.dumps(cfg.as_dict(), sort_keys=True)


def _written_now(rows: list[dict]) -> list[dict]:
    """Rows as ``cpbench run`` writes them today: with the defaults they ran with."""
    recorded = _defaults_json()
    return [{**r, "defaults_json": recorded} for r in rows]


def _edit_coop_yaml(monkeypatch, epochs: int) -> None:
    """As if coop.yaml said ``train: {epochs: N}`` from now on."""
    real = config.method_defaults

    def edited(method):
        data = real(method)
        if method == "coop":
            data = copy.deepcopy(data)
            data["train"]["epochs"] = epochs
        return data

    monkeypatch.setattr(config, "method_defaults", edited)
    entries._defaults.cache_clear()


def _labels(rows) -> dict[str, set[str]]:
    """label -> config hashes of its cells (each cell must have one)."""
    rep = report.build(pd.DataFrame(rows))
    out: dict[str, set[str]] = {}
    for t in rep.tables:
        for r in t.rows:
            for c in r.cells:
                if c.entry is not None and not c.derived:
                    out.setdefault(c.entry.label, set()).add(c.config_hash)
    return out


def _sweep():
    return (b2n("coop", "dtd", [70.0, 71.0], [50.0, 51.0])
            + b2n("coop", "dtd", [60.0], [40.0], sets=["epochs=1"], finished="2026-02-01T00:00:00"))


def test_a_yaml_edit_relabels_nothing(monkeypatch):
    rows = _written_now(_sweep())
    before = _labels(rows)
    assert set(before) == {"coop (defaults)", "coop (epochs=1)"}
    _edit_coop_yaml(monkeypatch, 100)
    assert _labels(rows) == before


def test_rows_without_recorded_defaults_are_compared_with_todays(monkeypatch):
    rows = _sweep()                                   # written before rows recorded their defaults
    assert set(_labels(rows)) == {"coop (defaults)", "coop (epochs=1)"}
    _edit_coop_yaml(monkeypatch, 100)
    assert set(_labels(rows)) == {"coop (epochs=200)", "coop (epochs=1)"}


def test_old_and_new_defaults_are_two_entries_never_one_cell(monkeypatch):
    old = _written_now(b2n("coop", "dtd", [70.0], [50.0]))       # 200 epochs, the defaults then
    _edit_coop_yaml(monkeypatch, 100)
    new = _written_now(b2n("coop", "dtd", [72.0], [52.0], finished="2026-03-01T00:00:00"))
    assert json.loads(new[0]["config_json"])["train"]["epochs"] == 100
    labels = _labels(old + new)
    assert len(labels) == 2 and all(len(hashes) == 1 for hashes in labels.values()), labels
    assert {h for hashes in labels.values() for h in hashes} == {old[0]["config_hash"], new[0]["config_hash"]}
    df, by_key = entries.annotate(entries.normalise(pd.DataFrame(old + new)))
    assert all(e.known_config and not e.overrides for e in by_key.values())   # both ran their defaults


def test_run_records_the_defaults_it_ran_with(tmp_path, cli_here):
    from minidata import make_caltech

    make_caltech(tmp_path / "data")
    code, out, err = cli_here("run", "zeroshot", "--backbone", "tiny", "--pretrained", "none", "--seeds", "1",
                              "--shots", "2", "--dataset", "caltech101", "--device", "cpu", "--root",
                              str(tmp_path / "data"), "--results", str(tmp_path / "res"), "--set", "test_batch_size=7")
    assert code == 0, err
    rows = ResultStore(tmp_path / "res").read().frame
    defaults = config.resolve("zeroshot", ZeroShotOptions, "base2new", dataset="caltech101", shots=2)
    assert set(rows["defaults_json"]) == {json.dumps(defaults.as_dict(), sort_keys=True)}
    assert json.loads(rows["config_json"][0])["train"]["test_batch_size"] == 7
    assert set(rows["config_hash"]) != {defaults.hash}
