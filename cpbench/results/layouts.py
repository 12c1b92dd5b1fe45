"""Protocol tables from aggregated cells, in the papers' layouts.

- base2new (one table per shot count): Base and New are seed means, HM = 2·B·N/(B+N) of the
  means; the Average row averages Base and New over the datasets first and then takes their HM.
  ``wide``: rows are datasets, each entry a Base/New/HM column group. ``long`` (the papers'
  per-dataset sub-tables in one): one row per (dataset, entry), columns Base/New/HM. ``auto``
  picks ``long`` when the wide table would have more than ``WIDE_MAX_COLUMNS`` number columns.
- cross_dataset / dg (one table per source and shot count): rows are entries; columns the source,
  each target and the Average over the targets only.
- few_shot (one table per shot count): rows are entries; columns the datasets and their Average.

Entries (rows or column groups) follow the report's entry order; datasets follow the papers'
order (ImageNet, Caltech101, … UCF101, then the ImageNet variants), others alphabetically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from cpbench.protocols import registry
from cpbench.results.table import Cell, Entry, Row, Table, isnan

PROTOCOL_ORDER = registry.protocol_names()
PROTOCOL_TITLES = registry.titles()
LAYOUTS = ("auto", "wide", "long")
WIDE_MAX_COLUMNS = 12          # 4 entries × Base/New/HM
WIDE_MAX_COLUMNS_COMPARE = 6   # with --compare paper (or --ci) each cell is two to three times as wide


def dataset_order() -> tuple[str, ...]:
    from cpbench.data.specs import COOP_DATASETS, IMAGENET_VARIANTS

    return COOP_DATASETS + IMAGENET_VARIANTS


def order_datasets(names) -> list[str]:
    order = dataset_order()
    return sorted(set(names), key=lambda d: (order.index(d) if d in order else len(order), d))


def hm(b: float, n: float) -> float:
    if isnan(b) or isnan(n):
        return float("nan")
    return 0.0 if b + n == 0 else 2 * b * n / (b + n)


class Cells:
    """Aggregated cells by (entry, protocol, train_dataset, eval_dataset, subset, shots)."""

    def __init__(self, agg: pd.DataFrame, entries: dict[str, Entry]):
        self.entries = entries
        self.by_key: dict[tuple, object] = {}
        for r in agg.itertuples(index=False):
            key = (r.entry, r.protocol, r.train_dataset, r.eval_dataset, r.subset, int(r.shots), int(r.task),
                   int(r.n_tasks), r.class_order, int(r.recall_at))
            if key in self.by_key:  # entries are built so that this cannot happen (entries.overrides)
                raise RuntimeError(f"two configurations in one cell: {key}")
            self.by_key[key] = r

    def get(self, entry: Entry, protocol: str, train: str, eval_: str, subset: str, shots: int, field: str,
            task: int = 0, n_tasks: int = 0, class_order: str = "", recall_at: int = 0) -> Cell:
        key = (protocol, train, eval_, subset, int(shots), int(task), int(n_tasks), class_order, int(recall_at))
        r = self.by_key.get((entry.key, *key))
        c = Cell(entry=entry, dataset=eval_ if protocol != "base2new" else train, field=field, shots=int(shots),
                 key=key)
        if r is not None:
            c.value, c.std, c.n = float(r.mean), float(r.std), int(r.n_seeds)
            c.seeds, c.values, c.config_hash = tuple(r.seeds), tuple(r.values), r.config_hash
            c.versions = tuple(getattr(r, "versions", ()) or ())
        return c

    def why_missing(self, c: Cell) -> str:
        """Why a measured cell has no rows: another shot count, another subset, or the dataset."""
        protocol, train, eval_, subset, shots = c.key[:5]
        mine = [k for k in self.by_key if k[0] == c.entry.key and k[1:4] == (protocol, train, eval_)]
        where = eval_ if protocol == "base2new" or train == eval_ else f"{eval_} (trained on {train})"
        other_shots = sorted({k[5] for k in mine if k[5] != shots})
        if any(k[5] == shots for k in mine):
            return f"no {subset} rows for {where} at {shots} shots"
        if other_shots:
            return f"no {shots}-shot rows for {where} (it has {', '.join(map(str, other_shots))}-shot)"
        return f"no rows for {where}"


def _derived(value: float, parts: Sequence[Cell], entry: Entry, dataset: str, field: str, shots: int,
             combine: str = "") -> Cell:
    """A number computed from ``parts`` (its seed count: the fewest of theirs). ``combine="mean"``
    says it is their mean, so a bootstrap can recompute it (``intervals``)."""
    return Cell(value, derived=True, n=min((c.n for c in parts), default=0), entry=entry, dataset=dataset,
                field=field, shots=shots, combine=combine, parts=tuple(parts))


def _hm(b: Cell, n: Cell, entry: Entry, dataset: str, shots: int) -> Cell:
    return Cell(hm(b.value, n.value), derived=True, entry=entry, dataset=dataset, field="HM", shots=shots,
                combine="hm", parts=(b, n))


def _mean(cells: Sequence[Cell]) -> float:
    vals = [c.value for c in cells]
    return sum(vals) / len(vals) if vals and not any(isnan(v) for v in vals) else float("nan")


def _fewer(c: Cell, most: int) -> bool:
    """``c``, or a cell it is computed from, has fewer seeds than ``most`` (seed-dependent only)."""
    if c.derived:
        return any(_fewer(p, most) for p in c.parts)
    return not c.seedless and 0 < c.n < most


def flag_fewer_seeds(rows: list[Row]) -> tuple[int, bool, set[str]]:
    """Flags (†) measured cells with fewer seeds than the table's most (seed-dependent entries
    only) and every derived cell (HM, Average) computed from such a cell. Returns (the most seeds,
    whether any cell is flagged, labels of seed-independent entries left unflagged)."""
    cells = [c for r in rows for c in r.cells if not c.derived and c.n > 0]
    most = max((c.n for c in cells if not c.seedless), default=0)
    unflagged = {c.label for c in cells if c.seedless and c.n < most}
    flagged = False
    for r in rows:
        for c in r.cells:
            if not isnan(c.value) and _fewer(c, most):
                c.flag = flagged = True
    return most, flagged, unflagged


def dash_note(rows: list[Row], cells: Cells | None = None) -> str:
    """Why each "–" of the table is there (every cell of an entry without a value)."""
    measured: dict[str, list[str]] = {}
    derived = False
    for r in rows:
        for c in r.cells:
            if c.entry is None or not isnan(c.value):
                continue
            if c.derived:
                derived = True
            elif c.key:
                why = cells.why_missing(c) if cells is not None else f"no rows for {c.dataset} {c.field}"
                measured.setdefault(c.label, [])
                if why not in measured[c.label]:
                    measured[c.label].append(why)
    if not measured and not derived:
        return ""
    parts = [f"{label}: {'; '.join(why)}" for label, why in measured.items()]
    text = "– = no result" + (": " + ". ".join(parts) + "." if parts else ":")
    if derived:
        text += (" HM, averages and other derived numbers are – where one of their parts is (or, like the "
                 "forgetting of one task, where they are not defined).")
    return text


def versions_note(rows: list[Row]) -> str:
    """Names the cells whose rows come from different cpbench versions."""
    mixed = [f"{c.label} on {c.dataset} {c.field} ({', '.join(c.versions)})" for r in rows for c in r.cells
             if not c.derived and len(c.versions) > 1]
    if not mixed:
        return ""
    more = f" and {len(mixed) - 6} more" if len(mixed) > 6 else ""
    return ("Rows of different cpbench versions in one cell: " + "; ".join(mixed[:6]) + more
            + " (and the HM and averages built on them).")


def _flag_and_notes(rows: list[Row], extra: str, cells: Cells | None = None) -> list[str]:
    """Flags cells with fewer seeds (``flag_fewer_seeds``); the table's notes: ``extra``, seeds,
    what † means, why each "–", and cells that mix cpbench versions."""
    most, flagged, unflagged = flag_fewer_seeds(rows)
    notes = [extra, f"Mean over seeds ± population std (ddof=0); seeds per cell: up to {most}."]
    if flagged:
        notes.append("† fewer seeds than the other cells (HM and averages: one of their parts has).")
    if unflagged:
        notes.append(f"{', '.join(sorted(unflagged))}: the result does not depend on the seed (never flagged).")
    return notes + [n for n in (dash_note(rows, cells), versions_note(rows)) if n]


def base2new_tables(cells: Cells, agg: pd.DataFrame, entries: list[Entry], layout: str = "auto",
                    compare: bool = False, ci: bool = False) -> list[Table]:
    a = agg[agg["protocol"] == "base2new"]
    tables = []
    for shots, g in a.groupby("shots", sort=True):
        shots = int(shots)
        ents = [e for e in entries if e.key in set(g["entry"])]
        datasets = order_datasets(g["train_dataset"])
        grid: dict[tuple[str, str], list[Cell]] = {}
        for e in ents:
            for d in datasets:
                b, n = (cells.get(e, "base2new", d, d, s, shots, f) for s, f in (("base", "Base"), ("new", "New")))
                grid[(e.key, d)] = [b, n, _hm(b, n, e, d, shots)]
            per = [grid[(e.key, d)] for d in datasets]
            ab = _derived(_mean([p[0] for p in per]), [p[0] for p in per], e, "Average", "Base", shots, "mean")
            an = _derived(_mean([p[1] for p in per]), [p[1] for p in per], e, "Average", "New", shots, "mean")
            grid[(e.key, "Average")] = [ab, an, _hm(ab, an, e, "Average", shots)]
        limit = WIDE_MAX_COLUMNS_COMPARE if compare or ci else WIDE_MAX_COLUMNS
        chosen = layout if layout != "auto" else ("wide" if 3 * len(ents) <= limit else "long")
        if chosen == "wide":
            rows = [Row((d,), [c for e in ents for c in grid[(e.key, d)]], average=d == "Average")
                    for d in datasets + ["Average"]]
            t = Table("base2new", PROTOCOL_TITLES["base2new"], ["Dataset"],
                      [f"{e.label} {f}" for e in ents for f in ("Base", "New", "HM")], rows,
                      groups=[(e.label, 3) for e in ents])
        else:
            rows = [Row((d, e.label), grid[(e.key, d)], average=d == "Average") for d in datasets + ["Average"]
                    for e in ents]
            t = Table("base2new", PROTOCOL_TITLES["base2new"], ["Dataset", "Method"], ["Base", "New", "HM"], rows)
        t.key, t.layout, t.average_over = f"{shots}-shot", chosen, tuple(datasets)
        t.notes = _flag_and_notes(rows, "Base/New: seed means; HM = 2·B·N/(B+N) of the means; Average: Base and New "
                                  "averaged over the datasets, HM of those averages (not the mean of per-dataset HMs).",
                                  cells)
        if layout == "auto" and chosen == "long":
            t.notes.append(f"Layout: one row per dataset and method ({len(ents)} methods × Base/New/HM would be "
                           f"{3 * len(ents)} columns); --layout wide keeps the dataset × method grid.")
        tables.append(t)
    return tables


def _entry_rows(g: pd.DataFrame, entries: list[Entry], columns: list[str],
                cell: Callable[[Entry, str], Cell]) -> list[Row]:
    """One row per entry present in ``g``, one cell per column (the caller appends the Average)."""
    present = set(g["entry"])
    return [Row((e.label,), [cell(e, d) for d in columns]) for e in entries if e.key in present]


def transfer_tables(cells: Cells, agg: pd.DataFrame, entries: list[Entry], protocol: str,
                    targets_order: tuple[str, ...]) -> list[Table]:
    a = agg[agg["protocol"] == protocol]
    tables = []
    for (source, shots), g in a.groupby(["train_dataset", "shots"], sort=True):
        shots = int(shots)
        targets = sorted(set(g["eval_dataset"]) - {source},
                         key=lambda d: (targets_order.index(d) if d in targets_order else len(targets_order), d))
        rows = _entry_rows(g, entries, [source] + targets,
                           lambda e, d: cells.get(e, protocol, source, d, "all", shots, "accuracy"))
        for r in rows:
            r.cells.append(_derived(_mean(r.cells[1:]), r.cells[1:], r.cells[0].entry, "Average", "accuracy", shots,
                                    "mean"))
        note = (f"Trained on {source} (all classes, {shots} shots); Average over the {len(targets)} target(s), "
                "source excluded." + (" ImageNet-A/R: 200-class problems, logits gathered from the source class bank."
                                      if protocol == "dg" else ""))
        tables.append(Table(protocol, PROTOCOL_TITLES[protocol], ["Method"],
                            [f"{source} (source)"] + targets + ["Average"], rows,
                            notes=_flag_and_notes(rows, note, cells),
                            key=f"{source}, {shots}-shot", average_over=tuple(targets), trained_on=source))
    return tables


def few_shot_tables(cells: Cells, agg: pd.DataFrame, entries: list[Entry]) -> list[Table]:
    a = agg[agg["protocol"] == "few_shot"]
    tables = []
    datasets = order_datasets(a["train_dataset"])
    for shots, g in a.groupby("shots", sort=True):
        shots = int(shots)
        rows = _entry_rows(g, entries, datasets,
                           lambda e, d: cells.get(e, "few_shot", d, d, "all", shots, "accuracy"))
        for r in rows:
            r.cells.append(_derived(_mean(r.cells), list(r.cells), r.cells[0].entry, "Average", "accuracy", shots,
                                    "mean"))
        tables.append(Table("few_shot", PROTOCOL_TITLES["few_shot"], ["Method"], datasets + ["Average"], rows,
                            notes=_flag_and_notes(rows, f"{shots} shots per class, all classes; Average over the "
                                                        "datasets.", cells),
                            key=f"{shots}-shot", average_over=tuple(datasets)))
    return tables
