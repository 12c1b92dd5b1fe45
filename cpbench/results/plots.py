"""PNG figures from aggregated rows: base vs new accuracy per method (one panel per dataset
plus the Average, base2new) and few-shot curves (accuracy vs shots per dataset and the
average). matplotlib is imported lazily, with the non-interactive Agg backend."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cpbench.results.report import base2new_table


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, n)
    return math.ceil(n / cols), cols


def base_vs_new(agg: pd.DataFrame, path: Path) -> Path | None:
    a = agg[agg["protocol"] == "base2new"]
    if a.empty:
        return None
    table, methods, _ = base2new_table(a)
    plt = _plt()
    panels = list(table.index)
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    width = 0.38
    for ax, d in zip(axes.flat, panels):
        xs = range(len(methods))
        base = [table.loc[d, (m, "Base")] for m in methods]
        new = [table.loc[d, (m, "New")] for m in methods]
        ax.bar([x - width / 2 for x in xs], base, width, label="Base", color="#4C72B0")
        ax.bar([x + width / 2 for x in xs], new, width, label="New", color="#DD8452")
        for x, m in zip(xs, methods):
            h = table.loc[d, (m, "HM")]
            if not math.isnan(h):
                ax.plot([x - width, x + width], [h, h], color="black", lw=1)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title(str(d), fontsize=10, fontweight="bold" if d == "Average" else "normal")
        ax.set_ylabel("accuracy (%)", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=9, ncol=2)
    fig.suptitle("Base vs new accuracy (seed means; line = HM)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def few_shot_curves(agg: pd.DataFrame, path: Path) -> Path | None:
    a = agg[agg["protocol"] == "few_shot"]
    if a.empty:
        return None
    plt = _plt()
    datasets = sorted(a["train_dataset"].unique())
    panels = datasets + (["Average"] if len(datasets) > 1 else [])
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    methods = sorted(a["method"].unique())
    for ax, d in zip(axes.flat, panels):
        for m in methods:
            g = a[a["method"] == m]
            if d == "Average":
                piv = g.pivot_table(index="shots", columns="train_dataset", values="mean")
                piv = piv.dropna()  # only shot counts every dataset has
                s = piv.mean(axis=1) if piv.shape[1] == len(datasets) else pd.Series(dtype=float)
            else:
                s = g[g["train_dataset"] == d].set_index("shots")["mean"].sort_index()
            if len(s):
                ax.plot(list(s.index), list(s.values), marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(a["shots"].unique()))
        ax.set_xticklabels([str(k) for k in sorted(a["shots"].unique())])
        ax.set_xlabel("shots per class", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.set_title(d, fontsize=10, fontweight="bold" if d == "Average" else "normal")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Few-shot accuracy (seed means)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(agg: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    made = [base_vs_new(agg, out_dir / "base_vs_new.png"), few_shot_curves(agg, out_dir / "few_shot.png")]
    return [p for p in made if p is not None]
