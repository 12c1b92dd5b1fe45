"""The report's cells with their per-image predictions behind them: bootstrap replicates of every
cell (measured and derived), the ``--ci`` intervals, and what cannot be shown.

``Samples`` maps each measured cell (an entry and the cell's rows: protocol, training dataset,
evaluation dataset, subset, shots) to its per-seed outcomes (``predictions.Outcome``), checked
against the rows (same number of correct images). It draws the bootstrap of ``bootstrap.py``:
one shared image draw per test set for all evaluations on it, one seed draw per (protocol,
training dataset, shots, seed list). ``replicates(cell)`` recomputes a derived cell (HM, an
Average) from its parts' replicates; ``replicates(a, b)`` restricts both to their common seeds
(paired seed by seed) unless one of them does not depend on the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cpbench.results import bootstrap
from cpbench.results.entries import CELL
from cpbench.results.predictions import Outcome
from cpbench.results.table import Cell, Report, isnan

Key = tuple  # (entry key, *entries.CELL): protocol, train/eval dataset, subset, shots, task, n_tasks, ...
INT_FIELDS = {"shots", "task", "n_tasks", "recall_at"}


def cell_key(c: Cell) -> Key | None:
    return (c.entry.key, *c.key) if c.key and c.entry is not None else None


def row_key(entry: str, values) -> Key:
    """The key of a group of rows (``entry`` and the ``CELL`` columns), typed as ``Cell.key``."""
    return (entry, *(int(v) if f in INT_FIELDS else v for f, v in zip(CELL, values)))


@dataclass
class Measured:
    seeds: tuple[int, ...]
    outcomes: list[Outcome]                  # per seed, sorted by image index
    reps: np.ndarray | None = None           # (replicates, seeds) per-seed accuracies
    accuracies: np.ndarray = field(default_factory=lambda: np.zeros(0))


class Samples:
    def __init__(self, df: pd.DataFrame, outcomes: dict, replicates: int = bootstrap.REPLICATES):
        """``df``: the report's rows (with the ``entry`` column); ``outcomes``: the stored
        predictions, ``{(run_id, eval_dataset, subset): Outcome}``."""
        self.n_replicates = replicates
        self.cells: dict[Key, Measured] = {}
        self.missing: dict[Key, str] = {}      # cells without usable predictions, and why
        correct = df["correct"] if "correct" in df.columns else pd.Series(np.nan, index=df.index)
        cols = ["entry", *CELL]
        for key, g in df.assign(row_correct=correct).sort_values("seed").groupby(cols, sort=False):
            key = row_key(key[0], key[1:])
            got, why = [], ""
            for r in g.itertuples(index=False):
                o = outcomes.get((r.run_id, r.eval_dataset, r.subset))
                if o is None:
                    why = "no per-image predictions"
                    break
                n_right = int(o.correct.sum())
                if (not isnan(r.row_correct) and n_right != int(r.row_correct)) or (
                        isnan(r.row_correct) and abs(o.accuracy - float(r.accuracy)) > 1e-9):
                    why = "predictions do not match the row's accuracy"
                    break
                order = np.argsort(o.index, kind="stable")
                got.append(Outcome(o.index[order], o.label[order], o.pred[order], o.p_true[order], o.classnames))
            if not why and any(not np.array_equal(o.index, got[0].index) for o in got[1:]):
                why = "seeds tested on different images"
            if why:
                self.missing[key] = why
            else:
                self.cells[key] = Measured(tuple(int(s) for s in g["seed"]), got,
                                           accuracies=np.array([o.accuracy for o in got]))
        self._drawn = False

    def _draw_images(self) -> None:
        """One image draw per test set, shared by every evaluation on it (all seeds, all entries);
        made once, when the first replicate is asked for."""
        if self._drawn:
            return
        self._drawn = True
        groups: dict[tuple, list[tuple[Key, int]]] = {}
        for key, m in self.cells.items():
            ref = m.outcomes[0]
            test_set = (key[3], key[4], len(ref.index), ref.index.tobytes())
            groups.setdefault(test_set, []).extend((key, i) for i in range(len(m.seeds)))
        for test_set, members in groups.items():
            correct = np.stack([self.cells[k].outcomes[i].correct for k, i in members])
            reps = bootstrap.image_replicates(correct, test_set[:3], self.n_replicates)
            for col, (k, i) in enumerate(members):
                m = self.cells[k]
                if m.reps is None:
                    m.reps = np.empty((self.n_replicates, len(m.seeds)))
                m.reps[:, i] = reps[:, col]

    # ------------------------------------------------------------------ per cell

    def measured(self, c: Cell) -> Measured | None:
        k = cell_key(c)
        return self.cells.get(k) if k else None

    def _seeds(self, c: Cell, other: Cell | None) -> tuple[int, ...] | None:
        m = self.measured(c)
        if m is None:
            return None
        if other is None or not c.entry.seed_dependent or not other.entry.seed_dependent:
            return m.seeds
        o = self.measured(other)
        common = tuple(s for s in m.seeds if o is not None and s in o.seeds)
        return common or None

    def seeds_used(self, c: Cell, other: Cell | None = None) -> tuple[int, ...] | None:
        return self._seeds(c, other)

    def replicates(self, c: Cell, other: Cell | None = None) -> np.ndarray | None:
        """(replicates,) bootstrap values of ``c`` (paired with ``other``'s seeds when given)."""
        if c.derived and not c.combine:
            return None
        if c.combine:
            parts = [self.replicates(p, o) for p, o in zip(c.parts, other.parts if other is not None
                                                          else [None] * len(c.parts))]
            if not parts or any(p is None for p in parts):
                return None
            return bootstrap.hm(parts[0], parts[1]) if c.combine == "hm" else np.mean(parts, axis=0)
        seeds = self._seeds(c, other)
        if seeds is None:
            return None
        self._draw_images()
        m = self.measured(c)
        pos = [m.seeds.index(s) for s in seeds]
        draws = bootstrap.seed_draws(len(pos), (c.key[0], c.key[1], c.key[4], seeds), self.n_replicates)
        return bootstrap.seed_mean(m.reps[:, pos], draws)

    def point(self, c: Cell, other: Cell | None = None) -> float:
        """The cell's value on the seeds ``replicates`` uses (the table's value without ``other``)."""
        if c.derived and not c.combine:
            return float("nan")
        if c.combine:
            parts = [self.point(p, o) for p, o in zip(c.parts, other.parts if other is not None
                                                     else [None] * len(c.parts))]
            if not parts or any(isnan(p) for p in parts):
                return float("nan")
            return float(bootstrap.hm(np.array(parts[0]), np.array(parts[1]))) if c.combine == "hm" \
                else float(np.mean(parts))
        seeds = self._seeds(c, other)
        if seeds is None:
            return float("nan")
        m = self.measured(c)
        return float(np.mean([m.accuracies[m.seeds.index(s)] for s in seeds]))

    def why_missing(self, c: Cell) -> str:
        """Why ``c`` has no replicates ("" if it has)."""
        if c.derived and not c.combine:
            return "a derived number the bootstrap does not recompute"
        if c.combine:
            return next((w for w in (self.why_missing(p) for p in c.parts) if w), "")
        k = cell_key(c)
        if k is None or isnan(c.value):
            return "no result"
        return self.missing.get(k, "" if k in self.cells else "no per-image predictions")


def scheme_note(replicates: int) -> str:
    return (f"95 % intervals: percentile bootstrap, {replicates} replicates (seed {bootstrap.SEED}); each replicate "
            "resamples the test images (n of n with replacement, one draw per test set shared by every seed and "
            "method) and then the seeds (S of S with replacement; Base and New of a training share the draw); HM and "
            "Average are recomputed in every replicate. One seed: an interval over test images only.")


def attach(report: Report, samples: Samples) -> None:
    """``--ci``: an interval on every cell with predictions behind it; one note per table, and a
    report note naming what could not be shown."""
    missing: dict[str, set[str]] = {}
    for t in report.tables:
        for r in t.rows:
            for c in r.cells:
                if isnan(c.value) or c.entry is None:
                    continue
                c.ci = bootstrap.interval(samples.replicates(c))
                if c.ci is None:
                    missing.setdefault(samples.why_missing(c) or "no interval", set()).add(
                        f"{c.entry.label} on {c.dataset}")
        t.notes.append(scheme_note(samples.n_replicates))
    for why, where in sorted(missing.items()):
        names = sorted(where)
        more = f" and {len(names) - 6} more" if len(names) > 6 else ""
        report.notes.append(f"--ci: no interval for {', '.join(names[:6])}{more} ({why}: rows from before cpbench "
                            "stored predictions, a removed predictions file, or a protocol that stores none: "
                            "continual, retrieval; re-run such jobs with --force to get them)."
                            if why == "no per-image predictions" else
                            f"--ci: no interval for {', '.join(names[:6])}{more} ({why}).")
