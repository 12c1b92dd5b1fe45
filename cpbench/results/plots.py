"""PNG figures from the report's tables: base vs new accuracy per entry (one panel per dataset
plus the Average; one figure per base-to-new table) and few-shot curves (accuracy vs shots per
dataset and the Average). Entries are the tables' labels, so two configurations of one method
are two bars / two curves. matplotlib is imported lazily, with the non-interactive Agg backend."""

from __future__ import annotations

import math
from pathlib import Path

from cpbench.results.table import Table, isnan, records


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, n)
    return math.ceil(n / cols), cols


def _value(x) -> float:
    return float("nan") if x is None else float(x)


def _entries(recs: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["entry"] for r in recs))


def base_vs_new(t: Table, path: Path) -> Path:
    recs = records([t])
    means = {(r["dataset"], r["entry"], r["field"]): _value(r["mean"]) for r in recs}
    entries = _entries(recs)
    panels = list(t.average_over) + ["Average"]
    plt = _plt()
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    width = 0.38
    for ax, d in zip(axes.flat, panels):
        xs = range(len(entries))
        ax.bar([x - width / 2 for x in xs], [means.get((d, m, "Base"), math.nan) for m in entries], width,
               label="Base", color="#4C72B0")
        ax.bar([x + width / 2 for x in xs], [means.get((d, m, "New"), math.nan) for m in entries], width,
               label="New", color="#DD8452")
        for x, m in zip(xs, entries):
            h = means.get((d, m, "HM"), math.nan)
            if not isnan(h):
                ax.plot([x - width, x + width], [h, h], color="black", lw=1)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(entries, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title(str(d), fontsize=10, fontweight="bold" if d == "Average" else "normal")
        ax.set_ylabel("accuracy (%)", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Base vs new accuracy, {t.key} (seed means; line = HM)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def few_shot_curves(tables: list[Table], path: Path) -> Path:
    recs = records(tables)
    datasets = list(dict.fromkeys(d for t in tables for d in t.average_over))
    panels = datasets + (["Average"] if len(datasets) > 1 else [])
    shots = sorted({r["shots"] for r in recs})
    entries = _entries(recs)
    means = {(r["dataset"], r["entry"], r["shots"]): _value(r["mean"]) for r in recs}
    plt = _plt()
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, d in zip(axes.flat, panels):
        for m in entries:
            pts = [(k, means.get((d, m, k), math.nan)) for k in shots]
            pts = [(k, v) for k, v in pts if not isnan(v)]
            if pts:
                ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots)
        ax.set_xticklabels([str(k) for k in shots])
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


def write_plots(tables: list[Table], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    made = []
    b2n = [t for t in tables if t.protocol == "base2new"]
    for t in b2n:
        name = "base_vs_new.png" if len(b2n) == 1 else f"base_vs_new_{t.key}.png"
        made.append(base_vs_new(t, out_dir / name))
    fs = [t for t in tables if t.protocol == "few_shot"]
    if fs:
        made.append(few_shot_curves(fs, out_dir / "few_shot.png"))
    return made
