"""Few-shot image-text retrieval tables (``--protocol retrieval``): per dataset and number of
training pairs, one row per method with recall at 1, 5 and 10 from image to text and from text to
image (seed means ± std; definitions and the tie rule in ``cpbench/engine/retrieval.py``)."""

from __future__ import annotations

import pandas as pd

from cpbench.engine.retrieval import KS
from cpbench.results.report import Table, _cell, _flag, _notes

DIRECTIONS = (("i2t", "image→text"), ("t2i", "text→image"))


def retrieval_tables(agg: pd.DataFrame) -> list[Table]:
    a = agg[agg["protocol"] == "retrieval"]
    tables = []
    for (dataset, shots), g in a.groupby(["train_dataset", "shots"], sort=True):
        rows = []
        for m in sorted(g["method"].unique()):
            gm = g[g["method"] == m]
            cells = []
            for d, _ in DIRECTIONS:
                for k in KS:
                    c = _cell(gm, subset=d, recall_at=k)
                    c.method, c.dataset, c.field, c.shots = m, str(dataset), f"{d} R@{k}", int(shots)
                    cells.append(c)
            rows.append((m, cells))
        most, flagged = _flag(rows)
        cols = [f"{d} R@{k}" for d, _ in DIRECTIONS for k in KS]
        note = (f"Trained on {shots} image-caption pairs of {dataset} (zeroshot: none); recall at K in percent over "
                "its test split: image→text (i2t) ranks all test captions for each image, text→image (t2i) all test "
                "images for each caption; ties count against the query.")
        tables.append(Table("retrieval", "Few-shot image-text retrieval", "Method", cols,
                            [(label, len(KS)) for _, label in DIRECTIONS], rows, _notes(most, flagged, note),
                            key=f"{dataset}, {shots} pairs"))
    return tables
