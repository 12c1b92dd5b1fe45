"""Report arithmetic: HM from seed means; Average row = HM of the averaged Base and New."""

from __future__ import annotations

import pandas as pd
import pytest

from cpbench.results import formats, report
from reporting import b2n


def _cells(rep, dataset):
    (t,) = [t for t in rep.tables if t.protocol == "base2new"]
    (row,) = [r for r in t.rows if r.labels[0] == dataset]
    return {c.field: c for c in row.cells}


def test_hm_and_average_rows_by_hand():
    rows = b2n("coop", "dtd", [80, 82, 84], [60, 61, 62]) + b2n("coop", "eurosat", [90, 92], [50, 54])
    rep = report.build(pd.DataFrame(rows))
    b1, n1 = 82.0, 61.0
    b2, n2 = 91.0, 52.0
    assert _cells(rep, "dtd")["HM"].value == pytest.approx(2 * b1 * n1 / (b1 + n1))
    assert _cells(rep, "eurosat")["HM"].value == pytest.approx(2 * b2 * n2 / (b2 + n2))
    avg = _cells(rep, "Average")
    ab, an = (b1 + b2) / 2, (n1 + n2) / 2
    assert avg["Base"].value == pytest.approx(ab)
    assert avg["HM"].value == pytest.approx(2 * ab * an / (ab + an))
    # not the mean of per-dataset HMs
    mean_hm = (_cells(rep, "dtd")["HM"].value + _cells(rep, "eurosat")["HM"].value) / 2
    assert abs(avg["HM"].value - mean_hm) > 1e-3
    dtd = _cells(rep, "dtd")["Base"]
    assert dtd.n == 3 and dtd.seeds == (1, 2, 3) and dtd.values == (80.0, 82.0, 84.0)
    assert dtd.std == pytest.approx(pd.Series([80, 82, 84]).std(ddof=0))
    assert _cells(rep, "eurosat")["Base"].flag and not dtd.flag  # fewer seeds than dtd
    md = formats.render(rep, "markdown")
    assert "†" in md and f"{2 * ab * an / (ab + an):.2f}" in md


def test_published_coop_average():
    # CoOp's published per-dataset Base/New (methods.md §4.2) -> Average 82.69 / 63.22 / 71.66
    base = [76.47, 98.00, 93.67, 78.12, 97.60, 88.33, 40.44, 80.60, 79.44, 92.19, 84.69]
    new = [67.88, 89.81, 95.29, 60.40, 59.67, 82.26, 22.30, 65.89, 41.18, 54.74, 56.05]
    rows = []
    for i, (b, n) in enumerate(zip(base, new)):
        rows += b2n("coop", f"d{i:02d}", [b], [n])
    avg = _cells(report.build(pd.DataFrame(rows), report.ReportOptions(layout="wide")), "Average")
    assert [round(avg[f].value, 2) for f in ("Base", "New", "HM")] == [82.69, 63.22, 71.66]


def test_rerun_replaces_the_earlier_row_of_its_seed():
    first = b2n("coop", "dtd", [70.0], [50.0], finished="2026-01-01T00:00:00")
    again = b2n("coop", "dtd", [72.0], [52.0], finished="2026-01-02T00:00:00")  # --force, same setting
    c = _cells(report.build(pd.DataFrame(again + first)), "dtd")
    assert c["Base"].value == 72.0 and c["Base"].n == 1
