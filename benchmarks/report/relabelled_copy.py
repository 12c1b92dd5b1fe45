"""A results folder whose method SOURCE is a relabelled copy of another method's real predictions,
for checking that ``--compare-methods`` calls a difference that is not there not significant.

    python benchmarks/report/relabelled_copy.py RESULTS OUT --copy zeroshot --as coop [--rotate-seeds]

OUT gets RESULTS' rows and predictions of ``--copy`` twice: as they are, and relabelled as method
``--as`` (``--rotate-seeds``: seed 1's predictions become seed 2's, 2's become 3's, ...; the
per-seed results move, the means do not).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq

from cpbench.results import predictions
from cpbench.results.store import ResultStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--copy", required=True)
    ap.add_argument("--as", dest="as_", required=True)
    ap.add_argument("--rotate-seeds", action="store_true")
    a = ap.parse_args()
    frame = ResultStore(a.results).read().frame
    rows = frame[frame["method"] == a.copy]
    seeds = sorted(int(s) for s in rows["seed"].unique())
    rotate = {s: seeds[(i + 1) % len(seeds)] for i, s in enumerate(seeds)} if a.rotate_seeds else {s: s for s in seeds}
    store = ResultStore(a.out)
    (a.out / predictions.FOLDER).mkdir(parents=True, exist_ok=True)
    for key, g in rows.groupby("job_key"):
        table = pq.read_table(predictions.path(a.results, key))
        for name, part, method in ((key, g, a.copy), (f"{key}-as-{a.as_}", g, a.as_)):
            part = part.assign(method=method, job_key=name)
            if method == a.as_:
                part = part.assign(seed=part["seed"].map(rotate))
            store.write(name, part.to_dict("records"))
            pq.write_table(table, predictions.path(a.out, name), compression="zstd")
    print(f"{a.out}: {a.copy} and its copy as {a.as_} ({len(rows)} rows each)"
          + (f", seeds rotated {rotate}" if a.rotate_seeds else ""))


if __name__ == "__main__":
    main()
