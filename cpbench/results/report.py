"""Tables from results rows, computed as the papers do.

- Per dataset: Base and New are means over seeds; HM = 2·B·N/(B+N) of those means.
- Average row: average Base and New over datasets first, then their HM (not the mean of HMs).
- Std is the population std over seeds (ddof=0, as CoOp's parse_test_res); cells with fewer
  seeds than the most seen for that table are flagged.
"""

from __future__ import annotations

import math

import pandas as pd

GROUP = ["protocol", "method", "backbone", "pretrained", "train_dataset", "eval_dataset", "subset", "shots"]


def hm(b: float, n: float) -> float:
    if b is None or n is None or (isinstance(b, float) and math.isnan(b)) or (isinstance(n, float) and math.isnan(n)):
        return float("nan")
    return 0.0 if b + n == 0 else 2 * b * n / (b + n)


def latest_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, seed, config): re-runs (``--force``) replace earlier rows."""
    if df.empty:
        return df
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
