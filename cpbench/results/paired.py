"""``cpbench report --compare-methods A B``: per dataset and for the Average, A, B and A − B on the
seeds both ran, the number of those seeds, the difference's 95 % interval and two-sided p (seed and
test-image parts combined: ``significance.py``), Holm-adjusted across the datasets of each field,
and McNemar's test combined over the seeds where one test set lies behind the cell (Base, New, a
target; not HM or an Average).

A and B are entry labels (``coop (epochs=2)``) or method names; a method name must stand for one
entry in each table it appears in (``--config-hash`` / ``--latest`` choose one). Both are
compared on the images and seeds they share: the same bootstrap draw of test images, and the seeds
both ran (a method whose result does not depend on the seed pairs with every seed). The A and B
columns are their means on those same seeds, so A − B is exactly their difference. With one shared
seed a difference is *untestable* against seed noise: no p, never "significant".
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cpbench.errors import UserError
from cpbench.results import intervals, significance
from cpbench.results.intervals import Samples
from cpbench.results.layouts import flag_fewer_seeds
from cpbench.results.significance import McNemar
from cpbench.results.table import Cell, Entry, Report, Row, Table, isnan

SIGNIFICANT = ("significant = two-sided p < 0.05 for A − B, from a t test whose standard error adds the "
               "seed-to-seed variation (from the seeds both ran, S − 1 degrees of freedom) and the test images' "
               "(bootstrap); per-dataset cells after Holm's correction across the datasets of each field, the "
               "Average without. n.s. = not significant: within seed and test-set noise. untestable (1 seed) = "
               "one shared seed cannot show seed noise: never called significant.")


def _resolve(name: str, entries: list[Entry]) -> list[Entry]:
    by_label = [e for e in entries if e.label == name]
    return by_label or [e for e in entries if e.method == name]


def check(names, entries: list[Entry]) -> tuple[str, str]:
    """The two names, refused before any bootstrap if they do not name entries of the report."""
    if len(names) != 2:
        raise UserError(f"--compare-methods takes two methods (A B: A − B is shown), got {len(names)}")
    a, b = names
    for n in names:
        if not _resolve(n, entries):
            known = ", ".join(sorted({e.label for e in entries}))
            raise UserError(f"--compare-methods: {n!r} is not a method or entry label of this report (it has: {known})")
    if set(_resolve(a, entries)) == set(_resolve(b, entries)):
        raise UserError("--compare-methods needs two different methods or entries")
    return a, b


def _pick(name: str, entries: list[Entry], where: str) -> Entry | None:
    hit = _resolve(name, entries)
    if len(hit) > 1:
        raise UserError(f"--compare-methods: {name!r} is {len(hit)} entries in {where} ("
                        + "; ".join(e.label for e in hit) + "); name one label, or keep one with --config-hash / --latest")
    return hit[0] if hit else None


def _cells_by_entry(t: Table) -> dict[str, dict[tuple[str, str], Cell]]:
    out: dict[str, dict[tuple[str, str], Cell]] = {}
    for r in t.rows:
        for c in r.cells:
            if c.entry is not None:
                out.setdefault(c.entry.key, {})[(c.dataset, c.field)] = c
    return out


def on_seeds(c: Cell, other: Cell) -> Cell:
    """``c`` on the seeds it shares with ``other`` (derived cells: their parts so), for the A and B
    columns: value, seed count, seeds, per-seed values and std on exactly those seeds."""
    value = intervals.point(c, other)
    if c.combine:
        parts = tuple(on_seeds(p, o) for p, o in zip(c.parts, other.parts))
        return replace(c, value=value, parts=parts, n=min((p.n for p in parts), default=0), flag=False, ci=None)
    seeds = intervals.seeds_used(c, other) or ()
    values = tuple(c.values[c.seeds.index(s)] for s in seeds)
    return replace(c, value=value, seeds=seeds, values=values, n=len(seeds), flag=False, ci=None,
                   std=float(np.std(values)) if values else float("nan"))


def _mcnemar(samples: Samples, a: Cell, b: Cell) -> McNemar | None:
    ma, mb = samples.measured(a), samples.measured(b)
    if a.combine or ma is None or mb is None:
        return None
    pairs = []
    for s in intervals.seeds_used(a, b) or ():
        if s not in ma.seeds:
            return None
        oa = ma.outcomes[ma.seeds.index(s)]
        ob = mb.outcomes[mb.seeds.index(s) if s in mb.seeds else 0]
        if not np.array_equal(oa.index, ob.index):
            return None
        pairs.append((s, oa.correct, ob.correct))
    return significance.mcnemar(pairs) if pairs else None


def _row(samples: Samples, ca: Cell, cb: Cell, label: Entry) -> list[Cell]:
    """[A, B, shared seeds, A − B] of one dataset and field."""
    a, b = on_seeds(ca, cb), on_seeds(cb, ca)
    est = samples.difference(ca, cb)
    d = Cell(a.value - b.value, derived=True, entry=label, dataset=ca.dataset, field=ca.field, shots=ca.shots,
             difference=True, paired=significance.test(est) if est is not None else None,
             mcnemar=_mcnemar(samples, ca, cb))
    if d.paired is not None:
        d.ci = (d.paired.low, d.paired.high)
    for own, orig, other in ((a, ca, cb), (b, cb, ca)):
        intervals.cell_interval(samples, orig, other, into=own)
    seeded = a if not a.seedless else b
    n = 0 if seeded.seedless else seeded.n
    seeds = Cell(float("nan") if seeded.seedless else float(n), digits=0, dataset=ca.dataset, field="shared seeds",
                 shots=ca.shots, n=n, derived=seeded.derived)
    d.n = n
    return [a, b, seeds, d]


def tables(report: Report, samples: Samples, names: tuple[str, str]) -> list[Table]:
    """One comparison table per protocol table holding both A and B."""
    out = []
    for t in report.tables:
        entries = list({c.entry.key: c.entry for r in t.rows for c in r.cells if c.entry is not None}.values())
        where = f"the {t.title.lower()} table ({t.key})"
        ea, eb = _pick(names[0], entries, where), _pick(names[1], entries, where)
        if ea is None or eb is None:
            continue
        cells = _cells_by_entry(t)
        label = Entry(key=f"{ea.key} − {eb.key}", method=f"{ea.method} − {eb.method}", label=f"{ea.label} − {eb.label}")
        rows, missing, skipped = [], set(), []
        for (dataset, fld), ca in cells[ea.key].items():
            cb = cells[eb.key].get((dataset, fld))
            where_ = f"{dataset} {fld}" if t.protocol == "base2new" else dataset
            if cb is None or isnan(ca.value) or isnan(cb.value):
                skipped.append(f"{where_} ({ea.label if isnan(ca.value) else eb.label} has no result)")
                continue
            row = _row(samples, ca, cb, label)
            d = row[-1]
            if d.paired is None and row[2].value != 0:  # (no shared seed: said in its own note)
                missing.add(samples.why_missing(ca) or samples.why_missing(cb) or "no common seeds")
            labels = (dataset, fld) if t.protocol == "base2new" else (dataset,)
            rows.append(Row(labels, row, average=dataset == "Average"))
        if not rows:
            continue
        _flag_shared_seeds(rows)
        for fld in dict.fromkeys(r.cells[-1].field for r in rows):
            significance.holm([r.cells[-1].paired for r in rows if not r.average and r.cells[-1].field == fld
                               and r.cells[-1].paired is not None])
        out.append(Table(t.protocol, f"Paired comparison, {PROTOCOL_NAMES.get(t.protocol, t.protocol)}: {label.label}",
                         ["Dataset", "Field"] if t.protocol == "base2new" else ["Dataset"],
                         [ea.label, eb.label, "shared seeds", label.label], rows,
                         notes=_notes(rows, label, missing, skipped), key=t.key, layout="long",
                         average_over=t.average_over, trained_on=t.trained_on, kind="compare"))
    if not out:
        raise UserError(f"--compare-methods {names[0]} {names[1]}: no table holds both; check --protocol/--datasets "
                        "and `cpbench report` for what each method ran")
    report.notes.append(SIGNIFICANT)  # one line, with the report's notes (on stderr with csv)
    return out


def _flag_shared_seeds(rows: list[Row]) -> None:
    """† on the A and B cells with fewer shared seeds than the table's other cells (derived ones:
    when one of their parts has), and on their shared-seeds cell."""
    flag_fewer_seeds([Row(r.labels, r.cells[:2]) for r in rows])
    for r in rows:
        r.cells[2].flag = any(c.flag for c in r.cells[:2])


def _notes(rows: list[Row], label: Entry, missing: set[str], skipped: list[str]) -> list[str]:
    notes = [f"{label.label}: A and B are their means on the seeds both ran (column shared seeds; a seed-independent "
             "method pairs with every seed of the other), so A − B is their difference; its 95 % interval and "
             "two-sided p combine the seed-to-seed variation (t with S − 1 degrees of freedom) and the test images' "
             "(paired bootstrap), as in cpbench/results/significance.py. Per-dataset cells: the p is Holm-adjusted "
             "across the datasets of each field (Holm p; the interval is the unadjusted 95 % one) and decides "
             "significant / n.s.; the Average is the primary result and is not adjusted. McNemar (Base, New, a "
             "target): one test combined over the seeds (Cochran–Mantel–Haenszel; images only A / only B gets "
             "right, summed over the seeds); it sees test-image noise only, not the seeds'. Intervals in the A and B "
             "columns: as --ci, on the shared seeds."]
    diffs = [r.cells[-1] for r in rows]
    if any(d.paired is not None and not d.paired.testable for d in diffs):
        notes.append("untestable against seed noise (1 seed): one shared seed cannot show how much another seed "
                     "would move the result, so no test is made; the bracket covers the test images only.")
    if any(r.cells[2].flag for r in rows):
        notes.append("† fewer shared seeds than the table's other cells (HM and Average: one of their parts has).")
    if any(isnan(r.cells[2].value) for r in rows):
        notes.append("shared seeds –: both results are seed-independent (one evaluation each).")
    if any(r.cells[2].value == 0 for r in rows):
        notes.append("A, B and A − B are – where the two share no seed (shared seeds 0): nothing to pair.")
    if skipped:
        notes.append("Not compared: " + "; ".join(skipped) + ".")
    if missing:
        notes.append(f"No test where {'; '.join(sorted(missing))}.")
    return notes


PROTOCOL_NAMES = {"base2new": "base-to-new", "cross_dataset": "cross-dataset", "dg": "domain generalisation",
                  "few_shot": "few-shot"}
