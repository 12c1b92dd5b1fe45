"""The report's cells with their per-image predictions behind them: the two error parts of every
cell (measured and derived), the ``--ci`` intervals, and what cannot be shown.

``Samples`` maps each measured cell (an entry and the cell's rows: protocol, training dataset,
evaluation dataset, subset, shots) to its per-seed outcomes (``predictions.Outcome``), checked
against the rows (same number of correct images). ``estimate(cell)`` gives the cell's value with
its test-image part (the bootstrap of ``bootstrap.py``, one shared image draw per test set for
all evaluations on it, the seeds held fixed; a derived cell, HM or an Average, recomputed from its
parts per replicate) and its seed part (the delta-method pseudo-values of ``significance.py``).
``estimate(a, b)`` and ``difference(a, b)`` restrict both to their common seeds (paired seed by
seed) unless one of them does not depend on the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cpbench.results import bootstrap, significance
from cpbench.results.entries import CELL
from cpbench.results.predictions import Outcome
from cpbench.results.significance import IMAGES_ONLY, Estimate
from cpbench.results.table import Cell, Report, isnan

Key = tuple  # (entry key, *entries.CELL): protocol, train/eval dataset, subset, shots, task, n_tasks, ...
INT_FIELDS = {"shots", "task", "n_tasks", "recall_at"}


def cell_key(c: Cell) -> Key | None:
    return (c.entry.key, *c.key) if c.key and c.entry is not None else None


def row_key(entry: str, values) -> Key:
    """The key of a group of rows (``entry`` and the ``CELL`` columns), typed as ``Cell.key``."""
    return (entry, *(int(v) if f in INT_FIELDS else v for f, v in zip(CELL, values)))


def seeds_used(c: Cell, other: Cell | None = None) -> tuple[int, ...] | None:
    """The seeds behind a measured cell: its own, or (paired with ``other``) those both ran, unless
    one of them does not depend on the seed (it then pairs with every seed of the other)."""
    if not c.seeds:
        return None
    if other is None or c.seedless or other.seedless:
        return c.seeds
    common = tuple(s for s in c.seeds if s in other.seeds)
    return common or None


def _pairs(c: Cell, other: Cell | None) -> list[tuple[Cell, Cell | None]]:
    return list(zip(c.parts, other.parts if other is not None else [None] * len(c.parts)))


def point(c: Cell, other: Cell | None = None) -> float:
    """The cell's value from its rows' per-seed values, on the seeds ``seeds_used`` gives (the
    table's value without ``other``); HM and Averages recomputed from their parts."""
    if c.derived and not c.combine:
        return float("nan")
    if c.combine:
        parts = [point(p, o) for p, o in _pairs(c, other)]
        if not parts or any(isnan(p) for p in parts):
            return float("nan")
        return float(bootstrap.hm(np.array(parts[0]), np.array(parts[1]))) if c.combine == "hm" \
            else float(np.mean(parts))
    seeds = seeds_used(c, other)
    if seeds is None:
        return float("nan")
    return float(np.mean([c.values[c.seeds.index(s)] for s in seeds]))


@dataclass
class Measured:
    seeds: tuple[int, ...]
    outcomes: list[Outcome]                  # per seed, sorted by image index
    reps: np.ndarray | None = None           # (replicates, seeds) per-seed accuracies
    accuracies: np.ndarray = field(default_factory=lambda: np.zeros(0))


# rows read from the official scripts' logs (cpbench import-logs): their predictions never existed
LOGS = "accuracies imported from the official logs, which hold no per-image predictions"


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
                    why = (LOGS if str(getattr(r, "imported", "") or "").startswith("dassl-log:")
                           else "no per-image predictions")
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

    def image_replicates(self, c: Cell, other: Cell | None = None) -> np.ndarray | None:
        """(replicates,) values of ``c`` over the image bootstrap, its seeds held fixed (paired with
        ``other``'s seeds when given); HM and Averages recomputed per replicate."""
        if c.derived and not c.combine:
            return None
        if c.combine:
            parts = [self.image_replicates(p, o) for p, o in _pairs(c, other)]
            if not parts or any(p is None for p in parts):
                return None
            return bootstrap.hm(parts[0], parts[1]) if c.combine == "hm" else np.mean(parts, axis=0)
        seeds = seeds_used(c, other)
        if seeds is None:
            return None
        m = self.measured(c)
        if m is None or any(s not in m.seeds for s in seeds):
            return None
        self._draw_images()
        return m.reps[:, [m.seeds.index(s) for s in seeds]].mean(axis=1)

    def _terms(self, c: Cell, other: Cell | None, w: float) -> list[tuple[float, Cell, tuple[int, ...]]]:
        """The delta-method linearisation of ``c`` in its measured cells' seed means: (weight, cell,
        seeds used) of every seed-dependent measured cell behind it (significance.py)."""
        if c.combine == "mean":
            return [t for p, o in _pairs(c, other) for t in self._terms(p, o, w / len(c.parts))]
        if c.combine == "hm":
            (pb, ob), (pn, on) = _pairs(c, other)
            b, n = point(pb, ob), point(pn, on)
            gb, gn = (2 * n * n / (b + n) ** 2, 2 * b * b / (b + n) ** 2) if b + n > 0 else (0.0, 0.0)
            return self._terms(pb, ob, w * gb) + self._terms(pn, on, w * gn)
        if c.seedless:
            return []
        return [(w, c, seeds_used(c, other))]

    @staticmethod
    def _seed_groups(terms) -> list[np.ndarray]:
        """Pseudo-values per group of cells trained together (one training per seed: protocol,
        training dataset, shots; continual: task count and class order), on the seeds every cell of
        the group has. Weights of A's and B's cells of one group add up seed by seed (paired)."""
        groups: dict[tuple, list] = {}
        for w, c, seeds in terms:
            groups.setdefault((c.key[0], c.key[1], c.key[4], c.key[6], c.key[7]), []).append((w, c, seeds))
        out = []
        for members in groups.values():
            common = sorted(set.intersection(*(set(s) for _, _, s in members)))
            if not common:  # no seed every cell of the training has: its seed part cannot be estimated
                out.append(np.zeros(1))
                continue
            y = np.zeros(len(common))
            for w, c, _ in members:
                y += w * np.array([c.values[c.seeds.index(s)] for s in common])
            out.append(y)
        return out

    def _estimate(self, value: float, images: np.ndarray | None, terms) -> Estimate | None:
        if images is None or isnan(value):
            return None
        var, term, fewest = significance.seed_part(self._seed_groups(terms))
        return Estimate(value, images, var, term, fewest)

    def estimate(self, c: Cell, other: Cell | None = None) -> Estimate | None:
        """``c`` (on the seeds it shares with ``other`` when given) with its image and seed parts."""
        if c.derived and not c.combine:
            return None
        return self._estimate(point(c, other), self.image_replicates(c, other), self._terms(c, other, 1.0))

    def difference(self, a: Cell, b: Cell) -> Estimate | None:
        """A − B on the seeds both ran: image replicates paired image by image, seed terms seed by seed."""
        ra, rb = self.image_replicates(a, b), self.image_replicates(b, a)
        if ra is None or rb is None:
            return None
        return self._estimate(point(a, b) - point(b, a), ra - rb,
                              self._terms(a, b, 1.0) + self._terms(b, a, -1.0))

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


def scheme_note(replicates: int, one_seed: bool) -> str:
    return (f"95 % intervals (cpbench/results/significance.py): the test images' part from a bootstrap ({replicates} "
            f"replicates, seed {bootstrap.SEED}; n of n images with replacement, one draw per test set shared by every "
            "seed and method, HM and Average recomputed in every replicate) plus the seeds' part from the spread of "
            "the per-seed values (S − 1 degrees of freedom; Base and New of a training together), combined as "
            "value ± t·sqrt(seed² + images²) with Welch–Satterthwaite degrees of freedom; it covers what another "
            "set of seeds and another test sample would give. Seed-independent methods: the bootstrap's percentile "
            "interval." + (f" {IMAGES_ONLY} one seed: the seed-to-seed variation cannot be estimated, so the interval "
                           "covers the test images only (too narrow for a new training)." if one_seed else ""))


def cell_interval(samples: Samples, c: Cell, other: Cell | None = None, into: Cell | None = None) -> None:
    """Sets the interval of ``c`` (``ci``, ``ci_kind``; on ``into`` when given) from ``samples``,
    paired with ``other``'s seeds when given."""
    est = samples.estimate(c, other)
    into = c if into is None else into
    into.ci = significance.interval(est)
    into.ci_kind = est.kind if into.ci is not None else ""


def attach(report: Report, samples: Samples) -> None:
    """``--ci``: an interval on every cell with predictions behind it; one note per table, and a
    report note naming what could not be shown."""
    missing: dict[str, set[str]] = {}
    for t in report.tables:
        for r in t.rows:
            for c in r.cells:
                if isnan(c.value) or c.entry is None:
                    continue
                cell_interval(samples, c)
                if c.ci is None:
                    missing.setdefault(samples.why_missing(c) or "no interval", set()).add(
                        f"{c.entry.label} on {c.dataset}")
        t.notes.append(scheme_note(samples.n_replicates, any(c.ci_kind == significance.ONE_SEED
                                                             for r in t.rows for c in r.cells)))
    for why, where in sorted(missing.items()):
        names = sorted(where)
        more = f" and {len(names) - 6} more" if len(names) > 6 else ""
        report.notes.append(f"--ci: no interval for {', '.join(names[:6])}{more} ({why}: rows from before cpbench "
                            "stored predictions, a removed predictions file, or a protocol that stores none: "
                            "continual, retrieval; re-run such jobs with --force to get them)."
                            if why == "no per-image predictions" else
                            f"--ci: no interval for {', '.join(names[:6])}{more} ({why}).")
