"""Figures from the report's tables (matplotlib, imported lazily with the Agg backend):

- base vs new (one figure per base-to-new table): one panel per dataset and the Average; per
  entry a Base and a New point with an error bar (the 95 % bootstrap interval with ``--ci``,
  else ± the std over seeds), the HM as a diamond, value labels;
- few-shot curves: accuracy against shots per dataset and the Average, with the same error bars;
- per-class accuracy (``--per-class``): per class, each entry's accuracy;
- paired differences (``--compare-methods``): A − B with its interval per dataset and field.

Points on a zoomed axis (not bars from 0), so a 2-point difference is visible; an entry without
a result in a panel is written there as missing; legends sit outside the axes and the figure is
saved with a tight bounding box, so nothing is clipped. Entries are the tables' labels, so two
configurations of one method are two series.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

from cpbench.results.table import Table, isnan, records

BASE, NEW, HM = "#4C72B0", "#DD8452", "#333333"


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


def _err(r: dict | None) -> tuple[float, float]:
    """(below, above) the mean: the interval if there is one, else the std (0 without either)."""
    if not r or r["mean"] is None:
        return 0.0, 0.0
    if r.get("ci_low") is not None:
        return max(0.0, r["mean"] - r["ci_low"]), max(0.0, r["ci_high"] - r["mean"])
    s = r["std"] if r["std"] is not None and not r["seedless"] and r["n_seeds"] > 1 else 0.0
    return s, s


def _limits(lows: list[float], highs: list[float]) -> tuple[float, float]:
    """A zoomed accuracy axis: the data's range (error bars included) plus a margin, within 0-100."""
    lo = min((v for v in lows if not isnan(v)), default=0.0)
    hi = max((v for v in highs if not isnan(v)), default=100.0)
    pad = max(2.0, 0.12 * (hi - lo))
    return max(0.0, lo - pad), min(100.0, hi + pad)


def _error_note(recs: list[dict]) -> str:
    return "error bars: 95 % bootstrap interval" if any(r.get("ci_low") is not None for r in recs) else \
        "error bars: ± std over seeds"


def _save(fig, path: Path | None) -> bytes | Path:
    plt = _plt()
    if path is None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def base_vs_new(t: Table, path: Path | None = None):
    recs = [r for r in records([t]) if r["entry"]]
    by = {(r["dataset"], r["entry"], r["field"]): r for r in recs}
    entries = _entries(recs)
    panels = list(t.average_over) + ["Average"]
    plt = _plt()
    rows, cols = _grid(len(panels))
    width = max(3.4, 0.9 * len(entries) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.3 * rows), squeeze=False)
    off = 0.18
    for ax, d in zip(axes.flat, panels):
        lows, highs = [], []
        for x, m in enumerate(entries):
            got = False
            for dx, fld, colour in ((-off, "Base", BASE), (off, "New", NEW)):
                r = by.get((d, m, fld))
                v = _value(r["mean"]) if r else math.nan
                if isnan(v):
                    continue
                got = True
                below, above = _err(r)
                ax.errorbar([x + dx], [v], yerr=[[below], [above]], fmt="o", color=colour, ms=5, capsize=3)
                ax.annotate(f"{v:.1f}", (x + dx, v + above), textcoords="offset points", xytext=(0, 3),
                            ha="center", va="bottom", fontsize=7, color=colour)
                lows.append(v - below)
                highs.append(v + above)
            h = by.get((d, m, "HM"))
            if h and h["mean"] is not None:
                below, above = _err(h)
                ax.errorbar([x], [h["mean"]], yerr=[[below], [above]], fmt="D", color=HM, ms=4, capsize=2, lw=0.8,
                            alpha=0.8)
            if not got:
                ax.text(x, 0.5, "missing", transform=ax.get_xaxis_transform(), ha="center", va="center",
                        rotation=90, fontsize=8, color="#999999")
        ax.set_xlim(-0.6, len(entries) - 0.4)
        ax.set_ylim(*_limits(lows, highs))
        ax.set_xticks(range(len(entries)))
        ax.set_xticklabels(entries, rotation=30, ha="right", fontsize=8)
        ax.set_title(str(d), fontsize=10, fontweight="bold" if d == "Average" else "normal")
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker=mk, color=c, ls="none", label=lab)
               for mk, c, lab in (("o", BASE, "Base"), ("o", NEW, "New"), ("D", HM, "HM"))]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"Base vs new accuracy, {t.key} (seed means; {_error_note(recs)}; ◆ = HM)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def few_shot_curves(tables: list[Table], path: Path | None = None):
    recs = [r for r in records(tables) if r["entry"]]
    datasets = list(dict.fromkeys(d for t in tables for d in t.average_over))
    panels = datasets + (["Average"] if len(datasets) > 1 else [])
    shots = sorted({r["shots"] for r in recs})
    entries = _entries(recs)
    by = {(r["dataset"], r["entry"], r["shots"]): r for r in recs}
    plt = _plt()
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.1 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, d in zip(axes.flat, panels):
        lows, highs, absent = [], [], []
        for i, m in enumerate(entries):
            pts = [(k, by.get((d, m, k))) for k in shots]
            pts = [(k, r) for k, r in pts if r and r["mean"] is not None]
            if not pts:
                absent.append(m)
                continue
            errs = [_err(r) for _, r in pts]
            ys = [r["mean"] for _, r in pts]
            ax.errorbar([k for k, _ in pts], ys, yerr=[[e[0] for e in errs], [e[1] for e in errs]], marker="o",
                        ms=4, capsize=3, color=colours(i % 10), label=m)
            ax.annotate(f"{ys[-1]:.1f}", (pts[-1][0], ys[-1]), textcoords="offset points", xytext=(4, 0),
                        fontsize=7, va="center", color=colours(i % 10))
            lows += [y - e[0] for y, e in zip(ys, errs)]
            highs += [y + e[1] for y, e in zip(ys, errs)]
        if absent:
            ax.text(0.02, 0.02, "missing: " + ", ".join(absent), transform=ax.transAxes, fontsize=7, color="#999999")
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots)
        ax.set_xticklabels([str(k) for k in shots])
        ax.set_ylim(*_limits(lows, highs))
        ax.set_xlabel("shots per class", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.set_title(d, fontsize=10, fontweight="bold" if d == "Average" else "normal")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, max(1, len(labels))),
               fontsize=8, frameon=False)
    fig.suptitle(f"Few-shot accuracy (seed means; {_error_note(recs)})", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def per_class(t: Table, path: Path | None = None):
    """Per-class accuracy of each entry (classes sorted by their mean over the entries)."""
    entries = [c.entry.label for c in t.rows[0].cells if c.entry is not None] if t.rows else []
    rows = [r for r in t.rows if not r.average]
    acc = {(r.labels[0], c.entry.label): c.value for r in rows for c in r.cells if c.entry is not None}
    classes = sorted((r.labels[0] for r in rows),
                     key=lambda n: sum(acc[(n, e)] for e in entries) / max(1, len(entries)))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.22 * len(classes) + 1.2)))
    colours = plt.get_cmap("tab10")
    for i, e in enumerate(entries):
        ax.plot([acc[(n, e)] for n in classes], range(len(classes)), "o", ms=5, color=colours(i % 10), label=e,
                alpha=0.85)
    ax.set_yticks(range(len(classes)))
    ax.set_yticklabels(classes, fontsize=7)
    ax.set_xlim(-3, 103)
    ax.set_xlabel("per-class accuracy (%)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(f"Per-class accuracy, {t.key}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def differences(t: Table, path: Path | None = None):
    """A − B per dataset and field with its 95 % paired interval (filled: significant; one shared seed:
    the test images' interval, hollow, "untestable")."""
    rows = [(" ".join(r.labels), r.cells[-1]) for r in t.rows]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, max(2.2, 0.3 * len(rows) + 1.0)))
    for y, (name, c) in enumerate(rows):
        if c.value is None or isnan(c.value):
            ax.text(0, y, "missing", va="center", fontsize=7, color="#999999")
            continue
        sig = c.paired is not None and c.paired.significant
        if c.paired is not None:
            ax.plot([c.paired.low, c.paired.high], [y, y], color=HM, lw=1.5)
        ax.plot([c.value], [y], "o", ms=6, color=BASE if sig else "white", markeredgecolor=BASE)
        verdict = "" if sig else " untestable (1 seed)" if c.paired is not None and not c.paired.testable else " n.s."
        ax.annotate(f"{c.value:+.2f}" + verdict, (c.paired.high if c.paired else c.value, y),
                    textcoords="offset points", xytext=(5, 0), va="center", fontsize=7)
    ax.axvline(0, color="#999999", lw=1, ls="--")
    ends = [v for _, c in rows if c.value is not None and not isnan(c.value)
            for v in ((c.paired.low, c.paired.high) if c.paired else (c.value,))] + [0.0]
    span = max(ends) - min(ends) or 1.0
    ax.set_xlim(min(ends) - 0.08 * span, max(ends) + 0.3 * span)  # room for the labels on the right
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([n for n, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{t.columns[-1]} (points; 95 % paired interval, seeds and test images; hollow = not significant)",
                  fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{t.title} ({t.key})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def figures(tables: list[Table]) -> list[tuple[str, str, callable]]:
    """(file name, caption, draw(path or None)) for every figure the tables give."""
    out = []
    b2n = [t for t in tables if t.protocol == "base2new" and not t.kind]
    for t in b2n:
        name = "base_vs_new.png" if len(b2n) == 1 else f"base_vs_new_{_slug(t.key)}.png"
        out.append((name, f"Base vs new, {t.key}", lambda p, t=t: base_vs_new(t, p)))
    fs = [t for t in tables if t.protocol == "few_shot" and not t.kind]
    if fs:
        out.append(("few_shot.png", "Few-shot curves", lambda p: few_shot_curves(fs, p)))
    for t in (x for x in tables if x.kind == "per_class" and x.rows):
        out.append((f"per_class_{_slug(t.key)}.png", f"Per-class accuracy, {t.key}", lambda p, t=t: per_class(t, p)))
    for t in (x for x in tables if x.kind == "compare"):
        out.append((f"compare_{_slug(t.columns[-1])}_{_slug(t.protocol + ' ' + t.key)}.png", f"{t.title} ({t.key})",
                    lambda p, t=t: differences(t, p)))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text.replace(" − ", "-minus-")).strip("_")


def write_plots(tables: list[Table], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    return [draw(out_dir / name) for name, _, draw in figures(tables)]
