"""Tables from results rows, computed as the papers do.

- Per dataset: Base and New are means over seeds; HM = 2·B·N/(B+N) of those means.
- Average row: average Base and New over datasets first, then their HM (not the mean of HMs).
- Std is the population std over seeds (ddof=0, as CoOp's parse_test_res); cells with fewer
  seeds than the most seen for that table are flagged.
"""

from __future__ import annotations

import math

import pandas as pd

GROUP = ["protocol", "method", "backbone", "pretrained", "train_dataset", "eval_dataset", "subset", "shots",
         # continual (the task evaluated after, of how many, in which class order) and retrieval (K);
         # null for the other protocols
         "task", "n_tasks", "class_order", "recall_at"]


def hm(b: float, n: float) -> float:
    if b is None or n is None or (isinstance(b, float) and math.isnan(b)) or (isinstance(n, float) and math.isnan(n)):
        return float("nan")
    return 0.0 if b + n == 0 else 2 * b * n / (b + n)


def latest_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, seed, config): re-runs (``--force``) replace earlier rows."""
    if df.empty:
        return df
    df = df.assign(**{c: None for c in GROUP if c not in df.columns})  # shards from before a column existed
    df = df.sort_values("finished_at")
    return df.drop_duplicates(subset=GROUP + ["seed", "config_hash"], keep="last")


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    df = latest_rows(df)
    if df.empty:
        return pd.DataFrame(columns=GROUP + ["mean", "std", "n_seeds", "seeds"])
    g = df.groupby(GROUP, dropna=False)
    out = g["accuracy"].agg(mean="mean", std=lambda s: float(s.std(ddof=0)), n_seeds="count").reset_index()
    out["seeds"] = g["seed"].agg(lambda s: ",".join(str(x) for x in sorted(s))).values
    return out


def base2new_table(agg: pd.DataFrame) -> tuple[pd.DataFrame, list[str], int]:
    """Rows: datasets + Average; per method: Base, New, HM (+ std and seed counts)."""
    a = agg[agg["protocol"] == "base2new"]
    methods = sorted(a["method"].unique())
    datasets = sorted(a["train_dataset"].unique())
    max_seeds = int(a["n_seeds"].max()) if not a.empty else 0
    records = []
    for d in datasets:
        rec = {"dataset": d}
        for m in methods:
            for subset, col in (("base", "Base"), ("new", "New")):
                hit = a[(a.method == m) & (a.train_dataset == d) & (a.subset == subset)]
                if hit.empty:
                    rec[(m, col)] = float("nan"); rec[(m, col + "_std")] = float("nan"); rec[(m, col + "_n")] = 0
                else:
                    r = hit.iloc[0]
                    rec[(m, col)] = r["mean"]; rec[(m, col + "_std")] = r["std"]; rec[(m, col + "_n")] = int(r["n_seeds"])
            rec[(m, "HM")] = hm(rec[(m, "Base")], rec[(m, "New")])
        records.append(rec)
    avg = {"dataset": "Average"}
    for m in methods:
        bs = [r[(m, "Base")] for r in records]
        ns = [r[(m, "New")] for r in records]
        complete = not any(math.isnan(x) for x in bs + ns)
        avg[(m, "Base")] = sum(bs) / len(bs) if complete and bs else float("nan")
        avg[(m, "New")] = sum(ns) / len(ns) if complete and ns else float("nan")
        avg[(m, "HM")] = hm(avg[(m, "Base")], avg[(m, "New")])
        for col in ("Base", "New"):
            avg[(m, col + "_std")] = float("nan")
            avg[(m, col + "_n")] = min((r[(m, col + "_n")] for r in records), default=0)
    records.append(avg)
    index = [r.pop("dataset") for r in records]
    table = pd.DataFrame(records, index=pd.Index(index, name="dataset"))
    if len(table.columns):
        table.columns = pd.MultiIndex.from_tuples(table.columns, names=["method", "field"])
    return table, methods, max_seeds


def _fmt(x: float, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def base2new_markdown(agg: pd.DataFrame, show_std: bool = True) -> str:
    table, methods, max_seeds = base2new_table(agg)
    if table.empty or not methods:
        return "_no base-to-new results_\n"
    header = ["Dataset"]
    for m in methods:
        header += [f"{m} Base", f"{m} New", f"{m} HM"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (3 * len(methods))) + "|"]
    flagged = False
    for dataset, r in table.iterrows():
        cells = [f"**{dataset}**" if dataset == "Average" else str(dataset)]
        for m in methods:
            for col in ("Base", "New"):
                cell = _fmt(r[(m, col)])
                std = r[(m, col + "_std")]
                if show_std and not (isinstance(std, float) and math.isnan(std)) and r[(m, col + "_n")] > 1:
                    cell += f" ± {std:.2f}"
                if 0 < r[(m, col + "_n")] < max_seeds:
                    cell += " †"
                    flagged = True
                cells.append(cell)
            cells.append(_fmt(r[(m, "HM")]))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Base/New: mean over seeds (± population std); HM from the means; Average HM = HM of the averaged Base and New. Seeds per cell: up to {max_seeds}."]
    if flagged:
        notes.append("† fewer seeds than the other cells.")
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def base2new_csv(agg: pd.DataFrame) -> str:
    table, methods, _ = base2new_table(agg)
    rows = []
    for dataset, r in table.iterrows():
        for m in methods:
            rows.append({"dataset": dataset, "method": m, "base": r[(m, "Base")], "new": r[(m, "New")],
                         "hm": r[(m, "HM")], "base_std": r[(m, "Base_std")], "new_std": r[(m, "New_std")],
                         "base_seeds": r[(m, "Base_n")], "new_seeds": r[(m, "New_n")]})
    return pd.DataFrame(rows).to_csv(index=False, float_format="%.4f")


# --------------------------------------------------------------------------- all protocols
# A protocol table is data (``Table``); ``cpbench.results.formats`` renders it as markdown, csv,
# latex, html or json. Each cell keeps its seed mean, std, seed count, a flag for fewer seeds
# than the table's most, and (with ``compare``) the published number, its provenance and delta.

from dataclasses import dataclass, field as dc_field  # noqa: E402

PROTOCOL_ORDER = ("base2new", "cross_dataset", "dg", "few_shot", "continual", "retrieval")
PROTOCOL_TITLES = {"base2new": "Base-to-new generalisation", "cross_dataset": "Cross-dataset transfer",
                   "dg": "Domain generalisation", "few_shot": "Few-shot classification",
                   "continual": "Continual (class-incremental) learning", "retrieval": "Few-shot image-text retrieval"}


@dataclass
class Cell:
    value: float = float("nan")
    std: float = float("nan")
    n: int = 0
    flag: bool = False
    derived: bool = False          # HM / averages: computed from means, no std of their own
    paper: float | None = None
    provenance: str = ""
    method: str = ""
    dataset: str = ""
    field: str = "accuracy"        # Base | New | HM for base2new
    shots: int = 16

    @property
    def delta(self) -> float | None:
        if self.paper is None or _nan(self.value):
            return None
        return self.value - self.paper


@dataclass
class Table:
    protocol: str
    title: str
    row_header: str
    columns: list[str]
    groups: list[tuple[str, int]]          # column groups (label, span), e.g. one per method
    rows: list[tuple[str, list[Cell]]]
    notes: list[str] = dc_field(default_factory=list)
    key: str = ""                           # e.g. "16-shot"


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _cell(a: pd.DataFrame, **eq) -> Cell:
    hit = a
    for k, v in eq.items():
        hit = hit[hit[k] == v]
    if hit.empty:
        return Cell()
    r = hit.iloc[0]
    return Cell(float(r["mean"]), float(r["std"]), int(r["n_seeds"]))


def _flag(rows: list[tuple[str, list[Cell]]]) -> tuple[int, bool]:
    cells = [c for _, cs in rows for c in cs if not c.derived and c.n > 0]
    most = max((c.n for c in cells), default=0)
    flagged = False
    for c in cells:
        if c.n < most:
            c.flag = flagged = True
    return most, flagged


def _notes(most: int, flagged: bool, extra: str) -> list[str]:
    notes = [extra, f"Mean over seeds ± population std (ddof=0); seeds per cell: up to {most}."]
    if flagged:
        notes.append("† fewer seeds than the other cells.")
    return notes


def filter_agg(agg: pd.DataFrame, protocols=None, methods=None, datasets=None) -> pd.DataFrame:
    a = agg
    if protocols:
        a = a[a["protocol"].isin(protocols)]
    if methods:
        a = a[a["method"].isin(methods)]
    if datasets:
        # transfer protocols keep their source column whichever targets are selected
        keep_source = a["protocol"].isin(["cross_dataset", "dg"]) & (a["eval_dataset"] == a["train_dataset"])
        a = a[a["eval_dataset"].isin(datasets) | keep_source]
    return a


def base2new_tables(agg: pd.DataFrame, compare: bool = False) -> list[Table]:
    from cpbench.results import published

    a = agg[agg["protocol"] == "base2new"]
    if a.empty:
        return []
    t, methods, _ = base2new_table(a)
    rows = []
    for dataset, r in t.iterrows():
        cells = []
        for m in methods:
            for col, fld in (("Base", "base"), ("New", "new"), ("HM", "hm")):
                derived = col == "HM" or dataset == "Average"
                c = Cell(float(r[(m, col)]), float("nan") if derived else float(r[(m, col + "_std")]),
                         0 if col == "HM" else int(r[(m, col + "_n")]), derived=derived,
                         method=m, dataset=str(dataset), field=col)
                if compare:
                    p = published.lookup("base2new", m, str(dataset), fld, 16)
                    if p:
                        c.paper, c.provenance = p.value, p.provenance
                cells.append(c)
        rows.append((str(dataset), cells))
    most, flagged = _flag(rows)
    cols = [f"{m} {c}" for m in methods for c in ("Base", "New", "HM")]
    note = ("Base/New: seed means; HM = 2·B·N/(B+N) of the means; Average: Base and New averaged over the "
            "datasets, HM of those averages (not the mean of per-dataset HMs).")
    return [Table("base2new", PROTOCOL_TITLES["base2new"], "Dataset", cols, [(m, 3) for m in methods], rows,
                  _notes(most, flagged, note))]


def _transfer_tables(agg: pd.DataFrame, protocol: str, order: tuple[str, ...], compare: bool) -> list[Table]:
    """Rows: methods; columns: source, targets, Average (over the targets only)."""
    from cpbench.results import published

    a = agg[agg["protocol"] == protocol]
    tables = []
    for (source, shots), g in a.groupby(["train_dataset", "shots"], sort=True):
        targets = sorted(set(g["eval_dataset"]) - {source}, key=lambda d: (order.index(d) if d in order else len(order), d))
        rows = []
        for m in sorted(g["method"].unique()):
            gm = g[g["method"] == m]
            cells = [_cell(gm, eval_dataset=d) for d in [source] + targets]
            vals = [c.value for c in cells[1:]]
            avg = Cell(sum(vals) / len(vals) if vals and not any(_nan(v) for v in vals) else float("nan"), derived=True,
                       n=min((c.n for c in cells[1:]), default=0))
            cells.append(avg)
            for d, c in zip([source] + targets + ["Average"], cells):
                c.method, c.dataset, c.shots = m, d, int(shots)
            if compare:
                for d, c in zip([source] + targets + ["Average"], cells):
                    p = published.lookup(protocol, m, d, "all", int(shots))
                    if p:
                        c.paper, c.provenance = p.value, p.provenance
            rows.append((m, cells))
        most, flagged = _flag(rows)
        note = (f"Trained on {source} (all classes, {shots} shots); Average over the {len(targets)} target(s), "
                "source excluded." + (" ImageNet-A/R: 200-class problems, logits gathered from the source class bank."
                                      if protocol == "dg" else ""))
        cols = [f"{source} (source)"] + targets + ["Average"]
        tables.append(Table(protocol, PROTOCOL_TITLES[protocol], "Method", cols, [], rows,
                            _notes(most, flagged, note), key=f"{source}, {shots}-shot"))
    return tables


def few_shot_tables(agg: pd.DataFrame, compare: bool = False) -> list[Table]:
    """One table per shot count: rows methods, columns datasets + Average (over the datasets)."""
    from cpbench.results import published

    a = agg[agg["protocol"] == "few_shot"]
    tables = []
    datasets = sorted(a["train_dataset"].unique())
    for shots, g in a.groupby("shots", sort=True):
        rows = []
        for m in sorted(g["method"].unique()):
            gm = g[g["method"] == m]
            cells = [_cell(gm, train_dataset=d) for d in datasets]
            vals = [c.value for c in cells]
            cells.append(Cell(sum(vals) / len(vals) if vals and not any(_nan(v) for v in vals) else float("nan"),
                              derived=True, n=min((c.n for c in cells), default=0)))
            for d, c in zip(datasets + ["Average"], cells):
                c.method, c.dataset, c.shots = m, d, int(shots)
            if compare:
                for d, c in zip(datasets + ["Average"], cells):
                    p = published.lookup("few_shot", m, d, "all", int(shots))
                    if p:
                        c.paper, c.provenance = p.value, p.provenance
            rows.append((m, cells))
        most, flagged = _flag(rows)
        tables.append(Table("few_shot", PROTOCOL_TITLES["few_shot"], "Method", datasets + ["Average"], [], rows,
                            _notes(most, flagged, f"{shots} shots per class, all classes; Average over the datasets."),
                            key=f"{shots}-shot"))
    return tables


def tables(agg: pd.DataFrame, compare: bool = False) -> list[Table]:
    from cpbench.protocols import cross_dataset, domain_generalization
    from cpbench.results.continual import continual_tables
    from cpbench.results.retrieval import retrieval_tables

    out = base2new_tables(agg, compare)
    out += _transfer_tables(agg, "cross_dataset", cross_dataset.TARGETS, compare)
    out += _transfer_tables(agg, "dg", domain_generalization.TARGETS, compare)
    out += few_shot_tables(agg, compare)
    out += continual_tables(agg) + retrieval_tables(agg)
    return out
