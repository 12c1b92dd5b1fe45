"""Suite files: every benchmarks/*.yaml loads and names registered methods and known datasets;
`cpbench run --suite` runs every listed method (METHOD optional) and skips on re-run; bad
suites fail with one line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpbench.data.catalog import all_specs
from cpbench.methods.registry import method_names
from cpbench.protocols import cross_dataset, domain_generalization
from cpbench.results.store import ResultStore
from cpbench.protocols.registry import PROTOCOLS
from cpbench.runner import load_suite
from minidata import make_caltech

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
KNOWN = set(cross_dataset.TARGETS) | set(domain_generalization.TARGETS) | {cross_dataset.SOURCE}


@pytest.mark.parametrize("name", ["base2new", "cross_dataset", "dg", "few_shot", "toy"])
def test_shipped_suites_are_valid(name):
    st = load_suite(BENCH / f"{name}.yaml")
    assert st["protocol"] in PROTOCOLS
    assert set(st["methods"]) <= set(method_names())
    from cpbench.config import resolve
    from cpbench.methods.registry import get_method_class

    for m in st["methods"]:  # no listed method refuses the suite's protocol (the run would stop before training)
        cls = get_method_class(m)
        protocol = "cross_dataset" if st["protocol"] == "dg" else st["protocol"]
        assert not cls.unsupported(st["protocol"], resolve(m, cls.Options, protocol, shots=st["shots"][0]).options), m
    assert set(st["datasets"]) <= KNOWN | set(all_specs())
    if name == "base2new":
        assert len(st["datasets"]) == 11 and st["seeds"] == [1, 2, 3]
    if name == "few_shot":
        assert st["shots"] == [1, 2, 4, 8, 16]
    if name == "toy":
        assert st["seeds"] == [1] and {"zeroshot", "coop"} <= set(st["methods"])
        assert all(d.startswith("toy_") for d in st["datasets"])


def test_run_suite_end_to_end(tmp_path, cli_here):
    make_caltech(tmp_path / "data")
    suite = tmp_path / "s.yaml"
    suite.write_text("protocol: base2new\nmethods: [zeroshot, coop]\ndatasets: [caltech101]\nseeds: [1]\n"
                     "shots: [2]\nset: [epochs=1]\n", encoding="utf-8")
    args = ("run", "--suite", suite, "--backbone", "tiny", "--pretrained", "none", "--device", "cpu",
            "--root", tmp_path / "data", "--results", tmp_path / "res")
    code, out, err = cli_here(*args)
    assert code == 0, err
    df = ResultStore(tmp_path / "res").read().frame
    assert sorted(df.groupby("method").size().items()) == [("coop", 2), ("zeroshot", 2)]
    assert set(df.shots) == {2} and set(df.epochs) == {0, 1}
    code, out, err = cli_here(*args)
    assert code == 0 and len(ResultStore(tmp_path / "res").read().frame) == 4
    assert "0 new result row(s)" in out


@pytest.mark.parametrize("text, needle", [
    ("protocol: base2new\nmethods: [coop]\nbogus: 1\n", "unknown key"),
    ("protocol: xd\nmethods: [coop]\n", "unknown protocol"),
    ("methods: []\n", "at least one method"),
    ("methods: [coop]\nseeds: [a]\n", "seeds must be a list of integers"),
    ("methods: [nosuchmethod]\n", "unknown method"),
    ("methods: [coop\n", "not valid YAML"),
    ("- coop\n", "must be a mapping"),
])
def test_bad_suites(tmp_path, text, needle, cli_here):
    suite = tmp_path / "s.yaml"
    suite.write_text(text, encoding="utf-8")
    code, out, err = cli_here("run", "--suite", suite, "--backbone", "tiny",
                              "--root", tmp_path / "data", "--results", tmp_path / "res")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "res").exists()


def test_missing_suite_and_missing_method(tmp_path, cli_here):
    code, _, err = cli_here("run", "--suite", tmp_path / "nope.yaml")
    assert code == 2 and "not found" in err
    code, _, err = cli_here("run")
    assert code == 2 and "METHOD" in err
