"""Significance that holds up with the papers' 1-3 seeds (issue 26), on hand-made rows and
per-image predictions (no training).

- one shared seed: the paired table says "untestable against seed noise (1 seed)", never
  "significant", with the test images' interval labelled as such; ``--ci`` marks its interval ‡;
- the A and B columns are their means on the seeds both ran, so they add up to A − B; the shared
  seeds are printed and † marks fewer;
- per-dataset p values are Holm-adjusted across the datasets of a field (the Average is not);
- McNemar is one Cochran–Mantel–Haenszel test over the seeds (a hand computation);
- a p known only as a bound (no bootstrap replicate crosses 0) is written ``< …`` in every format;
- rows of two precisions are two entries; derived cells inherit †; every "–" has a reason; mixed
  cpbench versions are named;
- a small simulation (seeded): the intervals cover the truth and null comparisons stay quiet with
  2 seeds, where the old percentile bootstrap over seeds does neither.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2, norm

from cpbench.results import formats, report, significance
from cpbench.results import predictions as preds
from cpbench.results.predictions import Outcome
from cpbench.results.store import ResultStore
from reporting import b2n, outcome_job, outcomes_at, row, run_cli


def _build(root, **kw):
    return report.build(ResultStore(root).read().frame, report.ReportOptions(**kw),
                        outcomes=lambda k: preds.read(root, k))


def _compare_rows(rep):
    return [r for t in rep.tables if t.kind == "compare" for r in t.rows]


def _job(root, method, dataset, seed, base, new, **kw):
    outcome_job(root, method, dataset, seed, {"base": outcomes_at(base, n=400, seed=seed * 101 + len(method)),
                                              "new": outcomes_at(new, n=400, seed=seed * 103 + len(method))}, **kw)


def test_one_shared_seed_is_untestable_never_significant(tmp_path, monkeypatch, capsys):
    root = tmp_path / "res"
    for d in ("dtd", "eurosat"):
        _job(root, "coop", d, 1, 90, 80)      # 30 points above kgcoop: the test images alone would say so
        _job(root, "kgcoop", d, 1, 60, 50)
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", root, "--compare-methods", "coop", "kgcoop")
    assert code == 0, err
    cells = [line for line in out.splitlines() if line.startswith("| ") and "coop" not in line.split("|")[1]]
    diff_rows = [line for line in cells if "untestable" in line or "n.s." in line or "significant" in line]
    assert len(diff_rows) == 9  # 2 datasets + Average, x Base/New/HM
    for line in diff_rows:
        diff = line.split("|")[-2]
        assert "untestable against seed noise (1 seed); test images only [+" in diff
        assert "significant" not in diff and " p = " not in diff.split(";")[0] and "Holm" not in diff
    assert "one shared seed cannot show how much another seed would move the result" in out
    doc = json.loads(run_cli(monkeypatch, capsys, "report", "--results", root, "--compare-methods", "coop", "kgcoop",
                             "--format", "json")[1])
    diffs = [c for t in doc["tables"] for r in t["rows"] for c in r["cells"] if c["entry"] == "coop − kgcoop"]
    assert diffs and all(c["significant"] is None and c["p_value"] is None and c["test"] == "one seed"
                         for c in diffs)
    assert all(c["ci_low"] > 0 for c in diffs)  # the image-only interval is shown, labelled
    # --ci: one seed gives an interval over the test images only, marked
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", root, "--ci", "--methods", "coop")
    assert code == 0, err
    assert "]‡" in out and "‡ one seed: the seed-to-seed variation cannot be estimated" in out


def test_columns_are_on_the_shared_seeds_and_add_up(tmp_path, monkeypatch, capsys):
    root = tmp_path / "res"
    acc = {1: 60.0, 2: 66.0, 3: 72.0}
    for s in (1, 2, 3):
        _job(root, "coop", "dtd", s, acc[s], acc[s] - 10)
        _job(root, "coop", "eurosat", s, acc[s], acc[s] - 10)
        if s != 3:  # kgcoop ran seeds 1 and 2 on dtd, 1-3 on eurosat
            _job(root, "kgcoop", "dtd", s, 55, 45)
        _job(root, "kgcoop", "eurosat", s, 55, 45)
    frame = ResultStore(root).read().frame
    rep = _build(root, compare_methods=("coop", "kgcoop"))
    (t,) = [t for t in rep.tables if t.kind == "compare"]
    assert t.columns == ["coop", "kgcoop", "shared seeds", "coop − kgcoop"]
    rows = {r.labels: r.cells for r in t.rows}
    dtd_base = rows[("dtd", "Base")]
    coop_rows = frame[(frame["method"] == "coop") & (frame["train_dataset"] == "dtd") & (frame["subset"] == "base")]
    mean12 = coop_rows[coop_rows["seed"].isin([1, 2])]["accuracy"].mean()
    assert dtd_base[0].value == pytest.approx(mean12) and dtd_base[0].seeds == (1, 2)  # not seeds 1-3
    assert dtd_base[0].value != pytest.approx(coop_rows["accuracy"].mean())
    assert dtd_base[2].value == 2 and rows[("eurosat", "Base")][2].value == 3
    for cells in rows.values():
        a, b, _, d = cells
        assert d.value == pytest.approx(a.value - b.value, abs=1e-12)  # the columns add up
    # † on the dtd cells (2 shared seeds), and on the HM and Averages built on them
    assert dtd_base[0].flag and dtd_base[1].flag and dtd_base[2].flag
    assert rows[("dtd", "HM")][0].flag and rows[("Average", "Base")][0].flag and rows[("Average", "HM")][2].flag
    assert not rows[("eurosat", "Base")][0].flag and not rows[("eurosat", "HM")][0].flag
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", root, "--compare-methods", "coop", "kgcoop")
    line = next(x for x in out.splitlines() if x.startswith("| dtd | Base |"))
    assert [x.strip() for x in line.split("|")][5] == "2 †"
    assert "† fewer shared seeds than the table's other cells" in out


def test_holm_adjusts_the_datasets_of_each_field(tmp_path, monkeypatch, capsys):
    root = tmp_path / "res"
    gains = {"dtd": 20.0, "eurosat": 9.0, "ucf101": 0.5, "food101": 3.0}
    for d, gain in gains.items():
        for s in (1, 2, 3):
            wiggle = (s - 2) * 1.5  # a seed moves both methods alike (the same few-shot draw)
            _job(root, "coop", d, s, 65 + gain + wiggle, 55 + gain / 2 + wiggle)
            _job(root, "kgcoop", d, s, 65 + wiggle, 55 + wiggle)
    doc = json.loads(run_cli(monkeypatch, capsys, "report", "--results", root, "--compare-methods", "coop", "kgcoop",
                             "--format", "json")[1])
    diffs = [c for t in doc["tables"] for r in t["rows"] for c in r["cells"] if c["entry"] == "coop − kgcoop"]
    for fld in ("Base", "New", "HM"):
        fam = [c for c in diffs if c["field"] == fld and c["dataset"] != "Average"]
        assert len(fam) == 4
        p = np.array([c["p_value"] for c in fam], dtype=float)
        order = np.argsort(p)
        adjusted = np.maximum.accumulate(np.minimum(1.0, (4 - np.arange(4)) * p[order]))
        expected = np.empty(4)
        expected[order] = adjusted
        assert [c["p_adjusted"] for c in fam] == pytest.approx(expected.tolist())
        assert all(c["significant"] == (c["p_adjusted"] < 0.05) for c in fam)
        (avg,) = [c for c in diffs if c["field"] == fld and c["dataset"] == "Average"]
        assert avg["p_adjusted"] is None and avg["significant"] == (avg["p_value"] < 0.05)  # the primary result
    per_dataset = [c for c in diffs if c["dataset"] != "Average"]
    assert any(c["p_value"] < 0.05 <= c["p_adjusted"] for c in per_dataset)  # the correction changed a verdict
    assert any(c["significant"] for c in per_dataset)  # and left a clear one standing
    md = run_cli(monkeypatch, capsys, "report", "--results", root, "--compare-methods", "coop", "kgcoop")[1]
    assert "(Holm p = " in md and "Holm-adjusted across the datasets of each field" in md


def test_mcnemar_is_one_cmh_test_over_the_seeds():
    # by hand: seed 1: 10 images only A gets right, 4 only B; seed 2: 12 / 5; seed 3: 8 / 6
    pairs, counts = [], ((10, 4), (12, 5), (8, 6))
    for s, (b, c) in enumerate(counts, start=1):
        a_right = np.array([True] * b + [False] * c + [True] * 50 + [False] * 20)
        b_right = np.array([False] * b + [True] * c + [True] * 50 + [False] * 20)
        pairs.append((s, a_right, b_right))
    m = significance.mcnemar(pairs)
    assert (m.a_only, m.b_only) == (30, 15)
    assert m.p == pytest.approx(chi2.sf((30 - 15) ** 2 / 45, 1)) and m.p == pytest.approx(0.02535, abs=1e-5)
    assert m.per_seed == ((1, 10, 4), (2, 12, 5), (3, 8, 6))
    assert significance.mcnemar([(1, pairs[0][1], pairs[0][1])]).p == 1.0


def test_a_bounded_p_is_written_as_a_bound_in_every_format(tmp_path, monkeypatch, capsys):
    """Two seed-independent entries (zero-shot on a GPU in fp16 and on a CPU in fp32: two entries)
    40 points apart on 400 images: no bootstrap replicate crosses 0, so p < 2/R."""
    root = tmp_path / "res"
    for prec, acc in (("fp16", 90), ("fp32", 50)):
        outcome_job(root, "zeroshot", "dtd", 1, {"base": outcomes_at(acc, seed=1), "new": outcomes_at(acc, seed=2)},
                    precision=prec)
    rep = _build(root, compare_methods=("zeroshot (fp16)", "zeroshot (fp32)"))
    d = _compare_rows(rep)[0].cells[-1]
    assert d.paired.kind == "images" and d.paired.p_floor == pytest.approx(0.001) and d.paired.significant
    out = {fmt: formats.render(rep, fmt) for fmt in formats.FORMATS}
    assert "p < 0.001" in out["markdown"] and "p < 0.001" in out["latex"] and "p &lt; 0.001" in out["html"]
    assert ",< 0.001," in out["csv"]
    cells = [c for t in json.loads(out["json"])["tables"] for r in t["rows"] for c in r["cells"]
             if c["entry"] == "zeroshot (fp16) − zeroshot (fp32)"]
    assert cells and all(c["p_value"] == "< 0.001" for c in cells)
    assert not any(c["p_value"] == 0 for c in cells)
    assert "shared seeds –: both results are seed-independent" in out["markdown"]


def test_rows_of_two_precisions_are_two_entries():
    rows = b2n("coop", "dtd", [70, 71], [60, 61]) + b2n("coop", "dtd", [65], [55], seeds=[3])
    for r in rows[:4]:
        r["precision"] = "fp16"
    for r in rows[4:]:
        r["precision"] = "fp32"
    rep = report.build(pd.DataFrame(rows), report.ReportOptions(layout="long"))
    (t,) = rep.tables
    labels = sorted({r.labels[1] for r in t.rows})
    assert labels == ["coop (fp16)", "coop (fp32)"]
    by = {(r.labels[0], r.labels[1]): r.cells for r in t.rows}
    assert by[("dtd", "coop (fp16)")][0].value == 70.5 and by[("dtd", "coop (fp32)")][0].value == 65.0
    # rows without the column (old shards) still report, as one entry
    old = b2n("coop", "dtd", [70, 72], [60, 62])
    (t,) = report.build(pd.DataFrame(old)).tables
    assert t.rows[0].cells[0].value == 71.0 and t.columns[0] == "coop Base"


def test_derived_cells_inherit_the_dagger_and_dashes_have_reasons():
    rows = (b2n("coop", "dtd", [70, 71, 72], [60, 61, 62]) + b2n("coop", "eurosat", [80, 81], [50, 51])
            + b2n("kgcoop", "dtd", [70, 71, 72], [60, 61, 62]))
    rep = report.build(pd.DataFrame(rows), report.ReportOptions(layout="long"))
    (t,) = rep.tables
    by = {(r.labels[0], r.labels[1]): {c.field: c for c in r.cells} for r in t.rows}
    assert by[("eurosat", "coop")]["Base"].flag and by[("eurosat", "coop")]["HM"].flag
    assert not by[("dtd", "coop")]["HM"].flag
    assert all(by[("Average", "coop")][f].flag for f in ("Base", "New", "HM"))
    assert math.isnan(by[("eurosat", "kgcoop")]["Base"].value) and math.isnan(by[("Average", "kgcoop")]["HM"].value)
    assert not any(c.flag for c in by[("Average", "kgcoop")].values())
    md = formats.render(rep, "markdown")
    assert "| **Average** | coop | 75.75 † |" in md
    notes = " ".join(t.notes)
    assert "– = no result: kgcoop: no rows for eurosat." in notes
    assert "HM, averages and other derived numbers are – where one of their parts is" in notes
    assert "(HM and averages: one of their parts has)" in notes
    # another shot count, another subset
    few = [row("few_shot", "coop", "dtd", "dtd", "all", 4, 1, 50.0), row("few_shot", "coop", "eurosat", "eurosat",
                                                                           "all", 8, 1, 60.0),
           row("few_shot", "coop", "eurosat", "eurosat", "all", 4, 1, 55.0)]
    eight = next(t for t in report.build(pd.DataFrame(few)).tables if t.key == "8-shot")
    assert "coop: no 8-shot rows for dtd (it has 4-shot)." in " ".join(eight.notes)
    half = b2n("coop", "dtd", [70], [60])[:1] + b2n("coop", "eurosat", [70], [60])
    (t,) = report.build(pd.DataFrame(half)).tables
    assert "coop: no new rows for dtd at 16 shots." in " ".join(t.notes)


def test_a_cell_mixing_cpbench_versions_says_so():
    rows = b2n("coop", "dtd", [70, 71], [60, 61]) + b2n("coop", "eurosat", [70, 71], [60, 61])
    for r, v in zip(rows, ("0.1.0", "0.2.0", "0.1.0", "0.2.0") + ("0.2.0",) * 4):
        r["cpbench_version"] = v
    (t,) = report.build(pd.DataFrame(rows)).tables
    notes = " ".join(t.notes)
    assert "Rows of different cpbench versions in one cell: coop on dtd Base (0.1.0, 0.2.0); coop on dtd New" in notes
    assert "eurosat" not in notes.split("different cpbench versions")[1]


# --------------------------------------------------------------------------- a small simulation


N_IMG, SEED_SD, REPS = 1000, 4.0, 40
TRUE = {"base": 75.0, "new": 65.0}


def _world(g, n_seeds: int):
    """A null world: coop and kgcoop the same learner, one dataset, ``n_seeds`` seeds; each seed
    shifts a training's accuracy by N(0, SEED_SD) (Base and New of one training together); the
    test images are drawn anew, evaluations agree image by image (a shared latent difficulty)."""
    labels = np.zeros(N_IMG, dtype=np.int16)
    eta = {f: g.standard_normal(N_IMG) for f in TRUE}
    rows, outs, correct = [], {}, {}
    for m in ("coop", "kgcoop"):
        for s in range(1, n_seeds + 1):
            common, *own = g.standard_normal(3)
            for f, x in zip(TRUE, own):
                shift = SEED_SD * (math.sqrt(0.5) * common + math.sqrt(0.5) * x)  # Base/New correlated 0.5
                u = norm.cdf(math.sqrt(0.7) * eta[f] + math.sqrt(0.3) * g.standard_normal(N_IMG))
                right = u < (TRUE[f] + shift) / 100
                r = row("base2new", m, "dtd", "dtd", f, 16, s, 100.0 * right.sum() / N_IMG)
                r.update(run_id=f"{m}{s}", job_key=f"{m}{s}", correct=int(right.sum()))
                rows.append(r)
                index = np.arange(N_IMG, dtype=np.int32) + (0 if f == "base" else N_IMG)
                outs[(f"{m}{s}", "dtd", f)] = Outcome(index, labels, np.where(right, 0, 1).astype(np.int16),
                                                      np.zeros(N_IMG, np.float16))
                correct[(m, f, s)] = right
    return pd.DataFrame(rows), outs, correct


def _old_percentile(g, correct, n_seeds: int, reps: int = 500):
    """cpbench's scheme before issue 26: per replicate one shared image draw, then S of S seeds drawn
    with replacement; percentile intervals; significant when the difference's interval excludes 0."""
    cover, positives = 0, 0
    for f in TRUE:
        idx = g.integers(0, N_IMG, size=(reps, N_IMG))
        seeds = {m: g.integers(1, n_seeds + 1, size=(reps, n_seeds)) for m in ("coop", "kgcoop")}
        means = {}
        for m in ("coop", "kgcoop"):
            per_seed = np.stack([correct[(m, f, s)][idx].mean(axis=1) * 100 for s in range(1, n_seeds + 1)], axis=1)
            means[m] = np.take_along_axis(per_seed, seeds[m] - 1, axis=1).mean(axis=1)
            low, high = np.percentile(means[m], [2.5, 97.5])
            cover += low <= TRUE[f] <= high
        low, high = np.percentile(means["coop"] - means["kgcoop"], [2.5, 97.5])
        positives += low > 0 or high < 0
    return cover, positives


@pytest.mark.parametrize("n_seeds", [2, 3])
def test_intervals_cover_and_null_comparisons_stay_quiet_with_few_seeds(n_seeds):
    """40 null worlds (seeded), seed noise 4 points, 1,000 test images: the --ci intervals of the
    Base/New cells cover the true accuracy (>= 85 % of 160) and --compare-methods calls at most
    10 % of the 80 null differences significant (measured: 2 seeds 158/160 and 1/80, 3 seeds 159/160
    and 0/80). The old percentile bootstrap over seeds, run on the same worlds, misses the bounds
    (2 seeds 127/160 and 13/80; 3 seeds 143/160 and 9/80)."""
    g = np.random.default_rng(26 + n_seeds)
    new_cover = new_pos = old_cover = old_pos = 0
    for _ in range(REPS):
        frame, outs, correct = _world(g, n_seeds)
        rep = report.build(frame, report.ReportOptions(ci=True, compare_methods=("coop", "kgcoop"), layout="long"),
                           outcomes=lambda k, o=outs: o)
        proto = next(t for t in rep.tables if t.protocol == "base2new" and not t.kind)
        for r in proto.rows:
            if r.labels[0] == "dtd":
                for c, f in zip(r.cells[:2], ("base", "new")):
                    new_cover += c.ci[0] <= TRUE[f] <= c.ci[1]
        for r in _compare_rows(rep):
            if r.labels[0] == "dtd" and r.labels[1] in ("Base", "New"):
                new_pos += bool(r.cells[-1].paired.significant)
        oc, op = _old_percentile(g, correct, n_seeds)
        old_cover, old_pos = old_cover + oc, old_pos + op
    cells, diffs = 4 * REPS, 2 * REPS
    print(f"{n_seeds} seeds: coverage {new_cover}/{cells} (old {old_cover}), false positives {new_pos}/{diffs} "
          f"(old {old_pos})")
    assert new_cover >= 0.85 * cells and new_pos <= 0.10 * diffs
    assert old_cover < 0.85 * cells or old_pos > 0.10 * diffs  # the bounds tell the two schemes apart
