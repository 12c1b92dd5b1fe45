"""The report's data model: what every renderer (markdown, csv, latex, html, json), the plots and
any later view (confidence intervals, paired comparisons, leaderboards) read. No pandas, no
formatting here.

- ``Entry``: one comparable set of rows: a method under one backbone (name, pretrained tag,
  weights file), one configuration and one origin (trained by cpbench, or imported). Rows of two
  entries never share a cell. ``label`` is what tables print (``coop``, ``coop (epochs=2)``).
- ``Cell``: one number of a table: a seed mean (with its std, seed list and per-seed values),
  or a derived number (HM, an Average) computed from seed means. With ``--compare paper`` it
  also holds the published number of the same setting, its provenance label and the delta.
  A measured cell knows its rows (``key``); a derived cell knows its ``parts`` and how it
  combines them (``combine``: ``hm`` or ``mean``), so intervals can recompute it per bootstrap
  replicate. With ``--ci`` it holds its 95 % interval and what the interval covers (``ci_kind``,
  ``significance.py``); in a paired comparison (``--compare-methods``) a difference cell also holds
  the paired test (``paired``) and McNemar's test combined over the seeds.
- ``Row``: one or more row labels (``("dtd",)`` or ``("dtd", "coop")`` in the long layout) and
  its cells, one per column.
- ``Table``: one protocol table (per shot count / source), its columns, optional column
  groups (one per entry in the wide base-to-new layout) and its notes.
- ``Report``: the tables plus report-level notes (which configurations the labels stand for,
  what a selection kept, what ``--compare paper`` compared and why not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cpbench.results.significance import p_record


def isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


@dataclass(frozen=True)
class Entry:
    key: str                                 # identity (JSON of the fields below + the setting)
    method: str
    backbone: str = ""
    pretrained: str = ""
    weights: str = ""                        # a local checkpoint given with --weights ("" = none)
    imported: str = ""                       # "" = trained by cpbench; else KIND:IDENTITY
    precision: str = ""                      # the rows' effective precision ("" = rows without the column)
    shots_from: str = ""                     # "dassl-pkl": trained on CoOp's few-shot files, other images
    overrides: tuple[tuple[str, str], ...] = ()  # settings that differ from the method's defaults
    known_config: bool = True                # False: rows without a readable config (old shards)
    config_hashes: tuple[str, ...] = ()      # the rows' config hashes (one per per-dataset default)
    seed_dependent: bool = True              # False: the method's result does not depend on the seed
    label: str = ""

    @property
    def backbone_label(self) -> str:
        name = self.backbone + (f"/{self.pretrained}" if self.pretrained and self.pretrained != "none" else "")
        return name + (f" weights={self.weights.replace(chr(92), '/').rsplit('/', 1)[-1]}" if self.weights else "")


@dataclass
class Cell:
    value: float = float("nan")     # percent; seed mean, or derived (HM, Average)
    std: float = float("nan")       # population std over seeds (ddof=0, as CoOp's parse_test_res)
    n: int = 0                      # seeds behind the mean (derived: the fewest of its parts)
    seeds: tuple[int, ...] = ()     # which seeds, sorted
    values: tuple[float, ...] = ()  # per-seed accuracies, in ``seeds`` order
    flag: bool = False              # fewer seeds than the table's most (seed-dependent entries only)
    derived: bool = False           # HM / averages: computed from means, no std of their own
    entry: Entry | None = None
    dataset: str = ""               # a dataset name or "Average"
    field: str = "accuracy"         # Base | New | HM for base2new, else accuracy
    shots: int = 16
    config_hash: str = ""           # of the rows behind the cell ("" for derived cells)
    paper: float | None = None      # the published number of the same setting (--compare paper)
    provenance: str = ""            # its reader label, e.g. "authors' README" (legend in the notes)
    key: tuple = ()                 # measured: (protocol, train_dataset, eval_dataset, subset, shots) of its rows
    combine: str = ""               # derived: "hm" (of parts[0], parts[1]) or "mean" (of parts)
    parts: tuple = ()               # derived: the cells it is computed from
    ci: tuple[float, float] | None = None  # --ci: 95 % interval (cpbench/results/significance.py)
    ci_kind: str = ""               # significance.SEEDS | IMAGES | ONE_SEED (image-only: one seed)
    paired: object | None = None    # a difference A − B: significance.Paired (interval, p, Holm p, verdict)
    mcnemar: object | None = None   # a difference A − B of one test set: significance.McNemar over its seeds
    versions: tuple[str, ...] = ()  # the cpbench versions of the rows behind a measured cell
    difference: bool = False        # a difference A − B (printed signed)
    digits: int = 2                 # decimals printed (0 for counts)

    @property
    def method(self) -> str:
        return self.entry.method if self.entry else ""

    @property
    def label(self) -> str:
        return self.entry.label if self.entry else ""

    @property
    def seedless(self) -> bool:
        return self.entry is not None and not self.entry.seed_dependent

    @property
    def delta(self) -> float | None:
        if self.paper is None or isnan(self.value):
            return None
        return self.value - self.paper


@dataclass
class Row:
    labels: tuple[str, ...]
    cells: list[Cell]
    average: bool = False           # an Average row (printed bold)


@dataclass
class Table:
    protocol: str
    title: str
    row_header: list[str]                   # one name per row-label column
    columns: list[str]
    rows: list[Row]
    groups: list[tuple[str, int]] = field(default_factory=list)  # column groups (label, span)
    notes: list[str] = field(default_factory=list)
    key: str = ""                           # e.g. "16-shot", "imagenet, 16-shot"
    layout: str = ""                        # base2new: wide | long; others: "" (entries are rows)
    average_over: tuple[str, ...] = ()      # the datasets the Average row/column averages
    trained_on: str = ""                    # cross_dataset / dg: the source dataset
    kind: str = ""                          # "" (a protocol table) | compare | per_class | confusions | cost


@dataclass
class Report:
    tables: list[Table]
    notes: list[str] = field(default_factory=list)


RECORD_FIELDS = ["protocol", "table", "entry", "method", "backbone", "pretrained", "weights", "imported", "dataset",
                 "field", "shots", "mean", "std", "n_seeds", "seeds", "values", "fewer_seeds", "seedless", "derived",
                 "config_hash", "paper", "provenance", "delta", "kind", "ci_low", "ci_high", "p_value", "significant",
                 # issue 26 (appended, so that earlier columns keep their places)
                 "precision", "ci_kind", "test", "df", "p_adjusted", "mcnemar_p", "mcnemar_a_only", "mcnemar_b_only"]


def record(t: Table, c: Cell) -> dict:
    """One cell as a flat record (the csv/json row; the same in every layout). A p value known only
    as a bound (no bootstrap replicate crossed 0) is the text ``"< 0.001"``, never 0."""
    e = c.entry or Entry(key="", method="")
    p, m = c.paired, c.mcnemar
    return {"protocol": t.protocol, "table": t.key, "entry": e.label, "method": e.method, "backbone": e.backbone,
            "pretrained": e.pretrained, "weights": e.weights, "imported": e.imported, "precision": e.precision,
            "dataset": c.dataset, "field": c.field, "shots": c.shots, "mean": None if isnan(c.value) else c.value,
            "std": None if (c.derived or isnan(c.std)) else c.std, "n_seeds": c.n, "seeds": list(c.seeds),
            "values": list(c.values), "fewer_seeds": c.flag, "seedless": c.seedless, "derived": c.derived,
            "config_hash": c.config_hash, "paper": c.paper, "provenance": c.provenance or None, "delta": c.delta,
            "kind": t.kind, "ci_low": c.ci[0] if c.ci else None, "ci_high": c.ci[1] if c.ci else None,
            "ci_kind": c.ci_kind or None, "test": p.kind if p else None,
            "df": p.df if p and p.p is not None and math.isfinite(p.df) else None,
            "p_value": p_record(p.p, p.p_floor) if p else None,
            "p_adjusted": p_record(p.p_adjusted, p.adjusted_floor) if p else None,
            "significant": p.significant if p else None, "mcnemar_p": p_record(m.p, m.p_floor) if m else None,
            "mcnemar_a_only": m.a_only if m else None, "mcnemar_b_only": m.b_only if m else None}


def records(tables: list[Table]) -> list[dict]:
    return [record(t, c) for t in tables for r in t.rows for c in r.cells]
