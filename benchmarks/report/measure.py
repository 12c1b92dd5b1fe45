"""Timings and interval widths of ``cpbench report --ci`` on a results folder (issue 20).

    python benchmarks/report/measure.py RESULTS

1. Wall time of the command ``cpbench report --results RESULTS --ci`` (a fresh process, imports
   included; 3 runs, each printed) and of building + rendering the report in this process.
2. The 95 % interval width of every seed-dependent method's cells (each dataset's Base, and the
   Average's Base/New/HM) when only its first 1, 2, ... seeds are kept.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from cpbench.results import formats, predictions, report
from cpbench.results.store import ResultStore


def main() -> None:
    root = Path(sys.argv[1])
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cpbench", "report", "--results", str(root), "--ci"], check=True,
                       capture_output=True)
        print(f"cpbench report --ci (new process): {time.perf_counter() - t0:.2f} s")
    frame = ResultStore(root).read().frame
    t0 = time.perf_counter()
    rep = report.build(frame, report.ReportOptions(ci=True), outcomes=lambda k: predictions.read(root, k))
    formats.render(rep, "markdown")
    print(f"build + render with --ci in this process: {time.perf_counter() - t0:.2f} s "
          f"({frame['method'].nunique()} methods, {frame['train_dataset'].nunique()} datasets, "
          f"{frame['seed'].nunique()} seeds, {len(frame)} rows)")
    seeds = sorted(int(s) for s in frame["seed"].unique())
    print("\ninterval width (points) by the seeds kept")
    for method in sorted(frame["method"].unique()):
        for n in range(1, len(seeds) + 1):
            part = frame[(frame["method"] == method) & frame["seed"].isin(seeds[:n])]
            rep = report.build(part, report.ReportOptions(ci=True), outcomes=lambda k: predictions.read(root, k))
            t = rep.tables[0]
            if not t.rows[0].cells[0].entry.seed_dependent:
                break
            widths = []
            for r in t.rows:
                cells = r.cells if r.average else r.cells[:1]
                widths += [f"{r.labels[0]} {c.field} {c.ci[1] - c.ci[0]:.2f}" for c in cells if c.ci]
            print(f"{method} seeds {seeds[:n]}: " + "; ".join(widths))


if __name__ == "__main__":
    main()
