"""Per-image predictions (issue 20): every evaluation stores, beside its shard, each test image's
split index, true and predicted label and true-class probability, keyed to its row's run_id.

- a round trip keeps dtypes (int16 labels, float16 probabilities), the class names, and the keys;
- a real run (tiny backbone, miniature Caltech) writes one predictions file per shard whose
  accuracies equal the rows' exactly; a run skipped as done keeps the file untouched; a forced
  re-run gives identical accuracies and predictions; the rows record the job's peak memory;
- ``report --ci``, ``--per-class`` and ``--cost`` work on those real files (the rows name the
  device model the cost view groups by).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cpbench.results import predictions as preds
from cpbench.results.store import ResultStore
from minidata import make_caltech
from reporting import run_cli


def test_round_trip_keeps_types_names_and_keys(tmp_path):
    out = preds.Outcome(np.array([5, 2, 9], dtype=np.int32), np.array([0, 1, 1]), np.array([0, 0, 1]),
                        np.array([0.9, 0.2, 0.7], dtype=np.float16), ("cat", "dog"))
    other = preds.Outcome(np.array([0, 1], dtype=np.int32), np.array([1, 0]), np.array([1, 0]),
                          np.array([0.5, 0.6], dtype=np.float16), ("a", "b"))
    path = preds.write(tmp_path, "job", [preds.Evaluation("r1", "dtd", "base", out),
                                         preds.Evaluation("r1", "dtd", "new", other)])
    assert path == tmp_path / "predictions" / "job.parquet"
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    assert str(schema.field("label").type) == "int16" and str(schema.field("p_true").type) == "halffloat"
    got = preds.read(tmp_path, ["job", "missing-job"])
    assert set(got) == {("r1", "dtd", "base"), ("r1", "dtd", "new")}
    b = got[("r1", "dtd", "base")]
    assert b.index.tolist() == [5, 2, 9] and b.label.tolist() == [0, 1, 1] and b.pred.tolist() == [0, 0, 1]
    assert b.classnames == ("cat", "dog") and b.accuracy == pytest.approx(200 / 3)
    assert b.p_true.dtype == np.float16
    # more classes than int16 holds: int32
    big = preds.Outcome(np.arange(2, dtype=np.int32), np.array([0, 40000]), np.array([40000, 40000]),
                        np.zeros(2, np.float16))
    preds.write(tmp_path, "big", [preds.Evaluation("r2", "x", "all", big)])
    assert str(pq.read_schema(tmp_path / "predictions" / "big.parquet").field("label").type) == "int32"
    assert preds.read(tmp_path, ["big"])[("r2", "x", "all")].label.tolist() == [0, 40000]


RUN = ("--backbone", "tiny", "--pretrained", "none", "--device", "cpu", "--dataset", "caltech101", "--shots", "4",
       "--threads", "1", "--set", "epochs=1", "batch_size=4", "test_batch_size=5")


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    import sys

    from cpbench import cli

    t = tmp_path_factory.mktemp("pred")
    make_caltech(t / "data", n_test=6)
    mp = pytest.MonkeyPatch()
    try:
        for method in ("zeroshot", "coop"):
            mp.setattr(sys, "argv", ["cpbench", "run", method, *RUN, "--seeds", "1", "2", "--root", str(t / "data"),
                                     "--results", str(t / "res")])
            try:
                cli.main()
            except SystemExit as exc:
                assert exc.code == 0
    finally:
        mp.undo()
    return t


def _check_against_rows(res):
    frame = ResultStore(res).read().frame
    shards = sorted(p.stem for p in (res / "shards").glob("*.parquet"))
    assert shards == sorted(p.stem for p in (res / "predictions").glob("*.parquet"))
    got = preds.read(res, frame["job_key"].unique())
    assert len(got) == len(frame)
    for r in frame.itertuples():
        o = got[(r.run_id, r.eval_dataset, r.subset)]
        assert len(o.label) == r.n_test and int(o.correct.sum()) == r.correct
        assert o.accuracy == r.accuracy  # exactly the row's number
        assert len(set(o.index.tolist())) == r.n_test and len(o.classnames) == r.n_classes
        assert np.all((o.p_true >= 0) & (o.p_true <= 1))
    return frame, got


@pytest.mark.slow
def test_a_run_stores_predictions_that_give_back_the_rows(ran):
    frame, got = _check_against_rows(ran / "res")
    assert set(frame["method"]) == {"zeroshot", "coop"} and len(frame) == 2 * 2 * 2  # methods x seeds x base/new
    # base and new are disjoint parts of the one test split
    one = frame[(frame.method == "coop") & (frame.seed == 1)]
    idx = [set(got[(r.run_id, r.eval_dataset, r.subset)].index.tolist()) for r in one.itertuples()]
    assert not (idx[0] & idx[1])
    assert (frame["peak_memory_mb"] > 0).all() and set(frame["peak_memory_source"]) == {"process maxrss"}


@pytest.mark.slow
def test_skipped_jobs_keep_their_predictions_and_forced_reruns_repeat_them(ran, monkeypatch, capsys):
    res = ran / "res"
    before = {p.name: p.read_bytes() for p in (res / "predictions").glob("*.parquet")}
    frame0, got0 = _check_against_rows(res)
    code, _, err = run_cli(monkeypatch, capsys, "run", "coop", *RUN, "--seeds", "1", "2", "--root", ran / "data",
                           "--results", res)
    assert code == 0 and "skip" in err.lower(), err
    assert {p.name: p.read_bytes() for p in (res / "predictions").glob("*.parquet")} == before
    code, _, err = run_cli(monkeypatch, capsys, "run", "coop", *RUN, "--seeds", "1", "2", "--root", ran / "data",
                           "--results", res, "--force")
    assert code == 0, err
    frame1, got1 = _check_against_rows(res)
    key = ["method", "eval_dataset", "subset", "seed"]
    a = frame0.sort_values(key)[key + ["accuracy"]].reset_index(drop=True)
    b = frame1.sort_values(key)[key + ["accuracy"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)  # identical accuracies
    for r0 in frame0[frame0.method == "coop"].itertuples():
        r1 = frame1[(frame1.method == "coop") & (frame1.seed == r0.seed) & (frame1.subset == r0.subset)].iloc[0]
        assert r1.run_id != r0.run_id  # a new run, the same predictions
        o0, o1 = got0[(r0.run_id, r0.eval_dataset, r0.subset)], got1[(r1.run_id, r1.eval_dataset, r1.subset)]
        assert np.array_equal(o0.pred, o1.pred) and np.array_equal(o0.index, o1.index)


@pytest.mark.slow
def test_report_views_work_on_real_predictions(ran, monkeypatch, capsys, tmp_path):
    res = ran / "res"
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", res, "--ci", "--format", "json")
    assert code == 0, err
    import json

    cells = [c for t in json.loads(out)["tables"] for r in t["rows"] for c in r["cells"] if c["mean"] is not None]
    assert cells and all(c["ci_low"] <= c["mean"] <= c["ci_high"] for c in cells)
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", res, "--per-class", "caltech101",
                             "--plots", tmp_path / "figs")
    assert code == 0, err
    assert "## Per-class accuracy (caltech101/base, base2new, 16-shot)" not in out  # shots are 4 here
    assert "## Per-class accuracy (caltech101/base, base2new, 4-shot)" in out and "Top confusions" in out
    assert sorted(p.name for p in (tmp_path / "figs").glob("per_class_*.png")) == [
        "per_class_caltech101_base_base2new_4-shot.png", "per_class_caltech101_new_base2new_4-shot.png"]
    code, out, err = run_cli(monkeypatch, capsys, "report", "--results", res, "--cost")
    assert code == 0, err
    # the rows name the CPU (schema.device_name, recorded by run): one row per method and training dataset
    coop = [x for x in out.splitlines() if x.startswith("| coop | caltech101 | cpu: ")]
    assert len(coop) == 1 and "unknown" not in coop[0] and "| fp32 (asked fp16) | 2 |" in coop[0]
    assert "| zeroshot | caltech101 | cpu: " in out
