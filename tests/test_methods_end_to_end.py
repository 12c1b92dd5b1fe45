"""Every method runs base-to-new end to end through the CLI on the tiny backbone: CoCoOp, IVLP,
MaPLe, PromptSRC, KgCoOp and the linear probe on a miniature Caltech101; LAMM, PRE, Bayesian PL and
CPL on the real one (skipped when ../shared/datasets/caltech101 is absent)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def mini_caltech(tmp_path_factory):
    """A miniature prepared caltech101 (4 classes: 2 base, 2 new; 8-px images)."""
    from minidata import make_caltech

    root = tmp_path_factory.mktemp("mini")
    make_caltech(root)
    return root


TINY_CALTECH = ["cocoop", "ivlp", "maple", "promptsrc", "kgcoop", "linear_probe"]


def _cpbench(monkeypatch, *args: str) -> int:
    """``cpbench ARGS`` through the CLI entry point, in this process (no interpreter start per call)."""
    from cpbench.cli import main

    monkeypatch.setattr("sys.argv", ["cpbench", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cocoop_ivlp_maple_promptsrc_kgcoop_and_linear_probe_run_base_to_new(mini_caltech, tmp_path, monkeypatch,
                                                                            capsys):
    res = tmp_path / "res"
    for method in TINY_CALTECH:
        extra = ["--set", "epochs=2", "batch_size=2"] if method != "linear_probe" else []
        rc = _cpbench(monkeypatch, "run", method, "--dataset", "caltech101", "--backbone", "tiny", "--pretrained", "none",
                      "--shots", "2", "--seeds", "1", "--root", str(mini_caltech), "--results", str(res),
                      "--device", "cpu", *extra)
        assert rc == 0, (method, capsys.readouterr())
    from cpbench.results.store import ResultStore

    df = ResultStore(res).read().frame
    for method in TINY_CALTECH:
        d = df[df["method"] == method]
        want = ["base"] if method == "linear_probe" else ["base", "new"]
        assert sorted(d["subset"]) == want, method
        assert (d["n_classes"] == 2).all() and d["accuracy"].between(0, 100).all()
        assert (d["n_learnable"] > 0).all()
    capsys.readouterr()
    assert _cpbench(monkeypatch, "report", "--results", str(res)) == 0
    out = capsys.readouterr().out
    for method in TINY_CALTECH:
        assert method in out


@pytest.fixture(scope="module")
def caltech_1shot(tmp_path_factory):
    from conftest import CALTECH_SRC

    if not (CALTECH_SRC / "101_ObjectCategories.tar.gz").exists():
        pytest.skip("../shared/datasets/caltech101 is not available")
    from cpbench.data import prepare as prep

    root = tmp_path_factory.mktemp("data1")
    prep.prepare("caltech101", root, from_dir=CALTECH_SRC, shots=[1], seeds=[1])
    return root


@pytest.mark.parametrize("method,extra", [
    ("lamm", []), ("coop_lamm", []), ("maple_lamm", []), ("pre", []), ("coopvpt", ["mc_samples=2"]),
    ("cocoopvpt", ["mc_samples=1", "eval_chunk=20000"]), ("cpl", []),
])
def test_lamm_pre_bpl_and_cpl_run_base_to_new_on_caltech101(caltech_1shot, tmp_path, cli, method, extra):
    res = tmp_path / "res"
    rc, out, err = cli("run", method, "--dataset", "caltech101", "--backbone", "tiny", "--pretrained", "none",
                       "--shots", "1", "--seeds", "1", "--root", str(caltech_1shot), "--results", str(res),
                       "--device", "cpu", "--set", "epochs=1", "batch_size=10", *extra)
    assert rc == 0, err
    from cpbench.results.store import ResultStore

    df = ResultStore(res).read().frame
    assert sorted(df["subset"]) == ["base", "new"] and set(df["method"]) == {method}
    assert (df["n_classes"] == 50).all() and df["accuracy"].between(0, 100).all()
    assert (df["n_learnable"] > 0).all() and (df["epochs"] == 1).all()
