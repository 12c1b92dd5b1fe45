"""Report arithmetic: HM from seed means; Average row = HM of the averaged Base and New."""

from __future__ import annotations

import pandas as pd
import pytest

from cpbench.results import report


def _rows(method, dataset, subset, accs):
    return [{"protocol": "base2new", "method": method, "backbone": "b", "pretrained": "p",
             "train_dataset": dataset, "eval_dataset": dataset, "subset": subset, "shots": 16,
             "seed": s, "accuracy": a, "config_hash": "h", "finished_at": f"2026-01-0{s}"}
            for s, a in enumerate(accs, 1)]


def test_hm_and_average_rows_by_hand():
    rows = (_rows("coop", "d1", "base", [80, 82, 84]) + _rows("coop", "d1", "new", [60, 61, 62])
            + _rows("coop", "d2", "base", [90, 92]) + _rows("coop", "d2", "new", [50, 54]))
    table, methods, max_seeds = report.base2new_table(report.aggregate(pd.DataFrame(rows)))
    t = table
    b1, n1 = 82.0, 61.0
    b2, n2 = 91.0, 52.0
    assert t.loc["d1", ("coop", "HM")] == pytest.approx(2 * b1 * n1 / (b1 + n1))
    assert t.loc["d2", ("coop", "HM")] == pytest.approx(2 * b2 * n2 / (b2 + n2))
    ab, an = (b1 + b2) / 2, (n1 + n2) / 2
    assert t.loc["Average", ("coop", "Base")] == pytest.approx(ab)
    assert t.loc["Average", ("coop", "HM")] == pytest.approx(2 * ab * an / (ab + an))
    # not the mean of per-dataset HMs
    mean_hm = (t.loc["d1", ("coop", "HM")] + t.loc["d2", ("coop", "HM")]) / 2
    assert abs(t.loc["Average", ("coop", "HM")] - mean_hm) > 1e-3
    assert max_seeds == 3
    md = report.base2new_markdown(report.aggregate(pd.DataFrame(rows)))
    assert "†" in md  # d2 has fewer seeds than d1
    assert f"{2 * ab * an / (ab + an):.2f}" in md


def test_published_coop_average():
    # CoOp's published per-dataset Base/New (methods.md §4.2) -> Average 82.69 / 63.22 / 71.66
    base = [76.47, 98.00, 93.67, 78.12, 97.60, 88.33, 40.44, 80.60, 79.44, 92.19, 84.69]
    new = [67.88, 89.81, 95.29, 60.40, 59.67, 82.26, 22.30, 65.89, 41.18, 54.74, 56.05]
    rows = []
    for i, (b, n) in enumerate(zip(base, new)):
        rows += _rows("coop", f"d{i:02d}", "base", [b]) + _rows("coop", f"d{i:02d}", "new", [n])
    t = report.base2new_table(report.aggregate(pd.DataFrame(rows)))[0]
    assert round(t.loc["Average", ("coop", "Base")], 2) == 82.69
    assert round(t.loc["Average", ("coop", "New")], 2) == 63.22
    assert round(t.loc["Average", ("coop", "HM")], 2) == 71.66
