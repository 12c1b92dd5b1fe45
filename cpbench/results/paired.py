"""``cpbench report --compare-methods A B``: per dataset and for the Average, the difference A − B
with its 95 % paired-bootstrap interval, the two-sided bootstrap p, and McNemar's exact test per
seed where one test set lies behind the cell (Base, New, a target; not HM or an Average).

A and B are entry labels (``coop (epochs=2)``) or method names; a method name must stand for one
entry in each table it appears in (``--config-hash`` / ``--latest`` choose one). Both are
compared on the images and seeds they share: the same bootstrap draw of test images, and of the
seeds both ran (a method whose result does not depend on the seed pairs with every seed).
"""

from __future__ import annotations

from dataclasses import replace

from cpbench.errors import UserError
from cpbench.results import bootstrap
from cpbench.results.intervals import Samples
from cpbench.results.table import Cell, Entry, Report, Row, Table, isnan

SIGNIFICANT = ("significant = the 95 % paired-bootstrap interval of the difference excludes 0 (test images and seeds "
               "resampled together for both methods, two-sided p < 0.05); n.s. = not significant: the difference is "
               "within seed and test-set noise.")


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


def _difference(samples: Samples, a: Cell, b: Cell, label: Entry) -> Cell:
    delta = samples.point(a, b) - samples.point(b, a)
    d = Cell(delta, derived=True, entry=label, dataset=a.dataset, field=a.field, shots=a.shots, difference=True)
    ra, rb = samples.replicates(a, b), samples.replicates(b, a)
    if ra is not None and rb is not None:
        d.paired = bootstrap.paired(delta, ra - rb)
        d.ci = (d.paired.low, d.paired.high) if d.paired else None
    ma, mb = samples.measured(a), samples.measured(b)
    if not a.combine and ma is not None and mb is not None:
        seeds = samples.seeds_used(a, b) or ()
        tests = []
        for s in seeds:
            oa = ma.outcomes[ma.seeds.index(s)]
            ob = mb.outcomes[mb.seeds.index(s) if s in mb.seeds else 0]
            tests.append(bootstrap.mcnemar(s, oa.correct, ob.correct))
        d.mcnemar = tuple(tests)
    d.n = len(samples.seeds_used(a, b) or ()) if not a.combine else 0
    return d


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
        rows, missing = [], set()
        for (dataset, fld), ca in cells[ea.key].items():
            cb = cells[eb.key].get((dataset, fld))
            if cb is None or isnan(ca.value) or isnan(cb.value):
                continue
            d = _difference(samples, ca, cb, label)
            if d.paired is None:
                missing.add(samples.why_missing(ca) or samples.why_missing(cb) or "no common seeds")
            labels = (dataset, fld) if t.protocol == "base2new" else (dataset,)
            own = [replace(c, flag=False, ci=bootstrap.interval(samples.replicates(c))) for c in (ca, cb)]
            rows.append(Row(labels, [*own, d], average=dataset == "Average"))
        if not rows:
            continue
        notes = [f"{label.label}: the difference of the means on the seeds both ran, its 95 % paired-bootstrap "
                 "interval and two-sided p; McNemar: exact binomial test per seed on the test images exactly one of "
                 "the two classifies correctly (counts A-only/B-only), for cells with one test set (not HM or "
                 "Average). Intervals in the A and B columns: each method's own bootstrap (as --ci)."]
        if missing:
            notes.append(f"No test where {'; '.join(sorted(missing))}.")
        out.append(Table(t.protocol, f"Paired comparison, {PROTOCOL_NAMES.get(t.protocol, t.protocol)}: {label.label}",
                         ["Dataset", "Field"] if t.protocol == "base2new" else ["Dataset"],
                         [ea.label, eb.label, label.label], rows, notes=notes, key=t.key, layout="long",
                         average_over=t.average_over, trained_on=t.trained_on, kind="compare"))
    if not out:
        raise UserError(f"--compare-methods {names[0]} {names[1]}: no table holds both; check --protocol/--datasets "
                        "and `cpbench report` for what each method ran")
    report.notes.append(SIGNIFICANT)  # one line, with the report's notes (on stderr with csv)
    return out


PROTOCOL_NAMES = {"base2new": "base-to-new", "cross_dataset": "cross-dataset", "dg": "domain generalisation",
                  "few_shot": "few-shot"}
