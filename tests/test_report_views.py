"""The per-class and cost views of ``cpbench report`` (issue 20), on hand-made rows and predictions.

- ``--per-class DATASET``: per-class accuracies weighted by class size give back each entry's
  accuracy (the table's seed mean); the "differ most" table is ordered by the lower end of the
  difference's interval, so a big spread on a few images ranks below a clear one on many;
  confusions count (true, predicted) pairs over all seeds; rows without predictions say so.
- ``--cost``: one row per entry, training dataset, device model and precision: jobs, learnable
  parameters, train seconds per job (a job's rows counted once), eval seconds per 1,000 test
  images, the largest peak memory; jobs on two GPUs are two rows; old rows without peak memory or
  device model print "–" / "unknown".
"""

from __future__ import annotations

import numpy as np
import pytest

from cpbench.results import predictions as preds
from cpbench.results import report
from cpbench.results.store import ResultStore
from reporting import outcome_job, outcomes_at, run_cli


@pytest.fixture
def two_methods(tmp_path):
    root = tmp_path / "res"
    for s in (1, 2, 3):
        # uneven class sizes, so a plain mean of per-class accuracies would not give the row back
        labels = np.concatenate([np.full(10 * (c + 1), c) for c in range(6)])
        g = np.random.default_rng(s)
        coop = np.where(g.random(len(labels)) < 0.8, labels, (labels + 1) % 6)
        zs = np.where(g.random(len(labels)) < 0.5, labels, (labels + 2) % 6)
        zs[labels == 5] = 0  # zero-shot never gets class 5: the class where they differ most
        outcome_job(root, "coop", "toy_shapes", s, {"base": (labels, coop), "new": outcomes_at(60, 120, 6, s)})
        outcome_job(root, "zeroshot", "toy_shapes", s, {"base": (labels, zs), "new": outcomes_at(55, 120, 6, s)})
    return root


def _build(root, **kw):
    return report.build(ResultStore(root).read().frame, report.ReportOptions(**kw),
                        outcomes=lambda k: preds.read(root, k))


def test_per_class_weighted_by_class_size_gives_back_the_rows(two_methods):
    main = _build(two_methods)
    mean = {(r.labels[0], c.entry.label, c.field): c.value for r in main.tables[0].rows for c in r.cells}
    rep = _build(two_methods, per_class="toy_shapes")
    kinds = [t.kind for t in rep.tables]
    assert kinds == ["per_class", "per_class_top", "confusions"] * 2  # base and new views
    for t in (t for t in rep.tables if t.kind == "per_class"):
        subset = "Base" if "/base" in t.key else "New"
        assert t.columns[0] == "images" and t.columns[-1] == "spread"
        rows = [r for r in t.rows if not r.average]
        sizes = np.array([r.cells[0].value for r in rows])
        weighted = t.rows[-1]
        assert weighted.average and weighted.cells[0].value == sizes.sum()
        for j, label in enumerate(t.columns[1:-1], start=1):
            per_class = np.array([r.cells[j].value for r in rows])
            assert np.sum(per_class * sizes) / sizes.sum() == pytest.approx(mean[("toy_shapes", label, subset)])
            assert weighted.cells[j].value == pytest.approx(mean[("toy_shapes", label, subset)])
    top = next(t for t in rep.tables if t.kind == "per_class_top" and "/base" in t.key)
    assert top.columns[-2:] == ["spread", "difference [95 %]"]
    lows = [r.cells[-1].ci[0] for r in top.rows]
    assert lows == sorted(lows, reverse=True) and top.rows[0].labels == ("base-c5",)
    assert all(r.cells[-1].value == r.cells[-2].value for r in top.rows)  # the interval is the spread's
    conf = next(t for t in rep.tables if t.kind == "confusions" and "/base" in t.key)
    zs = [r for r in conf.rows if r.labels[0] == "zeroshot"]
    assert zs[0].labels[1:] == ("base-c5", "base-c0")
    assert zs[0].cells[0].value == 3 * 60 and zs[0].cells[1].value == pytest.approx(100.0)  # all seeds, all images


def test_per_class_cli_errors_and_rows_without_predictions(two_methods, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", two_methods, "--per-class", "dtd")
    assert code == 2 and "--per-class dtd: no results on dtd" in err and out == ""
    for f in (two_methods / "predictions").glob("zeroshot-*"):
        f.unlink()
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", two_methods, "--per-class", "toy_shapes")
    assert code == 0, err
    assert "No per-image predictions for zeroshot." in out and "add --plots DIR for the PNG" in err


def test_per_class_ranks_by_a_size_aware_difference(tmp_path):
    """Class 0 (6 images): A 5/6, B 2/6, a 50-point spread; class 1 (400 images): A 70 %, B 55 %, a
    15-point spread. Ranked by spread, class 0 would come first; its interval reaches below 0, so
    the clear difference on 400 images ranks first."""
    root = tmp_path / "res"
    labels = np.array([0] * 6 + [1] * 400)
    a = labels.copy()
    a[5] = 2
    a[6 + 280:] = 2  # class 1: 280 of 400 right
    b = labels.copy()
    b[2:6] = 2
    b[6 + 220:] = 2  # class 1: 220 of 400
    outcome_job(root, "coop", "toy_shapes", 1, {"base": (labels, a), "new": outcomes_at(60, 30, 3)})
    outcome_job(root, "zeroshot", "toy_shapes", 1, {"base": (labels, b), "new": outcomes_at(60, 30, 3)})
    rep = _build(root, per_class="toy_shapes")
    top = next(t for t in rep.tables if t.kind == "per_class_top" and "/base" in t.key)
    assert [r.labels[0] for r in top.rows[:2]] == ["base-c1", "base-c0"]
    spread = {r.labels[0]: r.cells[-2].value for r in top.rows}
    assert spread["base-c0"] == pytest.approx(50.0) and spread["base-c1"] == pytest.approx(15.0)
    low0 = next(r for r in top.rows if r.labels[0] == "base-c0").cells[-1].ci[0]
    assert low0 < 0 < top.rows[0].cells[-1].ci[0]
    assert "1 of 2 classes have an interval above 0" in " ".join(top.notes)


def test_cost_counts_each_job_once_per_dataset_and_device(tmp_path, monkeypatch, capsys):
    root = tmp_path / "res"
    jobs = (("toy_shapes", 1, 10.0, 900.0, "cpu: Test CPU"), ("toy_shapes", 2, 20.0, 1100.0, "cpu: Test CPU"),
            ("toy_shapes", 3, 5.0, 3000.0, "NVIDIA H100 80GB HBM3"), ("toy_scenes", 1, 50.0, 800.0, "cpu: Test CPU"))
    for dataset, s, train, peak, name in jobs:
        rows = outcome_job(root, "coop", dataset, s, {"base": outcomes_at(60), "new": outcomes_at(50, n=200)})
        for r, ev in zip(rows, (1.0, 3.0)):
            r.update(train_seconds=train, eval_seconds=ev, n_learnable=2048, device="cpu" if "cpu" in name else
                     "cuda:0", device_name=name, precision="fp32", precision_requested="fp16", peak_memory_mb=peak,
                     peak_memory_source="process maxrss")
        ResultStore(root).write(rows[0]["job_key"], rows)
    outcome_job(root, "zeroshot", "toy_shapes", 1, {"base": outcomes_at(50), "new": outcomes_at(50)})  # old rows
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", root, "--cost", "--format", "json")
    assert code == 0, err
    import json

    (t,) = json.loads(out)["tables"]
    assert t["kind"] == "cost" and t["row_header"] == ["Method", "Trained on", "Device", "Precision"]
    rows = {tuple(r["labels"][:3]): {c["field"]: c for c in r["cells"]} for r in t["rows"]}
    assert ["coop", "toy_shapes", "NVIDIA H100 80GB HBM3", "fp32 (asked fp16)"] in [r["labels"] for r in t["rows"]]
    cpu = rows[("coop", "toy_shapes", "cpu: Test CPU")]
    assert cpu["jobs"]["mean"] == 2 and cpu["learnable params"]["mean"] == 2048
    assert cpu["train s / job"]["mean"] == 15.0 and cpu["train s / job"]["std"] == 5.0  # H100 and toy_scenes apart
    # eval seconds per 1,000 test images: 1 s / 400 images and 3 s / 200 images -> 2.5 and 15
    assert cpu["eval s / 1k images"]["mean"] == pytest.approx(8.75) and cpu["peak memory MiB"]["mean"] == 1100.0
    assert rows[("coop", "toy_shapes", "NVIDIA H100 80GB HBM3")]["train s / job"]["mean"] == 5.0
    assert rows[("coop", "toy_scenes", "cpu: Test CPU")]["train s / job"]["mean"] == 50.0
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", root, "--cost")
    assert "| zeroshot | toy_shapes | unknown (?) | ? | 1 | – | – | – | – |" in out
    assert "rows from before cpbench recorded it" in out
