"""Few-shot image-text retrieval tables (``--protocol retrieval``): per dataset and number of
training pairs, one row per method with recall at 1, 5 and 10 from image to text and from text to
image (seed means ± std; definitions and the tie rule in ``cpbench/engine/retrieval.py``)."""

from __future__ import annotations

import pandas as pd

from cpbench.engine.retrieval import KS
from cpbench.results.layouts import PROTOCOL_TITLES, Cells, _entry_rows, _flag_and_notes
from cpbench.results.table import Entry, Table

DIRECTIONS = (("i2t", "image→text"), ("t2i", "text→image"))


def retrieval_tables(cells: Cells, agg: pd.DataFrame, entries: list[Entry]) -> list[Table]:
    """One table per (dataset, training pairs); rows are entries, columns R@K both ways."""
    a = agg[agg["protocol"] == "retrieval"]
    tables = []
    for (dataset, shots), g in a.groupby(["train_dataset", "shots"], sort=True):
        dataset, shots = str(dataset), int(shots)
        cols = [f"{d} R@{k}" for d, _ in DIRECTIONS for k in KS]
        rows = _entry_rows(g, entries, cols, lambda e, col: cells.get(
            e, "retrieval", dataset, dataset, col.split(" ")[0], shots, col, recall_at=int(col.split("@")[1])))
        note = (f"Trained on {shots} image-caption pairs of {dataset} (zeroshot: none); recall at K in percent over "
                "its test split: image→text (i2t) ranks all test captions for each image, text→image (t2i) all test "
                "images for each caption; ties count against the query.")
        tables.append(Table("retrieval", PROTOCOL_TITLES["retrieval"], ["Method"], cols, rows,
                            groups=[(label, len(KS)) for _, label in DIRECTIONS], notes=_flag_and_notes(rows, note, cells),
                            key=f"{dataset}, {shots} pairs"))
    return tables
