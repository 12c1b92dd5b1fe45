"""Results a researcher can defend (issues 20, 26): intervals and paired comparisons from the
per-image predictions, on hand-made prediction files shaped like the toy world (3 methods x 4
datasets x 3 seeds, 400 test images per half, 10 classes per half; CoOp ~13 points above zero-shot
on toy_shapes base, as measured).

- ``--ci`` intervals contain their means, are reproducible, shrink as seeds are added, and the
  Average's interval is narrower than its datasets' (recomputed per replicate, not by formula).
- ``--compare-methods coop zeroshot`` flags the gain as significant (t test and combined McNemar),
  and a relabelled copy of the same predictions (or of the seeds) as not significant.
  (What the tests mean with 1-3 seeds, Holm, the columns on shared seeds, ``< …`` p values:
  ``test_report_significance.py``.)
- Rows without predictions still report and say what they cannot show; bad names exit 2.
- A 3-method x 4-dataset x 3-seed report with intervals renders in under 10 s.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cpbench.results import bootstrap, report
from cpbench.results import predictions as preds
from cpbench.results.store import ResultStore
from reporting import DATASETS, GAIN, outcome_job, outcomes_at, run_cli, toy_like
from reporting import toy_zeroshot as _zeroshot


def _json(monkeypatch, capsys, root, *args):
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", root, "--format", "json", *args)
    assert code == 0, err
    return json.loads(out)


def _cells(doc, **match):
    return [c for t in doc["tables"] for r in t["rows"] for c in r["cells"]
            if all(c.get(k) == v for k, v in match.items())]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_like(tmp_path_factory.mktemp("toylike") / "res")


def test_intervals_contain_their_means_and_are_reproducible(toy, monkeypatch, capsys):
    doc = _json(monkeypatch, capsys, toy, "--ci")
    cells = [c for c in _cells(doc) if c["mean"] is not None]
    assert len(cells) == 3 * 5 * 3  # 3 methods x (4 datasets + Average) x Base/New/HM
    for c in cells:
        assert c["ci_low"] is not None and c["ci_low"] <= c["mean"] <= c["ci_high"], c
        assert c["ci_high"] - c["ci_low"] > 0.5  # 400 images cannot pin an accuracy to half a point
    assert doc == _json(monkeypatch, capsys, toy, "--ci")  # seeded: the same intervals again
    notes = " ".join(doc["tables"][0]["notes"])
    assert "bootstrap (2000 replicates" in notes and "one draw per test set shared by every seed" in notes \
        and "S − 1 degrees of freedom" in notes and "Welch–Satterthwaite" in notes
    # the same numbers as without --ci; only the intervals are added
    plain = _json(monkeypatch, capsys, toy)
    assert [c["mean"] for c in _cells(plain)] == [c["mean"] for c in _cells(doc)]


def test_intervals_shrink_as_seeds_are_added(tmp_path):
    """One CoOp-like cell with 2, then 4, then 8 seeds (the first ones kept), whose accuracies
    alternate 4 points below and above 60 (the same spread at every count): the seed part of the
    interval shrinks like t(S − 1)/sqrt(S), the image part as the seeds' errors average out."""
    widths = []
    for n_seeds in (2, 4, 8):
        root = tmp_path / f"s{n_seeds}"
        for s in range(1, n_seeds + 1):
            acc = 60 + (4 if s % 2 else -4)
            outcome_job(root, "coop", "toy_shapes", s, {"base": outcomes_at(acc, n=1000, seed=s),
                                                        "new": outcomes_at(50, n=1000, seed=50 + s)})
        frame = ResultStore(root).read().frame
        rep = report.build(frame, report.ReportOptions(ci=True), outcomes=lambda k, r=root: preds.read(r, k))
        base = rep.tables[0].rows[0].cells[0]
        assert base.ci[0] <= base.value <= base.ci[1]
        widths.append(base.ci[1] - base.ci[0])
    assert widths[0] > widths[1] > widths[2], widths


def test_average_interval_comes_from_replicates_not_from_the_bounds(toy):
    frame = ResultStore(toy).read().frame
    rep = report.build(frame, report.ReportOptions(ci=True, methods=["coop"]), outcomes=lambda k: preds.read(toy, k))
    t = rep.tables[0]
    rows = {r.labels[0]: r.cells for r in t.rows}
    per_dataset = [rows[d][0].ci[1] - rows[d][0].ci[0] for d in DATASETS]
    avg = rows["Average"][0]
    # averaging 4 independently drawn datasets: narrower than the mean of their widths (a formula on
    # the bounds, the mean of the lower and of the upper bounds, would give exactly that mean)
    assert avg.ci[1] - avg.ci[0] < 0.75 * np.mean(per_dataset)
    hm = rows["Average"][2]
    assert hm.combine == "hm" and hm.ci[0] <= hm.value <= hm.ci[1]


def test_compare_methods_flags_the_gain_and_not_a_relabelled_copy(toy, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", toy, "--compare-methods", "coop", "zeroshot")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("| toy_shapes | Base |"))
    cols = [x.strip() for x in line.split("|")]
    assert cols[5] == "3"  # shared seeds
    delta = float(cols[6].split()[0])
    assert 10 < delta < 16 and "n.s." not in line and ", significant;" in line and "(Holm p " in line
    assert line.count("McNemar") == 1 and line.count("McNemar p < 0.001 (") == 1  # one test over the seeds
    assert "significant = two-sided p < 0.05 for A − B" in out
    assert "| **Average** | HM |" in out

    # a relabelled copy: zero-shot's own predictions stored again as "coop"
    copy = tmp_path / "copy"
    for d in DATASETS:
        for s in (1, 2, 3):
            outs = {sub: _zeroshot(d, sub) for sub in ("base", "new")}
            for m in ("zeroshot", "coop"):
                outcome_job(copy, m, d, s, outs, backbone="toy")
    doc = _json(monkeypatch, capsys, copy, "--compare-methods", "coop", "zeroshot")
    diffs = [c for c in _cells(doc, kind="compare") if c["entry"] == "coop − zeroshot"]
    assert len(diffs) == 15 and all(c["significant"] is False and c["mean"] == 0.0 for c in diffs)
    assert all(abs(c["ci_low"]) < 1e-9 and abs(c["ci_high"]) < 1e-9 and c["p_value"] == 1.0 for c in diffs)

    # CoOp against itself with its seeds relabelled (1->2->3->1): not significant either
    shuffled = tmp_path / "shuffled"
    for d in DATASETS:
        for s, as_seed in ((1, 2), (2, 3), (3, 1)):
            outs = {}
            for i, subset in enumerate(("base", "new")):
                zs = _zeroshot(d, subset)
                acc = DATASETS[d][i] + GAIN["coop"][i] + 3 * np.random.default_rng(s).standard_normal()
                outs[subset] = outcomes_at(acc, seed=1000 * s + 7 * i + 4, like=zs, flip=0.6)
            outcome_job(shuffled, "coop", d, s, outs, backbone="toy")
            outcome_job(shuffled, "kgcoop", d, as_seed, outs, backbone="toy")
    doc = _json(monkeypatch, capsys, shuffled, "--compare-methods", "kgcoop", "coop")
    diffs = [c for c in _cells(doc, kind="compare") if c["entry"] == "kgcoop − coop"]
    assert diffs and all(c["significant"] is False for c in diffs)
    assert all(abs(c["mean"]) < 1e-9 for c in diffs)  # the same means: only the seed pairing differs


def test_image_bootstrap_matches_the_binomial():
    g = np.random.default_rng(0)
    correct = g.random((1, 2000)) < 0.7
    p = correct.mean()
    reps = bootstrap.image_replicates(correct, "t", replicates=4000)[:, 0] / 100
    assert reps.mean() == pytest.approx(p, abs=0.002)
    assert reps.std() == pytest.approx(np.sqrt(p * (1 - p) / 2000), rel=0.08)
    again = bootstrap.image_replicates(correct, "t", replicates=4000)
    assert np.array_equal(again[:, 0] / 100, reps)  # seeded by the key
    assert not np.array_equal(bootstrap.image_replicates(correct, "u", replicates=4000)[:, 0] / 100, reps)


def test_old_rows_without_predictions_still_report(toy, tmp_path, monkeypatch, capsys):
    import shutil

    root = tmp_path / "old"
    shutil.copytree(toy, root)
    for f in (root / "predictions").glob("kgcoop-*"):
        f.unlink()
    doc = _json(monkeypatch, capsys, root, "--ci")
    kg = [c for c in _cells(doc, method="kgcoop") if c["mean"] is not None]
    assert kg and all(c["ci_low"] is None for c in kg)
    assert all(c["ci_low"] is not None for c in _cells(doc, method="coop") if c["mean"] is not None)
    assert any("--ci: no interval for kgcoop on " in n and "no per-image predictions" in n for n in doc["notes"])
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", root, "--compare-methods", "kgcoop", "coop")
    assert code == 0, err
    assert "No test where no per-image predictions." in out


def test_compare_methods_user_errors(toy, tmp_path, monkeypatch, capsys):
    for args, needle in ((("coop",), "takes two methods"), (("coop", "nosuch"), "'nosuch' is not a method"),
                         (("coop", "coop"), "two different")):
        code, out, err = run_cli(monkeypatch, capsys, "report", "--results", toy, "--compare-methods", *args)
        assert code == 2 and needle in err and out == "", (args, err)
    two = tmp_path / "two"
    outs = {"base": outcomes_at(60), "new": outcomes_at(50)}
    outcome_job(two, "coop", "toy_shapes", 1, outs)
    outcome_job(two, "coop", "toy_shapes", 1, outs, sets=["epochs=2"])
    outcome_job(two, "zeroshot", "toy_shapes", 1, outs)
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", two, "--compare-methods", "coop", "zeroshot")
    assert code == 2 and "'coop' is 2 entries" in err and "coop (epochs=2)" in err
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", two, "--compare-methods", "coop (epochs=2)",
                             "zeroshot")
    assert code == 0, err


def test_a_3x4x3_report_with_intervals_renders(toy, monkeypatch, capsys):
    """Every cell gets its interval (how long it takes: benchmarks/report/README.md)."""
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", toy, "--ci")
    assert code == 0, err
    assert out.count("[") >= 45
